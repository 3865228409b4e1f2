"""Alert sinks: log, webhook (JSON POST) and Amazon SNS, behind one interface.

Invariants:
* ``AlertSink.send`` either delivers the notification or raises
  ``TransportError``; it never raises anything else for a delivery problem.
* The webhook sink retries within one call (``attempts`` tries, backoff
  doubling from ``backoff_seconds``) on network errors, HTTP 429 and 5xx; any
  other 4xx is final for that call. Longer outages are covered by the
  notification outbox, which retries across ticks (``staging._alerts``).
* The webhook sink never follows a redirect (a 3xx is a failed delivery
  naming the status and where it pointed) and connects only to addresses
  ``staging._egress`` allows, checked on the connected socket, after DNS,
  at every delivery; environment proxies are not used. ``allow_private``
  lifts the address rule for one sink.
* The SNS sink imports ``boto3`` only when it is built, so the rest of
  staging works without it.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from staging._alerts import Notification, SinkSpec
from staging._egress import check_literal_host, refused_address
from tufota_core import InputError, TransportError

logger = logging.getLogger(__name__)
alert_logger = logging.getLogger("staging.alerts")


class AlertSink(ABC):
    """Somewhere alert notifications go."""

    name: str

    @abstractmethod
    def send(self, notification: Notification) -> None:
        """Deliver one notification.

        Raises:
            TransportError: it could not be delivered now; the caller retries later.
        """


class LogSink(AlertSink):
    """Writes each notification as one log line on the ``staging.alerts`` logger."""

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def send(self, notification: Notification) -> None:
        alert = notification.alert
        level = logging.WARNING if alert.severity != "info" else logging.INFO
        if notification.phase == "resolved":
            level = logging.INFO
        alert_logger.log(
            level,
            "alert %s %s [%s] %s%s",
            alert.alert_id,
            notification.phase,
            alert.kind,
            alert.summary,
            f" -- {alert.resolution}" if notification.phase == "resolved" else "",
        )


class _RefusedTargetError(OSError):
    """The connected address is one a webhook may not reach (``staging._egress``)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def _check_socket(sock: socket.socket | None) -> None:
    if sock is None:
        return
    why = refused_address(str(sock.getpeername()[0]))
    if why is not None:
        sock.close()
        raise _RefusedTargetError(why)


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _check_socket(self.sock)


class _CheckedHTTPSConnection(http.client.HTTPSConnection, _CheckedHTTPConnection):
    """HTTPS whose TCP connect (``_CheckedHTTPConnection.connect``) is checked before TLS."""


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPSConnection, req)


def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [urllib.request.ProxyHandler({}), _NoRedirect()]
    if not allow_private:
        handlers += [_CheckedHTTPHandler(), _CheckedHTTPSHandler()]
    return urllib.request.build_opener(*handlers)


class WebhookSink(AlertSink):
    """POSTs the notification's JSON payload to a URL.

    Args:
        name: the sink's name.
        url: http or https URL.
        timeout: seconds per request.
        attempts: tries per ``send``.
        backoff_seconds: wait before the second try; doubles each time.
        sleep: how to wait (patched in tests).
        allow_private: may connect to loopback, link-local and metadata
            addresses (``staging._egress``).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        allow_private: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"webhook URL {url!r} is not http(s)")
        if not allow_private:
            check_literal_host(name, url)
        self.name = name
        self.url = url
        self._opener = _opener(allow_private)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff_seconds
        self._sleep = sleep

    def send(self, notification: Notification) -> None:
        body = json.dumps(notification.payload(), sort_keys=True).encode()
        delay = self._backoff
        last = ""
        for attempt in range(1, self._attempts + 1):
            request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
                self.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "tufota-alerts/1",
                    "X-Tufota-Notification": str(notification.notification_id),
                },
            )
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    response.read(1024)
                    return
            except urllib.error.HTTPError as e:
                e.close()
                last = f"HTTP {e.code}"
                if 300 <= e.code < 400:
                    where = str(e.headers.get("Location", ""))[:200] if e.headers else ""
                    raise TransportError(
                        f"webhook {self.name} answered {last} (redirect"
                        f"{f' to {where}' if where else ''}); redirects are not followed"
                    ) from e
                if e.code != 429 and e.code < 500:
                    raise TransportError(f"webhook {self.name} refused the alert: {last}") from e
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, _RefusedTargetError):
                    raise TransportError(
                        f"webhook {self.name} not sent: {reason}; allow it with --allow-private"
                    ) from e
                last = str(reason)
            if attempt < self._attempts:
                logger.debug(
                    "webhook %s attempt %d failed (%s); retrying", self.name, attempt, last
                )
                self._sleep(delay)
                delay *= 2
        raise TransportError(f"webhook {self.name} failed after {self._attempts} tries: {last}")


class SnsSink(AlertSink):
    """Publishes the notification to an SNS topic through boto3.

    The message is the JSON payload; the subject a one-line title; message
    attributes carry kind, severity and event for subscription filters.
    """

    def __init__(self, name: str, topic_arn: str, client: Any) -> None:
        self.name = name
        self.topic_arn = topic_arn
        self._client = client

    @classmethod
    def from_spec(cls, spec: SinkSpec) -> SnsSink:
        """Build the boto3 client the spec describes.

        Raises:
            InputError: boto3 is not installed.
        """
        try:
            import boto3
        except ImportError as e:  # pragma: no cover - the server extra installs it
            raise InputError("the SNS alert sink needs boto3 (pip install 'tufota[server]')") from e
        kwargs: dict[str, Any] = {}
        if spec.region:
            kwargs["region_name"] = spec.region
        if spec.endpoint_url:
            kwargs["endpoint_url"] = spec.endpoint_url
        return cls(spec.name, spec.topic_arn, boto3.client("sns", **kwargs))

    def send(self, notification: Notification) -> None:
        alert = notification.alert
        try:
            self._client.publish(
                TopicArn=self.topic_arn,
                Subject=notification.subject(),
                Message=json.dumps(notification.payload(), sort_keys=True),
                MessageAttributes={
                    "kind": {"DataType": "String", "StringValue": alert.kind},
                    "severity": {"DataType": "String", "StringValue": alert.severity},
                    "event": {"DataType": "String", "StringValue": notification.phase},
                },
            )
        except Exception as e:  # botocore raises many unrelated types
            raise TransportError(f"SNS sink {self.name} failed: {e}") from e


def build_sink(spec: SinkSpec) -> AlertSink:
    """The sink a ``SinkSpec`` describes.

    Raises:
        InputError: the spec cannot be built (missing boto3, bad URL).
    """
    if spec.kind == "webhook":
        return WebhookSink(spec.name, spec.url, allow_private=spec.allow_private)
    if spec.kind == "sns":
        return SnsSink.from_spec(spec)
    return LogSink(spec.name)
