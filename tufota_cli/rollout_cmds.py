"""``tufota rollout``, ``tufota fleet``, ``tufota alert``: rollouts, patch status, alerts."""

from __future__ import annotations

import argparse
from typing import Any

from repo_server import Publisher, Repository, ServerLimits, release_catalog
from repo_server._watchdog import published_rollouts
from signing import find_product
from staging import (
    ALERT_SEVERITIES,
    PRESETS,
    FleetStatus,
    Release,
    RolloutController,
    RolloutStatus,
)
from staging import parse_duration as _parse_duration
from staging import parse_fraction as _parse_fraction
from tufota_cli._common import passphrase_source, print_json, table
from tufota_cli._ops import add_target_arguments, operations
from tufota_cli._watch import add_watch
from tufota_cli.repo_cmds import add_repo_arguments, open_repository
from tufota_core import (
    InputError,
    NotFoundError,
    Version,
    check_hardware_id,
)

_SIGNING_PERIOD_LIMIT = 100 * 365 * 86400


def parse_duration(text: str) -> int:
    """``30m`` -> 1800, up to 100 years (signing periods). Raises InputError."""
    return _parse_duration(text, maximum=_SIGNING_PERIOD_LIMIT)


def parse_fraction(text: str) -> float:
    """``95%`` or ``0.95`` -> 0.95. Raises InputError."""
    return _parse_fraction(text)


