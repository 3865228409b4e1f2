"""Entry point of the ``tufota`` command.

Every command group lives in its own module and registers its subcommands
here. Errors the project raises on purpose (``TufotaError``) print one line
naming the problem and exit 1; ``-v`` adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from tufota_cli import demo_cmd, device_cmds, release_cmds, repo_cmds, rollout_cmds
from tufota_core import TufotaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tufota",
        description="Signed over-the-air firmware updates with staged rollouts.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    repo_cmds.register(sub)
    release_cmds.register(sub)
    device_cmds.register(sub)
    rollout_cmds.register(sub)
    demo_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    if not args.verbose:
        # Library chatter (tuf, urllib3) is for -v only.
        for noisy in ("tuf", "urllib3", "securesystemslib", "uvicorn", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except TufotaError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"tufota: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tufota: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"tufota: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
