"""Limits and defaults of the repository server, in one place.

Invariant: every value has a safe default, so ``ServerLimits()`` is a working
configuration; a deployment overrides fields, never code. ``__post_init__``
refuses values that would disable a limit (zero or negative caps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from signing import BundleLimits
from tufota_core import InputError


@dataclass(frozen=True)
class ServerLimits:
    """Caps and timeouts of the repository server.

    Attributes:
        max_upload_bytes: largest release bundle ``POST /api/v1/releases`` accepts
            (the request body, compressed or not); larger uploads get 413.
        bundle: caps on what a bundle may hold once unpacked (members, sizes).
        upload_dir: where uploads are spooled before verification (None: the
            system's temporary directory). Never the served tree.
        max_json_bytes: largest JSON body of an operator API request.
        max_concurrent_uploads: bundles verified at once; more wait their turn.
            Parsing metadata costs up to ~20x its size in memory, so this and
            ``bundle.max_metadata_bytes`` bound an upload's share of memory.
        lock_timeout_seconds: how long a publisher waits for another
            publisher's lock before failing with ``ConflictError``; longer than
            the lease, so a dead holder's lock is always taken over in time.
        lock_lease_seconds: S3 only: how long a publishing lock stays valid
            after its last renewal. A lock not renewed for this long is presumed
            abandoned by a crashed writer and taken over.
        lock_heartbeat_seconds: S3 only: how often the holder renews its
            lease while publishing; below ``lock_lease_seconds`` (None: a third of it).
        lock_poll_seconds: S3 only: how often a waiting publisher retries.
        refresh_interval_seconds: how often the server checks whether the
            online roles need re-signing.
    """

    max_upload_bytes: int = 2 * 1024**3
    bundle: BundleLimits = field(default_factory=BundleLimits)
    upload_dir: str | None = None
    max_json_bytes: int = 64 * 1024
    max_concurrent_uploads: int = 2
    lock_timeout_seconds: float = 40.0
    lock_lease_seconds: float = 30.0
    lock_heartbeat_seconds: float | None = None
    lock_poll_seconds: float = 0.2
    refresh_interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_json_bytes", "max_concurrent_uploads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1")
        for name in (
            "lock_timeout_seconds",
            "lock_lease_seconds",
            "lock_poll_seconds",
            "refresh_interval_seconds",
        ):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0")
        beat = self.lock_heartbeat_seconds
        if beat is not None and not 0 < beat < self.lock_lease_seconds:
            raise InputError("lock_heartbeat_seconds must be > 0 and below lock_lease_seconds")

    @property
    def heartbeat_seconds(self) -> float:
        """How often a publishing lock's holder renews its lease."""
        if self.lock_heartbeat_seconds is not None:
            return self.lock_heartbeat_seconds
        return self.lock_lease_seconds / 3
