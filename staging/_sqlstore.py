"""``SqlTrackerStore``: the tracker store's rules in SQL that SQLite and PostgreSQL share.

The two backends (``SqliteTrackerStore``, ``PostgresTrackerStore``) supply a
connection and transactions; every query is written once, in SQLite's
parameter style (``?`` and ``:name``), and the PostgreSQL connection
translates it. The few places where the dialects differ are attributes of the
backend, named here:

* ``_rollout_order``: insertion order of rollouts (SQLite's rowid, a
  PostgreSQL identity column).
* ``_row_key``: the cheapest key to update a device row by.
* ``_json_array``: an aggregate returning a JSON array as text.
* ``_subquery_fence``: appended to the gate's per-device subquery so the
  planner computes each device's outcome once, not once per aggregate.
* ``_bulk_insert`` / ``_set_cohorts``: executemany on SQLite, COPY on PostgreSQL.
* ``_write_report_changes``: the ingest's batched writes; executemany on
  SQLite, one array statement per table on PostgreSQL (whose executemany costs
  the server's one core more than the statements do).

Invariants (on top of those of ``TrackerStore``), on both backends:
* Every write transaction holds the tracker's one write lock from its first
  statement (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL transaction advisory
  lock), so a read-check-write sequence (replay check, one-live-rollout check,
  revision compare-and-set) cannot interleave with another writer, in this
  process or another replica. Any error rolls the whole transaction back.
  Reads never wait for writers and see one snapshot.
* A partial unique index enforces at most one live rollout per hardware id in
  the database itself.
* ``schema_version`` holds the schema number; a database written by a newer
  tufota is refused rather than misread (``staging._schema``).
* Times are stored as RFC 3339 UTC text with whole seconds.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from staging._alerts import Alert, AlertDraft, AlertSettings, Notification, SinkSpec
from staging._config import StagingConfig
from staging._errors import ReplayError, StoreError
from staging._model import (
    DEVICE_STATUSES,
    EVENT_KINDS,
    NOT_COUNTED_CODES,
    SECURITY_CODES,
    DeviceRecord,
    Event,
    NewDevice,
    RolloutOptions,
    RolloutRecord,
)
from staging._progress import RolloutCounts, WaveStatus, count_devices
from staging._store import ReportOutcome, TrackerStore
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
    wave_index,
)

logger = logging.getLogger(__name__)

_FAILED_STATES = ("failed", "rolled_back")
_DOWNLOADING = ("downloading", "downloaded")
_INSTALLING = ("installing", "rebooting", "verifying")
NOT_TARGETED = -1
_CLAIM_SECONDS = 300

# A device's outcome for a rollout, in SQL: rule 3 of staging._progress.
# {retried} keeps only failures after the latest re-offer, when there was one.
# {newer} adds the installed versions above the rollout's as bound parameters
# (semantic order is decided in Python over the few distinct versions, not per row).
_OUTCOME_SQL = """CASE
    WHEN installed_version = :version{newer} THEN 'succeeded'
    WHEN failed_state IS NOT NULL
         AND (failed_version = :version OR failed_rollout_id = :rollout_id)
         {retried} THEN failed_state
    WHEN (target_version = :version OR rollout_id = :rollout_id)
         AND state IN ('downloading', 'downloaded') THEN 'downloading'
    WHEN (target_version = :version OR rollout_id = :rollout_id)
         AND state IN ('installing', 'rebooting', 'verifying') THEN 'installed'
    ELSE 'waiting' END"""


def _stamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise InputError("times given to the tracker store must be timezone-aware")
    return format_time(moment)


def _opt_time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


_REPORT_COLUMNS = (
    "device_id, status, hardware_id, last_seq, state, installed_version, target_version,"
    " rollout_id, error_code, bytes_done"
)
_UPDATE_REPORTED = (
    "UPDATE devices SET last_seq = ?, state = ?, installed_version = ?,"
    " target_version = ?, rollout_id = ?, last_seen = ?, error_code = ?,"
    " error_message = ?, bytes_done = ?, bytes_total = ?, clock_skew = ?,"
    " state_since = CASE WHEN ? THEN ? ELSE coalesce(state_since, ?) END,"
    " progress_at = CASE WHEN ? THEN ? ELSE coalesce(progress_at, ?) END"
    " WHERE device_id = ?"
)
_UPDATE_FAILED = (
    "UPDATE devices SET failed_state = ?, failed_version = ?,"
    " failed_rollout_id = ?, failed_at = ?, failed_code = ?, failed_message = ?"
    " WHERE device_id = ?"
)
_INSERT_SECURITY_EVENT = (
    "INSERT INTO security_events (at, device_id, hardware_id, rollout_id, version, code,"
    " message) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_MAX_SKEW = 10**9


def _clock_skew(report: Report, received_at: datetime) -> int | None:
    """Seconds the device's clock (``Report.time``) is ahead of ours; None when not sent."""
    if not report.time:
        return None
    try:
        sent = parse_time(report.time)
        skew = int((sent - received_at).total_seconds())
    except (InputError, ValueError, TypeError, OverflowError):
        return None
    return max(-_MAX_SKEW, min(_MAX_SKEW, skew))


_INSERT_REPORT_EVENT = (
    "INSERT INTO events (at, kind, device_id, rollout_id, state, version, wave, seq,"
    " reason) VALUES (?, 'report', ?, ?, ?, ?, NULL, ?, ?)"
)


