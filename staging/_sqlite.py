"""``SqliteTrackerStore``: the embedded tracker store, one SQLite file.

Invariants (on top of those of ``TrackerStore``):
* The file is in WAL mode with a busy timeout, so the server and a CLI process
  can use it at once: readers never block, writers queue for up to
  ``StagingConfig.busy_timeout_seconds`` and then fail with ``StoreError``.
* Every write runs in ``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is
  taken before the first read, so a read-check-write sequence (replay check,
  one-live-rollout check, revision compare-and-set) cannot interleave with
  another process's write. Any error rolls the whole transaction back.
* A partial unique index enforces at most one live rollout per hardware id in
  the database itself.
* One connection per store object, guarded by a lock, so a store may be shared
  by the threads of one process.
* ``schema_version`` holds the schema number; a file written by a newer
  tufota is refused rather than misread.
* Times are stored as RFC 3339 UTC text with whole seconds.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from staging._config import StagingConfig
from staging._errors import ReplayError, StoreError
from staging._model import (
    DEVICE_STATUSES,
    EVENT_KINDS,
    DeviceRecord,
    Event,
    RolloutOptions,
    RolloutRecord,
)
from staging._store import TrackerStore
from tufota_core import (
    ROLLOUT_STATES,
    ConflictError,
    InputError,
    NotFoundError,
    Report,
    RolloutDoc,
    Version,
    Wave,
    check_device_id,
    check_hardware_id,
    check_tag,
    format_time,
    parse_time,
    utcnow,
    validate_waves,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_FAILED_STATES = ("failed", "rolled_back")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    hardware_id TEXT NOT NULL,
    tags TEXT NOT NULL,                 -- JSON list of tags
    public_key TEXT NOT NULL,           -- JSON object, opaque to staging
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked')),
    registered_at TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    installed_version TEXT,
    target_version TEXT,
    rollout_id TEXT,                    -- as last reported; not a foreign key
    state TEXT,                         -- NULL until the first report
    last_seen TEXT,
    error_code TEXT,
    error_message TEXT NOT NULL DEFAULT '',
    failed_state TEXT,                  -- last failed/rolled_back report, kept
    failed_version TEXT,                --   across later heartbeats so gates
    failed_rollout_id TEXT,             --   still see it
    failed_at TEXT
);
CREATE INDEX IF NOT EXISTS devices_by_hardware ON devices (hardware_id, device_id);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    hardware_id TEXT NOT NULL,
    version TEXT NOT NULL,
    target_path TEXT NOT NULL,
    waves TEXT NOT NULL,                -- JSON list of tufota_core.Wave
    options TEXT NOT NULL,              -- JSON of RolloutOptions
    state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'aborted', 'completed')),
    current_wave INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    wave_started_at TEXT NOT NULL,
    failures_since TEXT NOT NULL,
    revision INTEGER NOT NULL,
    published_revision INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_live_per_hardware
    ON rollouts (hardware_id) WHERE state IN ('active', 'paused');
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT REFERENCES devices (device_id),
    rollout_id TEXT,                    -- device reports may name any rollout
    state TEXT,
    version TEXT,
    wave INTEGER,
    seq INTEGER,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, event_id);
CREATE INDEX IF NOT EXISTS events_by_rollout ON events (rollout_id, event_id);
"""


def _stamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise InputError("times given to the tracker store must be timezone-aware")
    return format_time(moment)


def _opt_time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


