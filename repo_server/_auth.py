"""Operator access: API tokens with one role each, checked on every endpoint that needs one.

Roles and what they may do::

    viewer    read rollouts, devices, fleet, dashboard, metrics
    operator  what a viewer may, plus start/pause/resume/abort/advance rollouts,
              register/accept/revoke devices
    uploader  upload signed release bundles (and nothing else)

Tokens look like ``tfo_<id>_<secret>``; only a SHA-256 of each is stored (in
``REPO/tokens.json``, written atomically), so a stolen file grants nothing.
Comparison is constant-time. Device reports do not use tokens: they are
authenticated by the device's signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import Request

from repo_server._errors import ApiError
from tufota_core import InputError, NotFoundError, RepositoryError, format_time, utcnow

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


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """API tokens kept in a JSON file (hashes only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> list[TokenRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise RepositoryError(f"cannot read {self.path}: {e}") from e
        try:
            return [TokenRecord(**t) for t in data["tokens"]]
        except (KeyError, TypeError) as e:
            raise RepositoryError(f"{self.path} is malformed: {e}") from e

    def _write(self, records: list[TokenRecord]) -> None:
        body = json.dumps({"tokens": [asdict(r) for r in records]}, indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(self, name: str, role: str) -> str:
        """Create a token and return it; it is shown once and never stored.

        Raises:
            InputError: unknown role or empty name.
        """
        if role not in ROLES:
            raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not name or len(name) > 64:
            raise InputError("a token needs a name of 1-64 characters")
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        token = f"{_PREFIX}{token_id}_{secret}"
        with self._lock:
            records = self._read()
            records.append(TokenRecord(token_id, name, role, _digest(token), format_time(utcnow())))
            self._write(records)
        return token

    def revoke(self, token_id: str) -> None:
        """Delete a token. Raises NotFoundError."""
        with self._lock:
            records = self._read()
            kept = [r for r in records if r.token_id != token_id]
            if len(kept) == len(records):
                raise NotFoundError(f"no token with id {token_id}")
            self._write(kept)

    def list(self) -> list[TokenRecord]:
        return self._read()

    def authenticate(self, token: str) -> Principal | None:
        """The token's principal, or None when the token is unknown."""
        if not token.startswith(_PREFIX):
            return None
        token_id = token[len(_PREFIX) :].split("_", 1)[0]
        digest = _digest(token)
        for record in self._read():
            if record.token_id == token_id and hmac.compare_digest(record.sha256, digest):
                return Principal(record.name, record.role)
        return None


LOCAL_VIEWER = Principal("local", "viewer")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def principal_of(
    request: Request, tokens: TokenStore | None, local_viewer: bool
) -> Principal | None:
    """Who is asking: from ``Authorization: Bearer``, else the local-only viewer, else None.

    Raises:
        ApiError: 401 when a token is given but unknown or malformed.
    """
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "bad_token", "use 'Authorization: Bearer <token>'")
        principal = tokens.authenticate(token.strip()) if tokens is not None else None
        if principal is None:
            raise ApiError(401, "bad_token", "unknown or revoked API token")
        return principal
    client = request.client.host if request.client else ""
    if local_viewer and client in _LOOPBACK:
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
