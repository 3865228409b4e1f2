"""``tufota rollout`` and ``tufota fleet``: staged rollouts and the fleet's state."""

from __future__ import annotations

import argparse
import re
from typing import Any

from repo_server import Repository
from signing import find_product
from staging import RolloutController, RolloutOptions, RolloutStatus, SqliteTrackerStore
from tufota_cli._common import open_repo, passphrase_source, print_json, table
from tufota_core import (
    FirmwareInfo,
    InputError,
    NotFoundError,
    Version,
    check_hardware_id,
    parse_wave_spec,
    product_role,
)

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``30m`` -> 1800. Raises InputError."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InputError(f"duration {text!r} is not like 90s, 30m, 2h or 1d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def parse_fraction(text: str) -> float:
    """``95%`` or ``0.95`` -> 0.95. Raises InputError."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{text!r} is not a percentage such as 95%") from None
    if not 0.0 < value <= 1.0:
        raise InputError(f"{text!r} is outside 0-100%")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = sub.add_parser("rollout", help="start, watch and steer staged rollouts")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")

    p = rsub.add_parser("start", help="start a staged rollout of a signed release")
    p.add_argument("--repo", required=True)
    p.add_argument("--hardware", required=True)
    p.add_argument("--version", required=True)
    p.add_argument(
        "--waves",
        required=True,
        help="waves in order, e.g. 'canary:tag=canary,pilot:devices=a,b,10%%,100%%'",
    )
    p.add_argument("--success-threshold", default="95%", type=parse_fraction)
    p.add_argument("--failure-threshold", default="5%", type=parse_fraction)
    p.add_argument(
        "--soak", default="0s", type=parse_duration, help="least time per wave, e.g. 30m"
    )
    p.add_argument("--min-devices", default=0, type=int)
    p.set_defaults(func=cmd_start)

    p = rsub.add_parser("status", help="per-wave progress of rollouts")
    p.add_argument("rollout_id", nargs="?", help="a rollout id (default: every rollout)")
    p.add_argument("--repo", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    for action, text in (
        ("pause", "stop offering the release"),
        ("resume", "offer it again"),
        ("abort", "end the rollout for good"),
        ("advance", "open the next wave now"),
    ):
        p = rsub.add_parser(action, help=text)
        p.add_argument("rollout_id")
        p.add_argument("--repo", required=True)
        p.add_argument("--reason", default="by operator")
        p.set_defaults(func=cmd_action, action=action)

    p = rsub.add_parser("tick", help="evaluate every rollout's gates once (for cron)")
    p.add_argument("--repo", required=True)
    p.set_defaults(func=cmd_tick)

    fleet = sub.add_parser("fleet", help="the fleet's versions and patch status")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    p = fsub.add_parser("status", help="each device's version and state, with a summary")
    p.add_argument("--repo", required=True)
    p.add_argument("--hardware", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet)


def controller(repo: Repository) -> RolloutController:
    return RolloutController(
        SqliteTrackerStore(repo.tracker_path), repo.publisher(passphrase_source())
    )


def find_release(repo: Repository, hardware_id: str, version: str) -> str:
    """The target path of ``version`` of ``hardware_id``.

    Raises:
        NotFoundError: the hardware id has no product line or no such release.
    """
    check_hardware_id(hardware_id)
    Version.parse(version)
    state = repo.state()
    find_product(state.targets, hardware_id)
    product = state.roles.get(product_role(hardware_id))
    for path, target in product.signed.targets.items() if product else []:
        info = FirmwareInfo.from_custom(target.custom)
        if info.version == version:
            return path
    raise NotFoundError(f"hardware id {hardware_id} has no release {version}")


def latest_versions(repo: Repository) -> dict[str, dict[str, Any]]:
    """For each hardware id: its newest release and every release's fixes."""
    state = repo.state()
    result: dict[str, dict[str, Any]] = {}
    for name, role in state.roles.items():
        if not name.startswith(product_role("x")[:-1]):
            continue
        infos = [FirmwareInfo.from_custom(t.custom) for t in role.signed.targets.values()]
        if infos:
            newest = max(infos, key=lambda i: Version.parse(i.version))
            result[newest.hardware_id] = {"latest": newest.version, "releases": infos}
    return result


def cmd_start(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    target_path = find_release(repo, args.hardware, args.version)
    waves = parse_wave_spec(args.waves)
    options = RolloutOptions(
        success_threshold=args.success_threshold,
        failure_threshold=args.failure_threshold,
        soak_seconds=args.soak,
        min_devices=args.min_devices,
    )
    doc = controller(repo).start(args.hardware, args.version, target_path, waves, options)
    print(
        f"started rollout {doc.rollout_id}: {args.hardware} -> {args.version}, "
        f"{len(waves)} waves ({', '.join(w.name for w in waves)})"
    )
    return 0


def render_status(status: RolloutStatus) -> str:
    data = status.to_json()
    head = (
        f"rollout {data['rollout_id']}  {data['hardware_id']} -> {data['version']}  "
        f"state {data['state']}  wave {data['current_wave'] + 1}/{len(data['waves'])}"
    )
    columns = [
        "eligible",
        "checked_in",
        "downloading",
        "installed",
        "succeeded",
        "failed",
        "rolled_back",
    ]
    rows = [[w["name"]] + [w.get(c, 0) for c in columns] for w in data["waves"]]
    lines = [head, table(["wave", *columns], rows)]
    if data.get("gate"):
        lines.append(f"gate: {data['gate']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    ctl = controller(repo)
    if args.rollout_id:
        statuses = [ctl.status(args.rollout_id)]
    else:
        with SqliteTrackerStore(repo.tracker_path) as store:
            statuses = [ctl.status(r.rollout_id) for r in store.list_rollouts()]
    if args.json:
        print_json({"rollouts": [s.to_json() for s in statuses]})
    elif not statuses:
        print("no rollouts")
    else:
        print("\n\n".join(render_status(s) for s in statuses))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    ctl = controller(repo)
    method = getattr(ctl, args.action)
    doc = (
        method(args.rollout_id)
        if args.action in ("resume", "advance")
        else method(args.rollout_id, args.reason)
    )
    print(f"rollout {doc.rollout_id}: {doc.state}, wave {doc.current_wave + 1}/{len(doc.waves)}")
    return 0


def cmd_tick(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    events = controller(repo).tick()
    for event in events:
        print(event.to_json() if hasattr(event, "to_json") else event)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    releases = latest_versions(repo)
    status = controller(repo).fleet_status(
        hardware_id=args.hardware,
        latest_versions={hw: r["latest"] for hw, r in releases.items()},
    )
    data = status.to_json()
    if args.json:
        print_json(data)
        return 0
    latest = {hw: r["latest"] for hw, r in releases.items()}
    rows = [
        [
            d["device_id"],
            d["hardware_id"],
            d.get("installed_version"),
            latest.get(d["hardware_id"]),
            d.get("state"),
            d.get("last_seen"),
        ]
        for d in data["devices"]
    ]
    print(table(["device", "hardware", "version", "latest", "state", "last seen"], rows))
    return 0