class SqliteTrackerStore(TrackerStore):
    """A ``TrackerStore`` in one SQLite file (WAL mode).

    Args:
        path: the database file; created with its schema when missing.
        config: limits; ``StagingConfig()`` when None.

    Raises:
        StoreError: the file cannot be opened, is not a tracker database, or
            was written by a newer schema.
    """

    def __init__(self, path: str | os.PathLike[str], config: StagingConfig | None = None) -> None:
        self._config = config or StagingConfig()
        self._path = os.fspath(path)
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
        with self._tx(write=True) as conn:
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            found = row["v"]
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif found > SCHEMA_VERSION:
                raise StoreError(
                    f"tracker store {self._path} has schema v{found}; "
                    f"this tufota understands up to v{SCHEMA_VERSION}"
                )

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; ``write`` takes the write lock up front (BEGIN IMMEDIATE).

        Any error rolls the transaction back; SQLite errors become ``StoreError``,
        others (tufota errors) pass through.
        """
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

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- devices ---------------------------------------------------------------

    def register_device(
        self,
        device_id: str,
        hardware_id: str,
        *,
        public_key: Mapping[str, Any],
        tags: Iterable[str] = (),
        status: str = "pending",
        installed_version: str | None = None,
        at: datetime | None = None,
    ) -> DeviceRecord:
        check_device_id(device_id)
        check_hardware_id(hardware_id)
        tag_list = sorted({check_tag(t) for t in tags})
        if len(tag_list) > self._config.max_tags:
            raise InputError(f"a device has at most {self._config.max_tags} tags")
        self._check_status(status)
        if installed_version is not None:
            Version.parse(installed_version)
        if not isinstance(public_key, Mapping):
            raise InputError("a device public key must be a JSON object")
        try:
            key_json = json.dumps(dict(public_key), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise InputError(f"device public key is not JSON: {e}") from e
        if len(key_json) > self._config.max_public_key_bytes:
            raise InputError(
                f"device public key is larger than {self._config.max_public_key_bytes} bytes"
            )
        when = _stamp(at or utcnow())
        with self._tx(write=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO devices (device_id, hardware_id, tags, public_key, status,"
                    " registered_at, installed_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        device_id,
                        hardware_id,
                        json.dumps(tag_list),
                        key_json,
                        status,
                        when,
                        installed_version,
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise ConflictError(f"device {device_id} is already registered") from e
            self._add_event(
                conn,
                at=when,
                kind="registered",
                device_id=device_id,
                state=status,
                version=installed_version,
            )
            record = self._device(conn, device_id)
        logger.debug("registered device %s (%s, %s)", device_id, hardware_id, status)
        return record

    def get_device(self, device_id: str) -> DeviceRecord:
        with self._tx(write=False) as conn:
            return self._device(conn, device_id)

    def list_devices(self, hardware_id: str | None = None) -> list[DeviceRecord]:
        with self._tx(write=False) as conn:
            if hardware_id is None:
                rows = conn.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM devices WHERE hardware_id = ? ORDER BY device_id",
                    (hardware_id,),
                ).fetchall()
        return [self._device_from_row(r) for r in rows]

    def set_device_status(
        self, device_id: str, status: str, *, reason: str = "", at: datetime | None = None
    ) -> DeviceRecord:
        self._check_status(status)
        reason = self._check_reason(reason)
        when = _stamp(at or utcnow())
        with self._tx(write=True) as conn:
            before = self._device(conn, device_id)
            if before.status == status:
                return before
            conn.execute("UPDATE devices SET status = ? WHERE device_id = ?", (status, device_id))
            self._add_event(
                conn, at=when, kind="status", device_id=device_id, state=status, reason=reason
            )
            record = self._device(conn, device_id)
        logger.info("device %s is now %s%s", device_id, status, f": {reason}" if reason else "")
        return record

    def record_report(self, report: Report, received_at: datetime) -> bool:
        when = _stamp(received_at)
        with self._tx(write=True) as conn:
            device = self._device(conn, report.device_id)
            if device.hardware_id != report.hardware_id:
                raise InputError(
                    f"report names hardware {report.hardware_id}, but device "
                    f"{device.device_id} is registered as {device.hardware_id}"
                )
            if device.status == "revoked":
                raise ConflictError(f"device {device.device_id} is revoked")
            if report.seq <= device.last_seq:
                raise ReplayError(
                    f"report seq {report.seq} from {device.device_id} is not above the last "
                    f"accepted seq {device.last_seq}"
                )
            installed = report.installed_version or device.installed_version
            before = (
                device.state,
                device.installed_version,
                device.target_version,
                device.rollout_id,
                device.error_code,
            )
            after = (
                report.state,
                installed,
                report.target_version,
                report.rollout_id,
                report.error_code,
            )
            changed = before != after
            conn.execute(
                "UPDATE devices SET last_seq = ?, state = ?, installed_version = ?,"
                " target_version = ?, rollout_id = ?, last_seen = ?, error_code = ?,"
                " error_message = ? WHERE device_id = ?",
                (
                    report.seq,
                    report.state,
                    installed,
                    report.target_version,
                    report.rollout_id,
                    when,
                    report.error_code,
                    report.message,
                    report.device_id,
                ),
            )
            if report.state in _FAILED_STATES:
                conn.execute(
                    "UPDATE devices SET failed_state = ?, failed_version = ?,"
                    " failed_rollout_id = ?, failed_at = ? WHERE device_id = ?",
                    (
                        report.state,
                        report.target_version,
                        report.rollout_id,
                        when,
                        report.device_id,
                    ),
                )
            if changed:
                reason = report.message
                if report.error_code:
                    reason = f"{report.error_code}: {reason}" if reason else report.error_code
                self._add_event(
                    conn,
                    at=when,
                    kind="report",
                    device_id=report.device_id,
                    rollout_id=report.rollout_id,
                    state=report.state,
                    version=installed,
                    seq=report.seq,
                    reason=reason,
                )
        if changed:
            logger.debug(
                "device %s reported %s (seq %d)", report.device_id, report.state, report.seq
            )
        return changed

    def device_history(self, device_id: str, limit: int | None = None) -> list[Event]:
        with self._tx(write=False) as conn:
            self._device(conn, device_id)
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM events WHERE device_id = ?"
                " ORDER BY event_id DESC LIMIT ?) ORDER BY event_id",
                (device_id, self._limit(limit)),
            ).fetchall()
        return [self._event_from_row(r) for r in rows]

    # -- rollouts --------------------------------------------------------------

    def create_rollout(
        self,
        rollout_id: str,
        hardware_id: str,
        version: str,
        target_path: str,
        waves: Sequence[Wave],
        options: RolloutOptions,
        *,
        at: datetime,
        reason: str = "",
    ) -> RolloutRecord:
        wave_list = list(waves)
        validate_waves(wave_list)
        # The document rules check the id, hardware id, version and target path.
        RolloutDoc(rollout_id, hardware_id, version, target_path, tuple(wave_list), 0, "active")
        reason = self._check_reason(reason)
        when = _stamp(at)
        with self._tx(write=True) as conn:
            live = conn.execute(
                "SELECT rollout_id, state FROM rollouts WHERE hardware_id = ?"
                " AND state IN ('active', 'paused')",
                (hardware_id,),
            ).fetchone()
            if live is not None:
                raise ConflictError(
                    f"hardware {hardware_id} already has {live['state']} rollout "
                    f"{live['rollout_id']}; abort it or wait for it to complete"
                )
            try:
                conn.execute(
                    "INSERT INTO rollouts (rollout_id, hardware_id, version, target_path, waves,"
                    " options, state, current_wave, reason, created_at, updated_at,"
                    " wave_started_at, failures_since, revision, published_revision)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'active', 0, ?, ?, ?, ?, ?, 1, 0)",
                    (
                        rollout_id,
                        hardware_id,
                        version,
                        target_path,
                        json.dumps([w.to_json() for w in wave_list]),
                        json.dumps(options.to_json()),
                        reason,
                        when,
                        when,
                        when,
                        when,
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise ConflictError(
                    f"rollout {rollout_id} exists or hardware {hardware_id} has a live rollout"
                ) from e
            self._add_event(
                conn,
                at=when,
                kind="started",
                rollout_id=rollout_id,
                state="active",
                version=version,
                wave=0,
                reason=reason,
            )
            return self._rollout(conn, rollout_id)

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        with self._tx(write=False) as conn:
            return self._rollout(conn, rollout_id)

    def list_rollouts(
        self, hardware_id: str | None = None, states: Iterable[str] | None = None
    ) -> list[RolloutRecord]:
        query = "SELECT * FROM rollouts WHERE 1 = 1"
        params: list[Any] = []
        if hardware_id is not None:
            query += " AND hardware_id = ?"
            params.append(hardware_id)
        if states is not None:
            state_list = list(states)
            query += f" AND state IN ({', '.join('?' for _ in state_list) or 'NULL'})"
            params.extend(state_list)
        query += " ORDER BY created_at DESC, rowid DESC"
        with self._tx(write=False) as conn:
            rows = conn.execute(query, params).fetchall()
        return [self._rollout_from_row(r) for r in rows]

    def active_rollout(self, hardware_id: str) -> RolloutRecord | None:
        live = self.list_rollouts(hardware_id, ("active", "paused"))
        return live[0] if live else None

    def update_rollout_state(
        self,
        rollout_id: str,
        *,
        expected_revision: int,
        state: str,
        current_wave: int,
        kind: str,
        reason: str,
        at: datetime,
    ) -> tuple[RolloutRecord, Event]:
        if state not in ROLLOUT_STATES:
            raise InputError(f"rollout state {state!r} is not one of {', '.join(ROLLOUT_STATES)}")
        if kind not in EVENT_KINDS:
            raise InputError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
        reason = self._check_reason(reason)
        when = _stamp(at)
        with self._tx(write=True) as conn:
            before = self._rollout(conn, rollout_id)
            if before.revision != expected_revision:
                raise ConflictError(
                    f"rollout {rollout_id} changed meanwhile (revision {before.revision}, "
                    f"expected {expected_revision}); look at it again and retry"
                )
            if not 0 <= current_wave < len(before.waves):
                raise InputError(f"rollout {rollout_id} has no wave {current_wave}")
            wave_started = when if current_wave != before.current_wave else None
            failures_since = when if state == "active" and before.state != "active" else None
            try:
                conn.execute(
                    "UPDATE rollouts SET state = ?, current_wave = ?, reason = ?,"
                    " updated_at = ?, wave_started_at = coalesce(?, wave_started_at),"
                    " failures_since = coalesce(?, failures_since), revision = revision + 1"
                    " WHERE rollout_id = ?",
                    (state, current_wave, reason, when, wave_started, failures_since, rollout_id),
                )
            except sqlite3.IntegrityError as e:
                raise ConflictError(
                    f"hardware {before.hardware_id} already has another live rollout"
                ) from e
            event_id = self._add_event(
                conn,
                at=when,
                kind=kind,
                rollout_id=rollout_id,
                state=state,
                version=before.version,
                wave=current_wave,
                reason=reason,
            )
            row = conn.execute("SELECT * FROM events WHERE event_id = ?", (event_id,)).fetchone()
            return self._rollout(conn, rollout_id), self._event_from_row(row)

    def mark_published(self, rollout_id: str, revision: int) -> bool:
        with self._tx(write=True) as conn:
            self._rollout(conn, rollout_id)
            cursor = conn.execute(
                "UPDATE rollouts SET published_revision = ? WHERE rollout_id = ? AND revision = ?",
                (revision, rollout_id, revision),
            )
            return cursor.rowcount == 1

    def rollout_history(self, rollout_id: str, limit: int | None = None) -> list[Event]:
        with self._tx(write=False) as conn:
            self._rollout(conn, rollout_id)
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM events WHERE rollout_id = ? AND device_id IS NULL"
                " ORDER BY event_id DESC LIMIT ?) ORDER BY event_id",
                (rollout_id, self._limit(limit)),
            ).fetchall()
        return [self._event_from_row(r) for r in rows]

    # -- helpers ---------------------------------------------------------------

    def _limit(self, limit: int | None) -> int:
        cap = self._config.history_limit
        return cap if limit is None else max(0, min(limit, cap))

    def _check_reason(self, reason: str) -> str:
        if len(reason) > self._config.max_reason_length:
            raise InputError(f"reason is longer than {self._config.max_reason_length} characters")
        return reason

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in DEVICE_STATUSES:
            raise InputError(f"device status {status!r} is not one of {', '.join(DEVICE_STATUSES)}")

    @staticmethod
    def _add_event(
        conn: sqlite3.Connection,
        *,
        at: str,
        kind: str,
        device_id: str | None = None,
        rollout_id: str | None = None,
        state: str | None = None,
        version: str | None = None,
        wave: int | None = None,
        seq: int | None = None,
        reason: str = "",
    ) -> int:
        cursor = conn.execute(
            "INSERT INTO events (at, kind, device_id, rollout_id, state, version, wave, seq,"
            " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, kind, device_id, rollout_id, state, version, wave, seq, reason),
        )
        return int(cursor.lastrowid or 0)

    def _device(self, conn: sqlite3.Connection, device_id: str) -> DeviceRecord:
        row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"device {device_id} is not registered")
        return self._device_from_row(row)

    def _rollout(self, conn: sqlite3.Connection, rollout_id: str) -> RolloutRecord:
        row = conn.execute("SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        return self._rollout_from_row(row)

    def _device_from_row(self, row: sqlite3.Row) -> DeviceRecord:
        try:
            registered = parse_time(row["registered_at"])
            return DeviceRecord(
                device_id=row["device_id"],
                hardware_id=row["hardware_id"],
                tags=tuple(json.loads(row["tags"])),
                public_key=json.loads(row["public_key"]),
                status=row["status"],
                registered_at=registered,
                last_seq=row["last_seq"],
                installed_version=row["installed_version"],
                target_version=row["target_version"],
                rollout_id=row["rollout_id"],
                state=row["state"],
                last_seen=_opt_time(row["last_seen"]),
                error_code=row["error_code"],
                error_message=row["error_message"],
                failed_state=row["failed_state"],
                failed_version=row["failed_version"],
                failed_rollout_id=row["failed_rollout_id"],
                failed_at=_opt_time(row["failed_at"]),
            )
        except (ValueError, TypeError, InputError) as e:
            raise StoreError(f"device row {row['device_id']!r} is corrupt: {e}") from e

    def _rollout_from_row(self, row: sqlite3.Row) -> RolloutRecord:
        try:
            return RolloutRecord(
                rollout_id=row["rollout_id"],
                hardware_id=row["hardware_id"],
                version=row["version"],
                target_path=row["target_path"],
                waves=tuple(Wave.from_json(w) for w in json.loads(row["waves"])),
                options=RolloutOptions.from_json(json.loads(row["options"])),
                state=row["state"],
                current_wave=row["current_wave"],
                reason=row["reason"],
                created_at=parse_time(row["created_at"]),
                updated_at=parse_time(row["updated_at"]),
                wave_started_at=parse_time(row["wave_started_at"]),
                failures_since=parse_time(row["failures_since"]),
                revision=row["revision"],
                published_revision=row["published_revision"],
            )
        except (ValueError, TypeError, KeyError, InputError) as e:
            raise StoreError(f"rollout row {row['rollout_id']!r} is corrupt: {e}") from e

    @staticmethod
    def _event_from_row(row: sqlite3.Row) -> Event:
        return Event(
            event_id=row["event_id"],
            at=parse_time(row["at"]),
            kind=row["kind"],
            device_id=row["device_id"],
            rollout_id=row["rollout_id"],
            state=row["state"],
            version=row["version"],
            wave=row["wave"],
            seq=row["seq"],
            reason=row["reason"],
        )
