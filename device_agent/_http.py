"""HTTP for the agent: the TUF fetcher and the report sender, over one requests session.

Invariants:
* Every request has a connect and a read timeout from ``AgentLimits``; nothing
  here retries. Retrying is the poll loop's job, on its jittered schedule.
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

import logging
from collections.abc import Iterator
from enum import Enum
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import requests
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


def make_session(config: AgentConfig) -> requests.Session:
    """A session that verifies TLS against the configured CA bundle (or the system one)."""
    session = _PinnedCASession() if config.ca_bundle else requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.verify = str(config.ca_bundle) if config.ca_bundle else True
    # Proxies and .netrc from the environment stay allowed (requests default).
    return session


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


class ReportSender:
    """POSTs signed report envelopes to ``/api/v1/devices/{id}/reports``."""

    def __init__(self, session: requests.Session, config: AgentConfig) -> None:
        self._session = session
        self._limits = config.limits
        self._url = f"{config.base_url}/api/v1/devices/{config.device_id}/reports"

    def send(self, envelope: dict[str, Any]) -> tuple[Delivery, str]:
        """Send one envelope; return what the answer means and a short reason. Never raises."""
        timeout = (self._limits.connect_timeout, self._limits.read_timeout)
        try:
            response = self._session.post(self._url, json=envelope, timeout=timeout)
        except requests.RequestException as e:
            return Delivery.RETRY, f"cannot reach {self._url}: {type(e).__name__}"
        with response:
            detail = response.text[:200] if response.status_code >= 400 else ""
            return classify_status(response.status_code), f"HTTP {response.status_code} {detail}"
