"""The CLI's HTTP client for remote mode: one server URL, one bearer token.

Invariants:

* Every request has a connect and a read timeout and a cap on the response
  body (``ClientLimits``); a larger answer is refused, not buffered.
* TLS is verified against ``--ca-bundle`` (or the profile's) when given, and
  that choice beats ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, as the device
  agent does; otherwise those variables, else requests' bundle.
* Every failure is one line: 401/403 raise ``RefusedError`` (exit 3) naming
  the role the command needs; an unreachable server raises
  ``TransportError`` naming the URL (exit 1); 4xx with the server's
  ``{"error", "message"}`` body map to the project's errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import quote, urlsplit

import requests

from device_agent import ca_session
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    TransportError,
    TufotaError,
)

EXIT_REFUSED = 3
USER_AGENT = "tufota-cli/0.1"


T = TypeVar("T")


class RefusedError(TufotaError):
    """The server refused the token (401) or its role (403); nothing changed. Exit 3."""

    exit_code = EXIT_REFUSED


@dataclass(frozen=True)
class ClientLimits:
    """Timeouts and the response cap of the CLI's HTTP client.

    Attributes:
        connect_timeout: seconds to open the connection.
        read_timeout: seconds between bytes of an answer (uploads: ``upload_timeout``).
        total_timeout: seconds for a whole request and its answer, however the
            server trickles it (uploads are bounded by their read timeouts only).
        upload_timeout: seconds for a release bundle upload.
        max_response_bytes: the largest answer read (fleet status of a large fleet fits).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    total_timeout: float = 120.0
    upload_timeout: float = 300.0
    max_response_bytes: int = 64 * 1024 * 1024


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash. Raises InputError unless it is http(s)://HOST[:PORT]."""
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # both parse lazily and may raise
    except ValueError as e:
        raise InputError(f"server URL {url!r} is not http(s)://HOST[:PORT]: {e}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise InputError(f"server URL {url!r} is not http(s)://HOST[:PORT]")
    if parts.query or parts.fragment:
        raise InputError(f"server URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


class ApiClient:
    """JSON requests to one tufota server with one token."""

    def __init__(
        self,
        server: str,
        token: str | None,
        ca_bundle: str | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        self.server = check_server_url(server)
        self.limits = limits or ClientLimits()
        self._token = token
        self.has_token = bool(token)
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise NotFoundError(f"CA bundle {ca_bundle} does not exist")
        self._session = ca_session(ca_bundle, USER_AGENT)

    def request(
        self,
        method: str,
        path: str,
        *,
        role: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        data: BinaryIO | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> tuple[int, Any]:
        """Send one request; the status and the decoded JSON answer.

        ``role`` is the least role the call needs, named in a refusal.

        Raises:
            RefusedError: 401 or 403.
            TransportError: the server cannot be reached, timed out, or answered
                something that is not JSON or is larger than the cap.
            NotFoundError, ConflictError, InputError: 404, 409, other 4xx.
        """
        url = self.server + path
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        read = self.limits.upload_timeout if data is not None else self.limits.read_timeout
        query = {k: v for k, v in (params or {}).items() if v is not None}

        def exchange() -> tuple[int, bytes]:
            try:
                with self._session.request(
                    method,
                    url,
                    params=query,
                    json=body,
                    data=data,
                    headers=headers,
                    timeout=(self.limits.connect_timeout, read),
                    stream=True,
                    allow_redirects=False,
                ) as response:
                    return response.status_code, self._read(response, url)
            except requests.ConnectionError as e:
                raise TransportError(
                    f"cannot reach the server at {self.server}: {_short(e)}"
                ) from e
            except requests.Timeout as e:
                raise TransportError(f"the server at {self.server} did not answer in time") from e
            except requests.RequestException as e:
                raise TransportError(f"request to {url} failed: {_short(e)}") from e

        status, raw = (
            exchange() if data is not None else _within(self.limits.total_timeout, exchange, url)
        )
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            answer = None
        if status in ok and answer is not None:
            return status, answer
        raise _error(status, answer, f"{method} {path}", role, self.server)

    def _read(self, response: requests.Response, url: str) -> bytes:
        cap = self.limits.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise TransportError(f"the answer from {url} is larger than {cap} bytes")
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise TransportError(f"the answer from {url} is larger than {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        return self.request("GET", path, role=role, params=params)[1]

    def post(self, path: str, body: dict[str, Any] | None = None, role: str = "operator") -> Any:
        return self.request("POST", path, role=role, body=body or {})[1]


def _within(seconds: float, call: Callable[[], T], url: str) -> T:
    """``call()`` in a worker thread, given up after ``seconds`` however the server trickles.

    Per-read timeouts cannot bound an answer that arrives a byte at a time; the
    abandoned worker is a daemon thread and ends with the command.
    """
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed to the caller's thread below
            outcome.append((False, e))

    worker = threading.Thread(target=work, name="tufota-request", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise TransportError(f"{url} did not finish answering within {seconds:.0f} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def segment(text: str) -> str:
    """``text`` quoted as one URL path segment (an id never walks the path)."""
    return quote(text, safe="")


def _short(e: Exception) -> str:
    # requests nests urllib3's reason several levels deep; the last part says why.
    text = str(e).replace("\n", " ")
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip(" ()'\"")[:200] or type(e).__name__


def _a(role: str) -> str:
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"


def _error(status: int, answer: Any, what: str, role: str, server: str) -> TufotaError:
    message = ""
    if isinstance(answer, dict):
        message = str(answer.get("message") or answer.get("detail") or "")[:300]
    if status == 401:
        return RefusedError(
            f"{what}: the server at {server} refused the token (HTTP 401"
            f"{f': {message}' if message else ''}); this needs {_a(role)} token "
            "(--token, TUFOTA_TOKEN or 'tufota login')"
        )
    if status == 403:
        return RefusedError(
            f"{what}: refused by authorisation (HTTP 403"
            f"{f': {message}' if message else ''}); this needs {_a(role)} token"
        )
    if status == 404:
        if message and message != "Not Found":  # the framework's bare text names no object
            return NotFoundError(message)
        return NotFoundError(f"{what}: not found on {server} (is that the server's base URL?)")
    if status == 409:
        return ConflictError(message or f"{what}: conflict")
    if 400 <= status < 500:
        return InputError(message or f"{what}: the server refused the request (HTTP {status})")
    return TransportError(
        f"{what}: the server at {server} answered HTTP {status}"
        + (f": {message}" if message else "")
    )
