"""Values the tracker store returns: devices, rollouts, options and history events.

Invariants:
* Every value is a frozen dataclass; nothing of the storage engine leaks out.
* Times are timezone-aware UTC with whole seconds (what ``tufota_core.utcnow``
  returns); ``to_json`` writes them with ``tufota_core.format_time``.
* ``RolloutOptions`` validates itself, so a stored rollout always has usable gates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from staging._config import MAX_DURATION_SECONDS
from tufota_core import InputError, Wave, check_window, format_time

MAX_RETRIES = 10
"""Most re-offers of a release to its failed devices (``RolloutOptions.retry_failed``)."""

SECURITY_CODES = frozenset(
    {
        "target_hash_mismatch",
        "target_length_mismatch",
        "bad_signature",
        "metadata_rollback",
        "metadata_version_mismatch",
        "metadata_too_large",
        "metadata_expired",
        "metadata_verification_failed",
        "slow_retrieval",
        "firmware_too_large",
        "wrong_hardware",
        "downgrade_refused",
    }
)
"""Report error codes of data a device refused to trust (``device_agent._errors``).

A ``failed`` report with one of these is a security event (its own counter and
a ``verification_failed`` alert), never an install failure: a network attacker
who tampers with one download must not be able to pause a rollout.
"""

TRANSPORT_CODES = frozenset(
    # disk_full: the device keeps the partial download and resumes once there is room.
    {"download_failed", "data_budget_exhausted", "server_unreachable", "disk_full"}
)
"""Report error codes of a transfer that will be tried again: neither failure nor attack."""

POLICY_CODES = frozenset(
    # The device's own floor (its [policy] minimum, or the newest release it saw)
    # refused an older release: its configuration at work, not tampering. A
    # document pushing that release is the watchdog's rollout_diverged alert.
    {"below_minimum_version"}
)
"""Report error codes of a device declining by its own policy: neither failure nor attack."""

NOT_COUNTED_CODES = SECURITY_CODES | TRANSPORT_CODES | POLICY_CODES
"""Failure codes that never count toward a wave's failure threshold.

