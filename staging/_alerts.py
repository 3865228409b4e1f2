"""Alerts: what the tracker tells operators, and where it sends them.

An alert is identified by its ``key`` (say ``rollout:<id>:stall:<device>``).
Monitors do not send anything themselves: each tick they state the set of
alerts that should be open within a *scope* (a key prefix), and the store
reconciles (``TrackerStore.sync_alerts``): keys not open yet are opened, open
keys in the scope that are no longer wanted are resolved. Each opening and
each resolution queues one notification per configured sink; ``deliver``
sends what is due, with retries and exponential backoff across ticks.

Invariants:
* At most one open alert per key (a partial unique index in SQLite), so a
  condition that persists over many ticks alerts exactly once, and alerts
  again only after it was resolved and came back.
* Opening or resolving an alert and queueing its notifications is one
  transaction: a crash cannot lose a notification or send one twice from
  the store's point of view (a sink may still see a retry of a POST whose
  answer was lost: payloads carry ``notification_id`` for de-duplication).
* Sinks are behind ``AlertSink`` (one method); a failing sink never blocks
  the others or the rollout controller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from staging._config import MAX_DURATION_SECONDS
from staging._egress import check_literal_host
from tufota_core import InputError, format_time, safe_text

SEVERITIES = ("info", "warning", "critical")
ALERT_KINDS = (
    "rollout_paused",
    "never_checked_in",
    "download_stalled",
    "reboot_overdue",
    "silent",
    "metadata_expiring",
    "unpatched_vulnerability",
    "test",
    "verification_failed",
    "device_clock_skew",
    "rollout_diverged",
)
"""``never_checked_in`` ... ``silent`` are the four kinds of stall findings.

``verification_failed``: devices refused data that failed verification (a
security event, not an install failure). ``device_clock_skew``: a device's
report time disagrees with the server's clock. ``rollout_diverged``: the
published rollout document, or what devices report, disagrees with the
tracker (online key compromise?).
"""

STALL_KINDS = ("never_checked_in", "download_stalled", "reboot_overdue", "silent")
NOTIFICATION_PHASES = ("opened", "resolved")


MAX_SUMMARY = 1000  # characters of an alert summary; longer text is cut with "..."


def _safe_details(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value, limit=MAX_SUMMARY)
    if isinstance(value, Mapping):
        return {safe_text(str(k)): _safe_details(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe_details(v) for v in value]
    return value


@dataclass(frozen=True)
class AlertDraft:
    """An alert a monitor wants open: everything but its id and times."""

    key: str
    kind: str
    severity: str
    summary: str
    hardware_id: str | None = None
    rollout_id: str | None = None
    device_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise InputError(f"alert kind {self.kind!r} is not one of {', '.join(ALERT_KINDS)}")
        if self.severity not in SEVERITIES:
            raise InputError(f"alert severity {self.severity!r} is not one of {SEVERITIES}")
        if not self.key or len(self.key) > 512:
            raise InputError("an alert key is 1-512 characters")
        # Summaries and details quote device-supplied text (error messages,
        # versions): neutralise it once here, so every sink and view gets it safe.
        object.__setattr__(self, "summary", safe_text(self.summary, limit=MAX_SUMMARY))
        object.__setattr__(self, "details", _safe_details(self.details))


@dataclass(frozen=True)
class Alert:
    """An alert as stored: opened once, resolved at most once."""

    alert_id: int
    key: str
    kind: str
    severity: str
    summary: str
    hardware_id: str | None
    rollout_id: str | None
    device_id: str | None
    details: Mapping[str, Any]
    opened_at: datetime
    resolved_at: datetime | None = None
    resolution: str = ""

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "hardware_id": self.hardware_id,
            "rollout_id": self.rollout_id,
            "device_id": self.device_id,
            "details": dict(self.details),
            "opened_at": format_time(self.opened_at),
            "resolved_at": None if self.resolved_at is None else format_time(self.resolved_at),
            "resolution": self.resolution,
            "state": "open" if self.open else "resolved",
        }


@dataclass(frozen=True)
class Notification:
    """One message owed to one sink about one alert's opening or resolution."""

    notification_id: int
    alert: Alert
    phase: str
    sink: str
    attempts: int = 0

    def payload(self) -> dict[str, Any]:
        """The JSON body every sink sends (webhook body, SNS message)."""
        return {
            "schema": "tufota.alert/1",
            "notification_id": self.notification_id,
            "event": self.phase,
            "alert": self.alert.to_json(),
        }

    def subject(self) -> str:
        """A one-line title, at most 100 characters (SNS subject limit)."""
        mark = "RESOLVED" if self.phase == "resolved" else self.alert.severity.upper()
        text = f"[tufota {mark}] {self.alert.summary}"
        # SNS subjects are ASCII without newlines.
        text = text.encode("ascii", "replace").decode().replace("\n", " ")
        return text[:100]


