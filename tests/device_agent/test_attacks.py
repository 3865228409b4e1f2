"""End-to-end attacks through a hostile mirror: each refused, specifically, nothing installed.

The origin is the fixture's real TUF repository over loopback HTTP; the device
talks only to ``Mirror``, which forwards and rewrites. Attacks that need an
online key (timestamp, snapshot, rollouts) use the repository's own signers,
as an attacker who stole them would; offline keys (root, targets, product
line) are never used to attack.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import MetaFile

from device_agent import ACTION_REFUSED, ACTION_UNREACHABLE, AgentLimits
from tests.device_agent.conftest import FACTORY, HW, Env
from tests.device_agent.mirror import Mirror, endless, trickle
from tufota_core import RolloutDoc, Wave, firmware_target_path, rollout_target_path


@pytest.fixture
def mirror(env: Env) -> Iterator[Mirror]:
    proxy = Mirror(env.url)
    env.config = dataclasses.replace(env.config, server_url=proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def _release(env: Env, version: str = "1.1.0") -> str:
    path = env.repo.add_firmware(version)
    env.repo.set_rollout(version)
    env.repo.publish()
    return path


def _blob_url_path(env: Env, target_path: str) -> str:
    return "/" + env.repo.blobs[target_path].relative_to(env.repo.dir).as_posix()


def _forge(env: Env, attack: Callable[[], None]) -> dict[str, bytes]:
    """Run ``attack`` on the repository; return the files it changed; restore the origin."""
    root = env.repo.dir
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    backup = root.with_name("origin-backup")
    shutil.copytree(root, backup)
    attack()
    changed = {
        "/" + p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and before.get(p) != p.read_bytes()
    }
    shutil.rmtree(root)
    backup.rename(root)
    return changed


def _assert_refused_and_reported(env: Env, result_code: str, code: str) -> None:
    assert result_code == code
    control = env.boot_control()
    assert control["pending"] is None
    assert control["slots"][control["active"]]["version"] == FACTORY
    assert not (env.config.slots_dir / "b" / "image.bin").exists()
    failed = [r for r in env.server.reports if r.state == "failed"]
    assert [r.error_code for r in failed] == [code]
    assert all(r.installed_version == FACTORY for r in env.server.reports)


def test_arbitrary_firmware_is_refused(env: Env, mirror: Mirror) -> None:
    path = _release(env)
    size = env.repo.blobs[path].stat().st_size
    mirror.rewrites.replace[_blob_url_path(env, path)] = os.urandom(size)

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "target_hash_mismatch")
    assert mirror.rewrites.hits


def test_firmware_built_for_other_hardware_is_refused(env: Env, mirror: Mirror) -> None:
    path = _release(env)
    # A validly signed image of another product, swapped in on the wire.
    other = b"gw-200 firmware\n" * 400
    mirror.rewrites.replace[_blob_url_path(env, path)] = other

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "target_length_mismatch")


def test_rollout_naming_other_hardware_is_refused_even_with_the_online_key(
    env: Env, mirror: Mirror
) -> None:
    _release(env)

    def point_at_gw_200() -> None:
        doc = RolloutDoc(
            rollout_id="r-evil",
            hardware_id="gw-200",
            version="1.1.0",
            target_path=firmware_target_path("gw-200", "1.1.0", "fw.bin"),
            waves=(Wave("all", 100.0),),
            current_wave=0,
            state="active",
        )
        env.repo._add_target("rollouts", rollout_target_path(HW), doc.to_bytes())
        env.repo.publish()

    mirror.rewrites.replace.update(_forge(env, point_at_gw_200))

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "wrong_hardware")


def test_rollback_of_firmware_version_is_refused_even_with_the_online_key(
    env: Env, mirror: Mirror
) -> None:
    _release(env)
    assert env.agent().run_once().action == "rebooting"
    assert env.agent().run_once().action == "succeeded"
    env.repo.add_firmware("1.0.5")  # signed offline long ago, still valid
    env.repo.publish()

    def roll_back() -> None:
        env.repo.set_rollout("1.0.5", rollout_id="r-old")
        env.repo.publish()

    mirror.rewrites.replace.update(_forge(env, roll_back))

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, "downgrade_refused")
    assert result.installed_version == "1.1.0"
    assert env.boot_control()["pending"] is None
    assert env.server.reports[-1].state == "failed"
    assert env.server.reports[-1].error_code == "downgrade_refused"


def _synced_twice(env: Env) -> dict[str, bytes]:
    """Publish v1, let the device see v2; return the v1 files an attacker recorded."""
    env.repo.publish()
    old = {
        "/metadata/" + p.name: p.read_bytes()
        for p in env.repo.metadata_dir.iterdir()
        if p.name == "timestamp.json"
    }
    _release(env)
    env.repo.set_rollout("1.1.0", state="paused")
    env.repo.publish()
    assert env.agent().run_once().action == "idle"
    env.server.reports.clear()
    return old


def test_rollback_of_timestamp_is_refused(env: Env, mirror: Mirror) -> None:
    old = _synced_twice(env)
    mirror.rewrites.replace.update(old)

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_rollback")


def test_rollback_of_snapshot_is_refused(env: Env, mirror: Mirror) -> None:
    _synced_twice(env)

    def old_snapshot() -> None:
        ts = env.repo.timestamp
        ts.signed.snapshot_meta = MetaFile(env.repo.snapshot.signed.version - 1)
        ts.signed.version += 1
        ts.sign(env.repo.signers["timestamp"])
        (env.repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())

    mirror.rewrites.replace.update(_forge(env, old_snapshot))

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_rollback")


def test_rollback_of_targets_is_refused(env: Env, mirror: Mirror) -> None:
    _synced_twice(env)

    def old_targets() -> None:
        repo = env.repo
        snap = repo.snapshot.signed
        snap.meta["targets.json"] = MetaFile(snap.meta["targets.json"].version - 1)
        snap.version += 1
        repo.snapshot.sign(repo.signers["snapshot"])
        (repo.metadata_dir / f"{snap.version}.snapshot.json").write_bytes(repo.snapshot.to_bytes())
        ts = repo.timestamp
        ts.signed.snapshot_meta = MetaFile(snap.version)
        ts.signed.version += 1
        ts.sign(repo.signers["timestamp"])
        (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())

    mirror.rewrites.replace.update(_forge(env, old_targets))

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_rollback")


def test_freeze_with_expired_metadata_is_refused(env: Env, mirror: Mirror) -> None:
    _release(env)

    def recorded_long_ago() -> None:
        ts = env.repo.timestamp
        ts.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        ts.sign(env.repo.signers["timestamp"])
        (env.repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())

    mirror.rewrites.replace.update(_forge(env, recorded_long_ago))

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_expired")


def test_mix_and_match_of_metadata_is_refused(env: Env, mirror: Mirror) -> None:
    env.repo.publish()  # targets v2
    old_targets = (env.repo.metadata_dir / "1.targets.json").read_bytes()
    _release(env)  # targets v3
    mirror.rewrites.replace["/metadata/3.targets.json"] = old_targets

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_version_mismatch")


def test_endless_metadata_is_refused(env: Env, mirror: Mirror) -> None:
    _release(env)
    mirror.rewrites.stream["/metadata/timestamp.json"] = (10**12, endless)

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "metadata_too_large")


def test_endless_firmware_is_cut_at_the_signed_length(env: Env, mirror: Mirror) -> None:
    path = _release(env)
    mirror.rewrites.stream[_blob_url_path(env, path)] = (10**12, endless)

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "target_length_mismatch")
    assert not list(env.config.slots_dir.rglob("*.part"))


def _impatient(env: Env) -> None:
    limits = AgentLimits(read_timeout=5, min_bytes_per_second=2000, slow_window=0.5)
    env.config = dataclasses.replace(env.config, limits=limits)


def test_slow_retrieval_of_firmware_is_abandoned_and_reported(env: Env, mirror: Mirror) -> None:
    path = _release(env)
    data = env.repo.blobs[path].read_bytes()
    _impatient(env)
    mirror.rewrites.stream[_blob_url_path(env, path)] = (len(data), trickle(data, 0.01))

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_UNREACHABLE, "slow_retrieval")
    _assert_refused_and_reported(env, result.error_code or "", "slow_retrieval")


def test_slow_retrieval_of_metadata_is_abandoned_and_reported(env: Env, mirror: Mirror) -> None:
    _release(env)
    data = (env.repo.metadata_dir / "timestamp.json").read_bytes()
    _impatient(env)
    mirror.rewrites.stream["/metadata/timestamp.json"] = (len(data), trickle(data, 0.01))

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_UNREACHABLE, "slow_retrieval")
    _assert_refused_and_reported(env, result.error_code or "", "slow_retrieval")


def test_rollout_document_signed_by_an_unknown_key_is_refused(env: Env, mirror: Mirror) -> None:
    _release(env)
    role = env.repo.delegated["rollouts"]
    name = f"/metadata/{role.signed.version}.rollouts.json"
    env.repo.set_rollout("1.1.0", rollout_id="r-forged")
    role.signatures.clear()
    role.sign(CryptoSigner.generate_ed25519())
    mirror.rewrites.replace[name] = role.to_bytes()

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    _assert_refused_and_reported(env, result.error_code or "", "bad_signature")


def test_the_mirror_passes_an_honest_update(env: Env, mirror: Mirror) -> None:
    _release(env)

    assert env.agent().run_once().action == "rebooting"
    assert env.agent().run_once().action == "succeeded"
    assert Path(env.config.slots_dir / "b" / "image.bin").exists()
