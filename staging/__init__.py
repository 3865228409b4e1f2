"""Staged rollouts: tracker store, controller and gates, stall detection, alerts, patch status.

The tracker store (``TrackerStore``, default ``SqliteTrackerStore``) keeps
registered devices, what their last signed report said, rollouts and a
history of every change. The ``RolloutController`` starts rollouts, advances
them wave by wave as devices report success, pauses them when too many fail,
and publishes each change through a ``RolloutPublisher`` (the repository
server signs and serves the document).

Invariants:
* The tracker decides wave membership with ``tufota_core.wave_index``, the
  function devices use, so both sides agree on who is in which wave.
* The store is the source of truth; publishing follows each committed change
  and is retried until the published document is the latest revision.
* Every state change is one transaction with a recorded reason.

* Each alert condition (paused rollout, a device's stall, expiring online
  metadata, an unpatched CVSS >= 7 fix, a device clock ahead of ours) opens
  one alert and resolves it once; verification failures devices report and
  divergences between the published rollout documents (or device reports)
  and the tracker open critical alerts that only an operator resolves.
* Gates count only failures a device proves about the image
  (``NOT_COUNTED_CODES`` never count; ``SECURITY_CODES`` are security events).

Only ``tufota_core`` and the standard library are imported (``boto3`` lazily,
for the SNS sink).
"""

from staging._alerts import (
    ALERT_KINDS,
    SINK_KINDS,
    STALL_KINDS,
    Alert,
    AlertDraft,
    AlertSettings,
    Notification,
    SinkSpec,
)
from staging._alerts import SEVERITIES as ALERT_SEVERITIES
from staging._config import StagingConfig
from staging._controller import (
    ONLINE_ROLES,
    RolloutController,
    RolloutPublisher,
    TickReport,
    new_rollout_id,
)
from staging._errors import ReplayError, StoreError
from staging._model import (
    DEVICE_STATUSES,
    EVENT_KINDS,
    MAX_RETRIES,
    NOT_COUNTED_CODES,
    POLICY_CODES,
    SECURITY_CODES,
    DeviceRecord,
    Event,
    NewDevice,
    RolloutOptions,
    RolloutRecord,
)
from staging._patch import EXPOSURES, Fix, Release, ReleaseCatalog
from staging._plan import PRESETS, Preset, build_plan, is_critical, parse_duration, parse_fraction
from staging._postgres import PostgresTrackerStore, is_postgres_url, open_tracker, redact
from staging._progress import (
    DeviceSummary,
    FleetStatus,
    RolloutCounts,
    RolloutStatus,
    WaveStatus,
    classify,
    evaluate,
)
from staging._sinks import AlertSink, LogSink, SnsSink, WebhookSink, build_sink
from staging._sqlite import SqliteTrackerStore
from staging._sqlstore import SqlTrackerStore
from staging._stalls import Finding, find_stall
from staging._store import REPORT_OUTCOMES, ReportOutcome, TrackerStore
from tufota_core import MaintenanceWindow, check_window  # re-exported: the parser lives in core

__all__ = [
    "ALERT_KINDS",
    "ALERT_SEVERITIES",
    "DEVICE_STATUSES",
    "EVENT_KINDS",
    "EXPOSURES",
    "MAX_RETRIES",
    "NOT_COUNTED_CODES",
    "ONLINE_ROLES",
    "POLICY_CODES",
    "PRESETS",
    "REPORT_OUTCOMES",
    "SECURITY_CODES",
    "SINK_KINDS",
    "STALL_KINDS",
    "Alert",
    "AlertDraft",
    "AlertSettings",
    "AlertSink",
    "DeviceRecord",
    "DeviceSummary",
    "Event",
    "Finding",
    "Fix",
    "FleetStatus",
    "LogSink",
    "MaintenanceWindow",
    "NewDevice",
    "Notification",
    "PostgresTrackerStore",
    "Preset",
    "Release",
    "ReleaseCatalog",
    "ReplayError",
    "ReportOutcome",
    "RolloutController",
    "RolloutCounts",
    "RolloutOptions",
    "RolloutPublisher",
    "RolloutRecord",
    "RolloutStatus",
    "SinkSpec",
    "SnsSink",
    "SqlTrackerStore",
    "SqliteTrackerStore",
    "StagingConfig",
    "StoreError",
    "TickReport",
    "TrackerStore",
    "WaveStatus",
    "WebhookSink",
    "build_plan",
    "build_sink",
    "check_window",
    "classify",
    "evaluate",
    "find_stall",
    "is_critical",
    "is_postgres_url",
    "new_rollout_id",
    "open_tracker",
    "parse_duration",
    "parse_fraction",
    "redact",
]
