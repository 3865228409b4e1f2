"""Limits and defaults of the staging package, in one place.

Invariant: every value has a safe default, so ``StagingConfig()`` is a working
configuration; a deployment overrides fields, never code.
"""

from __future__ import annotations

from dataclasses import dataclass

from tufota_core import InputError

MAX_DURATION_SECONDS = 365 * 86400
"""Upper bound of every duration staging accepts (soak, timeouts, poll, grace, backoff).

Checked where a duration enters (``parse_duration``, ``RolloutOptions``,
``AlertSettings``), before anything is created, so no stored value can push
a date past what ``datetime`` represents.
"""


@dataclass(frozen=True)
class StagingConfig:
    """Limits of the tracker store and the rollout controller.

    Attributes:
        busy_timeout_seconds: how long a writer waits for another process's
            write lock on the tracker (SQLite file or PostgreSQL) before
            failing with ``StoreError``.
        pool_size: most PostgreSQL connections one store object opens.
        max_tags: most tags one device may carry.
        max_public_key_bytes: largest serialised public key accepted at registration.
        max_reason_length: longest reason text stored with a rollout change.
        history_limit: most events ``device_history``/``rollout_history`` return.
        max_steps_per_tick: most wave changes one rollout makes in one ``tick``
            (several happen only when waves hold no devices of their own).
        max_findings_per_rollout: most stalled devices one tick examines per
            rollout (the rest are found once these recover or resolve).
        notification_attempts: tries per alert notification across ticks
            before it is given up (and logged as lost).
        notification_backoff_seconds: wait before the second try across ticks;
            doubles with each further try, capped at one hour.
        notifications_per_tick: most notifications one tick delivers.
        fleet_check_seconds: least time between two runs of the fleet-wide
            monitors (metadata expiry, unpatched vulnerabilities).
        clock_skew_seconds: a device whose report's own time (``Report.time``)
            is ahead of the server's clock by more than this raises a
            ``device_clock_skew`` alert (it would find valid metadata expired).
            A time behind is not flagged: reports queued while offline are
            legitimately older than their arrival.
    """

    busy_timeout_seconds: float = 10.0
    max_tags: int = 32
    max_public_key_bytes: int = 8 * 1024
    max_reason_length: int = 1024
    history_limit: int = 1000
    max_steps_per_tick: int = 32
    max_findings_per_rollout: int = 10_000
    notification_attempts: int = 8
    notification_backoff_seconds: float = 30.0
    notifications_per_tick: int = 500
    fleet_check_seconds: float = 60.0
    clock_skew_seconds: float = 300.0
    pool_size: int = 8

    def __post_init__(self) -> None:
        for name in (
            "busy_timeout_seconds",
            "notification_backoff_seconds",
            "fleet_check_seconds",
            "clock_skew_seconds",
        ):
            value = getattr(self, name)
            if not 0 <= value <= MAX_DURATION_SECONDS:  # also refuses NaN
                raise InputError(f"{name} {value} is outside 0 s - 365 days")
        if self.clock_skew_seconds == 0:
            raise InputError("clock_skew_seconds must be above 0")
        for name in (
            "max_tags",
            "max_public_key_bytes",
            "max_reason_length",
            "history_limit",
            "max_steps_per_tick",
            "max_findings_per_rollout",
            "notification_attempts",
            "notifications_per_tick",
            "pool_size",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1")
