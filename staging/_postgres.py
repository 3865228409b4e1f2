"""``PostgresTrackerStore``: the tracker store on PostgreSQL, shared by any number of replicas.

Invariants (on top of those of ``SqlTrackerStore``):
* Queries are the shared ones, translated once each from SQLite's parameter
  style (``?``, ``:name``) to psycopg's (``%s``, ``%(name)s``).
* Every write transaction first takes one transaction-level advisory lock, the
  tracker's write lock: the same one-writer-at-a-time rule SQLite has, across
  every replica, without SERIALIZABLE retry loops. Report ingest batches many
  reports per transaction, so the lock is taken once per batch, not per report.
* Reads run in REPEATABLE READ READ ONLY transactions: one snapshot, no locks.
* Connections come from a small pool (``StagingConfig.pool_size``); a broken
  connection is dropped, never reused. Waiting for the write lock is bounded by
  ``lock_timeout`` = ``busy_timeout_seconds``.
* Schema creation and migrations run inside a write transaction, so two
  replicas starting at once migrate exactly once (DDL is transactional).
* Text columns use the "C" collation, so ids and RFC 3339 times sort by byte,
  as in SQLite, whatever the database's locale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any, cast

from staging._config import StagingConfig
from staging._errors import StoreError
from staging._schema import (
    BASE_INDEXES,
    BASE_SCHEMA,
    BASE_VERSION,
    MIGRATIONS,
    POSTGRES_EXTRA,
    SCHEMA_VERSION,
    postgres_ddl,
    statements,
)
from staging._sqlstore import Conn, Cursor, ReportChanges, SqlTrackerStore
from tufota_core import ConflictError, InputError

logger = logging.getLogger(__name__)

_PARAM = re.compile(r"'(?:[^']|'')*'|\?|(?<![:\w]):([A-Za-z_]\w*)|%")
_COPY_THRESHOLD = 64


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """A query in SQLite's parameter style, in psycopg's (string literals untouched)."""

    def one(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(1)})s"

    return _PARAM.sub(one, sql)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.sha256(f"tufota:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_WRITE_LOCK = lock_key("tracker-write")


_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^@/?#]*)@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact(url: str) -> str:
    """The URL without its password (userinfo or ``password=`` parameter), for messages."""
    text = _USERINFO.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2).split(':', 1)[0]}{':***' if ':' in m.group(2) else ''}@"
        ),
        url,
    )
    return _PASSWORD_PARAM.sub(r"\1***", text)


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _json(rows: list[tuple[Any, ...]]) -> str:
    return json.dumps(rows, separators=(",", ":"))


def _json_rows(columns: str) -> str:
    """A derived table ``u`` of the rows in one JSON parameter (arrays, in order, as ``n``).

    ``columns``: "name type, ..." in the rows' order. One JSON text is the cheapest
    parameter for psycopg to adapt (json.dumps is C); PostgreSQL parses it once (jsonb).
    """
    fields = [c.split() for c in columns.split(",")]
    picks = ", ".join(f"(e->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(fields))
    source = "jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(e, n)"
    return f"(SELECT {picks}, n FROM {source}) AS u"  # noqa: S608 - our names, values bound


def _over_json(head: str, columns: str, tail: str) -> str:
    return f"{head} FROM {_json_rows(columns)}{tail}"


# SqlTrackerStore's report batch statements, each over all of the batch's rows
# (the same parameter tuples, as one JSON array); rows keep their order, so event ids do too.
_PG_UPDATE_REPORTED = _over_json(
    "UPDATE devices AS d SET last_seq = u.seq, state = u.state, installed_version = u.installed,"
    " target_version = u.target, rollout_id = u.rollout, last_seen = u.at,"
    " error_code = u.code, error_message = u.message, bytes_done = u.done,"
    " bytes_total = u.total, clock_skew = u.skew,"
    " state_since = CASE WHEN u.changed THEN u.at ELSE coalesce(d.state_since, u.at) END,"
    " progress_at = CASE WHEN u.progressed THEN u.at ELSE coalesce(d.progress_at, u.at) END",
    "seq bigint, state text, installed text, target text, rollout text, at text, code text,"
    " message text, done bigint, total bigint, skew bigint, changed boolean, at2 text,"
    " at3 text, progressed boolean, at4 text, at5 text, device_id text",
    ' WHERE d.device_id = u.device_id COLLATE "C"',
)
_PG_UPDATE_FAILED = _over_json(
    "UPDATE devices AS d SET failed_state = u.state, failed_version = u.version,"
    " failed_rollout_id = u.rollout, failed_at = u.at, failed_code = u.code,"
    " failed_message = u.message",
    "state text, version text, rollout text, at text, code text, message text, device_id text",
    ' WHERE d.device_id = u.device_id COLLATE "C"',
)
_PG_INSERT_REPORT_EVENTS = _over_json(
    "INSERT INTO events (at, kind, device_id, rollout_id, state, version, wave, seq, reason)"
    " SELECT at, 'report', device_id, rollout_id, state, version, NULL, seq, reason",
    "at text, device_id text, rollout_id text, state text, version text, seq bigint, reason text",
    " ORDER BY n",
)
_PG_INSERT_SECURITY_EVENTS = _over_json(
    "INSERT INTO security_events (at, device_id, hardware_id, rollout_id, version, code, message)"
    " SELECT at, device_id, hardware_id, rollout_id, version, code, message",
    "at text, device_id text, hardware_id text, rollout_id text, version text, code text,"
    " message text",
    " ORDER BY n",
)
_PG_INSERT_TRANSFERS = _over_json(
    "INSERT INTO transfers (at, device_id, rollout_id, version, image_bytes, fetched_bytes,"
    " delta_from)"
    " SELECT at, device_id, rollout_id, version, image_bytes, fetched_bytes, delta_from",
    "at text, device_id text, rollout_id text, version text, image_bytes bigint,"
    " fetched_bytes bigint, delta_from text",
    " ORDER BY n",
)


class _PgConn:
    """A psycopg connection that speaks the shared queries' parameter style."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = None, /) -> Cursor:
        cursor = self.raw.cursor()
        cursor.execute(translate(sql), params if params is not None else ())
        return cast(Cursor, cursor)

    def executemany(self, sql: str, params: Iterable[Any], /) -> Any:
        rows = list(params)
        if rows:
            self.raw.cursor().executemany(translate(sql), rows)