def _duration_arg(text: str) -> int:
    """An argparse type: a rollout or alert duration, at most 365 days; one-line error."""
    try:
        return _parse_duration(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction_arg(text: str) -> float:
    """An argparse type: a percentage in (0, 100%]; one-line error."""
    try:
        return _parse_fraction(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


EXIT_CODES = (
    "exit codes: 0 done (also 'already paused' / 'already active'), 1 refused or failed "
    "(one line on stderr; nothing changed), 2 bad usage, 3 refused by authorisation "
    "(remote mode: the token's role may not; nothing changed), 4 a watched rollout was "
    "aborted (status --watch)"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = sub.add_parser(
        "rollout", help="start, watch and steer staged rollouts", epilog=EXIT_CODES
    )
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")

    p = rsub.add_parser(
        "start",
        help="start a staged rollout of a signed release",
        description="Start a staged rollout. Give --waves, a --preset, or both (the waves "
        "then replace the preset's). Presets: "
        + "; ".join(
            f"{p.name}: {p.waves}, success {p.success_threshold:.0%}, failure "
            f"{p.failure_threshold:.0%}, soak {p.soak_seconds // 60}m"
            + (" (releases signed as critical only)" if p.critical_only else "")
            for p in PRESETS.values()
        ),
    )
    add_target_arguments(p)
    p.add_argument("--hardware", required=True)
    p.add_argument("--version", required=True)
    p.add_argument(
        "--waves",
        default=None,
        help="waves in order, e.g. 'canary:tag=canary,pilot:devices=a+b,10%%,100%%'",
    )
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="a starting plan")
    p.add_argument("--success-threshold", default=None, type=_fraction_arg, help="default 95%%")
    p.add_argument("--failure-threshold", default=None, type=_fraction_arg, help="default 5%%")
    p.add_argument("--soak", default=None, type=_duration_arg, help="least time per wave (30m)")
    p.add_argument("--min-devices", default=None, type=int, help="least successes per gate")
    p.add_argument(
        "--stall-timeout", default=None, type=_duration_arg, help="no progress this long (20m)"
    )
    p.add_argument(
        "--reboot-timeout", default=None, type=_duration_arg, help="reboot deadline (15m)"
    )
    p.add_argument(
        "--poll-interval", default=None, type=_duration_arg, help="devices' poll interval (5m)"
    )
    p.add_argument("--silent-polls", default=None, type=int, help="silent after N polls (3)")
    p.add_argument(
        "--retry-failed",
        default=None,
        type=int,
        metavar="N",
        help="offer the release again to failed devices up to N times (default 0)",
    )
    p.add_argument(
        "--retry-backoff",
        default=None,
        type=_duration_arg,
        help="wait before the first retry, doubling after (10m)",
    )
    p.add_argument(
        "--maintenance-window",
        default=None,
        help="when devices may install, e.g. 'Sat 02:00-04:00 UTC' or 'Mon-Fri 22:00-02:00 UTC'",
    )
    p.add_argument("--reason", default="", help="why, for the rollout's history")
    p.set_defaults(func=cmd_start)

    p = rsub.add_parser("status", help="per-wave progress of rollouts", epilog=EXIT_CODES)
    p.add_argument("rollout_id", nargs="?", help="a rollout id (default: every rollout)")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_watch(p, cmd_status)  # --watch, --interval (tufota_cli/_watch.py)

    p = rsub.add_parser("history", help="a rollout's transitions with time and reason")
    p.add_argument("rollout_id")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    for action, text in (
        ("pause", "stop offering the release (a paused rollout stays paused, exit 0)"),
        ("resume", "offer it again (an active rollout stays active, exit 0)"),
        ("abort", "end the rollout for good"),
        ("advance", "open the next wave now"),
        ("complete", "end the rollout as completed at its last wave, leaving stragglers"),
    ):
        p = rsub.add_parser(action, help=text, epilog=EXIT_CODES)
        p.add_argument("rollout_id")
        add_target_arguments(p)
        if action == "complete":
            p.add_argument(
                "--reason",
                required=True,
                help="why the remaining devices may stay behind (kept in the history)",
            )
        else:
            p.add_argument("--reason", default="by operator")
        p.set_defaults(func=cmd_action, action=action)

    p = rsub.add_parser("tick", help="evaluate gates, stalls and alerts once (for cron)")
    add_repo_arguments(p)  # local only: the server ticks itself
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tick)

    fleet = sub.add_parser("fleet", help="the fleet's versions and patch status")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    p = fsub.add_parser(
        "status", help="each device's version, missing fixes and exposure, worst first"
    )
    add_target_arguments(p)
    p.add_argument("--hardware", default=None)
    p.add_argument("--exposed", action="store_true", help="only devices that lack a fix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet)

    alert = sub.add_parser("alert", help="alerts and where they are sent")
    asub = alert.add_subparsers(dest="alert_command", required=True, metavar="COMMAND")
    p = asub.add_parser("list", help="alerts, newest first")
    add_target_arguments(p)
    p.add_argument("--open", action="store_true", help="only open alerts")
    p.add_argument("--rollout", default=None)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alert_list)

    p = asub.add_parser("resolve", help="resolve an alert by hand")
    p.add_argument("alert_id", type=int)
    add_target_arguments(p)
    p.add_argument("--reason", default="resolved by an operator")
    p.set_defaults(func=cmd_alert_resolve)

    p = asub.add_parser("sink", help="add, remove or list alert sinks (log is always on)")
    p.add_argument("sink_action", choices=("add", "remove", "list"))
    p.add_argument("name", nargs="?", help="sink name (add, remove)")
    add_target_arguments(p)
    p.add_argument("--webhook", default="", help="URL that receives a JSON POST per alert")
    p.add_argument("--sns", default="", help="SNS topic ARN")
    p.add_argument("--region", default="", help="AWS region for SNS")
    p.add_argument("--endpoint-url", default="", help="AWS endpoint override for SNS")
    p.add_argument("--min-severity", default="info", choices=ALERT_SEVERITIES)
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="let this webhook reach loopback, link-local and cloud metadata addresses "
        "(refused by default)",
    )
    p.set_defaults(func=cmd_alert_sink)

    p = asub.add_parser("settings", help="show or change when fleet-wide alerts fire")
    add_target_arguments(p)
    p.add_argument(
        "--patch-grace", type=_duration_arg, default=None, help="time after a release (7d)"
    )
    p.add_argument("--min-cvss", type=float, default=None, help="least CVSS alerted on (7.0)")
    p.add_argument(
        "--expiry-margin", type=_duration_arg, default=None, help="online role expiry (12h)"
    )
    p.set_defaults(func=cmd_alert_settings)

    p = asub.add_parser("test", help="send a test alert (and its resolution) to every sink")
    add_target_arguments(p)
    p.set_defaults(func=cmd_alert_test)


