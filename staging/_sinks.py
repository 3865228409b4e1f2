"""Alert sinks: log, webhook (JSON POST) and Amazon SNS, behind one interface.

Invariants:
* ``AlertSink.send`` either delivers the notification or raises
  ``TransportError``; it never raises anything else for a delivery problem.
* The webhook sink retries within one call (``attempts`` tries, backoff
  doubling from ``backoff_seconds``) on network errors, HTTP 429 and 5xx; any
  other 4xx is final for that call. Longer outages are covered by the
  notification outbox, which retries across ticks (``staging._alerts``).
* The SNS sink imports ``boto3`` only when it is built, so the rest of
  staging works without it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from staging._alerts import Notification, SinkSpec
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


class WebhookSink(AlertSink):
    """POSTs the notification's JSON payload to a URL.

    Args:
        name: the sink's name.
        url: http or https URL.
        timeout: seconds per request.
        attempts: tries per ``send``.
        backoff_seconds: wait before the second try; doubles each time.
        sleep: how to wait (patched in tests).
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
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"webhook URL {url!r} is not http(s)")
        self.name = name
        self.url = url
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
                with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                    response.read(1024)
                    return
            except urllib.error.HTTPError as e:
                e.close()
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise TransportError(f"webhook {self.name} refused the alert: {last}") from e
            except (urllib.error.URLError, OSError) as e:
                last = str(getattr(e, "reason", e))
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
        return WebhookSink(spec.name, spec.url)
    if spec.kind == "sns":
        return SnsSink.from_spec(spec)
    return LogSink(spec.name)
