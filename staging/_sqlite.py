"""``SqliteTrackerStore``: the embedded tracker store, one SQLite file.

Invariants (on top of those of ``SqlTrackerStore``):
* The file is in WAL mode with a busy timeout, so the server and a CLI process
  can use it at once: readers never block, writers queue for up to
  ``StagingConfig.busy_timeout_seconds`` and then fail with ``StoreError``.
* Writes run in ``BEGIN IMMEDIATE`` ... ``COMMIT``: SQLite's one write lock.
* One connection per store object, guarded by a lock, so a store may be shared
  by the threads of one process.
* Files older than schema v3 (before PostgreSQL existed) are brought up to v3
  here; from there the shared ``staging._schema.MIGRATIONS`` apply.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from staging._config import StagingConfig
from staging._errors import StoreError
from staging._schema import (
    BASE_INDEXES,
    BASE_SCHEMA,
    BASE_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    V2_COLUMNS,
    V3_COLUMNS,
    statements,
)
from staging._sqlstore import Conn, SqlTrackerStore

logger = logging.getLogger(__name__)


class SqliteTrackerStore(SqlTrackerStore):
    """A ``TrackerStore`` in one SQLite file (WAL mode).

    Args:
        path: the database file; created with its schema when missing.
        config: limits; ``StagingConfig()`` when None.

    Raises:
        StoreError: the file cannot be opened, is not a tracker database, or
            was written by a newer schema.
    """

    _integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike[str], config: StagingConfig | None = None) -> None:
        super().__init__(config)
        self._path = os.fspath(path)
        self.location = self._path
        self.migrated_from: int | None = None
        self._lock = threading.RLock()
        timeout = self._config.busy_timeout_seconds
        try:
            conn = sqlite3.connect(
                self._path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open tracker store {self._path}: {e}") from e
        conn.row_factory = sqlite3.Row
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._init_schema()
        except (sqlite3.Error, StoreError) as e:
            conn.close()
            self._conn = None
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot open tracker store {self._path}: {e}") from e

    def _init_schema(self) -> None:
        """Create or upgrade the schema, under the write lock (one process at a time)."""
        with self._tx(write=True) as conn:
            for statement in statements(BASE_SCHEMA):
                conn.execute(statement)
            row = conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            found = row["v"]
            created = False
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (BASE_VERSION,))
                found = BASE_VERSION
                created = True
            elif found > SCHEMA_VERSION:
                raise StoreError(
                    f"tracker store {self._path} has schema v{found}; "
                    f"this tufota understands up to v{SCHEMA_VERSION}"
                )
            elif found < BASE_VERSION:
                self._migrate_to_base(conn, found)
            for statement in statements(BASE_INDEXES):
                conn.execute(statement)
            start = found
            for version in range(max(found, BASE_VERSION) + 1, SCHEMA_VERSION + 1):
                for statement in statements(MIGRATIONS[version]):
                    conn.execute(statement)
            if start < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            if start < SCHEMA_VERSION and not created:
                self.migrated_from = start
                logger.info(
                    "tracker store %s migrated from schema v%d to v%d",
                    self._path,
                    start,
                    SCHEMA_VERSION,
                )

    def _migrate_to_base(self, conn: Conn, found: int) -> None:
        """Add the columns of schemas v2 and v3; from v1 also assign cohorts."""
        if found == 1:
            for table, column in V2_COLUMNS:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            conn.execute("UPDATE devices SET state_since = last_seen, progress_at = last_seen")
        for table, column in V3_COLUMNS:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        if found == 1:
            newest = conn.execute(
                "SELECT rollout_id FROM rollouts AS r WHERE rowid = (SELECT rowid FROM rollouts"
                " WHERE hardware_id = r.hardware_id ORDER BY created_at DESC, rowid DESC LIMIT 1)"
            ).fetchall()
            for row in newest:
                self._assign_cohorts(conn, self._rollout(conn, row["rollout_id"]))
        conn.execute("UPDATE schema_version SET version = ?", (BASE_VERSION,))

    def schema_version(self) -> int:
        with self._tx(write=False) as conn:
            return int(conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"])

    @contextmanager
    def _tx(self, *, write: bool, single: bool = False) -> Iterator[Conn]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"tracker store {self._path} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StoreError(f"tracker store {self._path}: {e}") from e
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"tracker store {self._path}: {e}") from e
                raise

    def leader_lock(self, name: str) -> FileLeaderLock:
        """The lock one replica holds to lead: an ``flock`` on a file beside the database.

        Replicas on one SQLite file share a machine, and the kernel drops the
        lock the moment its holder dies.
        """
        return FileLeaderLock(Path(f"{self._path}.{name}.lock"))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class FileLeaderLock:
    """A non-blocking exclusive ``flock``, held until ``release`` or the process's death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        handle = self.path.open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
