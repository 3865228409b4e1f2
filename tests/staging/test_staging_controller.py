"""RolloutController with a real SQLite store, a recording publisher and a fake clock."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from staging import RolloutController, RolloutOptions, SqliteTrackerStore
from tests.staging.helpers import HW, Devices, FakeClock, RecordingPublisher
from tufota_core import (
    ConflictError,
    InputError,
    RolloutDoc,
    TransportError,
    Wave,
    parse_wave_spec,
    wave_index,
)

V2 = "2.0.0"
TARGET = f"firmware/{HW}/{V2}/image.bin"


def _start(controller: RolloutController, spec: str, **options: Any) -> RolloutDoc:
    return controller.start(HW, V2, TARGET, parse_wave_spec(spec), RolloutOptions(**options))


def test_start_publishes_an_active_document_at_the_first_wave(
    controller: RolloutController, publisher: RecordingPublisher, store: SqliteTrackerStore
) -> None:
    doc = _start(controller, "canary:10%,all:100%")
    assert publisher.docs == [doc]
    assert (doc.state, doc.current_wave, doc.version, doc.target_path) == (
        "active",
        0,
        V2,
        TARGET,
    )
    assert doc.rollout_id.startswith(f"{HW}-{V2}-")
    assert doc == controller.doc_for(doc.rollout_id)
    assert store.get_rollout(doc.rollout_id).published_revision == 1


@pytest.mark.parametrize(
    ("hardware_id", "version", "target", "match"),
    [
        ("GW", V2, TARGET, "hardware id"),
        (HW, "2.0", TARGET, "semantic version"),
        (HW, V2, f"firmware/{HW}/3.0.0/image.bin", "does not match"),
        (HW, V2, f"firmware/other/{V2}/image.bin", "does not match"),
    ],
)
def test_start_with_bad_input_is_refused_and_publishes_nothing(
    controller: RolloutController,
    publisher: RecordingPublisher,
    store: SqliteTrackerStore,
    hardware_id: str,
    version: str,
    target: str,
    match: str,
) -> None:
    with pytest.raises(InputError, match=match):
        controller.start(hardware_id, version, target, [Wave("all", 100.0)])
    assert publisher.docs == []
    assert store.list_rollouts() == []


def test_start_is_refused_while_the_hardware_has_a_live_rollout(
    controller: RolloutController, publisher: RecordingPublisher
) -> None:
    first = _start(controller, "all:100%")
    controller.pause(first.rollout_id, "investigating")
    with pytest.raises(ConflictError, match="already has paused rollout"):
        _start(controller, "all:100%")
    assert publisher.last.rollout_id == first.rollout_id


def test_rollout_advances_wave_by_wave_then_completes(
    controller: RolloutController,
    publisher: RecordingPublisher,
    devices: Devices,
    store: SqliteTrackerStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="staging")
    canary = devices.add(3, prefix="canary", tags=("canary",))
    rest = devices.add(17, prefix="field")
    doc = _start(controller, "canary:tag=canary,all:100%", success_threshold=1.0)
    rid = doc.rollout_id

    assert controller.tick() == []  # nobody has updated yet
    devices.succeed(canary[:2], V2, rid)
    assert controller.tick() == []
    assert "1 more success (2/3" in controller.status(rid).gate

    devices.succeed(canary[2:], V2, rid)
    events = controller.tick()
    assert [(e.kind, e.wave) for e in events] == [("wave_advanced", 1)]
    assert (publisher.last.current_wave, publisher.last.state) == (1, "active")

    devices.succeed(rest[:-1], V2, rid)
    assert controller.tick() == []
    devices.succeed(rest[-1:], V2, rid)
    assert [e.kind for e in controller.tick()] == ["completed"]
    assert (publisher.last.current_wave, publisher.last.state) == (1, "completed")
    assert [(d.current_wave, d.state) for d in publisher.docs] == [
        (0, "active"),
        (1, "active"),
        (1, "completed"),
    ]
    assert [e.kind for e in store.rollout_history(rid)] == [
        "started",
        "wave_advanced",
        "completed",
    ]
    assert controller.tick() == []  # a completed rollout stays put
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("advanced to wave 2/2 'all'" in m for m in messages)
    assert any(f"rollout {rid} completed" in m for m in messages)


@pytest.mark.parametrize(
    ("fleet", "failures", "state"),
    [
        (40, 0, "active"),
        (40, 1, "active"),  # 2.5% < 5%
        (40, 2, "paused"),  # 5% reaches the threshold
        (20, 1, "paused"),
    ],
)
def test_failures_at_the_threshold_pause_the_rollout(
    controller: RolloutController,
    publisher: RecordingPublisher,
    devices: Devices,
    fleet: int,
    failures: int,
    state: str,
) -> None:
    ids = devices.add(fleet)
    rid = _start(controller, "all:100%").rollout_id
    for dev in ids[:failures]:
        devices.report(dev, "failed", target=V2, rollout_id=rid, error_code="boot_failed")
    controller.tick()
    assert publisher.last.state == state
    if state == "paused":
        assert "failed or rolled back" in controller.status(rid).reason


def test_failure_still_counts_after_the_device_reports_idle(
    controller: RolloutController, publisher: RecordingPublisher, devices: Devices
) -> None:
    (dev,) = devices.add(1)
    rid = _start(controller, "all:100%").rollout_id
    devices.report(dev, "rolled_back", installed="1.0.0", target=V2, rollout_id=rid)
    devices.report(dev, "idle", installed="1.0.0")
    controller.tick()
    assert publisher.last.state == "paused"


def test_resume_forgives_old_failures_but_not_new_ones(
    controller: RolloutController,
    publisher: RecordingPublisher,
    devices: Devices,
    clock: FakeClock,
) -> None:
    ids = devices.add(10)
    rid = _start(controller, "all:100%").rollout_id
    devices.report(ids[0], "failed", target=V2, rollout_id=rid)
    controller.tick()
    assert publisher.last.state == "paused"

    clock.advance(60)
    controller.resume(rid, "bad power supply on dev-0000, replaced")
    assert controller.tick() == []
    assert publisher.last.state == "active"

    clock.advance(60)
    devices.report(ids[1], "failed", target=V2, rollout_id=rid)
    assert [e.kind for e in controller.tick()] == ["paused"]


def test_wave_without_devices_advances_at_once_even_with_soak(
    controller: RolloutController, publisher: RecordingPublisher, devices: Devices
) -> None:
    devices.add(5)
    # "lab" lists a device that is not registered, so it holds nobody.
    doc = _start(controller, "lab:devices=lab-1,all:100%", soak_seconds=3600)
    assert "holds no devices" in controller.status(doc.rollout_id).gate
    events = controller.tick()
    assert [(e.kind, e.wave) for e in events] == [("wave_advanced", 1)]
    assert publisher.last.current_wave == 1


def test_rollout_of_an_empty_fleet_waits_for_devices_to_register(
    controller: RolloutController, publisher: RecordingPublisher, devices: Devices
) -> None:
    doc = _start(controller, "a:devices=x,b:devices=y,c:100%")
    assert controller.tick() == []
    assert publisher.last.state == "active"
    assert "waiting for devices to register" in controller.status(doc.rollout_id).gate
    # Once a device registers the empty waves open at once and the gate waits for it.
    (device,) = devices.add(1)
    assert [e.kind for e in controller.tick()] == ["wave_advanced", "wave_advanced"]
    devices.succeed([device], V2, doc.rollout_id)
    assert [e.kind for e in controller.tick()] == ["completed"]


def test_next_wave_waits_for_soak(
    controller: RolloutController,
    publisher: RecordingPublisher,
    devices: Devices,
    clock: FakeClock,
) -> None:
    canary = devices.add(2, prefix="canary", tags=("canary",))
    devices.add(8)
    rid = _start(controller, "canary:tag=canary,all:100%", soak_seconds=600).rollout_id
    devices.succeed(canary, V2, rid)
    clock.advance(599)
    assert controller.tick() == []
    assert "soak until 2026-01-05T12:10:00Z (1 s left)" in controller.status(rid).gate
    clock.advance(1)
    assert [e.kind for e in controller.tick()] == ["wave_advanced"]
    assert publisher.last.current_wave == 1


def test_min_devices_holds_the_gate_until_enough_succeed(
    controller: RolloutController, devices: Devices
) -> None:
    ids = devices.add(10)
    rid = _start(controller, "all:100%", success_threshold=0.1, min_devices=3).rollout_id
    devices.succeed(ids[:2], V2, rid)
    assert controller.tick() == []
    assert "needs 3" in controller.status(rid).gate
    devices.succeed(ids[2:3], V2, rid)
    assert [e.kind for e in controller.tick()] == ["completed"]


def test_revoked_devices_do_not_hold_a_wave_back(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    ids = devices.add(4)
    rid = _start(controller, "all:100%", success_threshold=1.0).rollout_id
    devices.succeed(ids[:3], V2, rid)
    assert controller.tick() == []
    store.set_device_status(ids[3], "revoked", reason="decommissioned")
    assert [e.kind for e in controller.tick()] == ["completed"]


def _advance(c: RolloutController, rid: str) -> RolloutDoc:
    return c.advance(rid)


def _pause(c: RolloutController, rid: str) -> RolloutDoc:
    return c.pause(rid, "hold")


def _resume(c: RolloutController, rid: str) -> RolloutDoc:
    return c.resume(rid)


def _abort(c: RolloutController, rid: str) -> RolloutDoc:
    return c.abort(rid, "stop")


def _complete(c: RolloutController, rid: str) -> RolloutDoc:
    return c.complete(rid, "two field units retired")


Action = Callable[[RolloutController, str], RolloutDoc]


@pytest.mark.parametrize(
    ("setup", "action", "result"),
    [
        ([], _pause, ("paused", 0)),
        ([], _abort, ("aborted", 0)),
        ([], _advance, ("active", 1)),
        ([_pause], _resume, ("active", 0)),
        ([_pause], _abort, ("aborted", 0)),
        ([], _resume, "unchanged"),
        ([_pause], _pause, "unchanged"),
        ([_advance], _complete, ("completed", 1)),
        ([_advance, _pause], _complete, ("completed", 1)),
        ([], _complete, "complete needs its last wave 'all' open"),
        ([_abort], _complete, "cannot complete rollout .*: it is aborted"),
        ([_pause], _advance, "cannot advance rollout .*: it is paused"),
        ([_abort], _resume, "cannot resume rollout .*: it is aborted"),
        ([_abort], _abort, "cannot abort rollout .*: it is aborted"),
        ([_advance], _advance, "is at its last wave 'all'"),
    ],
)
def test_manual_transitions(
    controller: RolloutController,
    publisher: RecordingPublisher,
    store: SqliteTrackerStore,
    setup: list[Action],
    action: Action,
    result: tuple[str, int] | str,
) -> None:
    rid = _start(controller, "canary:10%,all:100%").rollout_id
    for step in setup:
        step(controller, rid)
    if result == "unchanged":  # idempotent: the wanted state holds already
        before = store.get_rollout(rid)
        published = len(publisher.docs)
        assert action(controller, rid) == controller.doc_for(before)
        assert store.get_rollout(rid) == before
        assert len(publisher.docs) == published
    elif isinstance(result, str):
        before = store.get_rollout(rid)
        published = len(publisher.docs)
        with pytest.raises(ConflictError, match=result):
            action(controller, rid)
        assert store.get_rollout(rid) == before
        assert len(publisher.docs) == published
    else:
        doc = action(controller, rid)
        assert (doc.state, doc.current_wave) == result
        assert publisher.last == doc


@pytest.mark.parametrize("action", [_pause, _resume, _abort, _advance, _complete])
def test_finished_rollout_refuses_every_manual_change(
    controller: RolloutController, store: SqliteTrackerStore, devices: Devices, action: Action
) -> None:
    rid = _start(controller, "all:100%").rollout_id
    devices.succeed(devices.add(1), V2, rid)
    controller.tick()
    assert store.get_rollout(rid).state == "completed"
    with pytest.raises(ConflictError, match="it is completed"):
        action(controller, rid)


def test_status_counts_each_device_once_per_wave(
    controller: RolloutController, devices: Devices, clock: FakeClock
) -> None:
    canary = devices.add(6, prefix="canary", tags=("canary",))
    devices.add(4, prefix="field")
    devices.add(2, prefix="other", hardware_id="sensor-9")
    rid = _start(controller, "canary:tag=canary,all:100%", failure_threshold=1.0).rollout_id
    clock.advance(10)
    devices.report(canary[0], "downloading", target=V2, rollout_id=rid)
    devices.report(canary[1], "rebooting", target=V2, rollout_id=rid)
    devices.report(canary[2], "succeeded", installed=V2, target=V2, rollout_id=rid)
    devices.report(canary[3], "failed", target=V2, rollout_id=rid)
    devices.report(canary[4], "rolled_back", installed="1.0.0", target=V2, rollout_id=rid)
    status = controller.status(rid)
    first, second = status.waves
    assert (first.name, first.eligible, first.checked_in) == ("canary", 6, 5)
    assert (first.downloading, first.installed, first.succeeded) == (1, 1, 1)
    assert (first.failed, first.rolled_back, first.waiting) == (1, 1, 1)
    assert (second.eligible, second.waiting) == (4, 4)
    assert (status.total.eligible, status.total.succeeded, status.not_targeted) == (10, 1, 0)
    # The failed and rolled back devices are final: no longer "still to succeed".
    assert "wave 'all' waits for 3 more successes (1/4 = 25.0%, needs 4; 2 failed" in status.gate
    assert json.loads(json.dumps(status.to_json()))["waves"][0]["rolled_back"] == 1


def test_cohort_counts_match_the_device_side_function_for_1000_devices(
    controller: RolloutController, devices: Devices
) -> None:
    ids = devices.add(1000)
    waves = parse_wave_spec("ten:10%,all:100%")
    rid = controller.start(HW, V2, TARGET, waves).rollout_id
    expected = Counter(wave_index(rid, waves, d, ()) for d in ids)
    status = controller.status(rid)
    assert [w.eligible for w in status.waves] == [expected[0], expected[1]]
    assert expected[None] == 0
    assert 60 <= expected[0] <= 140  # about 10%: the hash spreads devices evenly
    assert status.total.eligible == 1000


def test_fleet_status_reports_versions_states_and_patch_level(
    controller: RolloutController, devices: Devices, store: SqliteTrackerStore
) -> None:
    old = devices.add(3, prefix="old")
    new = devices.add(2, prefix="new", version=V2)
    devices.add(1, prefix="sensor", hardware_id="sensor-9", version="0.9.0")
    devices.report(old[0], "downloading", target=V2)
    store.set_device_status(new[1], "revoked")
    fleet = controller.fleet_status(latest_versions={HW: V2})
    assert fleet.by_version == {"1.0.0": 3, V2: 1, "0.9.0": 1}
    assert fleet.by_state == {"downloading": 1, "unknown": 4}
    assert fleet.by_status == {"accepted": 5, "revoked": 1}
    assert (fleet.up_to_date, fleet.outdated, fleet.unknown) == (1, 3, 1)
    only_hw = controller.fleet_status(HW)
    assert len(only_hw.devices) == 5
    assert {d.up_to_date for d in only_hw.devices} == {None}
    json.dumps(fleet.to_json())


def test_failed_publish_is_recorded_and_retried_by_the_next_tick(
    controller: RolloutController,
    publisher: RecordingPublisher,
    store: SqliteTrackerStore,
    devices: Devices,
) -> None:
    device = devices.add(1)
    publisher.fail = True
    with pytest.raises(TransportError):
        _start(controller, "all:100%")
    (rollout,) = store.list_rollouts()
    assert rollout.published_revision < rollout.revision
    devices.succeed(device, V2, rollout.rollout_id)
    controller.tick()  # completes, publishing still fails: no exception
    publisher.fail = False
    controller.tick()
    assert (publisher.last.rollout_id, publisher.last.state) == (rollout.rollout_id, "completed")
    latest = store.get_rollout(rollout.rollout_id)
    assert latest.published_revision == latest.revision


def test_change_without_a_publisher_is_published_by_the_servers_tick(
    controller: RolloutController,
    publisher: RecordingPublisher,
    devices: Devices,
    store: SqliteTrackerStore,
    clock: FakeClock,
) -> None:
    devices.add(3)
    rid = _start(controller, "all:100%").rollout_id
    cli = RolloutController(store, None, clock=clock)
    cli.pause(rid, "freeze for the holidays")
    assert publisher.last.state == "active"  # the CLI published nothing
    controller.tick()
    assert (publisher.last.state, publisher.last.rollout_id) == ("paused", rid)


def test_tick_does_not_overwrite_a_pause_made_meanwhile_by_another_process(
    store: SqliteTrackerStore, devices: Devices, clock: FakeClock
) -> None:
    publisher = RecordingPublisher()
    server = RolloutController(store, publisher, clock=clock)
    rid = server.start(HW, V2, TARGET, parse_wave_spec("all:100%")).rollout_id
    devices.succeed(devices.add(2), V2, rid)
    cli = RolloutController(store, None, clock=clock)

    def clock_that_lets_the_operator_in() -> datetime:
        # The tick has read the rollout and judged its gate; now the CLI pauses it.
        if store.get_rollout(rid).state == "active":
            cli.pause(rid, "operator hold")
        return clock()

    racing = RolloutController(store, publisher, clock=clock_that_lets_the_operator_in)
    assert racing.tick() == []
    assert store.get_rollout(rid).state == "paused"
    assert publisher.last.state == "paused"  # and the tick published the operator's change
