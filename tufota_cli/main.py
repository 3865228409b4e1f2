"""Entry point of the ``tufota`` command.

Every command group lives in its own module and registers its subcommands
here. Errors the project raises on purpose (``TufotaError``) print one line
``tufota: error: ...``: exit 1 while running, exit 2 while the arguments are
parsed (a bad value given to an option, as argparse does for usage errors).
``-v`` adds the traceback and debug logging. argparse's own usage errors
are one line too (exit 2), naming ``--help`` instead of printing the usage.

The base install (``pip install tufota``, no extras) runs every offline
command. A command group whose module needs the server side (fastapi,
uvicorn, boto3, prometheus_client) is still listed; running it prints one
line naming the ``tufota[server]`` extra. So is any command that reaches the
server side at run time.

When the reader of stdout goes away (``tufota fleet status | head -2``) the
command stops quietly with exit status 141 (128 + SIGPIPE), what a shell
reports for Unix tools killed by SIGPIPE, so ``set -o pipefail`` scripts
still see that the output was cut short.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

from tufota_core import TufotaError

EXIT_BROKEN_PIPE = 141
SERVER_EXTRA = "tufota[server]"
# Top-level packages only the server extra installs.
_SERVER_PACKAGES = frozenset(
    {
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
        "boto3",
        "botocore",
        "s3transfer",
        "prometheus_client",
    }
)
# One module per command group, with the commands it registers.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("repo_cmds", ("init", "serve")),
    ("admin_cmds", ("repo", "token")),
    ("signing_cmds", ("key", "root", "product", "expiry")),
    ("release_cmds", ("release",)),
    ("device_cmds", ("device",)),
    ("rollout_cmds", ("rollout", "fleet", "alert")),
    ("simulate_cmd", ("simulate",)),
    ("demo_cmd", ("demo",)),
    ("ops_cmds", ("login", "profile")),
    ("db_cmds", ("db",)),
)


EPILOG = """\
remote mode: operator commands take --repo DIR (local, on the server's host) or
--server URL --token T (remote; also TUFOTA_SERVER / TUFOTA_TOKEN, or a profile
saved by 'tufota login'). Precedence: flags, then environment, then the
active profile.

exit codes:
  0  done
  1  error (one line on stderr; nothing changed), also a server that cannot be reached
  2  bad usage
  3  refused by authorisation: the token is unknown, expired, or its role may not
  4  the watched rollout was aborted (rollout status --watch)
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``tufota CMD: error: ... (try ... --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (try '{self.prog} --help')\n")


class ServerExtraMissingError(TufotaError):
    """A command needs the server side, which the base install does not have."""


def _missing_server_package(e: ModuleNotFoundError) -> str | None:
    name = (e.name or "").split(".", 1)[0]
    return name if name in _SERVER_PACKAGES else None


def _needs_server(command: str, package: str) -> ServerExtraMissingError:
    return ServerExtraMissingError(
        f"'tufota {command}' needs {package}, which the base install leaves out: "
        f"pip install '{SERVER_EXTRA}'"
    )


def _import_group(name: str) -> ModuleType | None:
    """The command module, or None when it needs the server extra that is not installed."""
    try:
        return importlib.import_module(f"tufota_cli.{name}")
    except ModuleNotFoundError as e:
        if _missing_server_package(e) is None:
            raise
        return None


def _stub(sub: argparse._SubParsersAction, command: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(command, help=f"(needs {SERVER_EXTRA})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(_args: argparse.Namespace) -> int:
        raise ServerExtraMissingError(
            f"'tufota {command}' needs the server side: pip install '{SERVER_EXTRA}'"
        )

    p.set_defaults(func=run)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tufota")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tufota",
        description="Signed over-the-air firmware updates with staged rollouts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs and tracebacks"
    )
    parser.add_argument("--version", action="version", version=f"tufota {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, commands in _GROUPS:
        module = _import_group(name)
        if module is None:
            for command in commands:
                _stub(sub, command)
        else:
            module.register(sub)
    return parser


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush
    # cannot raise BrokenPipeError a second time (Python docs, "Note on SIGPIPE").
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _fail(message: str, verbose: bool, code: int = 1) -> int:
    if verbose:
        traceback.print_exc()
    print(f"tufota: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in words or "--verbose" in words
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except TufotaError as e:
        # A type= converter raised our own error: a usage error, one line.
        return _fail(str(e), verbose, 2)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    if not args.verbose:
        # Library chatter (tuf, urllib3) is for -v only.
        for noisy in (
            "tuf",
            "urllib3",
            "securesystemslib",
            "uvicorn",
            "httpx",
            "botocore",
            "boto3",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    run: Callable[[argparse.Namespace], int] = args.func
    try:
        code = int(run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except TufotaError as e:
        # A refusal by authorisation has its own code (3); see EPILOG.
        return _fail(str(e), args.verbose, getattr(e, "exit_code", 1))
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
        server = getattr(args, "remote_server", None)
        if server is None:
            raise  # a local bug: keep the traceback
        # A server's answer of an unexpected shape is bad input, not a crash.
        return _fail(
            f"the answer from {server} is not what this tufota expects "
            f"({type(e).__name__}); is the server the same version? (-v shows where)",
            args.verbose,
        )
    except ModuleNotFoundError as e:
        package = _missing_server_package(e)
        if package is None:
            raise
        return _fail(str(_needs_server(args.command, package)), args.verbose)
    except KeyboardInterrupt:
        print("tufota: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        return _fail(str(e), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
