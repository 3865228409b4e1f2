"""A rollouts role forged with the online key, holding targets outside ``rollouts/<hw>.json``:
the server's own publishing keeps working and drops the forged entries, naming them.
"""

from __future__ import annotations

import io
import logging

import pytest
from tuf.api.metadata import MetaFile, TargetFile

from repo_server import Repository, load_state, verify_repository
from repo_server._publisher import metadata_key
from repo_server._watchdog import published_rollouts
from staging import RolloutController, RolloutOptions, SqliteTrackerStore
from tests.conftest import ask
from tufota_core import ROLLOUTS_ROLE, parse_wave_spec

FORGED = [
    "evil.bin",
    "firmware/gw-100/9.9.9/evil.img",
    "rollouts/../evil.json",
    "rollouts/x/y.json",
]


def _forge(repo: Repository) -> None:
    """What a holder of the online keys can publish: extra targets in the rollouts role."""
    publisher = repo.publisher(ask)
    signers = repo.online_signers(ask)
    state = load_state(repo.storage)
    rollouts = state.roles[ROLLOUTS_ROLE]
    for path in FORGED:
        rollouts.signed.targets[path] = TargetFile.from_data(path, io.BytesIO(b"x"), ["sha256"])
    rollouts.signed.version += 1
    rollouts.signatures.clear()
    rollouts.sign(signers.rollouts)
    repo.storage.put(metadata_key(ROLLOUTS_ROLE, rollouts.signed.version), rollouts.to_bytes())
    state.snapshot.signed.meta[f"{ROLLOUTS_ROLE}.json"] = MetaFile(rollouts.signed.version)
    timestamp = publisher._sign_online(state.root, state.snapshot, state.timestamp, signers)
    publisher._write_online(state.snapshot, timestamp)
    assert set(FORGED) <= set(load_state(repo.storage).roles[ROLLOUTS_ROLE].signed.targets)


def test_publishing_a_rollout_drops_forged_targets_and_keeps_working(
    released_repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    controller = RolloutController(store, publisher)
    doc = controller.start(
        "gw-100",
        "1.1.0",
        "firmware/gw-100/1.1.0/gw-1.1.0.img",
        parse_wave_spec("100%"),
        RolloutOptions(),
    )
    _forge(released_repo)
    caplog.set_level(logging.ERROR)
    controller.pause(doc.rollout_id, "maintenance")  # raised VerificationError before
    role = load_state(released_repo.storage).roles[ROLLOUTS_ROLE]
    assert set(role.signed.targets) == {"rollouts/gw-100.json"}
    assert publisher.forged_targets == tuple(sorted(FORGED))
    assert any(
        "never wrote" in r.getMessage() and "evil.bin" in r.getMessage() for r in caplog.records
    )
    record = store.get_rollout(doc.rollout_id)
    assert record.published_revision == record.revision
    assert not [
        p for p in verify_repository(released_repo.storage).problems if p.severity == "error"
    ]
    store.close()


def test_the_online_refresh_never_re_signs_forged_targets(released_repo: Repository) -> None:
    _forge(released_repo)
    publisher = released_repo.publisher(ask)
    assert ROLLOUTS_ROLE in publisher.refresh_online()  # at once, not when the role is due
    role = load_state(released_repo.storage).roles[ROLLOUTS_ROLE]
    assert not set(FORGED) & set(role.signed.targets)


@pytest.mark.parametrize("refresh_first", [False, True], ids=["still-published", "dropped"])
def test_forged_targets_raise_one_critical_divergence_alert(
    released_repo: Repository, refresh_first: bool
) -> None:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    controller = RolloutController(store, publisher)
    controller.attach_repository(
        published=lambda: published_rollouts(publisher.storage, publisher.take_forged_targets())
    )
    controller.tick()
    assert not store.list_alerts(open_only=True, kinds=["rollout_diverged"])
    _forge(released_repo)
    if refresh_first:  # the online-role refresh drops them before the watchdog looks
        publisher.refresh_online()
    controller.tick()
    controller.tick()
    alerts = store.list_alerts(open_only=True, kinds=["rollout_diverged"])
    assert len(alerts) == 1
    assert alerts[0].severity == "critical"
    assert "evil.bin" in alerts[0].summary
    assert "online key compromise" in alerts[0].summary
    store.close()


def test_a_forged_document_entry_without_its_file_does_not_stop_publishing(
    released_repo: Repository,
) -> None:
    """``rollouts/gw-200.json`` signed with the online key, no file behind it."""
    signers = released_repo.online_signers(ask)
    publisher = released_repo.publisher(ask)
    state = load_state(released_repo.storage)
    rollouts = state.roles[ROLLOUTS_ROLE]
    path = "rollouts/gw-200.json"
    rollouts.signed.targets[path] = TargetFile.from_data(path, io.BytesIO(b"{}"), ["sha256"])
    rollouts.signed.version += 1
    rollouts.signatures.clear()
    rollouts.sign(signers.rollouts)
    released_repo.storage.put(
        metadata_key(ROLLOUTS_ROLE, rollouts.signed.version), rollouts.to_bytes()
    )
    state.snapshot.signed.meta[f"{ROLLOUTS_ROLE}.json"] = MetaFile(rollouts.signed.version)
    timestamp = publisher._sign_online(state.root, state.snapshot, state.timestamp, signers)
    publisher._write_online(state.snapshot, timestamp)

    store = SqliteTrackerStore(released_repo.tracker_path)
    controller = RolloutController(store, publisher)
    doc = controller.start(
        "gw-100",
        "1.1.0",
        "firmware/gw-100/1.1.0/gw-1.1.0.img",
        parse_wave_spec("100%"),
        RolloutOptions(),
    )
    role = load_state(released_repo.storage).roles[ROLLOUTS_ROLE]
    assert set(role.signed.targets) == {"rollouts/gw-100.json"}
    assert path in publisher.forged_targets
    record = store.get_rollout(doc.rollout_id)
    assert record.published_revision == record.revision
    store.close()


def test_forged_targets_a_follower_dropped_reach_the_leaders_watchdog(
    released_repo: Repository,
) -> None:
    """Two replicas on one tracker: the follower re-signs (dropping the forgery), the leader
    alerts."""
    from repo_server import create_app
    from tufota_cli.repo_cmds import build_context

    leader = build_context(released_repo, ask, replica="leader")
    follower = build_context(released_repo, ask, replica="follower")
    create_app(leader)  # attaches the watchdog to the leader's controller
    try:
        assert leader.leadership.check()
        assert not follower.leadership.check()
        leader.tick_if_leading()
        _forge(released_repo)
        follower.refresh_online()  # drops the forged entries; only the follower saw them
        role = load_state(released_repo.storage).roles[ROLLOUTS_ROLE]
        assert not set(FORGED) & set(role.signed.targets)
        leader.tick_if_leading()
        alerts = leader.store.list_alerts(open_only=True, kinds=["rollout_diverged"])
        assert len(alerts) == 1
        assert "evil.bin" in alerts[0].summary
    finally:
        for ctx in (leader, follower):
            ctx.leadership.release()
            ctx.store.close()