_INSERT_TRANSFER = (
    "INSERT INTO transfers (at, device_id, rollout_id, version, image_bytes, fetched_bytes,"
    " delta_from) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class ReportChanges:
    """A report batch's writes: parameter rows of the statements above, in report order."""

    updates: list[tuple[Any, ...]]  # _UPDATE_REPORTED
    failures: list[tuple[Any, ...]]  # _UPDATE_FAILED
    events: list[tuple[Any, ...]]  # _INSERT_REPORT_EVENT
    security: list[tuple[Any, ...]]  # _INSERT_SECURITY_EVENT
    transfers: list[tuple[Any, ...]]  # _INSERT_TRANSFER


# Bytes fetched, bytes saved against full downloads, and downloads made by delta.
_TRANSFER_TOTALS = (
    "SELECT coalesce(sum(fetched_bytes), 0) AS fetched,"
    " coalesce(sum(CASE WHEN image_bytes > fetched_bytes THEN image_bytes - fetched_bytes"
    " ELSE 0 END), 0) AS saved,"
    " count(delta_from) AS by_delta FROM transfers WHERE rollout_id = ?"
)


def _apply_report(
    device: dict[str, Any] | None,
    report: Report,
    when: str,
    accepted_only: bool,
    updates: list[tuple[Any, ...]],
    failures: list[tuple[Any, ...]],
    events: list[tuple[Any, ...]],
    security: list[tuple[Any, ...]] | None = None,
    skew: int | None = None,
    transfers: list[tuple[Any, ...]] | None = None,
) -> ReportOutcome:
    """The rules of ``record_report`` for one report against the device's row.

    Appends the statements' parameters to ``updates``, ``failures``,
    ``events`` and ``security`` and updates ``device`` in place, so the next
    report of the same device in the batch sees this one applied. A failure
    whose code is in ``NOT_COUNTED_CODES`` is not kept as the device's failure
    (the gates never see it); one in ``SECURITY_CODES`` becomes a security event.
    """
    device_id = report.device_id
    if device is None:
        return ReportOutcome("unknown", message=f"device {device_id} is not registered")
    if device["hardware_id"] != report.hardware_id:
        return ReportOutcome(
            "wrong_hardware",
            message=f"report names hardware {report.hardware_id}, but device "
            f"{device_id} is registered as {device['hardware_id']}",
        )
    if device["status"] == "revoked":
        return ReportOutcome("revoked", message=f"device {device_id} is revoked")
    if accepted_only and device["status"] != "accepted":
        return ReportOutcome("pending", message=f"device {device_id} is not accepted yet")
    if report.seq <= device["last_seq"]:
        return ReportOutcome(
            "replayed",
            message=f"report seq {report.seq} from {device_id} is not above the last "
            f"accepted seq {device['last_seq']}",
        )
    installed = report.installed_version or device["installed_version"]
    before = (
        device["state"],
        device["installed_version"],
        device["target_version"],
        device["rollout_id"],
        device["error_code"],
    )
    after = (report.state, installed, report.target_version, report.rollout_id, report.error_code)
    changed = before != after
    state_changed = device["state"] != report.state
    progressed = state_changed or device["bytes_done"] != report.bytes_done
    updates.append(
        (
            report.seq,
            report.state,
            installed,
            report.target_version,
            report.rollout_id,
            when,
            report.error_code,
            report.message,
            report.bytes_done,
            report.bytes_total,
            skew,
            state_changed,
            when,
            when,
            progressed,
            when,
            when,
            device_id,
        )
    )
    if (
        transfers is not None
        and report.state == "downloaded"
        and (report.bytes_fetched or report.delta_from is not None)
    ):
        # Agents that predate the field send 0: no figure rather than a false saving.
        transfers.append(
            (
                when,
                device_id,
                report.rollout_id,
                report.target_version,
                report.bytes_total,
                report.bytes_fetched,
                report.delta_from,
            )
        )
    if report.state in _FAILED_STATES:
        if report.error_code in SECURITY_CODES and security is not None:
            security.append(
                (
                    when,
                    device_id,
                    report.hardware_id,
                    report.rollout_id,
                    report.target_version,
                    report.error_code,
                    report.message,
                )
            )
        if report.error_code not in NOT_COUNTED_CODES:
            failures.append(
                (
                    report.state,
                    report.target_version,
                    report.rollout_id,
                    when,
                    report.error_code,
                    report.message,
                    device_id,
                )
            )
    if changed:
        reason = report.message
        if report.error_code:
            reason = f"{report.error_code}: {reason}" if reason else report.error_code
        events.append(
            (when, device_id, report.rollout_id, report.state, installed, report.seq, reason)
        )
        logger.debug("device %s reported %s (seq %d)", device_id, report.state, report.seq)
    device.update(
        last_seq=report.seq,
        state=report.state,
        installed_version=installed,
        target_version=report.target_version,
        rollout_id=report.rollout_id,
        error_code=report.error_code,
        bytes_done=report.bytes_done,
    )
    return ReportOutcome("applied", transition=changed)


class Cursor(Protocol):
    """What the store reads from a statement (``sqlite3.Cursor``, a psycopg cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside one transaction; rows are read by column name."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> Any: ...


Row = Mapping[str, Any]


class SqlTrackerStore(TrackerStore):
    """The ``TrackerStore`` rules over a SQL database; a backend supplies ``_tx`` and dialect.

    Args:
        config: limits; ``StagingConfig()`` when None.
    """

    _rollout_order = "created_at DESC, rowid DESC"
    _row_key = "rowid"
    _json_array = "json_group_array(DISTINCT {})"
    _subquery_fence = ""
    _integrity_errors: tuple[type[Exception], ...] = ()

    def __init__(self, config: StagingConfig | None = None) -> None:
        self._config = config or StagingConfig()

    @abstractmethod
    def _tx(self, *, write: bool, single: bool = False) -> AbstractContextManager[Conn]:
        """One transaction; ``write`` takes the write lock before the first statement.

        ``single``: a read of one statement, which is its own snapshot; PostgreSQL
        then sends no BEGIN and COMMIT (one round trip instead of three).
        Any error rolls the transaction back; database errors become
        ``StoreError``, others (tufota errors) pass through.
        """

    @abstractmethod
    def schema_version(self) -> int:
        """The schema version of the database (``staging._schema``)."""

    @abstractmethod
    def leader_lock(self, name: str) -> Any:
        """A lock at most one process holds, released when its holder dies.

        The object has ``try_acquire() -> bool``, ``held() -> bool`` and ``release()``.
        """

    def exclusive(self, name: str, timeout: float) -> AbstractContextManager[object]:
        """A named lock across every process on the database, held for a block.

        SQLite's processes share one machine, where the storage's own lock
        already serialises them; PostgreSQL's replicas do not (see there).
        """
        return nullcontext()

    def _bulk_insert(self, conn: Conn, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        marks = ", ".join("?" for _ in columns)
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608 - our names
            rows,
        )

    def _set_cohorts(self, conn: Conn, rollout_id: str, waves: list[tuple[int, Any]]) -> None:
        """Set ``cohort_rollout``/``cohort_wave`` for (wave, ``_row_key`` value) pairs."""
        conn.executemany(
            "UPDATE devices SET cohort_rollout = ?, cohort_wave = ?"  # noqa: S608 - our names
            f" WHERE {self._row_key} = ?",
            [(rollout_id, wave, key) for wave, key in waves],
        )

    # -- named settings (JSON) shared by every process on the database ---------------

    def put_setting(self, name: str, value: Any) -> None:
        """Store a JSON value under ``name`` (replacing any)."""
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value, sort_keys=True)),
            )

    def add_to_set(self, name: str, items: Iterable[str]) -> None:
        """Add strings to the set stored under ``name`` (one transaction, so no add is lost)."""
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
            found = set(json.loads(row["value"])) if row is not None else set()
            conn.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(sorted(found | set(items)))),
            )

    def take_set(self, name: str) -> list[str]:
        """The set stored under ``name``, emptied in the same transaction."""
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
            if row is None:
                return []
            conn.execute("DELETE FROM settings WHERE name = ?", (name,))
            return sorted(json.loads(row["value"]))

    def get_setting(self, name: str) -> Any:
        """The JSON value stored under ``name``, or None."""
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row["value"])

    # -- API tokens (opaque records for the server's token store) ------------------

    def add_token(self, record: Mapping[str, Any]) -> None:
        """Store one API token record (``token_id``, ``name``, ``role``, ``sha256``, ...).

        Raises:
            ConflictError: a token with this id exists.
        """
        with self._tx(write=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO api_tokens (token_id, name, role, sha256, created, expires)"
                    " VALUES (:token_id, :name, :role, :sha256, :created, :expires)",
                    dict(record),
                )
            except self._integrity_errors as e:
                raise ConflictError(f"token {record['token_id']} exists") from e

    def remove_token(self, token_id: str) -> bool:
        """Delete a token; False when there was none."""
        with self._tx(write=True) as conn:
            cursor = conn.execute("DELETE FROM api_tokens WHERE token_id = ?", (token_id,))
            return cursor.rowcount == 1

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token record, oldest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT * FROM api_tokens ORDER BY created, token_id").fetchall()
        return [dict(r) for r in rows]

    def get_token(self, token_id: str) -> dict[str, Any] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM api_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
        return None if row is None else dict(row)

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
            except self._integrity_errors as e:
                raise ConflictError(f"device {device_id} is already registered") from e
            self._add_event(
                conn,
                at=when,
                kind="registered",
                device_id=device_id,
                state=status,
                version=installed_version,
            )
            newest = self._newest_rollout(conn, hardware_id)
            if newest is not None:
                self._assign_cohorts(conn, newest, device_id=device_id)
            record = self._device(conn, device_id)
        logger.debug("registered device %s (%s, %s)", device_id, hardware_id, status)
        return record

    def get_device(self, device_id: str) -> DeviceRecord:
        # Report ingest loads a device's key on its first report to each replica.
        with self._tx(write=False, single=True) as conn:
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

    def set_device_tags(
        self, device_id: str, tags: Iterable[str], *, reason: str = "", at: datetime | None = None
    ) -> DeviceRecord:
        tag_list = sorted({check_tag(t) for t in tags})
        if len(tag_list) > self._config.max_tags:
            raise InputError(f"a device has at most {self._config.max_tags} tags")
        reason = self._check_reason(reason)
        when = _stamp(at or utcnow())
        with self._tx(write=True) as conn:
            before = self._device(conn, device_id)
            if sorted(before.tags) == tag_list:
                return before
            conn.execute(
                "UPDATE devices SET tags = ? WHERE device_id = ?", (json.dumps(tag_list), device_id)
            )
            self._add_event(
                conn,
                at=when,
                kind="tags",
                device_id=device_id,
                reason=reason or f"tags: {','.join(tag_list) or '(none)'}",
            )
            record = self._device(conn, device_id)
        logger.info("device %s now has tags %s", device_id, ",".join(tag_list) or "(none)")
        return record

    def record_report(self, report: Report, received_at: datetime) -> bool:
        outcome = self.record_reports([report], received_at)[0]
        if outcome.result == "unknown":
            raise NotFoundError(outcome.message)
        if outcome.result == "wrong_hardware":
            raise InputError(outcome.message)
        if outcome.result == "revoked":
            raise ConflictError(outcome.message)
        if outcome.result == "replayed":
            raise ReplayError(outcome.message)
        return outcome.transition

    def record_reports(
        self, reports: Sequence[Report], received_at: datetime, *, accepted_only: bool = False
    ) -> list[ReportOutcome]:
        """Apply a batch in one transaction with a handful of statements.

        The devices are read once (one ``IN`` query per 500), the rules of
        ``record_report`` run in Python over those rows in report order (a
        later report of the same device sees the earlier one applied), and the
        changes are written with ``executemany``: few GIL round trips, so the
        writer thread is not starved by the event loop of the server.
        """
        when = _stamp(received_at)
        if not reports:
            return []
        ids = list({r.device_id: None for r in reports})
        with self._tx(write=True) as conn:
            rows: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {_REPORT_COLUMNS} FROM devices WHERE device_id IN ({marks})",  # noqa: S608
                    chunk,
                ):
                    rows[row["device_id"]] = dict(row)
            outcomes: list[ReportOutcome] = []
            updates: list[tuple[Any, ...]] = []
            failures: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            security: list[tuple[Any, ...]] = []
            transfers: list[tuple[Any, ...]] = []
            for report in reports:
                outcomes.append(
                    _apply_report(
                        rows.get(report.device_id),
                        report,
                        when,
                        accepted_only,
                        updates,
                        failures,
                        events,
                        security,
                        _clock_skew(report, received_at),
                        transfers,
                    )
                )
            self._write_report_changes(
                conn, ReportChanges(updates, failures, events, security, transfers)
            )
        return outcomes

    def _write_report_changes(self, conn: Conn, changes: ReportChanges) -> None:
        """Write a batch's changes, in report order (a device may report twice)."""
        for sql, rows in (
            (_UPDATE_REPORTED, changes.updates),
            (_UPDATE_FAILED, changes.failures),
            (_INSERT_REPORT_EVENT, changes.events),
            (_INSERT_SECURITY_EVENT, changes.security),
            (_INSERT_TRANSFER, changes.transfers),
        ):
            if rows:
                conn.executemany(sql, rows)

    def device_history(self, device_id: str, limit: int | None = None) -> list[Event]:
        with self._tx(write=False) as conn:
            self._device(conn, device_id)
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM events WHERE device_id = ?"
                " ORDER BY event_id DESC LIMIT ?) AS recent ORDER BY event_id",
                (device_id, self._limit(limit)),
            ).fetchall()
        return [self._event_from_row(r) for r in rows]

    def device_transfers(self, device_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            self._device(conn, device_id)
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM transfers WHERE device_id = ?"
                " ORDER BY transfer_id DESC LIMIT ?) AS recent ORDER BY transfer_id",
                (device_id, self._limit(limit)),
            ).fetchall()
        return [
            {
                "at": r["at"],
                "rollout_id": r["rollout_id"],
                "version": r["version"],
                "image_bytes": r["image_bytes"],
                "fetched_bytes": r["fetched_bytes"],
                "saved_bytes": max(r["image_bytes"] - r["fetched_bytes"], 0),
                "delta_from": r["delta_from"],
            }
            for r in rows
        ]

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
                    " wave_started_at, failures_since, revision, published_revision, wave_times)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'active', 0, ?, ?, ?, ?, ?, 1, 0, ?)",
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
                        json.dumps([when]),
                    ),
                )
            except self._integrity_errors as e:
                raise ConflictError(
                    f"rollout {rollout_id} exists or hardware {hardware_id} has a live rollout"
                ) from e
            self._assign_cohorts(conn, self._rollout(conn, rollout_id))
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
        query += f" ORDER BY {self._rollout_order}"
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
        retry: bool = False,
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
            opened = [format_time(t) for t in before.wave_opened_at]
            if current_wave > before.current_wave:
                opened = opened[: before.current_wave + 1]
                opened += [when] * (current_wave + 1 - len(opened))
            try:
                conn.execute(
                    "UPDATE rollouts SET state = ?, current_wave = ?, reason = ?,"
                    " updated_at = ?, wave_started_at = coalesce(?, wave_started_at),"
                    " failures_since = coalesce(?, failures_since), revision = revision + 1,"
                    " wave_times = ?, retry_generation = retry_generation + ?,"
                    " retried_at = CASE WHEN ? THEN ? ELSE retried_at END WHERE rollout_id = ?",
                    (
                        state,
                        current_wave,
                        reason,
                        when,
                        wave_started,
                        failures_since,
                        json.dumps(opened),
                        int(retry),
                        retry,
                        when,
                        rollout_id,
                    ),
                )
            except self._integrity_errors as e:
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
                " ORDER BY event_id DESC LIMIT ?) AS recent ORDER BY event_id",
                (rollout_id, self._limit(limit)),
            ).fetchall()
        return [self._event_from_row(r) for r in rows]

    # -- scale: bulk registration, counting in SQL --------------------------------

    def register_devices(self, devices: Iterable[NewDevice], *, at: datetime) -> int:
        when = _stamp(at)
        rows = []
        events = []
        for d in devices:
            check_device_id(d.device_id)
            check_hardware_id(d.hardware_id)
            tag_list = sorted({check_tag(t) for t in d.tags})
            if len(tag_list) > self._config.max_tags:
                raise InputError(f"a device has at most {self._config.max_tags} tags")
            self._check_status(d.status)
            if d.installed_version is not None:
                Version.parse(d.installed_version)
            key_json = json.dumps(dict(d.public_key), sort_keys=True)
            if len(key_json) > self._config.max_public_key_bytes:
                raise InputError(f"device {d.device_id}: public key is too large")
            rows.append(
                (
                    d.device_id,
                    d.hardware_id,
                    json.dumps(tag_list),
                    key_json,
                    d.status,
                    when,
                    d.installed_version,
                )
            )
            events.append((when, "registered", d.device_id, d.status, d.installed_version))
        seen: set[str] = set()
        for row in rows:
            if row[0] in seen:
                raise InputError(f"device {row[0]} is listed twice")
            seen.add(row[0])
        with self._tx(write=True) as conn:
            ids = [r[0] for r in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                taken = conn.execute(
                    "SELECT device_id, hardware_id FROM devices"  # noqa: S608 - placeholders only
                    f" WHERE device_id IN ({','.join('?' * len(chunk))}) ORDER BY device_id",
                    chunk,
                ).fetchone()
                if taken is not None:
                    raise ConflictError(
                        f"device {taken['device_id']} is already registered "
                        f"(hardware {taken['hardware_id']}); choose another device id or prefix"
                    )
            try:
                self._bulk_insert(
                    conn,
                    "devices",
                    (
                        "device_id",
                        "hardware_id",
                        "tags",
                        "public_key",
                        "status",
                        "registered_at",
                        "installed_version",
                    ),
                    rows,
                )
            except self._integrity_errors as e:  # a race with another writer
                raise ConflictError("a device of this batch was registered meanwhile") from e
            self._bulk_insert(
                conn, "events", ("at", "kind", "device_id", "state", "version"), events
            )
            for hardware_id in sorted({r[1] for r in rows}):
                newest = self._newest_rollout(conn, hardware_id)
                if newest is not None:
                    self._assign_cohorts(conn, newest, only_unassigned=True)
        logger.info("registered %d devices", len(rows))
        return len(rows)

    def rollout_counts(self, rollout: RolloutRecord) -> RolloutCounts:
        with self._tx(write=False) as conn:
            newest = self._newest_rollout(conn, rollout.hardware_id)
            if newest is None or newest.rollout_id != rollout.rollout_id:
                # Cohorts are kept for each hardware id's newest rollout only.
                rows = conn.execute(
                    "SELECT * FROM devices WHERE hardware_id = ?", (rollout.hardware_id,)
                ).fetchall()
                counts = count_devices(
                    rollout,
                    (self._device_from_row(r) for r in rows),
                    skew_seconds=self._config.clock_skew_seconds,
                )
                security = conn.execute(
                    "SELECT count(*) AS n FROM security_events WHERE rollout_id = ?",
                    (rollout.rollout_id,),
                ).fetchone()["n"]
                moved = conn.execute(_TRANSFER_TOTALS, (rollout.rollout_id,)).fetchone()
                return replace(
                    counts,
                    security_events=int(security),
                    bytes_fetched=int(moved["fetched"]),
                    bytes_saved=int(moved["saved"]),
                    delta_downloads=int(moved["by_delta"]),
                )
            params = {
                "version": rollout.version,
                "rollout_id": rollout.rollout_id,
                "created": format_time(rollout.created_at),
                "since": format_time(rollout.failures_since),
                "retried": None if rollout.retried_at is None else format_time(rollout.retried_at),
                "skew": self._config.clock_skew_seconds,
            }
            newer = self._newer_versions(conn, rollout)
            params.update({f"newer{i}": v for i, v in enumerate(newer)})
            marks = ", ".join(f":newer{i}" for i in range(len(newer)))
            outcome = _OUTCOME_SQL.format(
                retried="" if rollout.retried_at is None else "AND failed_at >= :retried",
                newer=f" OR installed_version IN ({marks})" if newer else "",
            )
            rows = conn.execute(
                "SELECT cohort_wave AS wave, count(*) AS eligible,"  # noqa: S608 - fixed SQL, values bound
                " count(*) FILTER (WHERE last_seen >= :created) AS checked_in,"
                " count(*) FILTER (WHERE o = 'downloading') AS downloading,"
                " count(*) FILTER (WHERE o = 'installed') AS installed,"
                " count(*) FILTER (WHERE o = 'succeeded') AS succeeded,"
                " count(*) FILTER (WHERE o = 'failed') AS failed,"
                " count(*) FILTER (WHERE o = 'rolled_back') AS rolled_back,"
                " count(*) FILTER (WHERE o = 'waiting') AS waiting,"
                " count(*) FILTER (WHERE o IN ('failed', 'rolled_back') AND failed_at >= :since)"
                "   AS recent,"
                " max(CASE WHEN o IN ('failed', 'rolled_back') THEN failed_at END) AS last_failure,"
                " count(*) FILTER (WHERE o != 'succeeded' AND coalesce(clock_skew, 0) > :skew)"
                "   AS skewed"
                f" FROM (SELECT cohort_wave, last_seen, failed_at, clock_skew, {outcome} AS o"
                "   FROM devices WHERE cohort_rollout = :rollout_id AND status != 'revoked'"
                f"{self._subquery_fence}) AS d"
                " GROUP BY cohort_wave",
                params,
            ).fetchall()
            security = conn.execute(
                "SELECT count(*) AS n FROM security_events WHERE rollout_id = ?",
                (rollout.rollout_id,),
            ).fetchone()["n"]
            moved = conn.execute(_TRANSFER_TOTALS, (rollout.rollout_id,)).fetchone()
        by_wave = {r["wave"]: r for r in rows}
        waves = []
        recent = []
        skewed = []
        last_failure: datetime | None = None
        for index, wave in enumerate(rollout.waves):
            row = by_wave.get(index)
            if row is None:
                waves.append(WaveStatus(wave.name))
                recent.append(0)
                skewed.append(0)
                continue
            if row["last_failure"] is not None:
                failed_at = parse_time(row["last_failure"])
                if index <= rollout.current_wave and (
                    last_failure is None or failed_at > last_failure
                ):
                    last_failure = failed_at
            skewed.append(int(row["skewed"]))
            waves.append(
                WaveStatus(
                    wave.name,
                    **{
                        k: int(row[k])
                        for k in (
                            "eligible",
                            "checked_in",
                            "downloading",
                            "installed",
                            "succeeded",
                            "failed",
                            "rolled_back",
                            "waiting",
                        )
                    },
                )
            )
            recent.append(int(row["recent"]))
        outside = by_wave.get(NOT_TARGETED)
        return RolloutCounts(
            waves=tuple(waves),
            recent_failures=tuple(recent),
            not_targeted=0 if outside is None else int(outside["eligible"]),
            last_failure=last_failure,
            skewed=tuple(skewed),
            security_events=int(security),
            bytes_fetched=int(moved["fetched"]),
            bytes_saved=int(moved["saved"]),
            delta_downloads=int(moved["by_delta"]),
        )

    @staticmethod
    def _newer_versions(conn: Conn, rollout: RolloutRecord) -> list[str]:
        """Installed versions of the hardware id above the rollout's (a device there succeeded).

        Reads the few distinct versions from the ``devices_by_version`` index
        and orders them semantically in Python.
        """
        floor = Version.parse(rollout.version)
        newer = []
        for row in conn.execute(
            "SELECT DISTINCT installed_version AS v FROM devices"
            " WHERE hardware_id = ? AND installed_version IS NOT NULL",
            (rollout.hardware_id,),
        ):
            try:
                if Version.parse(row["v"]) > floor:
                    newer.append(row["v"])
            except InputError:
                continue
        return newer

    def stall_candidates(
        self, rollout: RolloutRecord, now: datetime
    ) -> list[tuple[int, DeviceRecord]]:
        opts = rollout.options
        stall_cut = _stamp(now - timedelta(seconds=opts.stall_timeout_seconds))
        reboot_cut = _stamp(now - timedelta(seconds=opts.reboot_timeout_seconds))
        silent_cut = _stamp(now - timedelta(seconds=opts.silent_seconds))
        clauses = [
            "(state IN ('downloading', 'downloaded') AND coalesce(progress_at, last_seen) <= ?)",
            "(state IN ('installing', 'rebooting', 'verifying')"
            " AND coalesce(state_since, last_seen) <= ?)",
            "(last_seen IS NOT NULL AND last_seen <= ?)",
        ]
        params: list[Any] = [stall_cut, reboot_cut, silent_cut]
        for wave in range(rollout.current_wave + 1):
            opened = rollout.opened_at(wave)
            if opened + timedelta(seconds=opts.stall_timeout_seconds) <= now:
                clauses.append("(cohort_wave = ? AND (last_seen IS NULL OR last_seen < ?))")
                params += [wave, _stamp(opened)]
        query = (
            "SELECT * FROM devices WHERE cohort_rollout = ? AND status = 'accepted'"  # noqa: S608 - fixed SQL, values bound
            " AND cohort_wave BETWEEN 0 AND ?"
            " AND (installed_version IS NULL OR installed_version != ?)"
            " AND NOT (failed_state IS NOT NULL"
            "   AND (failed_version = ? OR failed_rollout_id = ?))"
            f" AND ({' OR '.join(clauses)})"
            " ORDER BY device_id LIMIT ?"
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(
                query,
                [
                    rollout.rollout_id,
                    rollout.current_wave,
                    rollout.version,
                    rollout.version,
                    rollout.rollout_id,
                    *params,
                    self._config.max_findings_per_rollout,
                ],
            ).fetchall()
        return [(int(r["cohort_wave"]), self._device_from_row(r)) for r in rows]

    def version_counts(self, hardware_id: str | None = None) -> dict[tuple[str, str | None], int]:
        query = (
            "SELECT hardware_id, installed_version, count(*) AS n FROM devices"
            " WHERE status != 'revoked'"
        )
        params: list[Any] = []
        if hardware_id is not None:
            query += " AND hardware_id = ?"
            params.append(hardware_id)
        query += " GROUP BY hardware_id, installed_version"
        with self._tx(write=False) as conn:
            rows = conn.execute(query, params).fetchall()
        return {(r["hardware_id"], r["installed_version"]): int(r["n"]) for r in rows}

    def devices_on_versions(
        self, hardware_id: str, versions: Iterable[str | None], limit: int
    ) -> list[str]:
        version_list = list(versions)
        named = [v for v in version_list if v is not None]
        clause = f"installed_version IN ({', '.join('?' for _ in named) or 'NULL'})"
        if None in version_list:
            clause = f"({clause} OR installed_version IS NULL)"
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT device_id FROM devices WHERE hardware_id = ? AND status != 'revoked'"  # noqa: S608 - fixed SQL, values bound
                f" AND {clause} ORDER BY device_id LIMIT ?",
                [hardware_id, *named, max(0, limit)],
            ).fetchall()
        return [r["device_id"] for r in rows]

    def mark_unpublished(self, rollout_id: str) -> None:
        with self._tx(write=True) as conn:
            self._rollout(conn, rollout_id)
            conn.execute(
                "UPDATE rollouts SET published_revision = 0 WHERE rollout_id = ?", (rollout_id,)
            )

    def unexpected_installs(
        self, rollout: RolloutRecord, limit: int
    ) -> list[tuple[str, DeviceRecord]]:
        working = "('downloading', 'downloaded', 'installing', 'rebooting', 'verifying')"
        found: list[tuple[str, DeviceRecord]] = []
        with self._tx(write=False) as conn:
            newest = self._newest_rollout(conn, rollout.hardware_id)
            params: dict[str, Any] = {
                "rid": rollout.rollout_id,
                "version": rollout.version,
                "current": rollout.current_wave,
                "hw": rollout.hardware_id,
                "stopped": format_time(rollout.updated_at),
                "limit": max(0, limit),
            }
            if newest is not None and newest.rollout_id == rollout.rollout_id:
                rows = conn.execute(
                    "SELECT * FROM devices WHERE cohort_rollout = :rid AND status != 'revoked'"  # noqa: S608 - fixed SQL, values bound
                    " AND (cohort_wave > :current OR cohort_wave < 0) AND rollout_id = :rid"
                    f" AND (installed_version = :version OR state IN {working})"
                    " ORDER BY device_id LIMIT :limit",
                    params,
                ).fetchall()
                for row in rows:
                    wave = int(row["cohort_wave"])
                    where = "no wave" if wave < 0 else f"wave {wave + 1}"
                    found.append(
                        (
                            f"{row['device_id']} reports {row['state']} of {rollout.version} "
                            f"from {where}, but rollout {rollout.rollout_id} has opened only "
                            f"up to wave {rollout.current_wave + 1}",
                            self._device_from_row(row),
                        )
                    )
            if rollout.state in ("paused", "aborted"):
                rows = conn.execute(
                    "SELECT * FROM devices WHERE hardware_id = :hw AND status != 'revoked'"
                    " AND (target_version = :version OR rollout_id = :rid)"
                    " AND state = 'downloading' AND state_since > :stopped"
                    " ORDER BY device_id LIMIT :limit",
                    params,
                ).fetchall()
                for row in rows:
                    found.append(
                        (
                            f"{row['device_id']} started downloading {rollout.version} at "
                            f"{row['state_since']}, after rollout {rollout.rollout_id} was "
                            f"{rollout.state}",
                            self._device_from_row(row),
                        )
                    )
            rows = conn.execute(
                "SELECT * FROM devices WHERE hardware_id = :hw AND status != 'revoked'"  # noqa: S608 - fixed SQL, values bound
                f" AND state IN {working} AND target_version IS NOT NULL"
                " AND target_version NOT IN (SELECT version FROM rollouts WHERE hardware_id = :hw)"
                " ORDER BY device_id LIMIT :limit",
                params,
            ).fetchall()
            for row in rows:
                found.append(
                    (
                        f"{row['device_id']} reports {row['state']} of {row['target_version']}, "
                        f"a release no rollout of {rollout.hardware_id} offered",
                        self._device_from_row(row),
                    )
                )
        return found

    def security_summary(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT hardware_id, count(*) AS events, count(DISTINCT device_id) AS devices,"  # noqa: S608 - our SQL
                f" {self._json_array.format('code')} AS codes,"
                f" {self._json_array.format('rollout_id')} AS rollouts,"
                " max(event_id) AS last_event_id, max(at) AS last_at"
                " FROM security_events GROUP BY hardware_id ORDER BY hardware_id"
            ).fetchall()
        return [
            {
                "hardware_id": r["hardware_id"],
                "events": int(r["events"]),
                "devices": int(r["devices"]),
                "codes": sorted(json.loads(r["codes"])),
                "rollouts": sorted(x for x in json.loads(r["rollouts"]) if x is not None),
                "last_event_id": int(r["last_event_id"]),
                "last_at": r["last_at"],
            }
            for r in rows
        ]

    def skewed_devices(self, threshold_seconds: float, limit: int) -> list[DeviceRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM devices WHERE status != 'revoked' AND clock_skew IS NOT NULL"
                " AND clock_skew > ? ORDER BY device_id LIMIT ?",
                (threshold_seconds, max(0, limit)),
            ).fetchall()
        return [self._device_from_row(r) for r in rows]

    # -- alerts ----------------------------------------------------------------------

    def sync_alerts(
        self,
        scope: str,
        wanted: Iterable[AlertDraft],
        *,
        at: datetime,
        sinks: Sequence[SinkSpec],
        resolution: str = "condition cleared",
        resolve_missing: bool = True,
    ) -> tuple[list[Alert], list[Alert]]:
        when = _stamp(at)
        drafts = {d.key: d for d in wanted}
        for key in drafts:
            if not key.startswith(scope):
                raise InputError(f"alert key {key!r} is outside scope {scope!r}")
        opened: list[Alert] = []
        resolved: list[Alert] = []
        with self._tx(write=True) as conn:
            rows = conn.execute(
                "SELECT * FROM alerts WHERE resolved_at IS NULL AND key >= ? AND key < ?",
                (scope, scope + "\uffff"),
            ).fetchall()
            open_keys = {r["key"]: r for r in rows}
            for key, draft in drafts.items():
                if key in open_keys:
                    continue
                cursor = conn.execute(
                    "INSERT INTO alerts (key, kind, severity, summary, hardware_id, rollout_id,"
                    " device_id, details, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " RETURNING alert_id",
                    (
                        key,
                        draft.kind,
                        draft.severity,
                        draft.summary[:1024],
                        draft.hardware_id,
                        draft.rollout_id,
                        draft.device_id,
                        json.dumps(dict(draft.details), sort_keys=True, default=str),
                        when,
                    ),
                )
                alert = self._alert(conn, int(cursor.fetchone()["alert_id"]))
                self._queue(conn, alert, "opened", sinks, when)
                opened.append(alert)
            if resolve_missing:
                for key, row in open_keys.items():
                    if key in drafts:
                        continue
                    conn.execute(
                        "UPDATE alerts SET resolved_at = ?, resolution = ? WHERE alert_id = ?",
                        (when, resolution[:1024], row["alert_id"]),
                    )
                    alert = self._alert(conn, row["alert_id"])
                    self._queue(conn, alert, "resolved", sinks, when)
                    resolved.append(alert)
        return opened, resolved

    def resolve_alert(
        self, alert_id: int, *, at: datetime, resolution: str, sinks: Sequence[SinkSpec]
    ) -> Alert:
        when = _stamp(at)
        with self._tx(write=True) as conn:
            alert = self._alert(conn, alert_id)
            if not alert.open:
                raise ConflictError(f"alert {alert_id} is already resolved")
            conn.execute(
                "UPDATE alerts SET resolved_at = ?, resolution = ? WHERE alert_id = ?",
                (when, resolution[:1024], alert_id),
            )
            alert = self._alert(conn, alert_id)
            self._queue(conn, alert, "resolved", sinks, when)
        return alert

    def list_alerts(
        self,
        *,
        open_only: bool = False,
        rollout_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        query = "SELECT * FROM alerts WHERE 1 = 1"
        params: list[Any] = []
        if open_only:
            query += " AND resolved_at IS NULL"
        if rollout_id is not None:
            query += " AND rollout_id = ?"
            params.append(rollout_id)
        if kinds is not None:
            kind_list = list(kinds)
            query += f" AND kind IN ({', '.join('?' for _ in kind_list) or 'NULL'})"
            params.extend(kind_list)
        query += " ORDER BY alert_id DESC LIMIT ?"
        params.append(self._limit(limit))
        with self._tx(write=False) as conn:
            rows = conn.execute(query, params).fetchall()
        return [self._alert_from_row(r) for r in rows]

    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        # Claimed: their next attempt moves a lease ahead, so a second process
        # (CLI tick beside the server) does not send them at the same time.
        lease = _stamp(now + timedelta(seconds=_CLAIM_SECONDS))
        with self._tx(write=True) as conn:
            rows = conn.execute(
                "SELECT * FROM notifications WHERE done_at IS NULL AND next_at <= ?"
                " ORDER BY notification_id LIMIT ?",
                (_stamp(now), limit),
            ).fetchall()
            conn.executemany(
                "UPDATE notifications SET next_at = ? WHERE notification_id = ?",
                [(lease, r["notification_id"]) for r in rows],
            )
            return [
                Notification(
                    notification_id=r["notification_id"],
                    alert=self._alert(conn, r["alert_id"]),
                    phase=r["phase"],
                    sink=r["sink"],
                    attempts=r["attempts"],
                )
                for r in rows
            ]

    def finish_notification(
        self,
        notification_id: int,
        *,
        at: datetime,
        error: str = "",
        retry_at: datetime | None = None,
    ) -> None:
        when = _stamp(at)
        with self._tx(write=True) as conn:
            if not error:
                conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, done_at = ?,"
                    " last_error = '' WHERE notification_id = ?",
                    (when, notification_id),
                )
            elif retry_at is None:  # given up
                conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = ?,"
                    " done_at = ? WHERE notification_id = ?",
                    (error[:1024], when, notification_id),
                )
            else:
                conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = ?,"
                    " next_at = ?, done_at = NULL WHERE notification_id = ?",
                    (error[:1024], _stamp(retry_at), notification_id),
                )

    def notification_log(self, alert_id: int) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM notifications WHERE alert_id = ? ORDER BY notification_id",
                (alert_id,),
            ).fetchall()
        return [
            {
                "notification_id": r["notification_id"],
                "phase": r["phase"],
                "sink": r["sink"],
                "attempts": r["attempts"],
                "next_at": r["next_at"],
                "done_at": r["done_at"],
                "last_error": r["last_error"],
            }
            for r in rows
        ]

    # -- settings --------------------------------------------------------------------

    def get_alert_settings(self) -> AlertSettings:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = 'alerts'").fetchone()
        if row is None:
            return AlertSettings()
        try:
            return AlertSettings.from_json(json.loads(row["value"]))
        except (ValueError, InputError) as e:
            raise StoreError(f"stored alert settings are corrupt: {e}") from e

    def set_alert_settings(self, settings: AlertSettings) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT INTO settings (name, value) VALUES ('alerts', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (settings.dumps(),),
            )

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _queue(conn: Conn, alert: Alert, phase: str, sinks: Sequence[SinkSpec], when: str) -> None:
        names = ["log"] + [s.name for s in sinks if s.wants(alert.severity)]
        conn.executemany(
            "INSERT INTO notifications (alert_id, phase, sink, next_at) VALUES (?, ?, ?, ?)",
            [(alert.alert_id, phase, name, when) for name in names],
        )

    def _alert(self, conn: Conn, alert_id: int) -> Alert:
        if not 0 < alert_id < 2**63:  # SQLite integers are 64-bit; no alert has such an id
            raise NotFoundError(f"alert {alert_id} does not exist")
        row = conn.execute("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"alert {alert_id} does not exist")
        return self._alert_from_row(row)

    @staticmethod
    def _alert_from_row(row: Row) -> Alert:
        return Alert(
            alert_id=row["alert_id"],
            key=row["key"],
            kind=row["kind"],
            severity=row["severity"],
            summary=row["summary"],
            hardware_id=row["hardware_id"],
            rollout_id=row["rollout_id"],
            device_id=row["device_id"],
            details=json.loads(row["details"]),
            opened_at=parse_time(row["opened_at"]),
            resolved_at=_opt_time(row["resolved_at"]),
            resolution=row["resolution"],
        )

    def _newest_rollout(self, conn: Conn, hardware_id: str) -> RolloutRecord | None:
        row = conn.execute(
            f"SELECT * FROM rollouts WHERE hardware_id = ? ORDER BY {self._rollout_order}"  # noqa: S608 - our names
            " LIMIT 1",
            (hardware_id,),
        ).fetchone()
        return None if row is None else self._rollout_from_row(row)

    def _assign_cohorts(
        self,
        conn: Conn,
        rollout: RolloutRecord,
        *,
        device_id: str | None = None,
        only_unassigned: bool = False,
    ) -> None:
        """Store each device's wave in ``rollout`` (the hardware id's newest rollout).

        The wave is ``tufota_core.wave_index``, the function devices evaluate.
        """
        query = f"SELECT {self._row_key} AS k, device_id, tags FROM devices WHERE hardware_id = ?"  # noqa: S608
        params: list[Any] = [rollout.hardware_id]
        if device_id is not None:
            query += " AND device_id = ?"
            params.append(device_id)
        if only_unassigned:
            query += " AND (cohort_rollout IS NULL OR cohort_rollout != ?)"
            params.append(rollout.rollout_id)
        waves = list(rollout.waves)
        rid = rollout.rollout_id
        use_tags = any(w.tags for w in waves)
        updates = []
        for row in conn.execute(query, params):
            tags = json.loads(row["tags"]) if use_tags else ()
            found = wave_index(rid, waves, row["device_id"], tags)
            updates.append((NOT_TARGETED if found is None else found, row["k"]))
        self._set_cohorts(conn, rid, updates)

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
        conn: Conn,
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
        row = conn.execute(
            "INSERT INTO events (at, kind, device_id, rollout_id, state, version, wave, seq,"
            " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING event_id",
            (at, kind, device_id, rollout_id, state, version, wave, seq, reason),
        ).fetchone()
        return int(row["event_id"])

    def _device(self, conn: Conn, device_id: str) -> DeviceRecord:
        row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"device {device_id} is not registered")
        return self._device_from_row(row)

    def _rollout(self, conn: Conn, rollout_id: str) -> RolloutRecord:
        row = conn.execute("SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        return self._rollout_from_row(row)

    def _device_from_row(self, row: Row) -> DeviceRecord:
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
                state_since=_opt_time(row["state_since"]),
                progress_at=_opt_time(row["progress_at"]),
                bytes_done=row["bytes_done"],
                bytes_total=row["bytes_total"],
                clock_skew=row["clock_skew"],
                failed_code=row["failed_code"],
                failed_message=row["failed_message"],
            )
        except (ValueError, TypeError, InputError) as e:
            raise StoreError(f"device row {row['device_id']!r} is corrupt: {e}") from e

    def _rollout_from_row(self, row: Row) -> RolloutRecord:
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
                wave_opened_at=tuple(parse_time(t) for t in json.loads(row["wave_times"])),
                retry_generation=row["retry_generation"],
                retried_at=_opt_time(row["retried_at"]),
            )
        except (ValueError, TypeError, KeyError, InputError) as e:
            raise StoreError(f"rollout row {row['rollout_id']!r} is corrupt: {e}") from e

    @staticmethod
    def _event_from_row(row: Row) -> Event:
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
