"""The tracker store interface: devices, rollouts and their history.

Invariants every implementation keeps:
* Each method that changes state is one atomic transaction: it changes
  everything it documents, including its history ``Event``, or nothing.
* A method that raises changed nothing.
* At most one rollout per hardware id is live (``active`` or ``paused``),
  even when several processes write at once.
* A report is accepted only with a ``seq`` above the device's ``last_seq``, so
  replaying or reordering reports cannot move a device backwards.
* Rollout changes are compare-and-set on ``revision``: a writer that read a
  stale rollout gets ``ConflictError`` instead of overwriting a concurrent
  change (say, a pause from the CLI while the server's controller ticks).
* The store never reads the clock for rollouts: callers pass the time, so a
  controller with a fake clock gets reproducible soak times.
* Values returned are frozen dataclasses from ``staging._model``,
  ``staging._alerts`` and ``staging._progress``.
* Every device of a hardware id has a wave in that hardware id's newest
  rollout (its *cohort*), computed with ``tufota_core.wave_index`` when the
  rollout is created or the device registered; ``rollout_counts`` and
  ``stall_candidates`` rely on it, so gates need not hash every device each tick.
* At most one open alert per key; opening or resolving one queues its
  notifications (one per sink, plus ``log``) in the same transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from staging._alerts import Alert, AlertDraft, AlertSettings, Notification, SinkSpec
from staging._model import DeviceRecord, Event, NewDevice, RolloutOptions, RolloutRecord
from staging._progress import RolloutCounts
from tufota_core import Report, Wave

REPORT_OUTCOMES = ("applied", "replayed", "unknown", "revoked", "pending", "wrong_hardware")


@dataclass(frozen=True)
class ReportOutcome:
    """What ``TrackerStore.record_reports`` did with one report.

    Attributes:
        result: one of ``REPORT_OUTCOMES``; only ``applied`` changed anything.
        transition: for ``applied``, whether the report changed the device's
            state, version, target or error (``record_report``'s return value).
        message: for a refused report, why (the text ``record_report`` raises with).
    """

    result: str
    transition: bool = False
    message: str = ""

    @property
    def applied(self) -> bool:
        return self.result == "applied"


class TrackerStore(ABC):
    """Where the tracker keeps devices, rollouts and history."""

    #: where the store is, for messages (a path, or a URL without its password)
    location: str = ""

    # -- devices ---------------------------------------------------------------

    @abstractmethod
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
        """Add a device.

        Args:
            device_id: unique device id (``tufota_core.check_device_id`` rules).
            hardware_id: the product line.
            public_key: the device's identity key as JSON; opaque to the store.
            tags: cohort tags (``tufota_core.check_tag`` rules).
            status: one of ``DEVICE_STATUSES``.
            installed_version: the version the device shipped with, if known.
            at: registration time; now when None.

        Raises:
            InputError: an id, tag, version, status or the key is invalid.
            ConflictError: a device with this id exists.
        """

    @abstractmethod
    def get_device(self, device_id: str) -> DeviceRecord:
        """Return one device.

        Raises:
            NotFoundError: no such device.
        """

    @abstractmethod
    def list_devices(self, hardware_id: str | None = None) -> list[DeviceRecord]:
        """All devices, or those of one hardware id, ordered by device id."""

    @abstractmethod
    def set_device_status(
        self, device_id: str, status: str, *, reason: str = "", at: datetime | None = None
    ) -> DeviceRecord:
        """Accept or revoke a device, recording a ``status`` event.

        Raises:
            InputError: ``status`` is not one of ``DEVICE_STATUSES``.
            NotFoundError: no such device.
        """

    @abstractmethod
    def set_device_tags(
        self, device_id: str, tags: Iterable[str], *, reason: str = "", at: datetime | None = None
    ) -> DeviceRecord:
        """Replace a device's cohort tags, recording a ``tags`` event (none when unchanged).

        Tags pick the waves a device belongs to: a live rollout sees the new
        tags from its next evaluation.

        Raises:
            InputError: a malformed tag or too many tags (nothing changed).
            NotFoundError: no such device.
        """

    @abstractmethod
    def record_report(self, report: Report, received_at: datetime) -> bool:
        """Apply a device report whose signature the caller already verified.

        Updates the device's state, installed version (when the report names
        one), target, rollout, error, ``last_seen`` and ``last_seq``. An
        ``Event`` is recorded when something other than ``last_seen`` and
        ``last_seq`` changed, so heartbeats do not grow the history.

        Returns:
            True when the report changed the device's state, version, target or
            error (a transition); False for a heartbeat.

        Raises:
            NotFoundError: the device is not registered.
            InputError: the report's hardware id is not the device's.
            ConflictError: the device is revoked.
            ReplayError: ``report.seq`` is not above the last accepted one.
        """

    @abstractmethod
    def record_reports(
        self, reports: Sequence[Report], received_at: datetime, *, accepted_only: bool = False
    ) -> list[ReportOutcome]:
        """Apply many verified reports in one transaction (group commit).

        Each report is applied exactly as ``record_report`` would, in order, so
        a later report of the same device sees the earlier one's ``last_seq``.
        A report ``record_report`` would refuse changes nothing and gets its
        outcome instead of an exception; the others are applied. When this
        returns, every ``applied`` report is durably committed; when it raises,
        none of them is.

        Args:
            reports: signature-verified reports.
            received_at: when they arrived (one time for the batch).
            accepted_only: also refuse (outcome ``pending``) reports of devices
                that are not ``accepted``, read in the same transaction, so a
                status change made before the batch takes effect at once.

        Returns:
            One outcome per report, in order.

        Raises:
            StoreError: the store failed; nothing was applied.
        """

    @abstractmethod
    def device_history(self, device_id: str, limit: int | None = None) -> list[Event]:
        """A device's events, oldest first (the newest ``limit`` of them).

        Raises:
            NotFoundError: no such device.
        """

    def device_transfers(self, device_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """A device's reported image downloads, oldest first: ``at``, ``rollout_id``,
        ``version``, ``image_bytes``, ``fetched_bytes``, ``saved_bytes``, ``delta_from``.

        A store that does not keep them returns none.
        """
        return []

    # -- rollouts --------------------------------------------------------------

    @abstractmethod
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
        """Store a new rollout, ``active`` at wave 0, revision 1, unpublished.

        Raises:
            InputError: the waves are invalid.
            ConflictError: the id exists, or the hardware id has a live rollout.
        """

    @abstractmethod
    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        """Return one rollout.

        Raises:
            NotFoundError: no such rollout.
        """

    @abstractmethod
    def list_rollouts(
        self, hardware_id: str | None = None, states: Iterable[str] | None = None
    ) -> list[RolloutRecord]:
        """Rollouts, newest first, optionally filtered by hardware id and state."""

    @abstractmethod
    def active_rollout(self, hardware_id: str) -> RolloutRecord | None:
        """The live (``active`` or ``paused``) rollout of a hardware id, if any."""

    @abstractmethod
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
        """Change a rollout's state and/or wave and record an event of ``kind``.

        ``wave_started_at`` becomes ``at`` when the wave changes;
        ``failures_since`` becomes ``at`` when the state changes to ``active``.
        With ``retry`` the retry generation grows by one and ``retried_at``
        becomes ``at``. The revision grows by one.

        Returns:
            The rollout as changed and the event recorded.

        Raises:
            InputError: unknown state or kind, or the wave is out of range.
            NotFoundError: no such rollout.
            ConflictError: the rollout's revision is not ``expected_revision``
                (someone changed it meanwhile), or making it live would give
                its hardware id two live rollouts.
        """

    @abstractmethod
    def mark_published(self, rollout_id: str, revision: int) -> bool:
        """Note that the document of ``revision`` was published.

        Compare-and-set: it takes effect only while ``revision`` is still the
        rollout's current revision.

        Returns:
            True when recorded; False when the rollout changed meanwhile, so the
            caller must publish the newer document (its publish may have
            overwritten a newer one).

        Raises:
            NotFoundError: no such rollout.
        """

    @abstractmethod
    def rollout_history(self, rollout_id: str, limit: int | None = None) -> list[Event]:
        """A rollout's own events (not device reports), oldest first.

        Raises:
            NotFoundError: no such rollout.
        """

    # -- scale -------------------------------------------------------------------

    @abstractmethod
    def register_devices(self, devices: Iterable[NewDevice], *, at: datetime) -> int:
        """Register many devices in one transaction (fleet import, simulation).

        Returns:
            How many were registered.

        Raises:
            InputError: any device is invalid (none is registered).
            ConflictError: any id exists or repeats (none is registered).
        """

    @abstractmethod
    def rollout_counts(self, rollout: RolloutRecord) -> RolloutCounts:
        """Per-wave outcome counts of a rollout (rules of ``staging._progress``)."""

    @abstractmethod
    def stall_candidates(
        self, rollout: RolloutRecord, now: datetime
    ) -> list[tuple[int, DeviceRecord]]:
        """Accepted devices in the open waves that may be stalled, with their wave.

        A superset of what ``staging._stalls.find_stall`` reports (never
        missing one), limited to ``StagingConfig.max_findings_per_rollout``.
        Devices that succeeded or failed in this rollout are left out.
        """

    @abstractmethod
    def version_counts(self, hardware_id: str | None = None) -> dict[tuple[str, str | None], int]:
        """Non-revoked devices per (hardware id, installed version or None)."""

    @abstractmethod
    def devices_on_versions(
        self, hardware_id: str, versions: Iterable[str | None], limit: int
    ) -> list[str]:
        """Up to ``limit`` non-revoked device ids of ``hardware_id`` on one of ``versions``."""

    # -- alerts ------------------------------------------------------------------

    @abstractmethod
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
        """Make the open alerts whose key starts with ``scope`` match ``wanted``.

        Opens each wanted key that is not open; resolves (with ``resolution``)
        each open key in the scope that is not wanted, unless
        ``resolve_missing`` is False. Each change queues one notification per
        sink that wants its severity, plus one for ``log``.

        Returns:
            (opened, resolved) alerts.

        Raises:
            InputError: a wanted key does not start with ``scope``.
        """

    @abstractmethod
    def resolve_alert(
        self, alert_id: int, *, at: datetime, resolution: str, sinks: Sequence[SinkSpec]
    ) -> Alert:
        """Resolve one alert by hand (an operator acknowledged and fixed it).

        Raises:
            NotFoundError: no such alert.
            ConflictError: it is resolved already.
        """

    @abstractmethod
    def list_alerts(
        self,
        *,
        open_only: bool = False,
        rollout_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """Alerts, newest first."""

    @abstractmethod
    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        """Claim undelivered notifications whose next attempt is due, oldest first.

        Claimed notifications are not due again for a few minutes, so two
        processes delivering at once do not both send them; the claimer must
        call ``finish_notification`` for each.
        """

    @abstractmethod
    def finish_notification(
        self,
        notification_id: int,
        *,
        at: datetime,
        error: str = "",
        retry_at: datetime | None = None,
    ) -> None:
        """Record an attempt: delivered (no ``error``), retry at ``retry_at``, or given up."""

    @abstractmethod
    def notification_log(self, alert_id: int) -> list[dict[str, Any]]:
        """Delivery records of one alert's notifications."""

    @abstractmethod
    def get_alert_settings(self) -> AlertSettings:
        """The stored alert settings (defaults when none were stored).

        Raises:
            StoreError: the stored settings are corrupt.
        """

    @abstractmethod
    def set_alert_settings(self, settings: AlertSettings) -> None:
        """Replace the alert settings."""

    # -- lifetime --------------------------------------------------------------

    @abstractmethod
    def mark_unpublished(self, rollout_id: str) -> None:
        """Make the next ``tick`` publish the rollout's latest revision again.

        Raises:
            NotFoundError: no such rollout.
        """

    @abstractmethod
    def unexpected_installs(
        self, rollout: RolloutRecord, limit: int
    ) -> list[tuple[str, DeviceRecord]]:
        """Devices whose reports contradict what the tracker offered, with the reason.

        For the hardware id's newest rollout: working on or running its
        release from a wave that is not open, or having started a download
        after the rollout was paused or aborted; and, for the hardware id,
        working towards a version no rollout of the tracker offered.
        """

    @abstractmethod
    def security_summary(self) -> list[dict[str, Any]]:
        """Verification failures devices reported, per hardware id.

        Each entry: ``hardware_id``, ``events``, ``devices`` (distinct),
        ``codes`` (sorted list), ``rollouts`` (sorted ids, None left out),
        ``last_event_id`` and ``last_at`` (RFC 3339).
        """

    @abstractmethod
    def skewed_devices(self, threshold_seconds: float, limit: int) -> list[DeviceRecord]:
        """Non-revoked devices whose last reported clock is ahead by more than the threshold."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources; the store is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
