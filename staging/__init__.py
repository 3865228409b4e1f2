"""Staged rollouts: the tracker store and the rollout controller.

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

Only ``tufota_core`` and the standard library are imported.
"""

from staging._config import StagingConfig
from staging._controller import RolloutController, RolloutPublisher, new_rollout_id
from staging._errors import ReplayError, StoreError
from staging._model import (
    DEVICE_STATUSES,
    EVENT_KINDS,
    DeviceRecord,
    Event,
    RolloutOptions,
    RolloutRecord,
)
from staging._progress import DeviceSummary, FleetStatus, RolloutStatus, WaveStatus
from staging._sqlite import SqliteTrackerStore
from staging._store import TrackerStore

__all__ = [
    "DEVICE_STATUSES",
    "EVENT_KINDS",
    "DeviceRecord",
    "DeviceSummary",
    "Event",
    "FleetStatus",
    "ReplayError",
    "RolloutController",
    "RolloutOptions",
    "RolloutPublisher",
    "RolloutRecord",
    "RolloutStatus",
    "SqliteTrackerStore",
    "StagingConfig",
    "StoreError",
    "TrackerStore",
    "WaveStatus",
    "new_rollout_id",
]
