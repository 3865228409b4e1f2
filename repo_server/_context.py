"""What the server's routes share: publisher, tracker, controller, tokens, settings.

Invariant: the online-role refresh goes through ``ServerContext.refresh_online``
so its outcome (when, what was re-signed, the last error) is what operators
see at ``GET /api/v1/repository``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request

from repo_server._auth import Principal, TokenStore, requirement
from repo_server._config import ServerLimits
from repo_server._ingest import ReportIngestor
from repo_server._leader import Leadership
from repo_server._publisher import Publisher
from staging import RolloutController, TrackerStore
from tufota_core import TufotaError, format_time, utcnow

logger = logging.getLogger(__name__)

FORGED_SETTING = "forged_rollout_targets"


@dataclass
class RefreshStatus:
    """The outcome of the last online-role refresh."""

    at: datetime | None = None
    renewed: list[str] = field(default_factory=list)
    error: str = ""
    last_renewal: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": format_time(self.at) if self.at else None,
            "renewed": list(self.renewed),
            "error": self.error,
            "last_renewal": format_time(self.last_renewal) if self.last_renewal else None,
        }


@dataclass
class ServerContext:
    """Everything a route or background task of the server uses.

    Attributes:
        local_viewer: requests from loopback without a token, and not through a
            proxy, may read (viewer). Off unless the operator turns it on.
        server_names: the Host names the server answers under (see ``_hosts``).
        loopback_names: also answer under localhost/127.0.0.1/::1 (the server
            is bound to loopback).
        limits: the server's caps and timeouts.
        storage_url: where the served tree lives, for operators.
    """

    publisher: Publisher
    store: TrackerStore
    controller: RolloutController
    tokens: TokenStore | None = None
    local_viewer: bool = False
    server_names: frozenset[str] = frozenset()
    loopback_names: bool = True
    tick_interval: float = 5.0
    refresh_interval: float = 60.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    storage_url: str = ""
    refresh: RefreshStatus = field(default_factory=RefreshStatus)
    leadership: Leadership = field(default_factory=Leadership)
    leader_check_interval: float = 1.0
    last_tick: datetime | None = None
    _ingestor: ReportIngestor | None = field(default=None, repr=False)
    _ingest_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _refresh_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def require(self, permission: str) -> Callable[[Request], Principal]:
        """A FastAPI dependency admitting principals with ``permission`` (read, operate, upload)."""
        return requirement(permission, lambda: self.tokens, lambda: self.local_viewer)

    def report_ingestor(self) -> ReportIngestor:
        """The one report ingestor (key cache, writer thread) of this context's store."""
        with self._ingest_lock:
            if self._ingestor is None:
                self._ingestor = ReportIngestor(self.store)
            return self._ingestor

    def tick_if_leading(self) -> None:
        """One controller tick, on the leader only (gates, waves, monitors, alerts)."""
        if not self.leadership.check():
            return
        self.controller.tick()
        self.last_tick = utcnow()

    def refresh_if_leading(self) -> None:
        """Re-sign the online roles due for it, on the leader only."""
        if self.leadership.check():
            self.refresh_online()

    def close_ingest(self) -> None:
        """Commit the queued reports and stop the writer thread (it restarts on demand)."""
        if self._ingestor is not None:
            self._ingestor.close()

    def refresh_online(self, margin: timedelta | None = None) -> list[str]:
        """Re-sign the online roles due for it and record the outcome.

        Raises:
            TufotaError: the refresh failed (also recorded in ``refresh.error``).
        """
        with self._refresh_lock:
            now = utcnow()
            try:
                renewed = self.publisher.refresh_online(margin)
            except TufotaError as e:
                self.refresh = RefreshStatus(now, [], str(e), self.refresh.last_renewal)
                logger.error("online role refresh failed: %s", e)
                self._share_refresh()
                raise
            self.refresh = RefreshStatus(
                now, renewed, "", now if renewed else self.refresh.last_renewal
            )
            self._share_refresh()
            return renewed

    def take_forged_targets(self) -> tuple[str, ...]:
        """Forged rollouts-role entries any replica dropped since the last call (the watchdog's)."""
        taken = set(self.publisher.take_forged_targets())
        take = getattr(self.store, "take_set", None)
        if take is not None:
            taken |= set(take(FORGED_SETTING))
        return tuple(sorted(taken))

    def _share_refresh(self) -> None:
        """Record the outcome in the tracker, so every replica shows the leader's refresh."""
        put = getattr(self.store, "put_setting", None)
        if put is None:
            return
        try:
            put("online_refresh", {**self.refresh.to_json(), "replica": self.leadership.replica})
        except TufotaError as e:
            logger.warning("cannot record the online refresh in the tracker: %s", e)

    def last_refresh(self) -> dict[str, Any]:
        """The latest online refresh of any replica (this one's when it refreshed)."""
        if self.refresh.at is not None:
            return {**self.refresh.to_json(), "replica": self.leadership.replica}
        get = getattr(self.store, "get_setting", None)
        try:
            shared = get("online_refresh") if get is not None else None
        except TufotaError:
            shared = None
        return shared if isinstance(shared, dict) else {**self.refresh.to_json(), "replica": None}
