"""Which replica leads: the one that runs the controller and refreshes the online roles.

Every replica answers devices, the API, ``/metrics`` and the dashboard. Only
the leader runs the rollout controller's ticks (gates, waves, stall monitors,
watchdog, alert delivery) and the online-role refresh.

Invariants:
* The leader holds the tracker's leader lock (``store.leader_lock``): a
  PostgreSQL session advisory lock on a connection of its own, or an ``flock``
  beside an SQLite file. The database or kernel releases it when the holder
  dies, so a follower that tries every ``check_seconds`` takes over within
  about that long (a host that vanishes: within the TCP keepalive time).
* A leader checks that its lock is still held before each piece of leader
  work; one that lost it stops leading at once. The controller's writes are
  compare-and-set on the rollout's revision, so a deposed leader's late write
  fails instead of overwriting its successor's.
* The leader records its name in the tracker (setting ``leader``), so every
  replica can say who leads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tufota_core import TufotaError, format_time, utcnow

logger = logging.getLogger(__name__)


class LeaderLock(Protocol):
    def try_acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class _Always:
    """The lock of a server that is alone by construction (tests, the demo)."""

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None


def default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class LeaderState:
    leading: bool
    since: datetime | None
    changes: int


class Leadership:
    """This replica's claim on leadership.

    Args:
        lock: the tracker's leader lock; None: always lead (a single server).
        replica: this replica's name, as operators see it.
        store: where the leader records its name (``put_setting``), if anywhere.
    """

    def __init__(self, lock: LeaderLock | None = None, replica: str = "", store: Any = None):
        self._lock: LeaderLock = lock or _Always()
        self.replica = replica or default_replica_name()
        self._store = store
        self._guard = threading.Lock()
        self.state = LeaderState(False, None, 0)

    @property
    def leading(self) -> bool:
        return self.state.leading

    def check(self) -> bool:
        """Keep or try to take the lock; True when this replica leads now."""
        with self._guard:
            try:
                held = self._lock.held() if self.state.leading else self._lock.try_acquire()
            except TufotaError as e:
                logger.warning("leader check of %s failed: %s", self.replica, e)
                held = False
            if held and not self.state.leading:
                self.state = LeaderState(True, utcnow(), self.state.changes + 1)
                logger.info(
                    "replica %s leads: runs the controller and the online refresh", self.replica
                )
                self._record()
            elif not held and self.state.leading:
                self.state = LeaderState(False, None, self.state.changes + 1)
                logger.warning("replica %s lost the leader lock; it stops leading", self.replica)
            return held

    def _record(self) -> None:
        if self._store is None:
            return
        try:
            self._store.put_setting(
                "leader", {"replica": self.replica, "since": format_time(utcnow())}
            )
        except TufotaError as e:
            logger.warning("cannot record the leader: %s", e)

    def leader_name(self) -> str | None:
        """Who leads, as the leader recorded it (this replica's name when it leads)."""
        if self.state.leading:
            return self.replica
        if self._store is None:
            return None
        try:
            found = self._store.get_setting("leader")
        except TufotaError:
            return None
        return str(found["replica"]) if isinstance(found, dict) and "replica" in found else None

    def release(self) -> None:
        with self._guard:
            self._lock.release()
            if self.state.leading:
                self.state = LeaderState(False, None, self.state.changes + 1)
