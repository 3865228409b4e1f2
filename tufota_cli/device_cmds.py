"""``tufota device``: provision, register, accept, revoke and list devices.

``provision`` makes the device's key here (factory provisioning) and registers
it accepted; ``register`` takes a key generated on the device and leaves it
pending until an operator runs ``accept``. ``revoke`` is final.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from device_agent import DURATION_BOUNDS, init_slots, parse_duration, render_agent_config
from repo_server import (
    Repository,
)
from signing import find_product, latest_version
from staging import DEVICE_STATUSES
from tufota_cli._common import print_json, table
from tufota_cli._ops import add_target_arguments, operations, read_pubkey
from tufota_cli.repo_cmds import add_repo_arguments, open_repository
from tufota_core import (
    InputError,
    NotFoundError,
    Version,
    check_device_id,
    check_hardware_id,
    check_tag,
    check_window,
    product_role,
    safe_text,
)

MAX_PUBKEY_FILE = 16 * 1024


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = sub.add_parser("device", help="provision and manage devices")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    p = dsub.add_parser("provision", help="create a device identity, register it, write agent.toml")
    p.add_argument("device_id", metavar="DEVICE_ID")
    add_repo_arguments(p)
    p.add_argument("--hardware", required=True, help="hardware id with at least one release")
    p.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    p.add_argument("--tags", default="", help="comma-separated cohort tags")
    p.add_argument(
        "--server-url", default=None, help="URL the agent uses (default: the repository's)"
    )
    p.add_argument(
        "--factory-version",
        default=None,
        help="version of the image the device ships with (default: none installed)",
    )
    p.add_argument(
        "--poll-interval",
        default="5m",
        help="how often the agent checks for a rollout: seconds or 10s, 5m, 1h (1s-1d; "
        "default 5m; short intervals suit a test session, not a fleet)",
    )
    p.add_argument(
        "--min-version",
        default=None,
        help="floor the device never installs below, whatever a rollout document says",
    )
    p.add_argument(
        "--maintenance-window",
        default=None,
        help="the device's own window, e.g. 'Sat 02:00-04:00 UTC'; rollouts can only narrow it",
    )
    p.add_argument("--health-command", default="", help="command whose exit 0 means healthy")
    p.add_argument(
        "--ca-bundle",
        default=None,
        help="PEM CA certificate(s) the agent verifies an https server with (copied to OUT)",
    )
    p.set_defaults(func=cmd_provision)

    p = dsub.add_parser(
        "register", help="register a key generated on the device; the device stays pending"
    )
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--hardware", required=True, help="the device's hardware id (product line)")
    p.add_argument(
        "--pubkey", required=True, help="the device's public key: device.pub (JSON) or PEM"
    )
    p.add_argument("--tags", default="", help="comma-separated cohort tags")
    add_target_arguments(p)
    p.set_defaults(func=cmd_register)

    for action, status, text in (
        ("accept", "accepted", "let a pending device report"),
        ("revoke", "revoked", "refuse every further report of a device, for good"),
    ):
        p = dsub.add_parser(action, help=text)
        p.add_argument("device_id", metavar="DEVICE_ID")
        p.add_argument("--reason", default="", help="recorded in the device's history")
        add_target_arguments(p)
        p.set_defaults(func=cmd_status, status=status)

    p = dsub.add_parser("list", help="registered devices with their status and key id")
    add_target_arguments(p)
    p.add_argument("--status", default=None, choices=DEVICE_STATUSES)
    p.add_argument("--hardware", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = dsub.add_parser("tags", help="edit a device's cohort tags (they pick its rollout waves)")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--set", default=None, help="replace every tag: comma-separated ('' for none)")
    p.add_argument("--add", default="", help="comma-separated tags to add")
    p.add_argument("--remove", default="", help="comma-separated tags to remove")
    p.add_argument("--reason", default="", help="recorded in the device's history")
    add_target_arguments(p)
    p.set_defaults(func=cmd_tags)

    p = dsub.add_parser(
        "show", help="a device: state, version, tags, last report and its report history"
    )
    p.add_argument("device_id", metavar="DEVICE_ID")
    add_target_arguments(p)
    p.add_argument("--limit", type=int, default=20, help="history entries shown (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output (200 entries)")
    p.set_defaults(func=cmd_show)


def provision_device(
    repo: Repository,
    device_id: str,
    hardware_id: str,
    out: Path,
    tags: list[str],
    server_url: str | None = None,
    factory_version: str | None = None,
    poll_interval: float = 300.0,
    health_command: str = "",
    ca_bundle: Path | None = None,
    min_version: str | None = None,
    maintenance_window: str | None = None,
) -> Path:
    """Create the device's key pair, register it as accepted, write ``out/agent.toml``.

    ``min_version`` and ``maintenance_window`` go to the device's ``[policy]``:
    limits a rollout document signed with the online key cannot widen.

    Raises:
        InputError: bad id, tag, interval, version or window, or ``out`` is not empty.
        NotFoundError: the hardware id has no release.
        ConflictError: the device id is registered already.
    """
    check_device_id(device_id)
    for tag in tags:
        check_tag(tag)
    ca_pem = _read_ca_bundle(ca_bundle) if ca_bundle is not None else None
    # Every value the agent.toml will hold is checked before anything is written.
    agent_toml = render_agent_config(
        device_id=device_id,
        hardware_id=hardware_id,
        server_url=server_url or repo.config.server_url,
        tags=tags,
        poll_interval=poll_interval,
        health_command=health_command,
        ca_bundle="ca.pem" if ca_pem is not None else "",
        min_version=min_version or "",
        maintenance_window=maintenance_window or "",
    )
    state = repo.verified_state(required=False)  # devices will trust its root
    find_product(state.targets, hardware_id)
    product = state.roles.get(product_role(hardware_id))
    if product is None or latest_version(product) is None:
        raise NotFoundError(
            f"hardware id {hardware_id} has no release; run 'tufota release add' first"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    signer = CryptoSigner.generate_ed25519()
    public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.provision-"))
    try:
        key_path = work / "device.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
        (work / "device.pub").write_text(json.dumps(public, indent=1) + "\n")
        (work / "root.json").write_bytes(state.root.to_bytes())
        if ca_pem is not None:
            (work / "ca.pem").write_bytes(ca_pem)
        (work / "agent.toml").write_text(agent_toml)
        init_slots(work / "slots", factory_version)
        # Register last: a failure above leaves no device behind in the tracker.
        with repo.open_tracker() as store:
            store.register_device(
                device_id,
                hardware_id,
                public_key=public,
                tags=tags,
                status="accepted",
                installed_version=factory_version,
            )
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "agent.toml"


def _read_ca_bundle(path: Path) -> bytes:
    """The CA bundle's bytes, checked to hold at least one PEM certificate.

    Raises:
        NotFoundError: the file does not exist.
        InputError: it holds no certificate.
    """
    from cryptography.x509 import load_pem_x509_certificates

    if not path.is_file():
        raise NotFoundError(f"CA bundle {path} does not exist")
    data = path.read_bytes()
    try:
        load_pem_x509_certificates(data)
    except ValueError as e:
        raise InputError(f"CA bundle {path} holds no PEM certificate: {e}") from None
    return data


def _tags(text: str) -> list[str]:
    return [check_tag(t.strip()) for t in text.split(",") if t.strip()]


def cmd_provision(args: argparse.Namespace) -> int:
    tags = _tags(args.tags)
    interval = parse_duration(
        args.poll_interval, "--poll-interval", DURATION_BOUNDS["poll.interval"]
    )
    for option, version in (
        ("--factory-version", args.factory_version),
        ("--min-version", args.min_version),
    ):
        if version is not None:
            try:
                Version.parse(version)
            except InputError as e:
                raise InputError(f"{option}: {e}") from None
    window = check_window(args.maintenance_window)
    repo = open_repository(args)
    config = provision_device(
        repo,
        args.device_id,
        args.hardware,
        Path(args.out),
        tags,
        args.server_url,
        args.factory_version,
        interval,
        args.health_command,
        Path(args.ca_bundle) if args.ca_bundle else None,
        args.min_version,
        window,
    )
    print(
        f"provisioned {args.device_id} ({args.hardware}); run: tufota-agent run --config {config}"
    )
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    check_device_id(args.device_id)
    check_hardware_id(args.hardware)
    tags = _tags(args.tags)
    key = read_pubkey(Path(args.pubkey), MAX_PUBKEY_FILE)
    ops = operations(args)
    device = ops.register_device(args.device_id, args.hardware, key, tags)["device"]
    print(
        f"registered {device['device_id']} ({device['hardware_id']}), key "
        f"{str(device['key']['keyid'])[:16]}: pending; accept it with "
        f"'tufota device accept {device['device_id']}'"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    check_device_id(args.device_id)
    result = operations(args).set_device_status(args.device_id, args.status, args.reason)
    print(f"{args.device_id}: {args.status}" + ("" if result["changed"] else " (already)"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.hardware:
        check_hardware_id(args.hardware)
    devices = operations(args).devices(args.status, args.hardware)
    if args.json:
        print_json({"devices": devices})
    elif not devices:
        print("no devices")
    else:
        rows = [
            [
                d["device_id"],
                d["hardware_id"],
                d["status"],
                str((d.get("key") or {}).get("keyid") or "")[:16],
                ",".join(d["tags"]),
                d["installed_version"],
            ]
            for d in devices
        ]
        print(table(["device", "hardware", "status", "key", "tags", "version"], rows))
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    check_device_id(args.device_id)
    if args.set is None and not args.add and not args.remove:
        raise InputError("give --set, --add or --remove")
    change = {
        "set": None if args.set is None else _tags(args.set),
        "add": _tags(args.add),
        "remove": _tags(args.remove),
        "reason": args.reason,
    }
    device = operations(args).edit_tags(args.device_id, change)["device"]
    print(f"{device['device_id']}: tags {','.join(device['tags']) or '(none)'}")
    return 0


_SHOWN = (
    ("hardware", "hardware_id"),
    ("registration", "status"),
    ("state", "state"),
    ("version", "installed_version"),
    ("target", "target_version"),
    ("rollout", "rollout_id"),
    ("last seen", "last_seen"),
    ("last error", "error_code"),
    ("error message", "error_message"),
    ("last report seq", "last_seq"),
)


def cmd_show(args: argparse.Namespace) -> int:
    check_device_id(args.device_id)
    if not 0 <= args.limit <= 200:
        raise InputError(f"--limit {args.limit} is outside 0-200")
    data = operations(args).device(args.device_id)
    if args.json:
        print_json(data)
        return 0
    device = data["device"]
    print(f"device {device['device_id']}")
    width = max(len(label) for label, _ in _SHOWN) + 1
    for label, key in _SHOWN:
        if device.get(key) not in (None, ""):
            print(f"  {(label + ':').ljust(width)} {safe_text(str(device[key]))}")
    print(f"  {'tags:'.ljust(width)} {safe_text(','.join(device.get('tags') or [])) or '-'}")
    ident = device.get("key") or {}
    print(f"  {'key:'.ljust(width)} {ident.get('keyid')} ({ident.get('keytype')})")
    history = data["history"][: args.limit]
    if history:
        print()
        columns = sorted({k for e in history for k in e} - {"device_id"})
        first = [c for c in ("at", "kind", "state", "version", "seq") if c in columns]
        rest = [c for c in columns if c not in first]
        print(table(first + rest, [[_cell(e.get(c)) for c in first + rest] for e in history]))
    return 0


def _cell(value: object) -> object:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