def controller(repo: Repository, *, signing: bool = True) -> RolloutController:
    """A controller on ``repo``'s tracker, publishing with its online rollouts key.

    With ``signing`` the online keys are loaded here, before the command
    writes anything: a missing or wrong passphrase refuses the command while
    the tracker and the repository are still untouched (a command that fails
    changes nothing). Read-only commands and alert commands pass False and
    never ask for a passphrase.

    Raises:
        InputError: no passphrase (signing only).
        VerificationError: a wrong passphrase (signing only).
    """
    if signing:
        signers = repo.online_signers(passphrase_source())
        publisher = Publisher(repo.storage, lambda: signers, repo.expiry)
    else:
        publisher = repo.publisher(passphrase_source())
    store = repo.open_tracker()
    # One publisher at a time with the servers on the same database (replicas).
    publisher.serialize = lambda: store.exclusive("publish", ServerLimits().lock_timeout_seconds)
    return RolloutController(
        store,
        publisher,
        expiries=publisher.expiries,
        releases=lambda: release_catalog(repo.state()),
        published=lambda: published_rollouts(repo.storage, publisher.take_forged_targets()),
    )


def find_release(repo: Repository, hardware_id: str, version: str) -> Release:
    """The signed release ``version`` of ``hardware_id`` (its target path and firmware facts).

    Raises:
        NotFoundError: the hardware id has no product line or no such release.
    """
    check_hardware_id(hardware_id)
    Version.parse(version)
    state = repo.state()
    find_product(state.targets, hardware_id)
    release = release_catalog(state).find(hardware_id, version)
    if release is None:
        raise NotFoundError(f"hardware id {hardware_id} has no release {version}")
    return release


def cmd_start(args: argparse.Namespace) -> int:
    check_hardware_id(args.hardware)
    Version.parse(args.version)
    body = {
        "hardware_id": args.hardware,
        "version": args.version,
        "waves": args.waves,
        "preset": args.preset,
        "maintenance_window": args.maintenance_window,
        "success_threshold": args.success_threshold,
        "failure_threshold": args.failure_threshold,
        "soak": args.soak,
        "min_devices": args.min_devices,
        "stall_timeout": args.stall_timeout,
        "reboot_timeout": args.reboot_timeout,
        "poll_interval": args.poll_interval,
        "silent_polls": args.silent_polls,
        "retry_failed": args.retry_failed,
        "retry_backoff": args.retry_backoff,
        "reason": args.reason,
    }
    # Unset options are left out: the server's plan fills them as the local one does.
    data = operations(args).start_rollout({k: v for k, v in body.items() if v is not None})
    options = data.get("options") or {}
    extras = []
    if options.get("preset"):
        extras.append(f"preset {options['preset']}")
    if options.get("maintenance_window"):
        extras.append(f"window {options['maintenance_window']}")
    waves = data["waves"]
    print(
        f"started rollout {data['rollout_id']}: {args.hardware} -> {args.version}, "
        f"{len(waves)} waves ({', '.join(w['name'] for w in waves)})"
        + (f"; {'; '.join(extras)}" if extras else "")
    )
    return 0


