"""Copying an SQLite tracker into PostgreSQL: everything arrives, ids and order kept, or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from staging import (
    AlertDraft,
    PostgresTrackerStore,
    RolloutOptions,
    SinkSpec,
    SqliteTrackerStore,
    SqlTrackerStore,
    StoreError,
    _copy,
)
from staging._copy import TABLES, copy_tracker, tracker_info
from staging._schema import SCHEMA_VERSION
from tests.staging.helpers import HW, Devices, FakeClock
from tufota_core import ConflictError, Report, parse_wave_spec

HW2 = "gw-200"
TOKEN = {
    "token_id": "tok-1",
    "name": "ops",
    "role": "operator",
    "sha256": "ab" * 32,
    "created": "2026-01-05T12:00:00Z",
    "expires": None,
}


def populate(path: Path) -> None:
    """An SQLite tracker with a row in every table."""
    clock = FakeClock()
    with SqliteTrackerStore(path) as store:
        fleet = Devices(store, clock)
        ids = fleet.add(6)
        fleet.add(2, prefix="other", hardware_id=HW2)
        # Two rollouts created in the same second: only insertion order tells them apart.
        for rollout_id, hardware_id in (("r-b", HW), ("r-a", HW2)):
            store.create_rollout(
                rollout_id,
                hardware_id,
                "2.0.0",
                f"firmware/{hardware_id}/2.0.0/image.bin",
                parse_wave_spec("canary:50%,all:100%"),
                RolloutOptions(soak_seconds=60),
                at=clock(),
                reason="test",
            )
        clock.advance(60)
        for device_id in ids[:3]:
            fleet.report(device_id, "downloading", target="2.0.0", rollout_id="r-b")
        clock.advance(60)
        fleet.succeed(ids[:2], "2.0.0", "r-b")
        fleet.report(ids[2], "failed", target="2.0.0", rollout_id="r-b", error_code="bad_signature")
        report = Report(
            device_id=ids[3],
            hardware_id=HW,
            seq=1,
            state="downloaded",
            installed_version="1.0.0",
            target_version="2.0.0",
            rollout_id="r-b",
            bytes_done=1000,
            bytes_total=1000,
            bytes_fetched=300,
            delta_from="1.0.0",
        )
        store.record_report(report, clock())
        store.sync_alerts(
            "test:",
            [AlertDraft("test:1", "rollout_paused", "critical", "r-b paused", HW, "r-b")],
            at=clock(),
            sinks=[SinkSpec("ops", "log")],
        )
        store.add_token(TOKEN)
        store.put_setting("leader", {"replica": "a", "since": "2026-01-05T12:00:00Z"})


def snapshot(store: SqlTrackerStore) -> dict[str, Any]:
    """What an operator can read back from a tracker."""
    devices = store.list_devices()
    rollouts = store.list_rollouts()
    alerts = store.list_alerts()
    return {
        "devices": devices,
        "history": {d.device_id: store.device_history(d.device_id) for d in devices},
        "transfers": {d.device_id: store.device_transfers(d.device_id) for d in devices},
        "rollouts": rollouts,
        "rollout_history": {r.rollout_id: store.rollout_history(r.rollout_id) for r in rollouts},
        "counts": {r.rollout_id: store.rollout_counts(r) for r in rollouts},
        "alerts": alerts,
        "notifications": {a.alert_id: store.notification_log(a.alert_id) for a in alerts},
        "tokens": store.list_tokens(),
        "leader": store.get_setting("leader"),
        "security": store.security_summary(),
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "tracker.db"
    populate(path)
    return path


def test_copy_brings_every_table_with_ids_and_order(source: Path, postgres_url: str) -> None:
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        counts = copy_tracker(src, dst)
        want = snapshot(src)
        assert snapshot(dst) == want
    assert set(counts) == set(TABLES)
    assert all(counts[t] > 0 for t in TABLES), counts  # the fixture fills every table
    assert [r.rollout_id for r in want["rollouts"]] == ["r-a", "r-b"]  # newest insert first
    assert tracker_info(postgres_url).tables == counts


def test_copied_tracker_keeps_numbering_after_the_copied_ids(
    source: Path, postgres_url: str
) -> None:
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        copy_tracker(src, dst)
        last_event = max(e.event_id for e in dst.rollout_history("r-b"))
        clock = FakeClock()
        clock.advance(3600)
        fleet = Devices(dst, clock)  # type: ignore[arg-type]
        fleet.seq = {"dev-0005": 0}
        fleet.report("dev-0005", "downloading", target="2.0.0", rollout_id="r-b")
        opened, _ = dst.sync_alerts(
            "test:",
            [AlertDraft("test:2", "rollout_paused", "critical", "again", HW, "r-b")],
            at=clock(),
            sinks=[SinkSpec("ops", "log")],
            resolve_missing=False,
        )
        assert opened[0].alert_id == 2
        assert dst.device_history("dev-0005")[-1].event_id > last_event
        dst.create_rollout(
            "r-c",
            "gw-300",
            "2.0.0",
            "firmware/gw-300/2.0.0/image.bin",
            parse_wave_spec("all:100%"),
            RolloutOptions(),
            at=FakeClock()(),  # the same second as the copied ones: order by insertion
        )
        assert [r.rollout_id for r in dst.list_rollouts()] == ["r-c", "r-a", "r-b"]


def test_copy_into_a_tracker_with_rows_is_refused_and_changes_nothing(
    source: Path, postgres_url: str
) -> None:
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        first = copy_tracker(src, dst)
        before = snapshot(dst)
        with pytest.raises(ConflictError, match="is not empty"):
            copy_tracker(src, dst)
        assert snapshot(dst) == before
    assert tracker_info(postgres_url).tables == first


def test_copy_failing_midway_leaves_the_target_empty(
    source: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _copy._copy_table

    def failing(src: sqlite3.Connection, raw: Any, table: str) -> None:
        if table == "alerts":
            raise StoreError("disk full")
        real(src, raw, table)

    monkeypatch.setattr(_copy, "_copy_table", failing)
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        with pytest.raises(StoreError, match="disk full"):
            copy_tracker(src, dst)
        assert dst.list_devices() == []
    assert tracker_info(postgres_url).tables == dict.fromkeys(TABLES, 0)
    monkeypatch.setattr(_copy, "_copy_table", real)
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        assert copy_tracker(src, dst)["alerts"] == 1  # the failed attempt left nothing behind


def test_tracker_info_reads_an_old_file_without_migrating_it(source: Path) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute("DROP TABLE api_tokens")
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()
    info = tracker_info(str(source))
    assert (info.schema_version, info.state, info.tables["api_tokens"]) == (
        3,
        "needs upgrade",
        None,
    )
    assert info.tables["devices"] == 8
    with sqlite3.connect(source) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 3
    conn.close()
    with SqliteTrackerStore(source) as store:
        assert (store.migrated_from, store.schema_version()) == (3, SCHEMA_VERSION)


def test_tracker_info_of_an_empty_postgres_database(postgres_url: str) -> None:
    info = tracker_info(postgres_url)
    assert (info.schema_version, info.state) == (None, "empty")
    assert info.tables == dict.fromkeys(TABLES)
