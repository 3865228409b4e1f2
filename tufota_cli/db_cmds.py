"""``tufota db status|upgrade|copy``: the tracker database's schema, and moving it to PostgreSQL.

* ``status`` reads the schema version and row counts without opening a store,
  so it never migrates (opening a store is how start-up migrations run).
* ``upgrade`` opens the store, which migrates under the tracker's write lock.
* ``copy`` moves an SQLite tracker into an empty PostgreSQL database in one
  transaction (``staging.copy_tracker``); a refusal or a failure leaves the
  target without rows.

Where the tracker is: ``--database URL`` (else ``TUFOTA_DATABASE_URL``),
else ``REPO/tracker.db`` of ``--repo``. Passwords in URLs are never printed.
"""

from __future__ import annotations

import argparse
import os

from staging import (
    PostgresTrackerStore,
    SqliteTrackerStore,
    StoreError,
    is_postgres_url,
    open_tracker,
    redact,
)
from staging._copy import TABLES, TrackerInfo, copy_tracker, tracker_info
from staging._schema import SCHEMA_VERSION
from tufota_cli._common import print_json, table
from tufota_core import InputError

DATABASE_ENV = "TUFOTA_DATABASE_URL"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("db", help="the tracker database: status, upgrade, copy to PostgreSQL")
    db = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")

    s = db.add_parser(
        "status",
        help="schema version and row counts (never migrates)",
        description="Show where the tracker is, its schema version against the one this "
        "tufota understands, and the rows of each table. Reads only: an older schema is "
        "reported, not migrated.",
    )
    _add_target(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)

    u = db.add_parser(
        "upgrade",
        help="migrate the schema to this tufota's version",
        description="Bring the tracker's schema up to this tufota's version (what 'tufota "
        "serve' does at start), under the tracker's write lock. Run it before a rolling "
        "upgrade of replicas.",
    )
    _add_target(u)
    u.set_defaults(func=cmd_upgrade)

    c = db.add_parser(
        "copy",
        help="copy an SQLite tracker into an empty PostgreSQL database",
        description="Copy every table of an SQLite tracker into an empty PostgreSQL database "
        "in one transaction, then compare the row counts. An SQLite file of an older schema "
        "is first upgraded in place (as 'tufota db upgrade' would). Stop the server first.",
    )
    c.add_argument("--from", dest="source", required=True, metavar="SQLITE_FILE")
    c.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="postgresql://USER@HOST/DB; keep the password in PGPASSWORD or ~/.pgpass",
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_copy)


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=None, help="repository directory (its tracker.db)")
    p.add_argument("--state-dir", default=None, help="for an s3:// --repo: its state directory")
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help=f"postgresql://USER@HOST/DB (default ${DATABASE_ENV}, else REPO/tracker.db)",
    )


def _location(args: argparse.Namespace) -> str:
    """The tracker ``--database``, ``TUFOTA_DATABASE_URL`` or ``--repo`` names."""
    database = args.database or os.environ.get(DATABASE_ENV) or None
    if database:
        return str(database)
    if not args.repo:
        raise InputError(f"no tracker: give --repo REPO or --database URL (or set {DATABASE_ENV})")
    from repo_server import Repository

    return Repository.locate(args.repo, args.state_dir).tracker_location


def cmd_status(args: argparse.Namespace) -> int:
    info = tracker_info(_location(args))
    if args.json:
        print_json(info.to_json())
        return 0
    print(f"tracker: {info.location} ({info.backend})")
    print(f"schema:  {_schema_line(info)}")
    rows = [(t, "-" if n is None else n) for t, n in info.tables.items()]
    print(table(["table", "rows"], rows))
    return 0


def _schema_line(info: TrackerInfo) -> str:
    version = info.schema_version
    if info.state == "empty":
        return f"none yet (empty database); 'tufota db upgrade' creates v{SCHEMA_VERSION}"
    if info.state == "needs upgrade":
        return (
            f"v{version}, this tufota uses v{SCHEMA_VERSION}: needs upgrade: run tufota db upgrade"
        )
    if info.state == "newer":
        return f"v{version}, newer than this tufota's v{SCHEMA_VERSION}: upgrade tufota"
    return f"v{version} (current)"


def cmd_upgrade(args: argparse.Namespace) -> int:
    location = _location(args)
    before = tracker_info(location)  # refuses a missing or foreign file before writing
    if before.state == "newer":
        raise StoreError(
            f"tracker {before.location} has schema v{before.schema_version}; "
            f"this tufota understands up to v{SCHEMA_VERSION}"
        )
    with open_tracker(location, application_name="tufota db upgrade") as store:
        if before.state == "empty":
            print(f"{store.location}: created schema v{SCHEMA_VERSION}")
        elif (start := getattr(store, "migrated_from", None)) is not None:
            print(f"{store.location}: schema v{start} -> v{SCHEMA_VERSION}")
        else:
            print(f"{store.location}: already at v{SCHEMA_VERSION}")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    source, target = args.source, args.target
    if not is_postgres_url(target):
        raise InputError(f"--to {redact(target)!r}: give a postgresql://USER@HOST/DB URL")
    if is_postgres_url(source) or "://" in source:
        raise InputError(f"--from {redact(source)!r}: give the path of an SQLite tracker file")
    found = tracker_info(source)  # missing or foreign file: refused, nothing written
    if found.state == "newer":
        raise StoreError(
            f"{source} has schema v{found.schema_version}; "
            f"this tufota understands up to v{SCHEMA_VERSION}"
        )
    there = tracker_info(target)  # unreachable, or holding rows: refused before any write
    held = [t for t, n in there.tables.items() if n]
    if held:
        raise InputError(
            f"tracker database {there.location} is not empty (it holds {', '.join(held)}); "
            "copy into a new, empty database"
        )
    if there.state == "newer":
        raise StoreError(
            f"tracker database {there.location} has schema v{there.schema_version}; "
            f"this tufota understands up to v{SCHEMA_VERSION}"
        )
    with (
        SqliteTrackerStore(source) as src,
        PostgresTrackerStore(target, application_name="tufota db copy") as dst,
    ):
        counts = copy_tracker(src, dst)
        location = dst.location
    if args.json:
        print_json({"from": source, "to": location, "tables": counts})
        return 0
    print(f"copied {source} (schema v{SCHEMA_VERSION}) to {location}")
    print(table(["table", "rows"], [(t, counts[t]) for t in TABLES]))
    return 0