def render_status(status: RolloutStatus | dict[str, Any]) -> str:
    """A rollout's status (``RolloutStatus`` or its JSON) as a head line, a table and notes."""
    data = status if isinstance(status, dict) else status.to_json()
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
    stalls = {k: v for k, v in (data.get("stalls") or {}).items() if v}
    if stalls:
        lines.append(
            "stalled: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in stalls.items())
        )
    if data.get("maintenance_window"):
        lines.append(f"maintenance window: {data['maintenance_window']}")
    if data.get("retry_failed"):
        lines.append(f"retries: {data.get('retry_generation', 0)}/{data['retry_failed']} made")
    if data.get("security_events"):
        lines.append(
            f"security events: {data['security_events']} verification failures reported "
            "(refused data; not counted as install failures, see 'alert list')"
        )
    if data.get("clock_skewed"):
        lines.append(f"clock skew: {data['clock_skewed']} devices report a wrong clock")
    if data.get("bytes_fetched"):
        lines.append(
            f"transfer: {data['bytes_fetched']:,} bytes fetched, {data.get('bytes_saved', 0):,} "
            f"saved by {data.get('delta_downloads', 0)} delta download(s)"
        )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    rollouts = operations(args).rollouts(args.rollout_id)
    if args.json:
        print_json({"rollouts": rollouts})
    elif not rollouts:
        print("no rollouts")
    else:
        print("\n\n".join(render_status(r) for r in rollouts))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    data = operations(args).rollout_history(args.rollout_id)
    if args.json:
        print_json(data)
        return 0
    rows = [
        [e["at"], e["kind"], e["state"], None if e["wave"] is None else e["wave"] + 1, e["reason"]]
        for e in data["events"]
    ]
    print(table(["at", "event", "state", "wave", "reason"], rows))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    data = operations(args).rollout_action(args.rollout_id, args.action, args.reason)
    if data.get("already"):
        print(f"rollout {data['rollout_id']} is already {data['state']}")
        return 0
    print(
        f"rollout {data['rollout_id']}: {data['state']}, "
        f"wave {data['current_wave'] + 1}/{len(data['waves'])}"
    )
    if data.get("published") is False and data.get("message"):
        print(f"warning: {data['message']}")
    return 0


def cmd_tick(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    ctl = controller(repo)
    ctl.tick()
    report = ctl.last_tick
    if args.json:
        print_json(report.to_json())
        return 0
    for event in report.events:
        print(f"{event.rollout_id}: {event.kind} (wave {(event.wave or 0) + 1}) {event.reason}")
    for alert in report.opened:
        print(f"alert {alert.alert_id} opened [{alert.kind}] {alert.summary}")
    for alert in report.resolved:
        print(f"alert {alert.alert_id} resolved [{alert.kind}] {alert.resolution}")
    for error in report.errors:
        print(f"warning: {error}")
    return 0


def render_fleet(status: FleetStatus | dict[str, Any], exposed_only: bool = False) -> str:
    """The fleet's patch status (``FleetStatus`` or its JSON), worst exposure first."""
    data = status if isinstance(status, dict) else status.to_json()
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3, "unknown": 4, "none": 5}
    devices = sorted(
        data["devices"],
        key=lambda d: (order.get(d["exposure"], 9), -(d["max_cvss"] or 0.0), d["device_id"]),
    )
    if exposed_only:
        devices = [d for d in devices if d["missing_fixes"]]
    rows = [
        [
            d["device_id"],
            d["hardware_id"],
            d["installed_version"],
            d["latest_version"],
            d["exposure"],
            "" if d["max_cvss"] is None else f"{d['max_cvss']:.1f}",
            " ".join(d["missing_fixes"][:3]) + (" ..." if len(d["missing_fixes"]) > 3 else ""),
            d["state"],
            d["status"],
            d["last_seen"],
        ]
        for d in devices
    ]
    lines = [
        table(
            [
                "device",
                "hardware",
                "version",
                "latest",
                "exposure",
                "cvss",
                "missing fixes",
                "state",
                "registration",
                "last seen",
            ],
            rows,
        ),
        "",
        # The table lists every device; the counts below skip revoked ones and say so.
        "by status:   " + ", ".join(f"{k} {n}" for k, n in data["by_status"].items()),
        "by version:  "
        + ", ".join(f"{v} {n}" for v, n in data["by_version"].items())
        + (
            f" (revoked devices not counted: {data['by_status']['revoked']})"
            if data["by_status"].get("revoked")
            else ""
        ),
        "by exposure: " + ", ".join(f"{k} {n}" for k, n in data["by_exposure"].items() if n),
    ]
    if data["by_cve"]:
        cves = [
            f"{cve} (CVSS {c['cvss'] if c['cvss'] is not None else '?'}, fixed in "
            f"{c['fixed_in']}): {c['devices']}"
            for cve, c in data["by_cve"].items()
        ]
        lines.append("missing:     " + "; ".join(cves))
    return "\n".join(lines)