SINK_KINDS = ("log", "webhook", "sns")


@dataclass(frozen=True)
class SinkSpec:
    """A configured alert sink.

    Attributes:
        name: unique name, used to track deliveries.
        kind: ``log``, ``webhook`` or ``sns``.
        url: webhook URL (http or https).
        topic_arn: SNS topic ARN.
        region: AWS region for SNS (default: the environment's).
        endpoint_url: AWS endpoint override (moto, LocalStack, VPC endpoints).
        min_severity: notifications below this severity are not sent to this sink.
        allow_private: let a webhook reach loopback, link-local and cloud
            metadata addresses (refused by default; see ``staging._sinks``).
    """

    name: str
    kind: str
    url: str = ""
    topic_arn: str = ""
    region: str = ""
    endpoint_url: str = ""
    min_severity: str = "info"
    allow_private: bool = False

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or not self.name.replace("-", "").isalnum():
            raise InputError(f"sink name {self.name!r} must be 1-64 letters, digits or '-'")
        if self.kind not in SINK_KINDS:
            raise InputError(f"sink kind {self.kind!r} is not one of {', '.join(SINK_KINDS)}")
        if self.kind == "webhook" and not self.url.startswith(("http://", "https://")):
            raise InputError(f"webhook sink {self.name} needs an http(s) URL, not {self.url!r}")
        if not isinstance(self.allow_private, bool):
            raise InputError("allow_private must be true or false")
        if self.kind == "webhook" and not self.allow_private:
            check_literal_host(self.name, self.url)
        if self.kind == "sns" and not self.topic_arn.startswith("arn:"):
            raise InputError(f"SNS sink {self.name} needs a topic ARN, not {self.topic_arn!r}")
        if self.min_severity not in SEVERITIES:
            raise InputError(f"min severity {self.min_severity!r} is not one of {SEVERITIES}")

    def wants(self, severity: str) -> bool:
        return SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v != "" and v is not False}

    @classmethod
    def from_json(cls, data: Any) -> SinkSpec:
        """Raises InputError on unknown or malformed fields."""
        if not isinstance(data, dict):
            raise InputError("a sink is a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown sink fields: {', '.join(sorted(unknown))}")
        try:
            fields: dict[str, Any] = {k: str(v) for k, v in data.items() if k != "allow_private"}
            fields["allow_private"] = data.get("allow_private", False)
            return cls(**fields)
        except TypeError as e:
            raise InputError(f"sink is incomplete: {e}") from e


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and when the fleet-wide monitors fire.

    Attributes:
        sinks: configured sinks; a ``log`` sink is always used in addition.
        patch_grace_seconds: how long after a release a device may still lack
            its fixes before ``unpatched_vulnerability`` fires.
        patch_min_cvss: the least CVSS score that is alerted on.
        expiry_margin_seconds: ``metadata_expiring`` fires when an online role
            expires within this time.
    """

    sinks: tuple[SinkSpec, ...] = ()
    patch_grace_seconds: int = 7 * 86400
    patch_min_cvss: float = 7.0
    expiry_margin_seconds: int = 12 * 3600

    def __post_init__(self) -> None:
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names) or "log" in names:
            raise InputError("sink names must be unique and 'log' is reserved")
        for name in ("patch_grace_seconds", "expiry_margin_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 0 <= value <= MAX_DURATION_SECONDS:
                raise InputError(f"{name.replace('_', ' ')} {value} is outside 0 s - 365 days")
        if not 0.0 <= self.patch_min_cvss <= 10.0:
            raise InputError(f"CVSS threshold {self.patch_min_cvss} is outside 0-10")

    def to_json(self) -> dict[str, Any]:
        return {
            "sinks": [s.to_json() for s in self.sinks],
            "patch_grace_seconds": self.patch_grace_seconds,
            "patch_min_cvss": self.patch_min_cvss,
            "expiry_margin_seconds": self.expiry_margin_seconds,
        }

    @classmethod
    def from_json(cls, data: Any) -> AlertSettings:
        """Raises InputError when malformed."""
        if not isinstance(data, dict):
            raise InputError("alert settings are a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown alert settings: {', '.join(sorted(unknown))}")
        defaults = cls()
        try:
            return cls(
                sinks=tuple(SinkSpec.from_json(s) for s in data.get("sinks", [])),
                patch_grace_seconds=int(
                    data.get("patch_grace_seconds", defaults.patch_grace_seconds)
                ),
                patch_min_cvss=float(data.get("patch_min_cvss", defaults.patch_min_cvss)),
                expiry_margin_seconds=int(
                    data.get("expiry_margin_seconds", defaults.expiry_margin_seconds)
                ),
            )
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"alert settings are malformed: {e}") from e

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)
