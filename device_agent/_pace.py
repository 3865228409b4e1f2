"""Pacing a transfer: a bandwidth cap, a stall detector and a persisted data budget.

Invariants:
* ``Throttle`` keeps the average rate since the transfer started at or below
  the cap (it only ever sleeps; it never drops bytes).
* ``StallGuard`` answers with a reason once a whole window passed with fewer
  than ``min_rate * window`` bytes: an endless trickle is a slow-retrieval
  attack (TUF specification, section 5 "slow retrieval").
* ``DataBudget`` never lets ``remaining`` go up within a period; its file
  (``budget.json``) is replaced atomically, and a crash loses at most the
  bytes charged since the last save.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_agent._fs import atomic_write_json, read_json
from tufota_core import RepositoryError


class Throttle:
    """Sleeps so that the average rate since ``start`` stays at or below ``rate`` bytes/s."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._start = clock()
        self._bytes = 0

    def account(self, n: int) -> None:
        if self._rate <= 0:
            return
        self._bytes += n
        ahead = self._bytes / self._rate - (self._clock() - self._start)
        if ahead > 0:
            time.sleep(ahead)


class StallGuard:
    """Notices when fewer than ``min_rate`` bytes/s arrived over the last ``window`` seconds."""

    def __init__(self, min_rate: float, window: float) -> None:
        self._min = min_rate * window
        self._rate = min_rate
        self._window = window
        self._start = time.monotonic()
        self._bytes = 0

    def account(self, n: int) -> str | None:
        """Count ``n`` bytes; return why the transfer is too slow, or None."""
        self._bytes += n
        now = time.monotonic()
        if now - self._start >= self._window:
            if self._bytes < self._min:
                return (
                    f"{self._bytes} bytes in {now - self._start:.1f} s, "
                    f"below the minimum of {self._rate:g} bytes/s"
                )
            self._start, self._bytes = now, 0
        return None


class DataBudget:
    """At most ``budget`` bytes fetched per ``period`` seconds, persisted in ``path``."""

    def __init__(self, path: Path, budget: int, period: float, save_every: int) -> None:
        self._path = path
        self._budget = budget
        self._period = period
        self._save_every = save_every
        self._unsaved = 0
        self._start, self._used = self._load()

    def _load(self) -> tuple[float, int]:
        try:
            data = read_json(self._path)
            start, used = float(data["period_start"]), int(data["used"])
        except (FileNotFoundError, RepositoryError, KeyError, TypeError, ValueError):
            return time.time(), 0
        now = time.time()
        if not start <= now < start + self._period:
            return now, 0
        return start, used

    @property
    def remaining(self) -> int:
        now = time.time()
        if now >= self._start + self._period:
            self._start, self._used = now, 0
        return max(self._budget - self._used, 0)

    def charge(self, n: int) -> None:
        self._used += n
        self._unsaved += n
        if self._unsaved >= self._save_every:
            self.save()

    def save(self) -> None:
        self._unsaved = 0
        atomic_write_json(self._path, {"period_start": self._start, "used": self._used})

    def describe(self) -> dict[str, Any]:
        return {
            "budget": self._budget,
            "used": self._used,
            "period_seconds": self._period,
            "period_start": self._start,
        }
