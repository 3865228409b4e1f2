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
        lock_timeout_seconds: how long a publisher waits for another
            publisher's lock before failing with ``ConflictError``.
        lock_lease_seconds: S3 only: how long a publishing lock is valid. A
            lock older than this is presumed abandoned by a crashed writer and
            taken over, so it must exceed the longest publish.
        lock_poll_seconds: S3 only: how often a waiting publisher retries.
        refresh_interval_seconds: how often the server checks whether the
            online roles need re-signing.
    """

    max_upload_bytes: int = 2 * 1024**3
    bundle: BundleLimits = field(default_factory=BundleLimits)
    upload_dir: str | None = None
    max_json_bytes: int = 64 * 1024
    lock_timeout_seconds: float = 60.0
    lock_lease_seconds: float = 900.0
    lock_poll_seconds: float = 0.2
    refresh_interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_json_bytes"):
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