Every other ``failed``/``rolled_back`` report counts: install, health check and
boot failures, repository faults (a release signed wrongly fails on every
device and should pause the rollout), unknown codes and no code at all.
"""

DEVICE_STATUSES = ("pending", "accepted", "revoked")
"""Registration status: ``revoked`` devices are ignored by every rollout gate."""

EVENT_KINDS = (
    "registered",
    "status",
    "report",
    "started",
    "wave_advanced",
    "paused",
    "resumed",
    "aborted",
    "completed",
    "retried",
    "tags",
)
"""What an ``Event`` records: a device change (the first three and ``tags``) or a rollout change."""


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


@dataclass(frozen=True)
class RolloutOptions:
    """The gates and stall limits of a rollout.

    Attributes:
        success_threshold: fraction (0-1] of eligible devices in the waves so far
            that must run the new version before the next wave opens.
        failure_threshold: fraction (0-1] of eligible devices that failed or
            rolled back at which the rollout pauses itself.
        soak_seconds: least time a wave stays open before the next one may open.
        min_devices: least number of devices that must have succeeded before the
            gate opens; when fewer devices are eligible, all of them must succeed.
        stall_timeout_seconds: a device downloading without progress this long,
            or eligible this long without checking in, is stalled.
        reboot_timeout_seconds: a device installing, rebooting or verifying
            this long has not come back from its reboot.
        poll_interval_seconds: how often devices poll; with ``silent_polls``
            it decides when a device is silent.
        silent_polls: a device not heard from for this many poll intervals is silent.
        maintenance_window: canonical ``DAYS HH:MM-HH:MM UTC`` text (see
            ``staging._window``), or None for "any time".
        preset: the preset the plan started from (``standard``, ``critical``), or "".
        retry_failed: how many times the release is offered again to devices
            that failed or rolled back in the open waves (0: never; at most
            ``MAX_RETRIES``). Each retry is a new ``retry`` generation in the
            signed rollout document.
        retry_backoff_seconds: wait after a failure before the first retry;
            doubles for each further retry.
    """

    success_threshold: float = 0.95
    failure_threshold: float = 0.05
    soak_seconds: int = 0
    min_devices: int = 0
    stall_timeout_seconds: int = 1200
    reboot_timeout_seconds: int = 900
    poll_interval_seconds: int = 300
    silent_polls: int = 3
    maintenance_window: str | None = None
    preset: str = ""
    retry_failed: int = 0
    retry_backoff_seconds: int = 600

    def __post_init__(self) -> None:
        if not 0.0 < self.success_threshold <= 1.0:
            raise InputError(f"success threshold {self.success_threshold} is outside (0, 1]")
        if not 0.0 < self.failure_threshold <= 1.0:
            raise InputError(f"failure threshold {self.failure_threshold} is outside (0, 1]")
        for name in ("soak_seconds", "retry_backoff_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 0 <= value <= MAX_DURATION_SECONDS:
                raise InputError(f"{name.replace('_', ' ')} {value} is outside 0 s - 365 days")
        if isinstance(self.retry_failed, bool) or not 0 <= self.retry_failed <= MAX_RETRIES:
            raise InputError(f"retry count {self.retry_failed} is outside 0-{MAX_RETRIES}")
        if isinstance(self.min_devices, bool) or not 0 <= self.min_devices <= 10**9:
            raise InputError(f"minimum device count {self.min_devices} is outside 0-1000000000")
        for name in ("stall_timeout_seconds", "reboot_timeout_seconds", "poll_interval_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 1 <= value <= 30 * 86400:
                raise InputError(f"{name.replace('_', ' ')} {value} is outside 1 s - 30 days")
        if isinstance(self.silent_polls, bool) or not 1 <= self.silent_polls <= 1000:
            raise InputError(f"silent polls {self.silent_polls} is outside 1-1000")
        window = self.maintenance_window
        if window is not None and check_window(window) != window:
            raise InputError(f"maintenance window {window!r} is not in canonical form")
        if len(self.preset) > 32:
            raise InputError("preset name is too long")

    @property
    def silent_seconds(self) -> int:
        """Seconds without any report after which a device is silent."""
        return self.poll_interval_seconds * self.silent_polls

    def to_json(self) -> dict[str, Any]:
        return {
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold,
            "soak_seconds": self.soak_seconds,
            "min_devices": self.min_devices,
            "stall_timeout_seconds": self.stall_timeout_seconds,
            "reboot_timeout_seconds": self.reboot_timeout_seconds,
            "poll_interval_seconds": self.poll_interval_seconds,
            "silent_polls": self.silent_polls,
            "maintenance_window": self.maintenance_window,
            "preset": self.preset,
            "retry_failed": self.retry_failed,
            "retry_backoff_seconds": self.retry_backoff_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutOptions:
        """Build options from JSON; missing fields take their defaults.

        Raises:
            InputError: an unknown field or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise InputError("rollout options must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown rollout options: {', '.join(sorted(unknown))}")
        defaults = cls()
        try:
            window = data.get("maintenance_window")
            ints: dict[str, int] = {}
            for name in (
                "soak_seconds",
                "min_devices",
                "stall_timeout_seconds",
                "reboot_timeout_seconds",
                "poll_interval_seconds",
                "silent_polls",
                "retry_failed",
                "retry_backoff_seconds",
            ):
                value = data.get(name, getattr(defaults, name))
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"{name} must be a number")
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number")
                if int(value) != value:
                    raise ValueError(f"{name} must be a whole number")
                ints[name] = int(value)
            fractions: dict[str, float] = {}
            for name in ("success_threshold", "failure_threshold"):
                value = data.get(name, getattr(defaults, name))
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"{name} must be a number")
                fractions[name] = float(value)
            return cls(
                success_threshold=fractions["success_threshold"],
                failure_threshold=fractions["failure_threshold"],
                soak_seconds=ints["soak_seconds"],
                min_devices=ints["min_devices"],
                stall_timeout_seconds=ints["stall_timeout_seconds"],
                reboot_timeout_seconds=ints["reboot_timeout_seconds"],
                poll_interval_seconds=ints["poll_interval_seconds"],
                silent_polls=ints["silent_polls"],
                maintenance_window=None if window is None else str(window),
                preset=str(data.get("preset", "")),
                retry_failed=ints["retry_failed"],
                retry_backoff_seconds=ints["retry_backoff_seconds"],
            )
        except (TypeError, ValueError) as e:
            raise InputError(f"rollout options are malformed: {e}") from e


@dataclass(frozen=True)
class NewDevice:
    """A device to register in bulk (``TrackerStore.register_devices``)."""

    device_id: str
    hardware_id: str
    public_key: Mapping[str, Any] = field(compare=False)
    tags: tuple[str, ...] = ()
    status: str = "accepted"
    installed_version: str | None = None


