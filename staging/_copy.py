"""Inspecting a tracker without migrating it, and copying an SQLite tracker into PostgreSQL.

Invariants:
* ``tracker_info`` never writes: an SQLite file is opened read-only
  (``mode=ro``), a PostgreSQL database in a ``READ ONLY`` transaction, and
  neither is opened as a store (opening a store migrates it).
* ``copy_tracker`` writes the target in ONE PostgreSQL transaction that holds
  the tracker's write lock: every table of ``staging._schema``, ids kept,
  rollouts in SQLite rowid order (their ``ord`` is the rowid), identity
  sequences moved past the copied ids. The target must hold no rows at all;
  that is checked under the lock. Any failure, including counts or
  largest ids that differ between source and target, rolls the whole copy
  back: the target is left as empty as it was.
* The source is read in one SQLite read transaction, so the copy is one
  snapshot of it even if a server still writes (it should not: writes after
  the snapshot are not copied).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from staging._config import StagingConfig
from staging._errors import StoreError
from staging._postgres import PostgresTrackerStore, _PgConn, is_postgres_url, redact
from staging._schema import SCHEMA_VERSION
from staging._sqlite import SqliteTrackerStore
from tufota_core import ConflictError, InputError, NotFoundError

# Every table of staging._schema, parents before the tables that reference them.
TABLES = (
    "devices",
    "rollouts",
    "events",
    "alerts",
    "notifications",
    "settings",
    "security_events",
    "transfers",
    "api_tokens",
)
# The key each table is copied in order of, and whose largest value is compared.
_ORDER = {
    "devices": "device_id",
    "rollouts": "rowid",
    "events": "event_id",
    "alerts": "alert_id",
    "notifications": "notification_id",
    "settings": "name",
    "security_events": "event_id",
    "transfers": "transfer_id",
    "api_tokens": "token_id",
}
# PostgreSQL identity columns, whose sequences must start after the copied ids.
_IDENTITY = {
    "rollouts": "ord",
    "events": "event_id",
    "alerts": "alert_id",
    "notifications": "notification_id",
    "security_events": "event_id",
    "transfers": "transfer_id",
}


@dataclass(frozen=True)
class TrackerInfo:
    """What a tracker database holds, read without migrating it.

    ``schema_version`` is None for an empty database (no tracker schema yet);
    ``tables`` maps each table of the schema to its row count, or None when
    the table does not exist (an older schema).
    """

    location: str
    backend: str
    schema_version: int | None
    tables: dict[str, int | None] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """``empty``, ``current``, ``needs upgrade`` or ``newer``."""
        if self.schema_version is None:
            return "empty"
        if self.schema_version < SCHEMA_VERSION:
            return "needs upgrade"
        if self.schema_version > SCHEMA_VERSION:
            return "newer"
        return "current"

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "backend": self.backend,
            "schema_version": self.schema_version,
            "supported_version": SCHEMA_VERSION,
            "state": self.state,
            "tables": dict(self.tables),
        }


def tracker_info(location: str, config: StagingConfig | None = None) -> TrackerInfo:
    """Schema version and row counts of the tracker at ``location``, read-only.

    Args:
        location: an SQLite file path or a ``postgresql://`` URL.

    Raises:
        InputError: a URL of another scheme.
        NotFoundError: the SQLite file does not exist.
        StoreError: the file is not a tracker database, or the database cannot
            be reached.
    """
    if is_postgres_url(location):
        return _postgres_info(location, config or StagingConfig())
    if "://" in location:
        raise InputError(
            f"tracker database {redact(location)!r}: use postgresql://USER@HOST/DB "
            "or a path to an SQLite file"
        )
    return _sqlite_info(location)


def _sqlite_info(path: str) -> TrackerInfo:
    if not Path(path).is_file():
        raise NotFoundError(f"no tracker database at {path}")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path}: {e}") from e
    try:
        try:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "schema_version" not in names:
                raise StoreError(f"{path} is not a tufota tracker database (no schema_version)")
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            tables = {
                t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608 - our names
                if t in names
                else None
                for t in TABLES
            }
        except sqlite3.Error as e:
            raise StoreError(f"{path} is not a tufota tracker database: {e}") from e
    finally:
        conn.close()
    if version is None:
        raise StoreError(f"{path} is not a tufota tracker database (no schema version)")
    return TrackerInfo(path, "sqlite", int(version), tables)


def _postgres_info(url: str, config: StagingConfig) -> TrackerInfo:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - the server extra brings it
        raise StoreError("PostgreSQL needs psycopg: pip install 'tufota[server]'") from e
    location = redact(url)
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(config.busy_timeout_seconds)),
            application_name="tufota db",
        )
    except psycopg.Error as e:
        raise StoreError(f"cannot reach tracker database {location}: {_first_line(e)}") from e
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        present = {
            t
            for t in ("schema_version", *TABLES)
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]  # type: ignore[index]
        }
        version: int | None = None
        if "schema_version" in present:
            found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = None if found is None or found[0] is None else int(found[0])
        tables = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index] # noqa: S608 - our names
            if t in present
            else None
            for t in TABLES
        }
        conn.execute("ROLLBACK")
    except psycopg.Error as e:
        raise StoreError(f"tracker database {location}: {_first_line(e)}") from e
    finally:
        conn.close()
    if version is None and any(tables.values()):
        raise StoreError(f"{location} holds tables but no tracker schema version")
    return TrackerInfo(location, "postgresql", version, tables)


def copy_tracker(source: SqliteTrackerStore, target: PostgresTrackerStore) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``, in one transaction.

    Both stores are open, hence at ``SCHEMA_VERSION``. Ids are kept, rollouts
    keep their order, and identity sequences continue after the copied ids.

    Returns:
        The row count of each table of the target after the copy.

    Raises:
        ConflictError: the target already holds rows (nothing is written).
        StoreError: a table failed to copy, or the target's counts or largest
            ids differ from the source's after the copy (nothing is written).
    """
    with _source_snapshot(source) as src, target._tx(write=True) as conn:
        raw = cast(_PgConn, conn).raw
        held = [
            t
            for t in TABLES
            if raw.execute(f"SELECT EXISTS (SELECT 1 FROM {t}) AS x").fetchone()["x"]  # noqa: S608 - our names
        ]
        if held:
            raise ConflictError(
                f"tracker database {target.location} is not empty (it holds {', '.join(held)});"
                " copy into a new, empty database"
            )
        for table in TABLES:
            _copy_table(src, raw, table)
        for table, column in _IDENTITY.items():
            raw.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"  # noqa: S608 - our names
                f" coalesce(max({column}), 0) + 1, false) FROM {table}"
            )
        counts = _compare(src, raw, target.location)
    with target._tx(write=False) as conn:
        after = {
            t: int(conn.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"])  # noqa: S608 - our names
            for t in TABLES
        }
    if after != counts:
        raise StoreError(
            f"tracker database {target.location}: counts after the commit {after} "
            f"differ from the source's {counts}"
        )
    return after


@contextmanager
def _source_snapshot(source: SqliteTrackerStore) -> Iterator[sqlite3.Connection]:
    with source._tx(write=False) as conn:
        yield cast(sqlite3.Connection, conn)


def _columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r["name"] for r in src.execute(f"PRAGMA table_info({table})")]