class PostgresTrackerStore(SqlTrackerStore):
    """A ``TrackerStore`` in a PostgreSQL database.

    Args:
        url: ``postgresql://user[:password]@host[:port]/database[?options]``.
        config: limits; ``StagingConfig()`` when None.
        application_name: shown in ``pg_stat_activity`` (the replica's name).

    Raises:
        StoreError: the database cannot be reached, or has a newer schema.
    """

    _rollout_order = "created_at DESC, ord DESC"
    _row_key = "device_id"
    _json_array = "json_agg(DISTINCT {})::text"
    # PostgreSQL pulls the subquery up and repeats the outcome CASE in each of
    # the ten aggregates; OFFSET 0 keeps it a subquery (1M devices: 1.1 -> 0.4 s).
    _subquery_fence = " OFFSET 0"

    def __init__(
        self, url: str, config: StagingConfig | None = None, application_name: str = "tufota"
    ) -> None:
        super().__init__(config)
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the server extra brings it
            raise StoreError("PostgreSQL needs psycopg: pip install 'tufota[server]'") from e
        self._psycopg = psycopg
        self._integrity_errors = (psycopg.IntegrityError,)
        self._url = url
        self.location = redact(url)
        self._application_name = application_name[:63]
        self.migrated_from: int | None = None
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, self._config.pool_size))
        self._all: set[Any] = set()
        self._all_lock = threading.Lock()
        self._closed = False
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    # -- connections ------------------------------------------------------------------

    def connect(self, **settings: Any) -> Any:
        """A new autocommit connection with the store's session settings.

        Raises:
            StoreError: the database cannot be reached.
        """
        from psycopg.rows import dict_row

        timeout = self._config.busy_timeout_seconds
        try:
            raw = self._psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, int(timeout)),
                application_name=self._application_name,
                # A dead peer is noticed within seconds on either side, not hours.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
            raw.execute(f"SET lock_timeout = {int(timeout * 1000)}")
            raw.execute("SET tcp_keepalives_idle = 5")
            raw.execute("SET tcp_keepalives_interval = 2")
            raw.execute("SET tcp_keepalives_count = 3")
            for name, value in settings.items():
                raw.execute(f"SET {name} = {int(value)}")
        except self._psycopg.Error as e:
            raise StoreError(f"cannot reach tracker database {self.location}: {e}") from e
        return raw

    def _checkout(self) -> Any:
        if self._closed:
            raise StoreError(f"tracker store {self.location} is closed")
        if not self._slots.acquire(timeout=self._config.busy_timeout_seconds):
            raise StoreError(
                f"tracker store {self.location}: all {self._config.pool_size} connections "
                f"stayed busy for {self._config.busy_timeout_seconds:.0f}s"
            )
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            raw = self.connect()
        except BaseException:
            self._slots.release()
            raise
        with self._all_lock:
            self._all.add(raw)
        return raw

    def _checkin(self, raw: Any, broken: bool) -> None:
        if broken or self._closed or raw.closed:
            with self._all_lock:
                self._all.discard(raw)
            try:
                raw.close()
            finally:
                self._slots.release()
            return
        self._idle.put(raw)
        self._slots.release()

    @contextmanager
    def _tx(self, *, write: bool, single: bool = False) -> Iterator[Conn]:
        psycopg = self._psycopg
        raw = self._checkout()
        broken = False
        if single and not write:
            try:
                yield _PgConn(raw)  # an autocommit statement: its own snapshot
            except psycopg.Error as e:
                broken = raw.broken
                raise StoreError(f"tracker store {self.location}: {_first_line(e)}") from e
            finally:
                self._checkin(raw, broken)
            return
        try:
            try:
                if write:
                    # One round trip: the key is our constant, not input.
                    raw.execute(f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK:d})")
                else:
                    raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.errors.LockNotAvailable as e:
                raw.execute("ROLLBACK")
                raise StoreError(
                    f"tracker store {self.location} is locked by another writer for more "
                    f"than {self._config.busy_timeout_seconds:g}s"
                ) from e
            except psycopg.Error as e:
                broken = True
                raise StoreError(f"tracker store {self.location}: {e}") from e
            try:
                yield _PgConn(raw)
                raw.execute("COMMIT")
            except BaseException as e:
                try:
                    if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        raw.execute("ROLLBACK")
                except psycopg.Error:
                    broken = True
                if isinstance(e, psycopg.Error):
                    broken = broken or raw.broken
                    raise StoreError(f"tracker store {self.location}: {_first_line(e)}") from e
                raise
        finally:
            self._checkin(raw, broken)

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            connections, self._all = list(self._all), set()
        for raw in connections:
            with suppress(self._psycopg.Error):
                raw.close()

    # -- schema -----------------------------------------------------------------------

    def _init_schema(self) -> None:
        with self._tx(write=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            found = row["v"]
            created = False
            if found is None:
                for statement in (
                    statements(postgres_ddl(BASE_SCHEMA))
                    + statements(POSTGRES_EXTRA)
                    + statements(postgres_ddl(BASE_INDEXES))
                ):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (BASE_VERSION,))
                found = BASE_VERSION
                created = True
            elif found > SCHEMA_VERSION:
                raise StoreError(
                    f"tracker database {self.location} has schema v{found}; "
                    f"this tufota understands up to v{SCHEMA_VERSION}"
                )
            start = int(found)
            for version in range(start + 1, SCHEMA_VERSION + 1):
                for statement in statements(postgres_ddl(MIGRATIONS[version])):
                    conn.execute(statement)
            if start < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            if start < SCHEMA_VERSION and not created:
                self.migrated_from = start
                logger.info(
                    "tracker database %s migrated from schema v%d to v%d",
                    self.location,
                    start,
                    SCHEMA_VERSION,
                )

    def schema_version(self) -> int:
        with self._tx(write=False) as conn:
            return int(conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"])

    # -- bulk writes ------------------------------------------------------------------

    def _bulk_insert(self, conn: Conn, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        if len(rows) < _COPY_THRESHOLD:
            super()._bulk_insert(conn, table, columns, rows)
            return
        raw = cast(_PgConn, conn).raw
        with raw.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _set_cohorts(self, conn: Conn, rollout_id: str, waves: list[tuple[int, Any]]) -> None:
        if len(waves) < _COPY_THRESHOLD:
            super()._set_cohorts(conn, rollout_id, waves)
            return
        raw = cast(_PgConn, conn).raw
        raw.execute(
            'CREATE TEMP TABLE IF NOT EXISTS cohort_update (device_id TEXT COLLATE "C",'
            " wave BIGINT) ON COMMIT DELETE ROWS"
        )
        with raw.cursor().copy("COPY cohort_update (device_id, wave) FROM STDIN") as copy:
            for wave, device_id in waves:
                copy.write_row((device_id, wave))
        raw.execute(
            "UPDATE devices AS d SET cohort_rollout = %s, cohort_wave = u.wave"
            " FROM cohort_update AS u WHERE d.device_id = u.device_id",
            (rollout_id,),
        )

    def _write_report_changes(self, conn: Conn, changes: ReportChanges) -> None:
        # One statement per table, the rows as one JSON parameter: psycopg's
        # executemany (or array parameters) cost the server's one Python core
        # more per row than PostgreSQL spends on the writes.
        raw = cast(_PgConn, conn).raw
        if changes.updates:
            # A device reporting twice in a batch (a statement updates a row once):
            # its last report's values, and "changed since" if either report
            # changed it (``when`` is the same for the whole batch).
            last: dict[str, tuple[Any, ...]] = {}
            for row in changes.updates:
                prior = last.get(row[17])
                if prior is not None:
                    row = (*row[:11], row[11] or prior[11], *row[12:14], row[14] or prior[14],
                           *row[15:])  # fmt: skip
                last[row[17]] = row
            raw.execute(_PG_UPDATE_REPORTED, (_json(list(last.values())),))
        if changes.failures:
            failed = {row[6]: row for row in changes.failures}
            raw.execute(_PG_UPDATE_FAILED, (_json(list(failed.values())),))
        for sql, rows in (
            (_PG_INSERT_REPORT_EVENTS, changes.events),
            (_PG_INSERT_SECURITY_EVENTS, changes.security),
            (_PG_INSERT_TRANSFERS, changes.transfers),
        ):
            if rows:
                raw.execute(sql, (_json(rows),))

    # -- locks across replicas --------------------------------------------------------

    def leader_lock(self, name: str) -> AdvisoryLeaderLock:
        """The lock one replica holds to lead: a session advisory lock on its own connection.

        PostgreSQL drops it when the holder's session ends: at once when the
        process dies (its socket closes), within ~11 s of TCP keepalives when
        its host vanishes.
        """
        return AdvisoryLeaderLock(self, name)

    @contextmanager
    def exclusive(self, name: str, timeout: float) -> Iterator[None]:
        """Hold a named lock across every replica (session advisory lock) for the block.

        Raises:
            ConflictError: another session held it for ``timeout`` seconds; names
                the holder's application name and how long it has held it.
        """
        key = lock_key(name)
        raw = self.connect(lock_timeout=max(1, int(timeout * 1000)))
        try:
            try:
                raw.execute("SELECT pg_advisory_lock(%s)", (key,))
            except self._psycopg.errors.LockNotAvailable:
                raise ConflictError(self._holder_message(raw, name, key, timeout)) from None
            except self._psycopg.Error as e:
                raise StoreError(f"tracker database {self.location}: {e}") from e
            yield
        finally:
            raw.close()  # ends the session: the lock goes with it

    def _holder_message(self, raw: Any, name: str, key: int, timeout: float) -> str:
        holder = "another replica"
        try:
            raw.execute("SET lock_timeout = 0")
            row = raw.execute(
                "SELECT a.application_name AS who, extract(epoch FROM now() - a.backend_start)"
                " AS held FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (key,),
            ).fetchone()
            if row is not None:
                holder = f"{row['who'] or 'a session'} (for {float(row['held']):.0f}s)"
        except self._psycopg.Error:
            pass
        return (
            f"{name} lock of {self.location} is held by {holder}; waited {timeout:.0f}s. "
            "It is released when that process finishes or dies."
        )


class AdvisoryLeaderLock:
    """A session-level advisory lock on a connection of its own (kept while following too)."""

    def __init__(self, store: PostgresTrackerStore, name: str) -> None:
        self._store = store
        self._key = lock_key(f"leader:{name}")
        self._raw: Any = None
        self._holding = False

    def try_acquire(self) -> bool:
        """Take the lock if free; True when this process holds it (now or already).

        Raises:
            StoreError: the database cannot be reached.
        """
        if self._holding:
            return self.held()
        if self._raw is None or self._raw.closed:
            self._raw = self._store.connect(statement_timeout=5000)
        try:
            row = self._raw.execute(
                "SELECT pg_try_advisory_lock(%s) AS ok", (self._key,)
            ).fetchone()
        except self._store._psycopg.Error as e:
            self.release()
            raise StoreError(f"leader lock on {self._store.location}: {_first_line(e)}") from e
        self._holding = bool(row["ok"])
        return self._holding

    def held(self) -> bool:
        """Whether this process still holds the lock: its session answers (a round trip)."""
        if not self._holding:
            return False
        try:
            self._raw.execute("SELECT 1")
        except self._store._psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        """Give the lock up by ending the session."""
        raw, self._raw, self._holding = self._raw, None, False
        if raw is not None:
            try:
                raw.close()
            except self._store._psycopg.Error:
                logger.debug("closing the leader connection failed", exc_info=True)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def open_tracker(
    location: str, config: StagingConfig | None = None, application_name: str = "tufota"
) -> SqlTrackerStore:
    """The tracker at ``location``: a ``postgresql://`` URL, or an SQLite file path.

    Raises:
        InputError: a URL of another scheme.
        StoreError: the database cannot be opened.
    """
    if is_postgres_url(location):
        return PostgresTrackerStore(location, config, application_name)
    if "://" in location:
        raise InputError(
            f"tracker database {redact(location)!r}: use postgresql://USER@HOST/DB "
            "or a path to an SQLite file"
        )
    from staging._sqlite import SqliteTrackerStore

    return SqliteTrackerStore(location, config)
