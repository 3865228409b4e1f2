"""``tufota device``: provision devices."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from device_agent import init_slots, render_agent_config
from repo_server import Repository
from signing import find_product, latest_version
from staging import SqliteTrackerStore
from tufota_cli._common import open_repo
from tufota_core import InputError, NotFoundError, check_device_id, check_tag, product_role


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = sub.add_parser("device", help="provision and manage devices")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    p = dsub.add_parser("provision", help="create a device identity, register it, write agent.toml")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--repo", required=True, help="repository directory")
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
    p.add_argument("--poll-interval", type=float, default=300.0)
    p.add_argument("--health-command", default="", help="command whose exit 0 means healthy")
    p.set_defaults(func=cmd_provision)


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
) -> Path:
    """Create the device's key pair, register it as accepted, write ``out/agent.toml``.

    Raises:
        InputError: bad id or tag, or ``out`` is not empty.
        NotFoundError: the hardware id has no release.
        ConflictError: the device id is registered already.
    """
    check_device_id(device_id)
    for tag in tags:
        check_tag(tag)
    state = repo.state()
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
        (work / "root.json").write_bytes(repo.trusted_root())
        (work / "agent.toml").write_text(
            render_agent_config(
                device_id=device_id,
                hardware_id=hardware_id,
                server_url=server_url or repo.config.server_url,
                tags=tags,
                poll_interval=poll_interval,
                health_command=health_command,
            )
        )
        init_slots(work / "slots", factory_version)
        # Register last: a failure above leaves no device behind in the tracker.
        with SqliteTrackerStore(repo.tracker_path) as store:
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


def cmd_provision(args: argparse.Namespace) -> int:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    repo = open_repo(args.repo)
    if args.factory_version is not None:
        from tufota_core import Version

        Version.parse(args.factory_version)
    config = provision_device(
        repo,
        args.device_id,
        args.hardware,
        Path(args.out),
        tags,
        args.server_url,
        args.factory_version,
        args.poll_interval,
        args.health_command,
    )
    print(
        f"provisioned {args.device_id} ({args.hardware}); run: tufota-agent run --config {config}"
    )
    return 0
