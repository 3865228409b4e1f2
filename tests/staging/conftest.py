"""Fixtures for staging: a real SQLite tracker file, a recording publisher, a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from staging import RolloutController, SqliteTrackerStore
from tests.staging.helpers import Devices, FakeClock, RecordingPublisher


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTrackerStore]:
    with SqliteTrackerStore(tmp_path / "tracker.db") as s:
        yield s


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def devices(store: SqliteTrackerStore, clock: FakeClock) -> Devices:
    return Devices(store, clock)


@pytest.fixture
def controller(
    store: SqliteTrackerStore, publisher: RecordingPublisher, clock: FakeClock
) -> RolloutController:
    return RolloutController(store, publisher, clock=clock)