@dataclass(frozen=True)
class DeviceRecord:
    """A registered device and what its last accepted report said.

    ``state`` is None until the first report. ``target_version`` and
    ``rollout_id`` are what the device last said it was working towards. The
    ``failed_*`` fields keep the last counted ``failed``/``rolled_back`` report
    (state, version, rollout, time, error code and message) even after later
    heartbeats, so a failure and its reason (say the health check's output) are
    not forgotten when the device goes idle.
    ``state_since`` is when ``state`` last changed; ``progress_at`` is when the
    state or ``bytes_done`` last changed (stall detection reads both).
    ``clock_skew`` is how many seconds the device's clock was ahead of the
    server's in its last report that carried a time (negative: behind).
    """

    device_id: str
    hardware_id: str
    tags: tuple[str, ...]
    public_key: Mapping[str, Any] = field(compare=False)
    status: str
    registered_at: datetime
    last_seq: int = 0
    installed_version: str | None = None
    target_version: str | None = None
    rollout_id: str | None = None
    state: str | None = None
    last_seen: datetime | None = None
    error_code: str | None = None
    error_message: str = ""
    failed_state: str | None = None
    failed_version: str | None = None
    failed_rollout_id: str | None = None
    failed_at: datetime | None = None
    state_since: datetime | None = None
    progress_at: datetime | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    clock_skew: int | None = None
    failed_code: str | None = None
    failed_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "hardware_id": self.hardware_id,
            "tags": list(self.tags),
            "public_key": dict(self.public_key),
            "status": self.status,
            "registered_at": _time(self.registered_at),
            "last_seq": self.last_seq,
            "installed_version": self.installed_version,
            "target_version": self.target_version,
            "rollout_id": self.rollout_id,
            "state": self.state,
            "last_seen": _time(self.last_seen),
            "error_code": self.error_code,
            "error_message": self.error_message,
            "failed_state": self.failed_state,
            "failed_version": self.failed_version,
            "failed_rollout_id": self.failed_rollout_id,
            "failed_at": _time(self.failed_at),
            "state_since": _time(self.state_since),
            "progress_at": _time(self.progress_at),
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "clock_skew": self.clock_skew,
            "failed_code": self.failed_code,
            "failed_message": self.failed_message,
        }


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as the tracker stores it.

    ``revision`` grows by one with every change; ``published_revision`` is the
    revision whose document the publisher last accepted. ``failures_since`` is
    when the rollout last became active: failures reported before it no longer
    pause the rollout (so a resume is not undone by old failures).
    ``wave_opened_at[k]`` is when wave k opened, for the waves opened so far.
    ``retry_generation`` counts the re-offers to failed devices so far (the
    signed document's ``retry``), the latest made at ``retried_at``: a
    failure reported before ``retried_at`` is being retried, not final.
    """

    rollout_id: str
    hardware_id: str
    version: str
    target_path: str
    waves: tuple[Wave, ...]
    options: RolloutOptions
    state: str
    current_wave: int
    reason: str
    created_at: datetime
    updated_at: datetime
    wave_started_at: datetime
    failures_since: datetime
    revision: int
    published_revision: int
    wave_opened_at: tuple[datetime, ...] = ()
    retry_generation: int = 0
    retried_at: datetime | None = None

    def opened_at(self, wave: int) -> datetime:
        """When ``wave`` opened (the rollout's start for wave 0 and unknown waves)."""
        if 0 <= wave < len(self.wave_opened_at):
            return self.wave_opened_at[wave]
        return self.wave_started_at if wave == self.current_wave else self.created_at

    @property
    def live(self) -> bool:
        """True while active or paused, i.e. not finished."""
        return self.state in ("active", "paused")

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "hardware_id": self.hardware_id,
            "version": self.version,
            "target_path": self.target_path,
            "waves": [w.to_json() for w in self.waves],
            "options": self.options.to_json(),
            "state": self.state,
            "current_wave": self.current_wave,
            "reason": self.reason,
            "created_at": _time(self.created_at),
            "updated_at": _time(self.updated_at),
            "wave_started_at": _time(self.wave_started_at),
            "failures_since": _time(self.failures_since),
            "revision": self.revision,
            "published_revision": self.published_revision,
            "wave_opened_at": [format_time(t) for t in self.wave_opened_at],
            "retry_generation": self.retry_generation,
            "retried_at": _time(self.retried_at),
        }


@dataclass(frozen=True)
class Event:
    """One history entry: a device change or a rollout change, with its reason."""

    event_id: int
    at: datetime
    kind: str
    device_id: str | None = None
    rollout_id: str | None = None
    state: str | None = None
    version: str | None = None
    wave: int | None = None
    seq: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "at": format_time(self.at),
            "kind": self.kind,
            "device_id": self.device_id,
            "rollout_id": self.rollout_id,
            "state": self.state,
            "version": self.version,
            "wave": self.wave,
            "seq": self.seq,
            "reason": self.reason,
        }
