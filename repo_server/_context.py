"""What the server's routes share: publisher, tracker, controller, tokens, settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from repo_server._auth import Principal, TokenStore, requirement
from repo_server._publisher import Publisher
from staging import RolloutController, TrackerStore


@dataclass
class ServerContext:
    """Everything a route or background task of the server uses.

    Attributes:
        local_viewer: requests from loopback without a token may read (viewer).
    """

    publisher: Publisher
    store: TrackerStore
    controller: RolloutController
    tokens: TokenStore | None = None
    local_viewer: bool = True
    tick_interval: float = 5.0
    refresh_interval: float = 60.0

    def require(self, permission: str) -> Callable[[Request], Principal]:
        """A FastAPI dependency admitting principals with ``permission`` (read, operate, upload)."""
        return requirement(permission, lambda: self.tokens, lambda: self.local_viewer)
