"""Device-side policy: limits in agent.toml and agent state that the online key cannot change.

Every rollout document here is signed with the repository's online keys only
(rollouts, snapshot, timestamp), as by an attacker who stole them: the firmware
it names was signed earlier by the offline product-line key.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

from device_agent import ACTION_IDLE, ACTION_REBOOTING, ACTION_REFUSED
from tests.device_agent.conftest import Env
from tufota_core import Wave

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _closed_window() -> str:
    """A window that is not open now (it opens on the day after tomorrow)."""
    day = _DAYS[(datetime.now(UTC).weekday() + 2) % 7]
    return f"{day} 02:00-04:00 UTC"


def _open_window() -> str:
    """A daily window around now."""
    now = datetime.now(UTC)
    start = now - timedelta(minutes=30)
    end = now + timedelta(minutes=90)
    return f"daily {start:%H:%M}-{end:%H:%M} UTC"


def _unknown_version(env: Env) -> None:
    from device_agent import init_slots

    shutil.rmtree(env.config.slots_dir)
    init_slots(env.config.slots_dir, None)


def test_a_document_without_a_window_cannot_widen_the_devices_own_window(env: Env) -> None:
    env.write_config(maintenance_window=_closed_window())
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")  # the online key dropped any window
    env.repo.publish()

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_IDLE, "outside_device_window")
    assert env.boot_control()["pending"] is None
    heartbeat = env.server.reports[-1]
    assert (heartbeat.state, heartbeat.error_code) == ("idle", "outside_device_window")
    assert "own maintenance window" in heartbeat.message


def test_inside_the_devices_window_the_document_can_still_narrow_it(env: Env) -> None:
    env.write_config(maintenance_window=_open_window())
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0", maintenance_window=_closed_window())
    env.repo.publish()

    narrowed = env.agent().run_once()

    assert (narrowed.action, narrowed.error_code) == (ACTION_IDLE, None)
    assert "waiting for the maintenance window" in narrowed.message

    env.repo.set_rollout("1.1.0")
    env.repo.publish()

    assert env.agent().run_once().action == ACTION_REBOOTING


def test_unknown_version_device_refuses_a_release_older_than_the_newest_it_saw(
    env: Env,
) -> None:
    _unknown_version(env)
    env.repo.add_firmware("1.5.0")
    env.repo.add_firmware("2.0.0")
    # The real rollout of 2.0.0 has not reached this device's wave yet.
    env.repo.set_rollout("2.0.0", waves=(Wave("pilot", devices=("someone-else",)),))
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_IDLE

    # With the online key: the oldest signed release, every wave open.
    env.repo.set_rollout("1.5.0", rollout_id="r-evil")
    env.repo.publish()
    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, "below_minimum_version")
    assert "newest release this device has seen" in result.message
    assert env.boot_control()["pending"] is None
    failed = env.server.reports[-1]
    assert (failed.state, failed.error_code) == ("failed", "below_minimum_version")


def test_provisioning_floor_refuses_older_releases_on_an_unknown_version_device(
    env: Env,
) -> None:
    _unknown_version(env)
    env.write_config(min_version="1.2.0")
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()

    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, "below_minimum_version")
    assert "minimum version" in result.message
    assert env.boot_control()["pending"] is None

    env.repo.add_firmware("1.2.0")
    env.repo.set_rollout("1.2.0", rollout_id="r-2")
    env.repo.publish()

    assert env.agent().run_once().action == ACTION_REBOOTING


def test_an_aborted_rollouts_release_still_raises_the_floor(env: Env) -> None:
    _unknown_version(env)
    env.repo.add_firmware("1.0.0")
    env.repo.add_firmware("1.2.0")
    env.repo.set_rollout("1.2.0", state="aborted")  # the operator aborted it
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_IDLE

    # With the online key: the aborted rollout turned into the oldest release.
    env.repo.set_rollout("1.0.0", rollout_id="r-evil")
    env.repo.publish()
    result = env.agent().run_once()

    assert (result.action, result.error_code) == (ACTION_REFUSED, "below_minimum_version")
    assert env.boot_control()["pending"] is None


def test_a_document_naming_an_unreleased_version_cannot_raise_the_floor(env: Env) -> None:
    _unknown_version(env)
    env.repo.add_firmware("1.0.0")
    # With the online key: a document for 99.0.0, which no offline key signed.
    env.repo.set_rollout("99.0.0", state="paused", rollout_id="r-poison")
    env.repo.publish()
    env.agent().run_once()

    env.repo.set_rollout("1.0.0", rollout_id="r-2")  # the real rollout
    env.repo.publish()
    assert env.agent().run_once().action == ACTION_REBOOTING
