"""SqliteTrackerStore against a real database file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from staging import (
    ReplayError,
    RolloutOptions,
    SqliteTrackerStore,
    SqlTrackerStore,
    StagingConfig,
    StoreError,
    open_tracker,
)
from staging._postgres import lock_key
from tests.staging.helpers import HW, START, Devices, FakeClock
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    Report,
    Wave,
    parse_wave_spec,
)

TARGET = f"firmware/{HW}/2.0.0/image.bin"


def _rollout(store: SqliteTrackerStore, rollout_id: str = "r1", hardware_id: str = HW) -> Any:
    return store.create_rollout(
        rollout_id,
        hardware_id,
        "2.0.0",
        f"firmware/{hardware_id}/2.0.0/image.bin",
        parse_wave_spec("canary:10%,all:100%"),
        RolloutOptions(soak_seconds=60),
        at=START,
        reason="release 2.0.0",
    )


# -- devices ----------------------------------------------------------------------------


def test_registered_device_reads_back_unchanged(store: SqliteTrackerStore) -> None:
    key = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "ab" * 32}}
    made = store.register_device(
        "dev-1", HW, public_key=key, tags=["north", "canary"], installed_version="1.0.0", at=START
    )
    got = store.get_device("dev-1")
    assert got == made
    assert got.public_key == key
    assert got.tags == ("canary", "north")
    assert (got.status, got.state, got.last_seq, got.last_seen) == ("pending", None, 0, None)
    assert got.registered_at == START
    assert json.loads(json.dumps(got.to_json()))["registered_at"] == "2026-01-05T12:00:00Z"
    assert [e.kind for e in store.device_history("dev-1")] == ["registered"]


def test_registering_a_device_twice_is_a_conflict(store: SqliteTrackerStore) -> None:
    store.register_device("dev-1", HW, public_key={})
    with pytest.raises(ConflictError, match="already registered"):
        store.register_device("dev-1", HW, public_key={"other": 1})
    assert store.get_device("dev-1").public_key == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device_id": "../etc"}, "device id"),
        ({"hardware_id": "GW 100"}, "hardware id"),
        ({"tags": ["Not A Tag"]}, "tag"),
        ({"tags": [f"t{i}" for i in range(40)]}, "at most"),
        ({"status": "trusted"}, "status"),
        ({"installed_version": "v1"}, "semantic version"),
        ({"public_key": ["not", "a", "dict"]}, "JSON object"),
        ({"public_key": {"blob": "x" * 10_000}}, "larger than"),
    ],
)
def test_bad_registration_is_refused_and_stores_nothing(
    store: SqliteTrackerStore, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"device_id": "dev-1", "hardware_id": HW, "public_key": {}}
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        store.register_device(**args)
    assert store.list_devices() == []


def test_unknown_device_is_not_found(store: SqliteTrackerStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_device("nobody")
    with pytest.raises(NotFoundError):
        store.set_device_status("nobody", "revoked")
    with pytest.raises(NotFoundError):
        store.device_history("nobody")


def test_list_devices_filters_by_hardware(devices: Devices, store: SqliteTrackerStore) -> None:
    devices.add(3, prefix="a")
    devices.add(2, prefix="b", hardware_id="sensor-9")
    assert [d.device_id for d in store.list_devices(HW)] == ["a-0000", "a-0001", "a-0002"]
    assert len(store.list_devices("sensor-9")) == 2
    assert len(store.list_devices()) == 5


def test_status_change_is_recorded_with_reason(devices: Devices, store: SqliteTrackerStore) -> None:
    (dev,) = devices.add(1)
    record = store.set_device_status(dev, "revoked", reason="stolen", at=START)
    assert record.status == "revoked"
    last = store.device_history(dev)[-1]
    assert (last.kind, last.state, last.reason) == ("status", "revoked", "stolen")


# -- reports --------------------------------------------------------------------------


def test_report_updates_the_device_and_history(
    devices: Devices, store: SqliteTrackerStore, clock: FakeClock
) -> None:
    (dev,) = devices.add(1)
    clock.advance(30)
    assert devices.report(dev, "downloading", target="2.0.0", rollout_id="r1") is True
    clock.advance(30)
    assert devices.report(dev, "failed", target="2.0.0", rollout_id="r1", error_code="hash")
    got = store.get_device(dev)
    assert (got.state, got.last_seq, got.error_code, got.rollout_id) == ("failed", 2, "hash", "r1")
    assert got.installed_version == "1.0.0"  # a report without a version keeps the known one
    assert got.last_seen == clock()
    history = store.device_history(dev)
    assert [(e.kind, e.state, e.seq) for e in history] == [
        ("registered", "accepted", None),
        ("report", "downloading", 1),
        ("report", "failed", 2),
    ]
    assert history[-1].reason == "hash"


def test_heartbeat_updates_last_seen_without_growing_history(
    devices: Devices, store: SqliteTrackerStore, clock: FakeClock
) -> None:
    (dev,) = devices.add(1)
    assert devices.report(dev, "idle", installed="1.0.0") is True
    before = len(store.device_history(dev))
    clock.advance(300)
    assert devices.report(dev, "idle", installed="1.0.0") is False
    got = store.get_device(dev)
    assert (got.last_seq, got.last_seen) == (2, clock())
    assert len(store.device_history(dev)) == before


@pytest.mark.parametrize("replayed_seq", [5, 4, 1])
def test_replayed_or_old_report_is_refused_and_changes_nothing(
    devices: Devices, store: SqliteTrackerStore, replayed_seq: int
) -> None:
    (dev,) = devices.add(1)
    store.record_report(Report(dev, HW, 5, "downloading", target_version="2.0.0"), START)
    before = store.get_device(dev)
    history = store.device_history(dev)
    stale = Report(dev, HW, replayed_seq, "succeeded", installed_version="2.0.0")
    with pytest.raises(ReplayError, match="not above"):
        store.record_report(stale, START.replace(hour=13))
    assert store.get_device(dev) == before
    assert store.device_history(dev) == history


@pytest.mark.parametrize(
    ("report", "error"),
    [
        (Report("ghost", HW, 1, "idle"), NotFoundError),
        (Report("dev-0000", "sensor-9", 1, "idle"), InputError),
    ],
)
def test_report_for_unknown_or_mismatched_device_is_refused(
    devices: Devices, store: SqliteTrackerStore, report: Report, error: type[Exception]
) -> None:
    devices.add(1)
    before = store.list_devices()
    with pytest.raises(error):
        store.record_report(report, START)
    assert store.list_devices() == before


def test_report_from_revoked_device_is_refused(devices: Devices, store: SqliteTrackerStore) -> None:
    (dev,) = devices.add(1)
    store.set_device_status(dev, "revoked")
    with pytest.raises(ConflictError, match="revoked"):
        devices.report(dev, "idle")
    assert store.get_device(dev).last_seq == 0


def test_failure_is_remembered_after_the_device_goes_idle(
    devices: Devices, store: SqliteTrackerStore
) -> None:
    (dev,) = devices.add(1)
    devices.report(dev, "rolled_back", installed="1.0.0", target="2.0.0", rollout_id="r1")
    devices.report(dev, "idle", installed="1.0.0")
    got = store.get_device(dev)
    assert got.state == "idle"
    assert (got.failed_state, got.failed_version, got.failed_rollout_id) == (
        "rolled_back",
        "2.0.0",
        "r1",
    )


def test_a_batch_of_reports_has_the_outcomes_record_report_would_give(
    devices: Devices, store: SqliteTrackerStore
) -> None:
    ok, revoked, pending = devices.add(3)
    store.set_device_status(revoked, "revoked")
    store.set_device_status(pending, "pending")
    batch = [
        Report(ok, HW, 1, "downloading", target_version="2.0.0", bytes_done=10),
        Report(ok, HW, 1, "idle"),  # same seq again in the batch: a replay
        Report(ok, HW, 2, "failed", target_version="2.0.0", error_code="no_space"),
        Report("ghost", HW, 1, "idle"),
        Report(ok, "sensor-9", 3, "idle"),
        Report(revoked, HW, 1, "idle"),
        Report(pending, HW, 1, "idle"),
    ]
    outcomes = store.record_reports(batch, START, accepted_only=True)
    assert [(o.result, o.transition) for o in outcomes] == [
        ("applied", True),
        ("replayed", False),
        ("applied", True),
        ("unknown", False),
        ("wrong_hardware", False),
        ("revoked", False),
        ("pending", False),
    ]
    assert "not above the last accepted seq 1" in outcomes[1].message
    got = store.get_device(ok)
    assert (got.last_seq, got.state, got.failed_state, got.error_code) == (
        2,
        "failed",
        "failed",
        "no_space",
    )
    assert [(e.seq, e.state) for e in store.device_history(ok) if e.kind == "report"] == [
        (1, "downloading"),
        (2, "failed"),
    ]
    assert store.get_device(revoked).last_seq == store.get_device(pending).last_seq == 0


def test_a_batch_leaves_each_device_as_its_reports_one_by_one_would(
    devices: Devices, store: SqliteTrackerStore
) -> None:
    # A device reporting several times in one batch: the array writes on PostgreSQL
    # must keep report order, "state changed at" and "progress at" like one-by-one.
    batched, single = devices.add(2)
    target = {"target_version": "2.0.0", "rollout_id": "r1"}

    def reports(device_id: str) -> list[Report]:
        return [
            Report(device_id, HW, 2, "downloading", bytes_done=10, bytes_total=90, **target),
            Report(device_id, HW, 3, "downloading", bytes_done=40, bytes_total=90, **target),
            Report(
                device_id,
                HW,
                4,
                "downloaded",
                bytes_done=90,
                bytes_total=90,
                bytes_fetched=9,
                delta_from="1.0.0",
                **target,
            ),
            Report(
                device_id,
                HW,
                5,
                "failed",
                error_code="target_hash_mismatch",
                message="bad hash",
                **target,
            ),
            Report(device_id, HW, 6, "failed", error_code="install", message="full", **target),
            Report(device_id, HW, 7, "idle", "1.0.0"),
            Report(device_id, HW, 8, "downloading", bytes_done=5, **target),
            Report(device_id, HW, 9, "downloading", bytes_done=5, **target),  # no change
        ]

    for device_id in (batched, single):  # known since an hour before the batch
        store.record_reports([Report(device_id, HW, 1, "idle")], START - timedelta(hours=1))
    store.record_reports(reports(batched), START)
    for report in reports(single):
        store.record_reports([report], START)

    def seen(device_id: str) -> tuple[Any, ...]:
        got = store.get_device(device_id).to_json()
        for registration in ("device_id", "public_key", "registered_at"):
            got.pop(registration, None)
        history = [
            (e.kind, e.seq, e.state, e.reason)
            for e in store.device_history(device_id)
            if e.kind == "report"
        ]
        moved = [{**t, "at": None} for t in store.device_transfers(device_id)]
        return got, history, moved

    assert seen(batched) == seen(single)
    got, history, moved = seen(batched)
    assert [h[1] for h in history] == [1, 2, 4, 5, 6, 7, 8]
    assert (got["failed_code"], got["state"]) == ("install", "downloading")
    assert got["state_since"] == got["progress_at"] == got["last_seen"]
    assert [t["fetched_bytes"] for t in moved] == [9]
    (security,) = store.security_summary()
    assert (security["events"], security["devices"]) == (2, 2)
    assert security["codes"] == ["target_hash_mismatch"]


def test_a_pending_device_still_reports_through_record_report(
    devices: Devices, store: SqliteTrackerStore
) -> None:
    (dev,) = devices.add(1)
    store.set_device_status(dev, "pending")
    (outcome,) = store.record_reports([Report(dev, HW, 1, "idle")], START)
    assert outcome.applied
    assert store.get_device(dev).last_seq == 1


def _hold_write_lock(location: str) -> Any:
    """Another process's connection, holding the tracker's write lock until rolled back."""
    if location.startswith("postgresql://"):
        import psycopg

        blocker = psycopg.connect(location)
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("tracker-write"),))
        return blocker
    blocker = sqlite3.connect(location, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_batch_that_fails_applies_nothing(tracker_location: str) -> None:
    with open_tracker(tracker_location) as store:
        first, second = Devices(store, FakeClock()).add(2)
        quick = open_tracker(tracker_location, StagingConfig(busy_timeout_seconds=0.2))
        blocker = _hold_write_lock(tracker_location)
        try:
            batch = [Report(first, HW, 1, "idle"), Report(second, HW, 1, "idle")]
            with pytest.raises(StoreError, match="locked"):
                quick.record_reports(batch, START)
        finally:
            blocker.rollback()
            blocker.close()
            quick.close()
        assert store.get_device(first).last_seq == store.get_device(second).last_seq == 0


# -- rollouts -------------------------------------------------------------------------


def test_rollout_reads_back_unchanged(store: SqliteTrackerStore) -> None:
    made = _rollout(store)
    got = store.get_rollout("r1")
    assert got == made
    assert got.waves == (Wave("canary", 10.0), Wave("all", 100.0))
    assert got.options == RolloutOptions(soak_seconds=60)
    assert (got.state, got.current_wave, got.revision, got.published_revision) == (
        "active",
        0,
        1,
        0,
    )
    assert got.created_at == got.wave_started_at == got.failures_since == START
    assert store.active_rollout(HW) == got
    assert store.active_rollout("sensor-9") is None
    assert [e.kind for e in store.rollout_history("r1")] == ["started"]


@pytest.mark.parametrize("live_state", ["active", "paused"])
def test_second_live_rollout_for_a_hardware_is_refused(
    store: SqliteTrackerStore, live_state: str
) -> None:
    first = _rollout(store, "r1")
    if live_state == "paused":
        store.update_rollout_state(
            "r1", expected_revision=1, state="paused", current_wave=0, kind="paused",
            reason="x", at=START,
        )  # fmt: skip
    with pytest.raises(ConflictError, match=f"already has {live_state} rollout r1"):
        _rollout(store, "r2")
    assert [r.rollout_id for r in store.list_rollouts()] == [first.rollout_id]
    _rollout(store, "r3", hardware_id="sensor-9")  # another product line is independent


def test_new_rollout_is_allowed_once_the_old_one_is_finished(store: SqliteTrackerStore) -> None:
    _rollout(store, "r1")
    store.update_rollout_state(
        "r1", expected_revision=1, state="aborted", current_wave=0, kind="aborted",
        reason="bad build", at=START,
    )  # fmt: skip
    _rollout(store, "r2")
    assert store.active_rollout(HW) is not None
    assert [r.rollout_id for r in store.list_rollouts(HW)] == ["r2", "r1"]
    assert [r.rollout_id for r in store.list_rollouts(states=["aborted"])] == ["r1"]


def test_stale_rollout_update_is_refused_and_changes_nothing(store: SqliteTrackerStore) -> None:
    _rollout(store)
    store.update_rollout_state(
        "r1", expected_revision=1, state="paused", current_wave=0, kind="paused",
        reason="operator", at=START,
    )  # fmt: skip
    before = store.get_rollout("r1")
    with pytest.raises(ConflictError, match="changed meanwhile"):
        store.update_rollout_state(
            "r1", expected_revision=1, state="active", current_wave=1, kind="wave_advanced",
            reason="tick", at=START,
        )  # fmt: skip
    assert store.get_rollout("r1") == before


def test_wave_change_restarts_soak_and_resume_resets_failure_window(
    store: SqliteTrackerStore,
) -> None:
    _rollout(store)
    later = START.replace(hour=14)
    paused, _ = store.update_rollout_state(
        "r1", expected_revision=1, state="paused", current_wave=0, kind="paused",
        reason="x", at=later,
    )  # fmt: skip
    assert (paused.wave_started_at, paused.failures_since) == (START, START)
    latest = later.replace(hour=15)
    resumed, event = store.update_rollout_state(
        "r1", expected_revision=2, state="active", current_wave=1, kind="resumed",
        reason="y", at=latest,
    )  # fmt: skip
    assert (resumed.wave_started_at, resumed.failures_since) == (latest, latest)
    assert (event.kind, event.wave, event.reason, event.at) == ("resumed", 1, "y", latest)


def test_publication_mark_only_applies_to_the_latest_revision(store: SqliteTrackerStore) -> None:
    _rollout(store)
    store.update_rollout_state(
        "r1", expected_revision=1, state="paused", current_wave=0, kind="paused",
        reason="x", at=START,
    )  # fmt: skip
    assert store.mark_published("r1", 1) is False
    assert store.get_rollout("r1").published_revision == 0
    assert store.mark_published("r1", 2) is True
    assert store.get_rollout("r1").published_revision == 2


# -- the file ----------------------------------------------------------------------


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "tracker.db"
    with SqliteTrackerStore(path) as first:
        first.register_device("dev-1", HW, public_key={"k": 1})
        _rollout(first)
    with SqliteTrackerStore(path) as second:
        assert second.get_device("dev-1").public_key == {"k": 1}
        assert second.get_rollout("r1").state == "active"
        probe = sqlite3.connect(path)
        try:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            probe.close()


def test_database_from_a_newer_schema_is_refused(tracker_location: str) -> None:
    with open_tracker(tracker_location) as store, store._tx(write=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema v99"):
        open_tracker(tracker_location)


def test_closed_store_refuses_work(tracker_location: str) -> None:
    store = open_tracker(tracker_location)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_devices()


def test_server_and_cli_connections_write_concurrently_without_losing_reports(
    tracker_location: str,
) -> None:
    server = open_tracker(tracker_location)
    cli = open_tracker(tracker_location)
    clock = FakeClock()
    ids = Devices(server, clock).add(20)
    errors: list[BaseException] = []

    def report_all(store: SqlTrackerStore, seqs: range) -> None:
        try:
            for seq in seqs:
                for dev in ids:
                    store.record_report(Report(dev, HW, seq, "idle"), START)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    def start_rollouts(store: SqlTrackerStore) -> None:
        for i in range(10):
            try:
                _rollout(store, f"cli-{i}", hardware_id=f"line-{i}")
            except BaseException as e:
                errors.append(e)

    threads = [
        threading.Thread(target=report_all, args=(server, range(1, 21))),
        threading.Thread(target=start_rollouts, args=(cli,)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {d.last_seq for d in cli.list_devices(HW)} == {20}
    assert len(server.list_rollouts()) == 10
    server.close()
    cli.close()


def test_concurrent_rollout_starts_for_one_hardware_admit_exactly_one(
    tracker_location: str,
) -> None:
    stores = [open_tracker(tracker_location) for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def start(store: SqlTrackerStore, n: int) -> None:
        barrier.wait()
        try:
            _rollout(store, f"r{n}")
            outcomes.append("created")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=start, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "created"]
    for s in stores:
        s.close()


def test_another_process_sees_committed_reports(tracker_location: str) -> None:
    with open_tracker(tracker_location) as store:
        store.register_device("dev-1", HW, public_key={})
        script = (
            "import sys\n"
            "from datetime import UTC, datetime\n"
            "from staging import open_tracker\n"
            "from tufota_core import Report\n"
            "with open_tracker(sys.argv[1]) as s:\n"
            "    for seq in range(1, 51):\n"
            f"        s.record_report(Report('dev-1', '{HW}', seq, 'idle'), datetime.now(UTC))\n"
        )
        child = subprocess.Popen([sys.executable, "-c", script, tracker_location])
        for _ in range(50):  # the operator reads while the server writes
            store.list_devices()
            store.set_device_status("dev-1", "accepted")
        assert child.wait(timeout=30) == 0
        assert store.get_device("dev-1").last_seq == 50
