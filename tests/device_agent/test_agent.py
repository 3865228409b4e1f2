"""The agent end to end: real TUF metadata, real HTTP on loopback, real A/B slot files."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest
from securesystemslib.signer import CryptoSigner

from device_agent import (
    ACTION_IDLE,
    ACTION_REBOOTING,
    ACTION_REFUSED,
    ACTION_ROLLED_BACK,
    ACTION_SUCCEEDED,
    ACTION_UNREACHABLE,
    CycleResult,
    run_agent_loop,
)
from tests.device_agent.conftest import DEVICE, FACTORY, HW, Env, failing_command
from tufota_core import FirmwareInfo, Wave


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _slot_image(env: Env, slot: str) -> bytes | None:
    path = env.config.slots_dir / slot / "image.bin"
    return path.read_bytes() if path.exists() else None


def test_update_installs_new_version_and_reports_success_only_after_boot(env: Env) -> None:
    path = env.repo.add_firmware("1.1.0", b"new image" * 100)
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    agent = env.agent()

    first = agent.run_once()

    assert first.action == ACTION_REBOOTING
    assert first.reboot_pending
    assert first.installed_version == FACTORY
    assert env.server.states() == ["downloading", "downloaded", "installing", "rebooting"]
    assert _slot_image(env, "b") == b"new image" * 100
    control = env.boot_control()
    assert (control["active"], control["pending"]) == ("a", "b")

    second = env.agent().run_once()  # the agent's next start, after the reboot

    assert second.action == ACTION_SUCCEEDED
    assert second.installed_version == "1.1.0"
    assert env.server.states()[4:] == ["verifying", "succeeded"]
    succeeded = env.server.reports[-1]
    assert succeeded.installed_version == "1.1.0"
    assert succeeded.rollout_id == "r-1"
    control = env.boot_control()
    assert (control["active"], control["pending"]) == ("b", None)
    assert control["slots"]["b"]["good"] is True

    third = env.agent().run_once()

    assert third.action == ACTION_IDLE
    assert env.server.states()[-1] == "idle"
    seqs = [r.seq for r in env.server.reports]
    assert seqs == sorted(set(seqs))
    assert env.server.downloads_of(path) == 1


@pytest.mark.parametrize(
    ("waves", "current_wave", "state", "installs"),
    [
        ((Wave("canary", devices=("other-device",)),), 0, "active", False),
        ((Wave("canary", tags=("pilot",)), Wave("all", 100.0)), 0, "active", False),
        ((Wave("canary", tags=("canary",)),), 0, "active", True),
        ((Wave("pilot", devices=(DEVICE,)),), 0, "paused", False),
        ((Wave("canary", tags=("canary",)), Wave("all", 100.0)), 1, "active", True),
        ((Wave("pilot", devices=(DEVICE,)),), 0, "aborted", False),
        # A straggler that was offline when the last gate was met still catches up.
        ((Wave("canary", tags=("x",)), Wave("all", 100.0)), 1, "completed", True),
    ],
    ids=[
        "other-device",
        "later-wave",
        "tag-match",
        "paused",
        "current-wave-1",
        "aborted",
        "completed-straggler",
    ],
)
def test_only_devices_in_an_open_wave_of_an_offering_rollout_install(
    env: Env, waves: tuple[Wave, ...], current_wave: int, state: str, installs: bool
) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0", waves=waves, current_wave=current_wave, state=state)
    env.repo.publish()

    result = env.agent().run_once()

    assert (result.action == ACTION_REBOOTING) is installs
    if not installs:
        assert result.action == ACTION_IDLE
        assert env.server.states() == ["idle"]
        assert _slot_image(env, "b") is None
        assert env.boot_control()["pending"] is None


def test_no_rollout_sends_an_idle_heartbeat(env: Env) -> None:
    result = env.agent().run_once()

    assert result.action == ACTION_IDLE
    assert [(r.state, r.installed_version) for r in env.server.reports] == [("idle", FACTORY)]


def test_downgrade_is_refused_reported_once_and_never_installed(env: Env) -> None:
    env.repo.add_firmware("0.9.0")
    env.repo.set_rollout("0.9.0")
    env.repo.publish()

    first = env.agent().run_once()
    second = env.agent().run_once()

    assert first.action == second.action == ACTION_REFUSED
    assert first.error_code == "downgrade_refused"
    failed = [r for r in env.server.reports if r.state == "failed"]
    assert [(r.error_code, r.target_version) for r in failed] == [("downgrade_refused", "0.9.0")]
    assert env.server.states()[-1] == "idle"
    assert _slot_image(env, "b") is None
    assert env.boot_control()["pending"] is None


def test_tampered_firmware_is_refused_and_slots_are_unchanged(env: Env) -> None:
    path = env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    env.repo.tamper(path)
    before = env.boot_control()

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    assert result.error_code == "target_hash_mismatch"
    assert env.server.reports[-1].state == "failed"
    assert env.server.reports[-1].error_code == "target_hash_mismatch"
    assert env.boot_control() == before
    assert _slot_image(env, "b") is None
    assert list((env.config.state_dir / "downloads").iterdir()) == []


@pytest.mark.parametrize(
    ("custom", "code"),
    [
        (FirmwareInfo(HW, "1.2.0").to_custom(), "version_mismatch"),
        (FirmwareInfo("gw-200", "1.1.0").to_custom(), "wrong_hardware"),
        ({"notes": "no hardware id"}, "firmware_info_invalid"),
    ],
    ids=["version", "hardware", "malformed"],
)
def test_firmware_whose_signed_facts_disagree_with_the_rollout_is_refused(
    env: Env, custom: dict[str, object], code: str
) -> None:
    env.repo.add_firmware("1.1.0", custom=custom)
    env.repo.set_rollout("1.1.0")
    env.repo.publish()

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, code)
    assert _slot_image(env, "b") is None


def test_metadata_signed_by_an_untrusted_key_is_refused(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    env.repo.timestamp.signed.version += 1
    env.repo.timestamp.sign(CryptoSigner.generate_ed25519())
    (env.repo.metadata_dir / "timestamp.json").write_bytes(env.repo.timestamp.to_bytes())

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, "bad_signature")
    assert env.server.reports[-1].error_code == "bad_signature"
    assert _slot_image(env, "b") is None


def test_failed_health_check_rolls_back_and_is_not_retried(env: Env) -> None:
    env.write_config(health_command=failing_command())
    path = env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()

    assert env.agent().run_once().action == ACTION_REBOOTING
    result = env.agent().run_once()

    assert result.action == ACTION_ROLLED_BACK
    assert result.error_code == "health_check_failed"
    assert result.installed_version == FACTORY
    rolled_back = env.server.reports[-1]
    assert (rolled_back.state, rolled_back.error_code) == ("rolled_back", "health_check_failed")
    assert "unhealthy" in rolled_back.message
    assert "succeeded" not in env.server.states()
    control = env.boot_control()
    assert (control["active"], control["pending"], control["booted"]) == ("a", None, "a")
    assert _slot_image(env, "a") == b"factory"

    again = env.agent().run_once()

    assert again.action == ACTION_IDLE
    assert env.server.downloads_of(path) == 1


def test_a_raised_retry_generation_offers_a_rolled_back_release_again(env: Env) -> None:
    env.write_config(health_command=failing_command())
    path = env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
    assert env.agent().run_once().action == ACTION_ROLLED_BACK
    env.write_config()  # the cause is fixed on the device

    assert env.agent().run_once().action == ACTION_IDLE  # same generation: not retried

    env.repo.set_rollout("1.1.0", retry=1)
    env.repo.publish()

    assert env.agent().run_once().action == ACTION_REBOOTING
    assert env.agent().run_once().action == ACTION_SUCCEEDED
    assert env.server.downloads_of(path) == 1  # the verified image in slot b is reused
    assert env.server.reports[-1].error_code is None


def test_after_a_rollback_heartbeats_keep_the_health_check_failure_as_the_reason(
    env: Env,
) -> None:
    env.write_config(health_command=failing_command())
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
    assert env.agent().run_once().action == ACTION_ROLLED_BACK
    # The server paused the rollout because of this failure.
    env.repo.set_rollout("1.1.0", state="paused")
    env.repo.publish()

    env.agent().run_once()

    heartbeat = env.server.reports[-1]
    assert heartbeat.state == "idle"
    assert heartbeat.error_code == "health_check_failed"
    assert "unhealthy" in heartbeat.message
    assert "is paused" in heartbeat.message


def test_image_that_never_gets_healthy_falls_back_after_max_boot_attempts(env: Env) -> None:
    env.write_config(max_boot_attempts=2)
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    agent = env.agent()
    assert agent.run_once().action == ACTION_REBOOTING
    # Two boots that died before the health check finished (power cut, hang).
    agent.installer.boot(2)
    agent.installer.boot(2)

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_ROLLED_BACK, "boot_attempts_exhausted")
    assert env.boot_control()["active"] == "a"
    assert result.installed_version == FACTORY


def test_reports_queued_while_server_is_down_are_delivered_in_order(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
    delivered_before = len(env.server.reports)

    down = dataclasses.replace(env.config, server_url=_dead_url())
    offline = env.agent(down).run_once()

    assert offline.action == ACTION_SUCCEEDED  # booted and committed without the server
    assert offline.reports_pending == 2
    assert offline.backoff
    assert len(env.server.reports) == delivered_before

    online = env.agent().run_once()

    assert online.reports_pending == 0
    assert env.server.states()[delivered_before:] == ["verifying", "succeeded", "idle"]
    seqs = [r.seq for r in env.server.reports]
    assert seqs == sorted(set(seqs))


def test_unreachable_repository_changes_nothing(env: Env) -> None:
    down = dataclasses.replace(env.config, server_url=_dead_url())

    result = env.agent(down).run_once()

    assert (result.action, result.error_code) == (ACTION_UNREACHABLE, "server_unreachable")
    assert result.reports_pending == 0
    assert env.boot_control()["pending"] is None


def test_restart_between_install_and_boot_does_not_install_again(env: Env) -> None:
    path = env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
    # Crash after the installer wrote boot control but before the agent saved "rebooting".
    state_file = env.config.state_dir / "agent.json"
    state = json.loads(state_file.read_text())
    state["state"] = "installing"
    state_file.write_text(json.dumps(state))

    result = env.agent().run_once()

    assert result.action == ACTION_SUCCEEDED
    assert result.installed_version == "1.1.0"
    assert env.server.downloads_of(path) == 1
    assert env.server.states().count("succeeded") == 1


def test_interrupted_install_starts_over_without_touching_the_active_slot(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    # A crash while the inactive slot was being written: state says installing,
    # boot control has no pending slot.
    state_file = env.config.state_dir / "agent.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(
        json.dumps(
            {
                "schema": "tufota.agent-state/1",
                "state": "installing",
                "rollout_id": "r-1",
                "target_version": "1.1.0",
                "next_seq": 1,
            }
        )
    )

    result = env.agent().run_once()

    assert result.action == ACTION_REBOOTING
    assert env.boot_control()["slots"]["a"]["version"] == FACTORY
    assert _slot_image(env, "a") == b"factory"


def test_seq_is_never_reused_after_a_crash_between_queueing_and_saving_state(env: Env) -> None:
    env.agent().run_once()  # heartbeat, seq 1, delivered
    state_file = env.config.state_dir / "agent.json"
    stale = state_file.read_text()
    env.server.force_status = 503
    env.agent().run_once()  # heartbeat, seq 2, queued
    # "Crash" before the state recording seq 2 was saved.
    state_file.write_text(stale)
    env.server.force_status = None

    result = env.agent().run_once()

    assert [r.seq for r in env.server.reports] == [1, 2, 3]
    assert result.reports_pending == 0


@pytest.mark.parametrize(
    ("status", "kept"),
    [(202, False), (409, False), (422, False), (400, False), (403, True), (401, True), (503, True)],
)
def test_outbox_keeps_a_report_only_while_the_server_may_still_accept_it(
    env: Env, status: int, kept: bool
) -> None:
    env.server.force_status = status

    result = env.agent().run_once()

    assert result.reports_pending == (1 if kept else 0)
    assert result.backoff is (status in (401, 403))


def test_corrupt_pending_image_is_rolled_back(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
    (env.config.slots_dir / "b" / "image.bin").write_bytes(b"bit rot")

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_ROLLED_BACK, "install_failed")
    assert env.boot_control()["active"] == "a"


def test_poll_loop_boots_an_installed_image_at_once_then_waits(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    stop = threading.Event()
    seen: list[CycleResult] = []

    def record(result: CycleResult) -> None:
        seen.append(result)
        if result.action != ACTION_REBOOTING:
            stop.set()

    last = run_agent_loop(env.config, stop=stop, on_cycle=record)

    assert [r.action for r in seen] == [ACTION_REBOOTING, ACTION_SUCCEEDED]
    assert last.installed_version == "1.1.0"


def test_the_poll_loop_checks_for_a_rollout_as_soon_as_it_starts(env: Env) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    config = dataclasses.replace(env.config, poll_interval=3600.0)
    stop = threading.Event()
    started = time.monotonic()

    first = run_agent_loop(config, stop=stop, on_cycle=lambda r: stop.set())

    assert first.action == ACTION_REBOOTING
    assert time.monotonic() - started < 30  # not after an hour's interval
