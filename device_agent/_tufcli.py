"""``tufota-agent tuf-client``: the command-line protocol of TUF client conformance suites.

Usage (options before the command)::

    tuf-client --metadata-dir DIR init TRUSTED_ROOT_FILE
    tuf-client --metadata-dir DIR --metadata-url URL refresh
    tuf-client --metadata-dir DIR --metadata-url URL --target-name NAME [--target-name ...]
               --target-dir DIR --target-base-url URL download

Invariants:
* Built on the agent's own client code: ngclient with the agent's
  ``HttpFetcher`` for metadata, the agent's one-pass ``Downloader`` (resuming
  off, so a failed target leaves no file) for targets.
* ``init`` only copies the trusted root in (no network). After any command the
  metadata dir holds ngclient's cache: unversioned ``root.json``,
  ``timestamp.json``, ``snapshot.json``, ``targets.json`` and delegated roles,
  byte-identical to what the server sent.
* ``download`` fetches the named targets in order, stopping at the first
  failure; a target already in the target dir (under its URL-quoted name, as
  ngclient names it) and matching the current metadata is not fetched again.
* Exit status 0 on success, 1 on any failure (bad usage included).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import requests
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from device_agent._config import AgentLimits
from device_agent._download import Downloader, Expected, HttpSource, file_matches
from device_agent._http import USER_AGENT, HttpFetcher
from tufota_core import TufotaError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tufota-agent tuf-client",
        description="A TUF client speaking the conformance-suite command line.",
    )
    parser.add_argument("--metadata-dir", required=True, type=Path, help="local metadata cache")
    parser.add_argument("--metadata-url", help="base URL of the repository's metadata")
    parser.add_argument(
        "--target-name", action="append", default=[], help="target path (repeatable)"
    )
    parser.add_argument("--target-dir", type=Path, help="where downloaded targets go")
    parser.add_argument("--target-base-url", help="base URL of the repository's targets")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", choices=("init", "refresh", "download"))
    parser.add_argument("trusted_root", nargs="?", type=Path, help="root.json (init only)")
    return parser


def _updater(args: argparse.Namespace, session: requests.Session, limits: AgentLimits) -> Updater:
    return Updater(
        metadata_dir=str(args.metadata_dir),
        metadata_base_url=args.metadata_url,
        target_dir=str(args.target_dir) if args.target_dir else None,
        target_base_url=args.target_base_url,
        fetcher=HttpFetcher(session, limits),
        config=UpdaterConfig(),
        bootstrap=None,  # the root that init copied in, or a newer verified one
    )


def _init(args: argparse.Namespace) -> None:
    if args.trusted_root is None:
        raise _UsageError("init needs TRUSTED_ROOT_FILE")
    data = args.trusted_root.read_bytes()
    args.metadata_dir.mkdir(parents=True, exist_ok=True)
    # Constructing an Updater verifies the root and caches it; it makes no request.
    Updater(str(args.metadata_dir), "http://unused.invalid/", bootstrap=data)


def _download(args: argparse.Namespace, updater: Updater, session: requests.Session) -> None:
    if not args.target_name or args.target_dir is None or not args.target_base_url:
        raise _UsageError("download needs --target-name, --target-dir and --target-base-url")
    limits = AgentLimits()
    downloader = Downloader(HttpSource(session, limits), limits, resume=False)
    base = args.target_base_url.rstrip("/") + "/"
    args.target_dir.mkdir(parents=True, exist_ok=True)
    for name in args.target_name:
        info = updater.get_targetinfo(name)
        if info is None:
            raise _TargetMissingError(f"target {name} is not in the trusted metadata")
        dest = args.target_dir / quote(info.path, safe="")
        expected = Expected.from_target(info)
        if file_matches(dest, expected) is not None:
            logger.info("%s is up to date", name)
            continue
        path = info.path
        if updater._trusted_set.root.consistent_snapshot:  # no public accessor in ngclient
            dirname, sep, file = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(info.hashes.values()))}.{file}"
        downloader.fetch(base + quote(path), expected, dest)
        logger.info("downloaded %s", name)


class _UsageError(Exception):
    pass


class _TargetMissingError(Exception):
    pass


def main(argv: Sequence[str]) -> int:
    """Run one conformance-client command; return 0 on success, 1 on any failure."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or bad usage (1)
        return EXIT_OK if e.code in (0, None) else EXIT_FAILED
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    try:
        if args.command == "init":
            _init(args)
            return EXIT_OK
        if not args.metadata_url:
            raise _UsageError(f"{args.command} needs --metadata-url")
        updater = _updater(args, session, AgentLimits())
        updater.refresh()
        if args.command == "download":
            _download(args, updater, session)
        return EXIT_OK
    except (
        _UsageError,
        _TargetMissingError,
        TufotaError,
        tuf_exceptions.RepositoryError,
        tuf_exceptions.DownloadError,
        OSError,
        ValueError,
    ) as e:
        if args.verbose:
            logger.exception("%s failed", args.command)
        print(f"tuf-client: {args.command} failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        session.close()
