"""Fixtures for staging: a real tracker (SQLite and PostgreSQL), a recording publisher, a clock.

Every test taking ``store`` runs on both backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from staging import PostgresTrackerStore, RolloutController, SqliteTrackerStore, SqlTrackerStore
from tests.staging.helpers import Devices, FakeClock, RecordingPublisher


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlTrackerStore]:
    if request.param == "sqlite":
        with SqliteTrackerStore(tmp_path / "tracker.db") as s:
            yield s
        return
    url = request.getfixturevalue("postgres_url")
    with PostgresTrackerStore(url) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql"])
def tracker_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a tracker lives, on each backend: an SQLite file path or a fresh database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "tracker.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def devices(store: SqlTrackerStore, clock: FakeClock) -> Devices:
    return Devices(store, clock)


@pytest.fixture
def controller(
    store: SqlTrackerStore, publisher: RecordingPublisher, clock: FakeClock
) -> RolloutController:
    return RolloutController(store, publisher, clock=clock)
