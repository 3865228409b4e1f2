"""The watchdog against a stolen online key: a real repository, its real online key, a real tracker.

Each act a stolen ``rollouts`` key allows (open every wave, drop the
maintenance window, undo a pause or an abort, push the oldest release) is
published exactly as an attacker would, signed with the real key, and must
raise one critical ``rollout_diverged`` alert and stop the controller from
signing on top until an operator resolves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from repo_server import Publisher, Repository, release_catalog
from repo_server._watchdog import published_rollouts
from staging import RolloutController, RolloutOptions, SqliteTrackerStore
from tests.conftest import ask
from tests.staging.helpers import HW, Devices, FakeClock
from tufota_core import ConflictError, RolloutDoc, parse_wave_spec


class Fleet:
    def __init__(self, repo: Repository, clock: FakeClock) -> None:
        self.repo = repo
        self.store = SqliteTrackerStore(repo.tracker_path)
        self.publisher: Publisher = repo.publisher(ask)
        self.clock = clock
        self.controller = RolloutController(
            self.store,
            self.publisher,
            clock=clock,
            published=lambda: published_rollouts(repo.storage),
        )
        self.devices = Devices(self.store, clock)
        catalog = release_catalog(repo.state())
        self.targets = {v: catalog.find(HW, v).target_path for v in ("1.0.0", "1.1.0")}  # type: ignore[union-attr]

    def start(
        self,
        spec: str = "canary:devices=dev-0000,half:devices=dev-0001,all:100%",
        **options: object,
    ) -> RolloutDoc:
        return self.controller.start(
            HW,
            "1.1.0",
            self.targets["1.1.0"],
            parse_wave_spec(spec),
            RolloutOptions(**options),  # type: ignore[arg-type]
        )

    def published(self) -> RolloutDoc:
        doc = published_rollouts(self.repo.storage)[HW]
        assert isinstance(doc, RolloutDoc)
        return doc

    def diverged(self) -> list[str]:
        return [a.summary for a in self.store.list_alerts(kinds=["rollout_diverged"])]


@pytest.fixture
def fleet(released_repo: Repository, clock: FakeClock) -> Iterator[Fleet]:
    f = Fleet(released_repo, clock)
    yield f
    f.store.close()


def test_a_repository_that_agrees_with_the_tracker_raises_nothing(fleet: Fleet) -> None:
    fleet.devices.add(4, version="1.0.0")
    rid = fleet.start().rollout_id
    fleet.controller.pause(rid, "look")
    fleet.controller.tick()
    fleet.controller.tick()
    assert fleet.diverged() == []
    assert fleet.published() == fleet.controller.doc_for(rid)


def _open_every_wave(fleet: Fleet, doc: RolloutDoc) -> RolloutDoc:
    return dataclasses.replace(doc, current_wave=len(doc.waves) - 1)


def _drop_the_window(fleet: Fleet, doc: RolloutDoc) -> RolloutDoc:
    return dataclasses.replace(doc, maintenance_window=None)


def _undo_the_stop(fleet: Fleet, doc: RolloutDoc) -> RolloutDoc:
    return dataclasses.replace(doc, state="active")


def _push_the_oldest_release(fleet: Fleet, doc: RolloutDoc) -> RolloutDoc:
    return dataclasses.replace(doc, version="1.0.0", target_path=fleet.targets["1.0.0"])


Forge = Callable[[Fleet, RolloutDoc], RolloutDoc]


@pytest.mark.parametrize(
    ("operator", "forge", "difference"),
    [
        (None, _open_every_wave, "current wave 3, tracker 1"),
        (None, _drop_the_window, "maintenance window None, tracker 'Sat 02:00-04:00 UTC'"),
        ("pause", _undo_the_stop, "state 'active', tracker 'paused'"),
        ("abort", _undo_the_stop, "state 'active', tracker 'aborted'"),
        (None, _push_the_oldest_release, "version '1.0.0', tracker '1.1.0'"),
    ],
)
def test_a_document_forged_with_the_online_key_raises_one_alert_and_stops_signing(
    fleet: Fleet, operator: str | None, forge: Forge, difference: str
) -> None:
    fleet.devices.add(4, version="1.0.0")
    rid = fleet.start(maintenance_window="Sat 02:00-04:00 UTC").rollout_id
    if operator is not None:
        getattr(fleet.controller, operator)(rid, "operator says stop")
    fleet.controller.tick()
    assert fleet.diverged() == []
    # The attacker signs with the real online key, outside the controller.
    fleet.publisher.publish_rollout(forge(fleet, fleet.controller.doc_for(rid)))
    for _ in range(3):
        fleet.clock.advance(5)
        fleet.controller.tick()
    (summary,) = fleet.diverged()
    assert summary.startswith("rollout document diverged: online key compromise?")
    assert difference in summary
    (alert,) = fleet.store.list_alerts(open_only=True, kinds=["rollout_diverged"])
    assert alert.severity == "critical"
    # Nothing more is signed for the hardware id until an operator resolves it.
    before = fleet.store.get_rollout(rid)
    forged = fleet.published()
    if before.state == "aborted":  # a new rollout would be allowed otherwise
        act: Callable[[], object] = lambda: fleet.start("all:100%")  # noqa: E731
    else:
        act = lambda: fleet.controller.abort(rid, "now")  # noqa: E731
    with pytest.raises(ConflictError, match="refusing to sign"):
        act()
    assert fleet.store.get_rollout(rid) == before
    assert fleet.published() == forged


def test_resolving_a_divergence_re_publishes_the_trackers_document(fleet: Fleet) -> None:
    fleet.devices.add(4, version="1.0.0")
    rid = fleet.start().rollout_id
    fleet.controller.pause(rid, "bad batch")
    fleet.publisher.publish_rollout(_undo_the_stop(fleet, fleet.controller.doc_for(rid)))
    fleet.controller.tick()
    (alert,) = fleet.store.list_alerts(open_only=True, kinds=["rollout_diverged"])
    # (the operator rotates the online keys here: docs/rollouts.md)
    fleet.controller.resolve_alert(alert.alert_id, "online keys rotated")
    fleet.controller.tick()
    assert fleet.published().state == "paused"
    fleet.controller.tick()
    assert len(fleet.diverged()) == 1  # no new alert: the documents agree again


def _working(fleet: Fleet, device: str, state: str, version: str, rid: str) -> None:
    fleet.devices.report(device, state, installed="1.0.0", target=version, rollout_id=rid)


def test_a_device_installing_outside_the_open_waves_raises_one_alert(fleet: Fleet) -> None:
    ids = fleet.devices.add(20, version="1.0.0")
    doc = fleet.start("canary:devices=dev-0000,all:100%")
    fleet.controller.tick()
    outsider = ids[5]
    _working(fleet, outsider, "downloading", "1.1.0", doc.rollout_id)
    fleet.clock.advance(60)  # device reports are scanned with the fleet checks
    fleet.controller.tick()
    fleet.clock.advance(60)
    fleet.controller.tick()
    (summary,) = fleet.diverged()
    assert f"{outsider} reports downloading of 1.1.0 from wave 2" in summary
    assert "opened only up to wave 1" in summary


def test_a_device_starting_after_a_pause_raises_one_alert(fleet: Fleet) -> None:
    ids = fleet.devices.add(3, version="1.0.0")
    rid = fleet.start("all:100%").rollout_id
    _working(fleet, ids[0], "downloading", "1.1.0", rid)  # before the pause: fine
    fleet.clock.advance(10)
    fleet.controller.pause(rid, "investigating")
    fleet.clock.advance(10)
    _working(fleet, ids[1], "downloading", "1.1.0", rid)
    fleet.clock.advance(60)
    fleet.controller.tick()
    fleet.clock.advance(60)
    fleet.controller.tick()
    (summary,) = fleet.diverged()
    assert f"{ids[1]} started downloading 1.1.0" in summary
    assert "after rollout" in summary


def test_a_device_working_towards_a_release_nobody_offered_raises_one_alert(fleet: Fleet) -> None:
    ids = fleet.devices.add(2, version="1.0.0")
    fleet.start("all:100%")
    _working(fleet, ids[0], "installing", "1.0.1", "forged-rollout")
    fleet.clock.advance(60)
    fleet.controller.tick()
    fleet.clock.advance(60)
    fleet.controller.tick()
    (summary,) = fleet.diverged()
    assert f"{ids[0]} reports installing of 1.0.1, a release no rollout of {HW} offered" in summary
