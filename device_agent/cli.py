"""``tufota-agent``: the device agent's command line (composition only).

Commands::

    tufota-agent [-v] run [--config PATH] [--once] [-v]
    tufota-agent [-v] status [--config PATH] [--json] [-v]
    tufota-agent [-v] install-bundle BUNDLE [--config PATH] [-v]
    tufota-agent tuf-client --metadata-dir DIR [...] init|refresh|download

``--config`` defaults to ``$TUFOTA_AGENT_CONFIG``, else ``/etc/tufota/agent.toml``.
``-v`` is accepted before or after the command.

Exit codes: 0 the cycle completed (nothing to do, installed and reboot
pending, or update succeeded); 3 the cycle completed but the update was
refused, failed, rolled back or the server was unreachable (``run --once``
and ``install-bundle``); 1 a tufota error (bad config, missing keys, corrupt
state); 2 bad usage; 141 the output's reader went away. ``tuf-client``
follows the conformance protocol: 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from device_agent._agent import (
    ACTION_IDLE,
    ACTION_REBOOTING,
    ACTION_SUCCEEDED,
    Agent,
    CycleResult,
    run_agent_loop,
)
from device_agent._config import AgentConfig
from device_agent._tufcli import main as tuf_client_main
from tufota_core import NotFoundError, TufotaError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UPDATE_PROBLEM = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer
DEFAULT_CONFIG = Path("/etc/tufota/agent.toml")
CONFIG_ENV = "TUFOTA_AGENT_CONFIG"
_EPILOG = (
    "exit codes: 0 cycle completed; 3 update refused, failed, rolled back or server "
    "unreachable (run --once); 1 error; 2 bad usage"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tufota-agent",
        description="tufota device agent: verify firmware with TUF, install A/B, report.",
        epilog=_EPILOG,
    )
    verbose_help = "debug logging and tracebacks on errors"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"path of agent.toml (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    # SUPPRESS: a -v given before the command is not reset by the subcommand's default.
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        parents=[common],
        help="poll for updates and install them",
        description="Run update cycles on the configured interval (with jitter).",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="run one cycle and exit; if it installed an image, the next run boots it",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="show slots, agent state and queued reports",
        description="Show the installed version, slots, agent state and queued reports.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    bundle = sub.add_parser(
        "install-bundle",
        parents=[common],
        help="install an offline update bundle (USB)",
        description=(
            "Verify an offline bundle against the trusted root and install its firmware "
            "into the inactive slot: the .tar.gz/.tgz/.tar that 'tufota release export' "
            "writes, or a directory copy of the repository's public/ tree (optional "
            "bundle.json naming the target). Reports are queued for the next online run."
        ),
    )
    bundle.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="offline bundle archive or directory"
    )
    sub.add_parser(
        "tuf-client",
        help="TUF conformance-suite client (see 'tufota-agent tuf-client --help')",
        add_help=False,
    )
    return parser


def _describe(result: CycleResult) -> str:
    if result.action == ACTION_REBOOTING:
        return (
            f"reboot pending: {result.target_version} is installed in the inactive slot; "
            "the next run boots and verifies it"
        )
    text = f"{result.action}: installed {result.installed_version or '-'}"
    if result.error_code:
        text += f" ({result.error_code})"
    if result.message:
        text += f" - {result.message}"
    if result.reports_pending:
        text += f"; {result.reports_pending} report(s) queued"
    return text


def _load_config(args: argparse.Namespace) -> AgentConfig:
    """The agent.toml ``--config`` names, or the default one.

    Raises:
        NotFoundError: the file does not exist (the message says where the path came from).
        InputError: it is not a valid agent.toml.
    """
    if args.config is not None:
        return AgentConfig.load(args.config)
    from_env = os.environ.get(CONFIG_ENV)
    path = Path(from_env) if from_env else DEFAULT_CONFIG
    try:
        return AgentConfig.load(path)
    except NotFoundError:
        where = f"${CONFIG_ENV}" if from_env else "the default"
        raise NotFoundError(
            f"agent config {path} ({where}) does not exist; pass --config PATH or set {CONFIG_ENV}"
        ) from None


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if args.once:
        result = run_agent_loop(config, once=True)
        print(_describe(result))
        ok = result.action in (ACTION_IDLE, ACTION_REBOOTING, ACTION_SUCCEEDED)
        return EXIT_OK if ok else EXIT_UPDATE_PROBLEM
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("stopping after signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run_agent_loop(config, stop=stop, on_cycle=lambda r: logger.info("%s", _describe(r)))
    return EXIT_OK


def _format_status(status: dict[str, Any]) -> str:
    agent = status["agent"]
    lines = [
        f"device     {status['device_id']} ({status['hardware_id']})",
        f"installed  {status['installed_version'] or '-'}",
        f"pending    {status['pending_version'] or '-'}",
        f"state      {agent['state']}"
        + (
            f" (rollout {agent['rollout_id']}, target {agent['target_version']})"
            if agent.get("rollout_id")
            else ""
        ),
        f"reports    {status['reports_pending']} queued, next seq {agent['next_seq']}",
    ]
    installer = status["installer"]
    if installer.get("kind") == "ab-simulator":
        for name, slot in sorted(installer["slots"].items()):
            marks = [
                m
                for m, on in (
                    ("active", installer["active"] == name),
                    ("pending", installer["pending"] == name),
                    ("good", slot.get("good")),
                )
                if on
            ]
            lines.append(f"slot {name}     {slot.get('version') or '-'} [{', '.join(marks)}]")
    else:
        lines.append(f"installer  {installer.get('kind')}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    config = _load_config(args)
    with Agent(config) as agent:
        status = agent.status()
    if args.json:
        print(json.dumps(status, indent=1, sort_keys=True))
    else:
        print(_format_status(status))
    return EXIT_OK


def _cmd_install_bundle(args: argparse.Namespace) -> int:
    config = _load_config(args)
    with Agent(config) as agent:
        result = agent.install_bundle(args.bundle)
    print(_describe(result))
    return EXIT_OK if result.action == ACTION_REBOOTING else EXIT_UPDATE_PROBLEM


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tufota-agent``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tuf-client"]:
        return tuf_client_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # ngclient logs each unused signature of a threshold root at INFO on every
        # refresh ("No signature for keyid ..."): noise unless debugging.
        logging.getLogger("tuf").setLevel(logging.WARNING)
    else:
        logging.getLogger("tuf").setLevel(logging.NOTSET)
    commands = {"run": _cmd_run, "status": _cmd_status, "install-bundle": _cmd_install_bundle}
    try:
        return commands[args.command](args)
    except TufotaError as e:
        if args.verbose:
            logger.exception("%s failed", args.command)
        print(f"tufota-agent: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (``| head``): exit quietly with SIGPIPE's status, as
        # Unix tools do. The work itself (an install, a commit) is already durable.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout again at exit
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
