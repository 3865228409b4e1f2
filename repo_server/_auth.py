"""Operator access: API tokens with one role each, checked on every endpoint that needs one.

Roles and what they may do::

    viewer    read rollouts, devices, fleet, dashboard, metrics
    operator  what a viewer may, plus start/pause/resume/abort/advance rollouts,
              register/accept/revoke devices
    uploader  upload signed release bundles (and nothing else)

Tokens look like ``tfo_<id>_<secret>``; only a SHA-256 of each is stored (in
the tracker database, so every replica sees the same tokens), so a stolen
database grants nothing.
Comparison is constant-time. A token may carry an expiry; past it, requests
get 401 ``token_expired``. Device reports do not use tokens: they are
authenticated by the device's signature.

Every API read needs a token by default. The local viewer (tokenless reads
from loopback) exists only when the operator turns it on, and never applies
to a request that came through a proxy (``Forwarded``, ``X-Forwarded-For``
or ``X-Real-IP`` present): behind a same-host proxy every client is loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from repo_server._errors import ApiError
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    format_time,
    parse_time,
    utcnow,
)

if TYPE_CHECKING:
    from staging import SqlTrackerStore

logger = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "uploader")
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "operate"}),
    "uploader": frozenset({"upload"}),
}
_PREFIX = "tfo_"


@dataclass(frozen=True)
class Principal:
    """Who made a request: a named token with a role, or the local-only default."""

    name: str
    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    role: str
    sha256: str
    created: str
    expires: str | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and parse_time(self.expires) <= now


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """API tokens in the tracker database (hashes only), so every replica sees the same ones.

    Args:
        tracker: the tracker store (``api_tokens`` table, schema v4).
        owned: close ``tracker`` with this store.
    """

    def __init__(self, tracker: SqlTrackerStore, *, owned: bool = False) -> None:
        self.tracker = tracker
        self._owned = owned

    def import_file(self, path: Path) -> int:
        """Import the tokens of a pre-v4 ``tokens.json`` once, then rename the file.

        Tokens already in the database are kept as they are. Returns how many were added.

        Raises:
            RepositoryError: the file exists but cannot be read or is malformed.
        """
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            raise RepositoryError(f"cannot read {path}: {e}") from e
        try:
            records = [TokenRecord(**t) for t in data["tokens"]]
        except (KeyError, TypeError) as e:
            raise RepositoryError(f"{path} is malformed: {e}") from e
        added = 0
        for record in records:
            if self.tracker.get_token(record.token_id) is None:
                try:
                    self.tracker.add_token(asdict(record))
                    added += 1
                except ConflictError:
                    pass  # another replica imported it meanwhile
        with contextlib.suppress(OSError):
            path.replace(path.with_name(path.name + ".imported"))
        logger.info("imported %d API tokens from %s into the tracker", added, path)
        return added

    def create(self, name: str, role: str, lifetime: timedelta | None = None) -> str:
        """Create a token and return it; it is shown once and never stored.

        Args:
            lifetime: how long the token is valid; None: until revoked.

        Raises:
            InputError: unknown role, empty name or a lifetime that is not positive.
        """
        if role not in ROLES:
            raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not name or len(name) > 64:
            raise InputError("a token needs a name of 1-64 characters")
        if lifetime is not None and lifetime <= timedelta(0):
            raise InputError("a token's lifetime must be positive")
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        token = f"{_PREFIX}{token_id}_{secret}"
        now = utcnow()
        expires = format_time(now + lifetime) if lifetime is not None else None
        record = TokenRecord(token_id, name, role, _digest(token), format_time(now), expires)
        self.tracker.add_token(asdict(record))
        return token

    def revoke(self, token_id: str) -> None:
        """Delete a token. Raises NotFoundError."""
        if not self.tracker.remove_token(token_id):
            raise NotFoundError(f"no token with id {token_id}")

    def list(self) -> list[TokenRecord]:
        return [TokenRecord(**r) for r in self.tracker.list_tokens()]

    def lookup(self, token: str) -> TokenRecord | None:
        """The token's record (expired or not), or None when the token is unknown."""
        if not token.startswith(_PREFIX):
            return None
        token_id = token[len(_PREFIX) :].split("_", 1)[0]
        if not token_id or len(token_id) > 64:
            return None
        found = self.tracker.get_token(token_id)
        if found is None:
            return None
        record = TokenRecord(**found)
        return record if hmac.compare_digest(record.sha256, _digest(token)) else None

    def authenticate(self, token: str) -> Principal | None:
        """The token's principal, or None when the token is unknown or expired."""
        record = self.lookup(token)
        if record is None or record.expired(utcnow()):
            return None
        return Principal(record.name, record.role)

    def close(self) -> None:
        if self._owned:
            self.tracker.close()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


LOCAL_VIEWER = Principal("local", "viewer")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def principal_of(
    request: Request, tokens: TokenStore | None, local_viewer: bool
) -> Principal | None:
    """Who is asking: from ``Authorization: Bearer``, else the local viewer (when on), else None.

    Raises:
        ApiError: 401 when a token is given but unknown, expired or malformed.
    """
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "bad_token", "use 'Authorization: Bearer <token>'")
        record = tokens.lookup(token.strip()) if tokens is not None else None
        if record is None:
            raise ApiError(401, "bad_token", "unknown or revoked API token")
        if record.expired(utcnow()):
            raise ApiError(
                401, "token_expired", f"token expired at {record.expires}; create a new one"
            )
        return Principal(record.name, record.role)
    if not local_viewer or any(h in request.headers for h in _PROXY_HEADERS):
        return None
    client = request.client.host if request.client else ""
    if client in _LOOPBACK:
        return LOCAL_VIEWER
    return None


def requirement(
    permission: str, tokens: Callable[[], TokenStore | None], local_viewer: Callable[[], bool]
) -> Callable[[Request], Principal]:
    """A FastAPI dependency that admits only principals with ``permission``."""

    def check(request: Request) -> Principal:
        principal = principal_of(request, tokens(), local_viewer())
        if principal is None or (principal is LOCAL_VIEWER and not principal.may(permission)):
            raise ApiError(401, "unauthenticated", "this endpoint needs an API token")
        if not principal.may(permission):
            raise ApiError(403, "forbidden", f"role {principal.role} may not {permission}")
        return principal

    return check
