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
* Values returned are frozen dataclasses from ``staging._model``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from staging._model import DeviceRecord, Event, RolloutOptions, RolloutRecord
from tufota_core import Report, Wave


class TrackerStore(ABC):
    """Where the tracker keeps devices, rollouts and history."""

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
    def device_history(self, device_id: str, limit: int | None = None) -> list[Event]:
        """A device's events, oldest first (the newest ``limit`` of them).

        Raises:
            NotFoundError: no such device.
        """

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
    ) -> tuple[RolloutRecord, Event]:
        """Change a rollout's state and/or wave and record an event of ``kind``.

        ``wave_started_at`` becomes ``at`` when the wave changes;
        ``failures_since`` becomes ``at`` when the state changes to ``active``.
        The revision grows by one.

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

    # -- lifetime --------------------------------------------------------------

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
