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

from tufota_cli import (
    admin_cmds,
    demo_cmd,
    device_cmds,
    release_cmds,
    repo_cmds,
    rollout_cmds,
    signing_cmds,
    simulate_cmd,
)
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
    # One module per command group; each registers its own subcommands.
    for module in (
        repo_cmds,  # init, serve
        admin_cmds,  # repo verify, token (repository-server issue)
        signing_cmds,  # key, root, product, expiry (signing issue)
        release_cmds,  # release add|sign|verify|upload
        device_cmds,  # device provision|register|accept|revoke
        rollout_cmds,  # rollout ..., fleet status
        simulate_cmd,  # simulate (staging issue)
        demo_cmd,  # demo
    ):
        module.register(sub)
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