def cmd_fleet(args: argparse.Namespace) -> int:
    if args.hardware:
        check_hardware_id(args.hardware)
    data = operations(args).fleet(args.hardware)
    if args.json:
        print_json(data)
    else:
        print(render_fleet(data, args.exposed))
    return 0


def cmd_alert_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise InputError(f"--limit {args.limit} is outside 1-10000")
    alerts = operations(args).alerts(args.open, args.rollout, args.limit)
    if args.json:
        print_json({"alerts": alerts})
        return 0
    rows = [
        [
            a["alert_id"],
            a["state"],
            a["severity"],
            a["kind"],
            a["opened_at"],
            a["summary"][:100],
        ]
        for a in alerts
    ]
    print(table(["id", "state", "severity", "kind", "opened", "summary"], rows))
    return 0


def cmd_alert_resolve(args: argparse.Namespace) -> int:
    alert = operations(args).resolve_alert(args.alert_id, args.reason)
    print(f"alert {alert['alert_id']} resolved: {alert['resolution']}")
    return 0


def cmd_alert_sink(args: argparse.Namespace) -> int:
    ops = operations(args)
    if args.sink_action == "list":
        sinks = ops.alert_settings({})["sinks"]
        rows = [
            [
                s["name"],
                s["kind"],
                s["url"] or s["topic_arn"],
                s["min_severity"],
                s["allow_private"],
            ]
            for s in sinks
        ]
        print(
            table(
                ["name", "kind", "target", "min severity", "private ok"],
                [["log", "log", "", "info", ""], *rows],
            )
        )
        return 0
    if not args.name:
        raise InputError(f"'alert sink {args.sink_action}' needs a sink name")
    if args.sink_action == "remove":
        ops.remove_sink(args.name)
        print(f"removed alert sink {args.name}")
        return 0
    if bool(args.webhook) == bool(args.sns):
        raise InputError("give exactly one of --webhook URL or --sns TOPIC_ARN")
    spec = {
        "name": args.name,
        "kind": "webhook" if args.webhook else "sns",
        "url": args.webhook,
        "topic_arn": args.sns,
        "region": args.region,
        "endpoint_url": args.endpoint_url,
        "min_severity": args.min_severity,
        "allow_private": args.allow_private,
    }
    ops.add_sink(spec)
    print(f"added {spec['kind']} alert sink {args.name}; try it with 'tufota alert test'")
    return 0


def cmd_alert_settings(args: argparse.Namespace) -> int:
    changes = {
        "patch_grace_seconds": args.patch_grace,
        "patch_min_cvss": args.min_cvss,
        "expiry_margin_seconds": args.expiry_margin,
    }
    print_json(operations(args).alert_settings({k: v for k, v in changes.items() if v is not None}))
    return 0


def cmd_alert_test(args: argparse.Namespace) -> int:
    result = operations(args).test_alert()
    print(f"test alert: {result['delivered']} notifications delivered, {result['failed']} failed")
    return 0 if not result["failed"] else 1