def _copy_table(src: sqlite3.Connection, raw: Any, table: str) -> None:
    """Stream one table from SQLite into PostgreSQL with COPY, in key order."""
    columns = _columns(src, table)
    wanted = {
        r["column_name"]
        for r in raw.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
    } - ({"ord"} if table == "rollouts" else set())
    if set(columns) != wanted:
        raise StoreError(
            f"table {table} has columns {sorted(columns)} in SQLite "
            f"but {sorted(wanted)} in PostgreSQL"
        )
    select = ", ".join(columns)
    names = columns
    if table == "rollouts":
        select += ", rowid"
        names = [*columns, "ord"]
    rows = src.execute(f"SELECT {select} FROM {table} ORDER BY {_ORDER[table]}")  # noqa: S608 - our names
    with raw.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(tuple(row))


def _compare(src: sqlite3.Connection, raw: Any, location: str) -> dict[str, int]:
    """Row counts and largest keys of both sides; the target's counts when they agree."""
    counts: dict[str, int] = {}
    for table in TABLES:
        key = _ORDER[table]
        theirs = src.execute(f"SELECT count(*) AS n, max({key}) AS k FROM {table}").fetchone()  # noqa: S608 - our names
        ours = raw.execute(
            f"SELECT count(*) AS n, max({'ord' if key == 'rowid' else key}) AS k FROM {table}"  # noqa: S608 - our names
        ).fetchone()
        if (int(theirs["n"]), theirs["k"]) != (int(ours["n"]), ours["k"]):
            raise StoreError(
                f"copy into {location} refused: table {table} has {ours['n']} rows "
                f"(largest key {ours['k']!r}) but the source has {theirs['n']} "
                f"(largest key {theirs['k']!r}); nothing was written"
            )
        counts[table] = int(ours["n"])
    return counts


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
