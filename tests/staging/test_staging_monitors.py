"""Stall findings, alert de-duplication and delivery, expiry and patch alerts, SQL counts."""

from __future__ import annotations

import random
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from staging import (
    AlertSettings,
    AlertSink,
    NewDevice,
    Notification,
    Release,
    ReleaseCatalog,
    RolloutController,
    RolloutOptions,
    SinkSpec,
    SqliteTrackerStore,
    StagingConfig,
    evaluate,
)
from staging._progress import count_devices
from tests.staging.helpers import HW, START, Devices, FakeClock, RecordingPublisher, reopen
from tufota_core import FirmwareInfo, Report, TransportError, format_time, parse_wave_spec

V2 = "2.0.0"
TARGET = f"firmware/{HW}/{V2}/image.bin"


class FakeSink(AlertSink):
    """Records notifications; fails while ``down``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Notification] = []
        self.down = False

    def send(self, notification: Notification) -> None:
        if self.down:
            raise TransportError("receiver down")
        self.sent.append(notification)

    def events(self) -> list[tuple[str, str, str | None]]:
        return [(n.phase, n.alert.kind, n.alert.device_id) for n in self.sent]


@pytest.fixture
def sink(store: SqliteTrackerStore) -> FakeSink:
    store.set_alert_settings(AlertSettings(sinks=(SinkSpec("ops", "webhook", url="http://x/"),)))
    return FakeSink("ops")


def _controller(
    store: SqliteTrackerStore, clock: FakeClock, sink: FakeSink, **kwargs: Any
) -> RolloutController:
    return RolloutController(
        store,
        RecordingPublisher(),
        clock=clock,
        config=StagingConfig(fleet_check_seconds=0, notification_backoff_seconds=10),
        sink_factory=lambda spec: sink,
        **kwargs,
    )


def _start(ctl: RolloutController, spec: str = "all:100%", **options: Any) -> str:
    opts = {
        "stall_timeout_seconds": 600,
        "reboot_timeout_seconds": 900,
        "poll_interval_seconds": 300,
        "silent_polls": 3,
        **options,
    }
    return ctl.start(HW, V2, TARGET, parse_wave_spec(spec), RolloutOptions(**opts)).rollout_id


def _report(devices: Devices, device_id: str, state: str, rid: str, done: int = 0) -> None:
    seq = devices.seq.get(device_id, 0) + 1
    devices.seq[device_id] = seq
    devices.store.record_report(
        Report(
            device_id=device_id,
            hardware_id=HW,
            seq=seq,
            state=state,
            installed_version="1.0.0",
            target_version=V2,
            rollout_id=rid,
            bytes_done=done,
            bytes_total=1000,
        ),
        devices.clock(),
    )


def test_a_download_without_progress_is_reported_once_and_resolved_when_it_moves(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    ids = devices.add(2)
    ctl = _controller(store, clock, sink)
    rid = _start(ctl)
    _report(devices, ids[0], "downloading", rid)
    _report(devices, ids[1], "idle", rid)
    clock.advance(300)
    _report(devices, ids[0], "downloading", rid, done=500)  # progress restarts the clock
    _report(devices, ids[1], "idle", rid)
    clock.advance(599)
    ctl.tick()
    assert sink.events() == []
    clock.advance(1)
    ctl.tick()
    assert sink.events() == [("opened", "download_stalled", ids[0])]
    assert "no download progress for 10 min (500/1000 bytes)" in sink.sent[0].alert.summary
    for _ in range(5):  # it stays stalled, and later silent too: still one alert
        clock.advance(600)
        _report(devices, ids[1], "idle", rid)
        ctl.tick()
    assert sink.events() == [("opened", "download_stalled", ids[0])]
    assert ctl.status(rid).stalls["download_stalled"] == 1
    _report(devices, ids[0], "downloading", rid, done=900)
    ctl.tick()
    assert sink.events()[-1] == ("resolved", "download_stalled", ids[0])
    assert sink.sent[-1].alert.resolution == "the device reported progress again"
    assert ctl.status(rid).stalls["download_stalled"] == 0


def test_each_kind_of_stall_is_its_own_finding(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    never, rebooting, silent, fine = devices.add(4)
    ctl = _controller(store, clock, sink)
    rid = _start(ctl)
    _report(devices, rebooting, "rebooting", rid)
    _report(devices, silent, "idle", rid)
    for _ in range(4):
        clock.advance(300)
        _report(devices, fine, "idle", rid)
        ctl.tick()
    kinds = {device: kind for _, kind, device in sink.events()}
    assert kinds == {never: "never_checked_in", rebooting: "reboot_overdue", silent: "silent"}
    assert ctl.status(rid).stalls == {
        "never_checked_in": 1,
        "download_stalled": 0,
        "reboot_overdue": 1,
        "silent": 1,
    }
    # Succeeding resolves; aborting resolves the rest, each exactly once.
    devices.succeed([rebooting], V2, rid)
    ctl.tick()
    ctl.abort(rid, "enough")
    ctl.tick()
    resolved = [(kind, device) for phase, kind, device in sink.events() if phase == "resolved"]
    assert sorted(resolved) == sorted(
        [("reboot_overdue", rebooting), ("never_checked_in", never), ("silent", silent)]
    )
    assert store.list_alerts(open_only=True) == []


def test_a_device_in_a_wave_not_yet_open_is_not_stalled(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    devices.add(3, prefix="canary", tags=("canary",))
    devices.add(5, prefix="field")
    ctl = _controller(store, clock, sink)
    _start(ctl, "canary:tag=canary,all:100%")
    clock.advance(3600)
    ctl.tick()
    assert {d for _, _, d in sink.events()} == {"canary-0000", "canary-0001", "canary-0002"}


def test_a_paused_rollout_alerts_once_and_resolves_on_resume(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    ids = devices.add(4)
    ctl = _controller(store, clock, sink)
    rid = _start(ctl, failure_threshold=0.25)
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    ctl.tick()
    ctl.tick()
    assert sink.events() == [("opened", "rollout_paused", None)]
    assert sink.sent[0].alert.severity == "critical"
    assert "1 of 4 devices" in sink.sent[0].alert.summary
    ctl.resume(rid, "fixed the canary")
    assert sink.events()[-1] == ("resolved", "rollout_paused", None)  # delivered by the action
    assert sink.sent[-1].alert.resolution == "rollout active: fixed the canary"


def test_failed_deliveries_back_off_then_arrive_in_order(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    ids = devices.add(1)
    ctl = _controller(store, clock, sink)
    rid = _start(ctl, failure_threshold=0.5)
    sink.down = True
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    ctl.tick()
    assert ctl.last_tick.failed_deliveries == 1
    sink.down = False
    ctl.tick()  # the retry is not due yet (10 s backoff)
    assert sink.sent == []
    clock.advance(10)
    ctl.tick()
    assert sink.events() == [("opened", "rollout_paused", None)]
    log = store.notification_log(sink.sent[0].alert.alert_id)
    assert {(n["sink"], n["attempts"], n["done_at"] is not None) for n in log} == {
        ("log", 1, True),
        ("ops", 2, True),
    }


def test_a_notification_is_given_up_after_its_attempts(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    ids = devices.add(1)
    ctl = RolloutController(
        store,
        None,
        clock=clock,
        config=StagingConfig(notification_attempts=2, notification_backoff_seconds=1),
        sink_factory=lambda spec: sink,
    )
    rid = _start(ctl, failure_threshold=0.5)
    sink.down = True
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    for _ in range(5):
        ctl.tick()
        clock.advance(5)
    log = store.notification_log(store.list_alerts()[0].alert_id)
    ops = next(n for n in log if n["sink"] == "ops")
    assert (ops["attempts"], ops["done_at"] is not None, ops["last_error"]) == (
        2,
        True,
        "receiver down",
    )


def test_two_processes_never_claim_the_same_notification(
    tmp_path: Path, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    store = devices.store
    ids = devices.add(1)
    ctl = RolloutController(store, None, clock=clock, sink_factory=lambda spec: sink)
    rid = _start(ctl, failure_threshold=0.5)
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    ctl._step(store.get_rollout(rid))  # pause and open the alert, deliver nothing yet
    with reopen(store) as other:
        first = other.due_notifications(clock())
    second = store.due_notifications(clock())
    assert len(first) == 2
    assert second == []


def test_online_metadata_close_to_expiry_alerts_until_re_signed(
    store: SqliteTrackerStore, clock: FakeClock, sink: FakeSink
) -> None:
    expiries = {"timestamp": START + timedelta(hours=6), "root": START + timedelta(hours=1)}
    ctl = _controller(store, clock, sink, expiries=lambda: expiries)
    ctl.tick()
    assert sink.events() == [("opened", "metadata_expiring", None)]  # root is offline: not ours
    assert "online timestamp metadata expires at" in sink.sent[0].alert.summary
    ctl.tick()
    assert len(sink.sent) == 1
    expiries["timestamp"] = START + timedelta(days=1)
    ctl.tick()
    assert sink.events()[-1] == ("resolved", "metadata_expiring", None)


def _catalog(released: str) -> ReleaseCatalog:
    return ReleaseCatalog.build(
        [
            Release(f"firmware/{HW}/1.0.0/a.img", FirmwareInfo(HW, "1.0.0")),
            Release(
                f"firmware/{HW}/1.1.0/a.img",
                FirmwareInfo(
                    HW, "1.1.0", "high", 8.1, ("CVE-2026-0001", "CVE-2026-0002"), released=released
                ),
            ),
            Release(
                f"firmware/{HW}/1.2.0/a.img",
                FirmwareInfo(HW, "1.2.0", "medium", 5.0, ("CVE-2026-0003",), released=released),
            ),
        ]
    )


def test_devices_missing_a_severe_fix_alert_after_the_grace_time(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    old = devices.add(3, prefix="old", version="1.0.0")
    devices.add(2, prefix="new", version="1.1.0")
    settings = store.get_alert_settings()
    store.set_alert_settings(
        AlertSettings(settings.sinks, patch_grace_seconds=86400, patch_min_cvss=7.0)
    )
    catalog = _catalog(format_time(START))
    ctl = _controller(store, clock, sink, releases=lambda: catalog)
    ctl.tick()
    assert sink.sent == []  # within the grace time
    clock.advance(86400)
    ctl.tick()
    assert sorted(sink.events()) == [
        ("opened", "unpatched_vulnerability", None),
        ("opened", "unpatched_vulnerability", None),
    ]  # one per CVE with CVSS >= 7, not one per device; the CVSS 5.0 fix is not alerted
    alert = next(n.alert for n in sink.sent if "CVE-2026-0001" in n.alert.summary)
    assert alert.summary.startswith("3 gw-100 devices still lack CVE-2026-0001 (CVSS 8.1)")
    assert alert.details["sample"] == old
    ctl.tick()
    assert len(sink.sent) == 2
    for device_id in old:
        devices.report(device_id, "succeeded", installed="1.1.0", target="1.1.0")
    ctl.tick()
    assert [p for p, _, _ in sink.events()].count("resolved") == 2


def test_fleet_status_lists_missing_fixes_worst_first(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    devices.add(1, prefix="old", version="1.0.0")
    devices.add(1, prefix="mid", version="1.1.0")
    devices.add(1, prefix="top", version="1.2.0")
    store.register_device("blank", HW, public_key={"k": 1}, status="accepted")
    ctl = _controller(store, clock, sink)
    data = ctl.fleet_status(catalog=_catalog("")).to_json()
    by_id = {d["device_id"]: d for d in data["devices"]}
    assert by_id["old-0000"]["missing_fixes"] == ["CVE-2026-0001", "CVE-2026-0002", "CVE-2026-0003"]
    assert (by_id["old-0000"]["max_cvss"], by_id["old-0000"]["exposure"]) == (8.1, "high")
    assert (by_id["mid-0000"]["missing_fixes"], by_id["mid-0000"]["exposure"]) == (
        ["CVE-2026-0003"],
        "medium",
    )
    assert by_id["top-0000"]["exposure"] == "none"
    assert by_id["blank"]["exposure"] == "unknown"
    assert by_id["old-0000"]["latest_version"] == "1.2.0"
    assert data["by_exposure"] == {
        "critical": 0,
        "high": 1,
        "medium": 1,
        "low": 0,
        "none": 1,
        "unknown": 1,
    }
    assert data["by_cve"]["CVE-2026-0003"] == {"cvss": 5.0, "fixed_in": "1.2.0", "devices": 2}
    assert next(iter(data["by_cve"])) == "CVE-2026-0001"


def test_sql_counts_match_the_python_rules_on_a_random_fleet(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible fleet
    ids = devices.add(40, prefix="canary", tags=("canary",)) + devices.add(300, prefix="field")
    ctl = _controller(store, clock, sink)
    rid = _start(ctl, "canary:tag=canary,pilot:devices=field-0001+field-0002,20%,60%,100%")
    late = devices.add(30, prefix="late")  # registered after the rollout began
    store.set_device_status("field-0003", "revoked")
    for device_id in ids + late:
        roll = rng.random()
        if device_id == "field-0003":
            continue
        if roll < 0.3:
            devices.succeed([device_id], V2, rid)
        elif roll < 0.4:
            devices.report(device_id, "failed", target=V2, rollout_id=rid, error_code="x_y")
        elif roll < 0.5:
            devices.report(device_id, "rolled_back", target=V2, rollout_id=rid, error_code="x_y")
        elif roll < 0.6:
            _report(devices, device_id, "downloading", rid, 10)
        elif roll < 0.7:
            _report(devices, device_id, "rebooting", rid)
        elif roll < 0.8:
            devices.report(device_id, "idle")
    rollout = store.get_rollout(rid)
    python = count_devices(rollout, store.list_devices())
    assert store.rollout_counts(rollout) == python
    assert sum(w.eligible for w in python.waves) + python.not_targeted == 369
    status, _ = evaluate(rollout, store.list_devices(), clock())
    assert ctl.status(rid).waves == status.waves


def test_bulk_registration_is_all_or_nothing_and_joins_the_live_rollout(
    store: SqliteTrackerStore, clock: FakeClock, devices: Devices, sink: FakeSink
) -> None:
    ctl = _controller(store, clock, sink)
    rid = _start(ctl, "all:100%")
    new = [NewDevice(f"bulk-{i}", HW, {"k": i}, installed_version="1.0.0") for i in range(50)]
    assert store.register_devices(new, at=clock()) == 50
    with pytest.raises(Exception, match="already registered"):
        store.register_devices([NewDevice("fresh", HW, {}), new[0]], at=clock())
    assert len(store.list_devices()) == 50
    assert ctl.status(rid).total.eligible == 50


def test_a_v1_tracker_file_is_migrated_with_cohorts(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "old.db"
    with SqliteTrackerStore(path) as store:
        devices = Devices(store, clock)
        ids = devices.add(10)
        ctl = RolloutController(store, None, clock=clock)
        rid = _start(ctl, "all:50%,100%")
        devices.succeed(ids[:3], V2, rid)
        expected = store.rollout_counts(store.get_rollout(rid))
    conn = sqlite3.connect(path)  # make it look like a schema v1 file
    conn.executescript(
        "DROP INDEX devices_by_cohort_cover3; DROP INDEX devices_by_version;"
        " DROP TABLE notifications; DROP TABLE alerts; DROP TABLE settings;"
        " ALTER TABLE devices DROP COLUMN state_since; ALTER TABLE devices DROP COLUMN progress_at;"
        " ALTER TABLE devices DROP COLUMN bytes_done; ALTER TABLE devices DROP COLUMN bytes_total;"
        " ALTER TABLE devices DROP COLUMN cohort_rollout;"
        " ALTER TABLE devices DROP COLUMN cohort_wave;"
        " ALTER TABLE rollouts DROP COLUMN wave_times; UPDATE schema_version SET version = 1;"
        " DROP TABLE security_events; ALTER TABLE devices DROP COLUMN clock_skew;"
        " ALTER TABLE devices DROP COLUMN failed_code;"
        " ALTER TABLE devices DROP COLUMN failed_message;"
        " ALTER TABLE rollouts DROP COLUMN retry_generation;"
        " ALTER TABLE rollouts DROP COLUMN retried_at;"
    )
    conn.close()
    with SqliteTrackerStore(path) as store:
        rollout = store.get_rollout(rid)
        assert store.rollout_counts(rollout) == expected
        assert store.list_alerts() == []
