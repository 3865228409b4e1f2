"""Rollouts that can finish and status that agrees with itself (real SQLite store, fake clock).

Final failures leave the success count, retries re-offer the release through
the signed document, operators complete with stragglers, verification
failures are security events, and every surface classifies a device the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from staging import (
    NOT_COUNTED_CODES,
    SECURITY_CODES,
    NewDevice,
    RolloutController,
    RolloutOptions,
    SqliteTrackerStore,
    find_stall,
)
from tests.staging.helpers import HW, Devices, FakeClock, RecordingPublisher
from tufota_core import ConflictError, InputError, Report, RolloutDoc, format_time, parse_wave_spec

V2 = "2.0.0"
V3 = "3.0.0"
TARGET = f"firmware/{HW}/{V2}/image.bin"


def _start(controller: RolloutController, spec: str, **options: Any) -> RolloutDoc:
    return controller.start(HW, V2, TARGET, parse_wave_spec(spec), RolloutOptions(**options))


def test_a_rolled_back_device_is_final_and_the_last_wave_completes_at_7_of_8(
    controller: RolloutController, devices: Devices, publisher: RecordingPublisher
) -> None:
    ids = devices.add(8)
    rid = _start(controller, "all:100%", failure_threshold=0.2).rollout_id
    devices.report(
        ids[0], "rolled_back", target=V2, rollout_id=rid, error_code="health_check_failed"
    )
    devices.succeed(ids[1:], V2, rid)
    # 1/8 = 12.5% is under the 20% failure threshold; 7 >= 95% of the 7 not failed.
    assert [e.kind for e in controller.tick()] == ["completed"]
    assert publisher.last.state == "completed"
    status = controller.status(rid)
    assert (status.total.succeeded, status.total.rolled_back) == (7, 1)


def test_final_failures_still_pause_at_the_failure_threshold(
    controller: RolloutController, devices: Devices, clock: FakeClock
) -> None:
    ids = devices.add(8)
    rid = _start(controller, "all:100%").rollout_id  # failure threshold 5%
    devices.report(ids[0], "rolled_back", target=V2, rollout_id=rid)
    devices.succeed(ids[1:], V2, rid)
    assert [e.kind for e in controller.tick()] == ["paused"]
    # After a resume the old failure no longer pauses, and no longer blocks completion.
    clock.advance(60)
    controller.resume(rid, "device 0 is a known bad unit")
    assert [e.kind for e in controller.tick()] == ["completed"]


def test_every_device_failed_never_completes_on_its_own(
    controller: RolloutController, devices: Devices, clock: FakeClock
) -> None:
    ids = devices.add(2)
    rid = _start(controller, "all:100%").rollout_id
    for device in ids:
        devices.report(device, "failed", target=V2, rollout_id=rid, error_code="install_failed")
    assert [e.kind for e in controller.tick()] == ["paused"]
    clock.advance(60)
    controller.resume(rid, "try the gate again")
    assert controller.tick() == []
    assert "all 2 devices failed" in controller.status(rid).gate


def test_operator_completes_with_stragglers_and_the_reason_is_in_the_history(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    ids = devices.add(4)
    rid = _start(controller, "all:100%").rollout_id
    devices.succeed(ids[:3], V2, rid)  # one device is offline for good
    assert controller.tick() == []
    with pytest.raises(InputError, match="needs a reason"):
        controller.complete(rid, " ")
    doc = controller.complete(rid, "plc-3 is decommissioned")
    assert (doc.state, doc.current_wave) == ("completed", 0)
    last = store.rollout_history(rid)[-1]
    assert (last.kind, last.reason) == ("completed", "completed by hand: plc-3 is decommissioned")
    assert controller.status(rid).gate == "completed by hand: plc-3 is decommissioned"


def test_complete_is_refused_before_the_last_wave(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    devices.add(4)
    rid = _start(controller, "canary:10%,all:100%").rollout_id
    before = store.get_rollout(rid)
    with pytest.raises(ConflictError, match="advance first"):
        controller.complete(rid, "impatient")
    assert store.get_rollout(rid) == before


def test_retry_failed_reoffers_the_release_with_backoff_through_the_signed_document(
    controller: RolloutController,
    devices: Devices,
    publisher: RecordingPublisher,
    clock: FakeClock,
    store: SqliteTrackerStore,
) -> None:
    ids = devices.add(4)
    rid = _start(
        controller, "all:100%", failure_threshold=0.5, retry_failed=2, retry_backoff_seconds=600
    ).rollout_id
    devices.succeed(ids[1:], V2, rid)
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    assert controller.tick() == []  # waits for the retry instead of completing
    assert "retry 1/2 of 1 failed device at" in controller.status(rid).gate
    clock.advance(600)
    assert [e.kind for e in controller.tick()] == ["retried"]
    assert publisher.last.retry == 1
    assert RolloutDoc.from_bytes(publisher.last.to_bytes()).retry == 1  # what devices read
    # Re-offered: the device is waiting again, not failed; the gate waits for it.
    assert controller.status(rid).total.waiting == 1
    clock.advance(60)
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    clock.advance(1199)  # the second retry waits twice as long
    assert controller.tick() == []
    clock.advance(1)
    assert [e.kind for e in controller.tick()] == ["retried"]
    assert publisher.last.retry == 2
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    # Retries used up: the failure is final and the rollout completes at 3/4.
    assert [e.kind for e in controller.tick()] == ["completed"]
    kinds = [e.kind for e in store.rollout_history(rid)]
    assert kinds == ["started", "retried", "retried", "completed"]


def test_a_retried_device_that_succeeds_counts_as_success(
    controller: RolloutController, devices: Devices, clock: FakeClock
) -> None:
    ids = devices.add(2)
    rid = _start(
        controller, "all:100%", failure_threshold=1.0, retry_failed=1, retry_backoff_seconds=60
    ).rollout_id
    devices.report(ids[0], "rolled_back", target=V2, rollout_id=rid)
    devices.succeed(ids[1:], V2, rid)
    clock.advance(60)
    assert [e.kind for e in controller.tick()] == ["retried"]
    devices.succeed(ids[:1], V2, rid)
    assert [e.kind for e in controller.tick()] == ["completed"]
    assert controller.status(rid).total.succeeded == 2


def test_a_tampered_download_raises_a_security_alert_and_does_not_pause(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    ids = devices.add(3)
    rid = _start(controller, "all:100%", failure_threshold=0.05).rollout_id
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="target_hash_mismatch")
    assert controller.tick() == []
    assert store.get_rollout(rid).state == "active"
    status = controller.status(rid)
    assert (status.total.failed, status.total.waiting, status.security_events) == (0, 3, 1)
    (alert,) = store.list_alerts(open_only=True, kinds=["verification_failed"])
    assert alert.severity == "critical"
    assert "target_hash_mismatch" in alert.summary
    controller.tick()  # the condition persists: still one alert
    assert len(store.list_alerts(kinds=["verification_failed"])) == 1
    # An install failure still counts and pauses.
    devices.report(ids[1], "failed", target=V2, rollout_id=rid, error_code="install_failed")
    assert [e.kind for e in controller.tick()] == ["paused"]


def test_a_resolved_security_alert_opens_again_only_for_new_events(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    ids = devices.add(2)
    rid = _start(controller, "all:100%").rollout_id
    devices.report(ids[0], "failed", target=V2, rollout_id=rid, error_code="bad_signature")
    controller.tick()
    (alert,) = store.list_alerts(open_only=True, kinds=["verification_failed"])
    store.resolve_alert(alert.alert_id, at=controller.now(), resolution="proxy fixed", sinks=())
    controller.tick()
    assert store.list_alerts(open_only=True, kinds=["verification_failed"]) == []
    devices.report(ids[1], "failed", target=V2, rollout_id=rid, error_code="slow_retrieval")
    controller.tick()
    assert len(store.list_alerts(open_only=True, kinds=["verification_failed"])) == 1


def test_a_completed_rollouts_waves_keep_their_successes_after_devices_move_on(
    controller: RolloutController, devices: Devices
) -> None:
    canary = devices.add(2, prefix="canary", tags=("canary",))
    rest = devices.add(2)
    rid = _start(controller, "canary:tag=canary,all:100%").rollout_id
    devices.succeed(canary, V2, rid)
    controller.tick()
    devices.succeed(rest, V2, rid)
    controller.tick()
    target3 = f"firmware/{HW}/{V3}/image.bin"
    newer = controller.start(HW, V3, target3, parse_wave_spec("all:100%"), RolloutOptions())
    devices.succeed(canary + rest, V3, newer.rollout_id)
    first = controller.status(rid).waves[0]
    assert (first.eligible, first.succeeded) == (2, 2)  # not 0/2 now that they run 3.0.0


def test_a_device_silent_before_its_wave_opened_is_one_kind_everywhere(
    controller: RolloutController, devices: Devices, clock: FakeClock, store: SqliteTrackerStore
) -> None:
    (device,) = devices.add(1)
    devices.report(device, "idle", installed="1.0.0")  # then it is killed
    rid = _start(controller, "all:100%").rollout_id
    kinds = set()
    for _ in range(6):  # 30 min: past silent (15 min) and past the stall timeout (20 min)
        clock.advance(300)
        controller.tick()
        rollout = store.get_rollout(rid)
        finding = find_stall(rollout, 0, store.get_device(device), clock())
        if finding is not None:
            kinds.add(finding.kind)
    assert kinds == {"silent"}
    (alert,) = store.list_alerts(open_only=True, rollout_id=rid)
    assert alert.kind == "silent"


def test_a_rolled_back_device_keeps_the_health_checks_reason_after_heartbeats(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    (device,) = devices.add(1)
    rid = _start(controller, "all:100%", failure_threshold=1.0).rollout_id
    devices.store.record_report(
        Report(
            device,
            HW,
            1,
            "rolled_back",
            installed_version="1.0.0",
            target_version=V2,
            rollout_id=rid,
            error_code="health_check_failed",
            message="plc-io did not answer within 60 s",
        ),
        controller.now(),
    )
    devices.seq[device] = 1
    controller.pause(rid, "investigating")
    devices.report(device, "idle", installed="1.0.0")
    record = store.get_device(device)
    assert (record.failed_state, record.failed_code) == ("rolled_back", "health_check_failed")
    assert record.failed_message == "plc-io did not answer within 60 s"


def test_a_device_with_a_wrong_clock_is_flagged_and_named_by_the_gate(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore, clock: FakeClock
) -> None:
    ids = devices.add(2)
    rid = _start(controller, "all:100%").rollout_id
    ahead = format_time(clock() + timedelta(days=365))
    store.record_report(
        Report(ids[0], HW, 1, "idle", installed_version="1.0.0", time=ahead), clock()
    )
    # An hour behind is a report queued while offline, not a wrong clock.
    queued = format_time(clock() - timedelta(hours=1))
    store.record_report(
        Report(ids[1], HW, 1, "idle", installed_version="1.0.0", time=queued), clock()
    )
    good = format_time(clock())
    controller.tick()
    (alert,) = store.list_alerts(open_only=True, kinds=["device_clock_skew"])
    assert alert.device_id == ids[0]
    assert "ahead of the server's" in alert.summary
    assert "1 device reports a clock that disagrees" in controller.status(rid).gate
    assert controller.status(rid).clock_skewed == 1
    # Fixed: the alert resolves on the next fleet check.
    store.record_report(
        Report(ids[0], HW, 2, "idle", installed_version="1.0.0", time=good), clock()
    )
    clock.advance(61)
    controller.tick()
    assert store.list_alerts(open_only=True, kinds=["device_clock_skew"]) == []


def test_registering_a_taken_device_id_names_it_without_sql(
    store: SqliteTrackerStore, clock: FakeClock
) -> None:
    key = {"keytype": "ed25519", "keyval": {"public": "x"}}
    store.register_devices([NewDevice("sim-00001", "gw-100", key)], at=clock())
    before = store.list_devices()
    with pytest.raises(ConflictError) as raised:
        store.register_devices(
            [NewDevice("sim-00002", "sensor-9", key), NewDevice("sim-00001", "sensor-9", key)],
            at=clock(),
        )
    assert str(raised.value) == (
        "device sim-00001 is already registered (hardware gw-100); "
        "choose another device id or prefix"
    )
    assert "UNIQUE" not in str(raised.value)
    assert store.list_devices() == before


def test_every_code_the_gates_leave_out_is_one_the_agent_reports() -> None:
    from device_agent import _errors

    agent_codes = {v for k, v in vars(_errors).items() if k.isupper() and isinstance(v, str)}
    assert agent_codes >= NOT_COUNTED_CODES
    assert SECURITY_CODES <= NOT_COUNTED_CODES
    # The device's own failures always count toward the failure threshold.
    assert {"install_failed", "health_check_failed", "boot_attempts_exhausted"} <= agent_codes
    assert not {"install_failed", "health_check_failed"} & NOT_COUNTED_CODES
