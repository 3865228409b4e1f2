"""HTTP for the agent: the TUF fetcher (over a requests session) and the report sender.

Invariants:
* Every request has a connect and a read timeout from ``AgentLimits``; nothing
  here retries. Retrying is the poll loop's job, on its jittered schedule.
* One report delivery is bounded in time and memory whatever the other end
  does: it owns its socket, a watchdog shuts the socket down at
  ``report_deadline`` (so a trickle of headers, TLS handshake or body ends
  there), and at most ``max_report_answer_bytes`` of the answer are read; an
  answer cut short or too long means "retry later", never "delivered".
* TLS verification is always on for https: the configured CA bundle, or the
  system's default bundle.
* The fetcher raises only tuf's ``DownloadError`` family: HTTP status >= 400
  becomes ``DownloadHTTPError`` with that status, a timeout or a body
  trickling in slower than ``min_bytes_per_second`` becomes
  ``SlowRetrievalError``, any other network failure ``DownloadError``. Length
  caps and verification are ngclient's job, one layer up.
* ``FileFetcher`` serves ``file://`` URLs (offline bundles) under the same
  contract: a missing file is a 404 ``DownloadHTTPError``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from enum import Enum
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import requests
import requests.utils
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient.fetcher import FetcherInterface

from device_agent._config import AgentConfig, AgentLimits
from device_agent._pace import StallGuard

logger = logging.getLogger(__name__)

USER_AGENT = "tufota-agent/0.1"


class _PinnedCASession(requests.Session):
    """A session whose own ``verify`` beats ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests lets those variables override ``Session.verify`` (psf/requests#3829),
    which would silently replace a configured ``[server] ca_bundle``.
    """

    def merge_environment_settings(  # type: ignore[override]
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = self.verify
        return settings


def ca_session(ca_bundle: str | None, user_agent: str) -> requests.Session:
    """A session verifying TLS against ``ca_bundle`` (beating the environment), else system CAs."""
    session = _PinnedCASession() if ca_bundle else requests.Session()
    session.headers["User-Agent"] = user_agent
    session.verify = ca_bundle if ca_bundle else True
    # Proxies and .netrc from the environment stay allowed (requests default).
    return session


def make_session(config: AgentConfig) -> requests.Session:
    """A session that verifies TLS against the configured CA bundle (or the system one)."""
    return ca_session(str(config.ca_bundle) if config.ca_bundle else None, USER_AGENT)


class HttpFetcher(FetcherInterface):
    """``tuf.ngclient`` fetcher over a shared ``requests.Session``."""

    def __init__(self, session: requests.Session, limits: AgentLimits) -> None:
        self._session = session
        self._limits = limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Start a GET for ``url`` and return an iterator over its body.

        Raises:
            tuf.api.exceptions.DownloadHTTPError: the server answered with status >= 400.
            tuf.api.exceptions.SlowRetrievalError: connecting or reading timed out.
            tuf.api.exceptions.DownloadError: any other network failure.
        """
        timeout = (self._limits.connect_timeout, self._limits.read_timeout)
        try:
            response = self._session.get(url, stream=True, timeout=timeout)
        except requests.Timeout as e:
            raise tuf_exceptions.SlowRetrievalError(f"timed out fetching {url}") from e
        except requests.RequestException as e:
            raise tuf_exceptions.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status_code >= 400:
            response.close()
            raise tuf_exceptions.DownloadHTTPError(
                f"GET {url} answered HTTP {response.status_code}", response.status_code
            )
        return self._chunks(url, response)

    def _chunks(self, url: str, response: requests.Response) -> Iterator[bytes]:
        guard = StallGuard(self._limits.min_bytes_per_second, self._limits.slow_window)
        try:
            # read1: whatever has arrived, so a trickle is measured as it comes.
            while chunk := response.raw.read1(self._limits.chunk_size):
                if (slow := guard.account(len(chunk))) is not None:
                    raise tuf_exceptions.SlowRetrievalError(f"{url} is too slow: {slow}")
                yield chunk
        except tuf_exceptions.DownloadError:
            raise
        except requests.Timeout as e:
            raise tuf_exceptions.SlowRetrievalError(f"timed out reading {url}") from e
        except Exception as e:  # urllib3 and socket errors, whatever their class
            raise tuf_exceptions.DownloadError(f"connection lost reading {url}: {e}") from e
        finally:
            response.close()


class FileFetcher(FetcherInterface):
    """``tuf.ngclient`` fetcher for ``file://`` URLs (an offline bundle directory)."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk = chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Open the file a ``file://`` URL names and iterate over its bytes.

        Raises:
            tuf.api.exceptions.DownloadHTTPError: the file does not exist (status 404).
            tuf.api.exceptions.DownloadError: it cannot be read.
        """
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise tuf_exceptions.DownloadError(f"{url} is not a file:// URL")
        path = unquote(parsed.path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise tuf_exceptions.DownloadHTTPError(f"{path} does not exist", 404) from None
        except OSError as e:
            raise tuf_exceptions.DownloadError(f"cannot open {path}: {e}") from e
        return self._chunks(f)

    def _chunks(self, f: BinaryIO) -> Iterator[bytes]:
        with f:
            try:
                while chunk := f.read(self._chunk):
                    yield chunk
            except OSError as e:
                raise tuf_exceptions.DownloadError(f"cannot read {f.name}: {e}") from e


class Delivery(Enum):
    """What the server's answer to one report means for the outbox."""

    ACCEPTED = "accepted"  # 2xx: remove from the outbox
    DUPLICATE = "duplicate"  # 409: this seq was accepted before; remove
    REJECTED = "rejected"  # 400/422: malformed for the server, never accepted; remove
    UNAUTHORIZED = "unauthorized"  # 401/403: device unknown or revoked; keep, back off
    RETRY = "retry"  # 5xx, other statuses, network failure; keep, retry later


def classify_status(status: int) -> Delivery:
    """Map an HTTP status of the report endpoint to what the outbox does."""
    if status in (200, 201, 202):
        return Delivery.ACCEPTED
    if status == 409:
        return Delivery.DUPLICATE
    if status in (400, 422):
        return Delivery.REJECTED
    if status in (401, 403):
        return Delivery.UNAUTHORIZED
    return Delivery.RETRY


class _DeadlineError(Exception):
    """Internal: the report's deadline passed or its answer was too long."""


class _Watchdog:
    """Shuts ``sock`` down at ``deadline`` (monotonic), waking any blocked read or write."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                # The base class's shutdown, so a TLS socket's state is left alone.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock = None


def _proxy_for(scheme: str, host: str) -> tuple[str, int, str | None] | None:
    """The environment's http:// proxy for ``scheme`` (host, port, basic credentials), if any."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    if parsed.scheme != "http" or not parsed.hostname:
        return None
    auth = None
    if parsed.username is not None:
        pair = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return parsed.hostname, parsed.port or 80, auth


class ReportSender:
    """POSTs signed report envelopes to ``/api/v1/devices/{id}/reports``, each one bounded.

    It speaks HTTP/1.1 over its own socket (``http.client``) rather than the
    requests session, so that a watchdog can end a delivery at its deadline
    whatever phase it is in. TLS is verified against ``[server] ca_bundle``,
    else ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else requests' CA bundle
    (what the fetcher trusts). An ``http_proxy``/``https_proxy`` from the
    environment is used as requests would (absolute URI, or ``CONNECT``).
    """

    def __init__(self, config: AgentConfig) -> None:
        self._limits = config.limits
        self._url = f"{config.base_url}/api/v1/devices/{config.device_id}/reports"
        parsed = urlparse(self._url)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or ""
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path
        self._ca = str(config.ca_bundle) if config.ca_bundle else None
        self._context: ssl.SSLContext | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            cafile = (
                self._ca
                or os.environ.get("REQUESTS_CA_BUNDLE")
                or os.environ.get("CURL_CA_BUNDLE")
                or requests.utils.DEFAULT_CA_BUNDLE_PATH
            )
            self._context = ssl.create_default_context(cafile=cafile)
        return self._context

    def send(self, envelope: dict[str, Any], deadline: float | None = None) -> tuple[Delivery, str]:
        """Send one envelope; return what the answer means and a short reason. Never raises.

        Args:
            envelope: The signed report.
            deadline: A ``time.monotonic()`` instant the delivery must end by, if
                sooner than ``report_deadline`` from now.
        """
        limits = self._limits
        end = time.monotonic() + limits.report_deadline
        if deadline is not None:
            end = min(end, deadline)
        body = json.dumps(envelope, separators=(",", ":")).encode()
        watchdog = _Watchdog(end)
        try:
            status, detail = self._post(body, end, watchdog)
        except (_DeadlineError, OSError, ValueError, http.client.HTTPException) as e:
            if watchdog.fired:
                reason = f"no complete answer within {limits.report_deadline:g} s"
            elif isinstance(e, _DeadlineError):
                reason = str(e)
            else:
                reason = f"{type(e).__name__}: {e}"[:200]
            return Delivery.RETRY, f"cannot deliver to {self._url}: {reason}"
        finally:
            watchdog.close()
        if watchdog.fired:  # http.client returns a cut body as if it were whole
            return Delivery.RETRY, (
                f"cannot deliver to {self._url}: no complete answer within "
                f"{limits.report_deadline:g} s"
            )
        return classify_status(status), f"HTTP {status} {detail}".rstrip()

    def _post(self, body: bytes, end: float, watchdog: _Watchdog) -> tuple[int, str]:
        limits = self._limits
        proxy = _proxy_for("https" if self._https else "http", self._host)
        address = (proxy[0], proxy[1]) if proxy else (self._host, self._port)
        left = end - time.monotonic()
        if left <= 0:
            raise _DeadlineError("no time left for this report")
        sock = socket.create_connection(address, timeout=min(limits.connect_timeout, left))
        watchdog.watch(sock)
        sock.settimeout(limits.read_timeout)
        if proxy and self._https:
            self._tunnel(sock, proxy[2])
        if self._https:
            sock = self._tls().wrap_socket(
                sock, server_hostname=self._host, do_handshake_on_connect=False
            )
            watchdog.watch(sock)
            sock.do_handshake()
        conn = http.client.HTTPConnection(self._host, self._port)
        conn.sock = sock
        with contextlib.closing(conn):
            return self._exchange(conn, body)

    def _exchange(self, conn: http.client.HTTPConnection, body: bytes) -> tuple[int, str]:
        limits = self._limits
        proxy = _proxy_for("https" if self._https else "http", self._host)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        target = self._path
        if proxy and not self._https:
            target = self._url
            if proxy[2]:
                headers["Proxy-Authorization"] = proxy[2]
        conn.request("POST", target, body, headers)
        response = conn.getresponse()
        cap = limits.max_report_answer_bytes
        data = response.read(cap + 1)
        if len(data) > cap:
            raise _DeadlineError(f"the answer is longer than {cap} bytes")
        if response.length:  # the body ended before its Content-Length
            raise _DeadlineError(f"the answer ended {response.length} bytes early")
        detail = data[:200].decode("utf-8", "replace") if response.status >= 400 else ""
        return response.status, detail

    def _tunnel(self, sock: socket.socket, auth: str | None) -> None:
        """``CONNECT`` through an http proxy; its answer head is read with a cap."""
        where = f"{self._host}:{self._port}"
        head = f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n"
        if auth:
            head += f"Proxy-Authorization: {auth}\r\n"
        sock.sendall((head + "\r\n").encode("ascii"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            if len(answer) > 16 * 1024:
                raise _DeadlineError("the proxy's answer to CONNECT is too long")
            chunk = sock.recv(1024)
            if not chunk:
                raise _DeadlineError("the proxy closed the connection during CONNECT")
            answer += chunk
        status = answer.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise _DeadlineError(f"the proxy refused CONNECT: {answer[:80]!r}")
