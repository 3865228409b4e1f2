"""The dashboard tells the same story as the tracker: a failure's own reason survives heartbeats."""

from __future__ import annotations

import requests

from tests.dashboard.conftest import Plant


def test_a_rolled_back_device_shows_the_health_checks_failure_after_later_heartbeats(
    plant: Plant,
) -> None:
    plant.add_device("plc-1")
    plant.add_device("plc-2")
    rid = plant.start(waves="all:100%")
    work = {"target_version": "1.2.0", "rollout_id": rid}
    plant.report(
        "plc-1",
        "rolled_back",
        installed_version="1.0.0",
        error_code="health_check_failed",
        message="plc-io did not answer within 60 s",
        **work,
    )
    plant.ctx.controller.pause(rid, "investigating")
    # The agent's later heartbeat talks about the pause, not about the failure.
    plant.report("plc-1", "idle", installed_version="1.0.0", message=f"rollout {rid} is paused")
    url = f"{plant.url}/api/v1/dashboard/rollouts/{rid}"
    view = requests.get(url, headers=plant.auth(), timeout=10).json()["rollout"]
    (finding,) = [f for f in view["findings"] if f["device_id"] == "plc-1"]
    assert finding["kind"] == "rolled_back"
    assert finding["reason"] == "health_check_failed: plc-io did not answer within 60 s"
    device = requests.get(
        f"{plant.url}/api/v1/devices/plc-1", headers=plant.auth(), timeout=10
    ).json()
    record = device.get("device", device)
    assert record["failed_code"] == "health_check_failed"
    assert record["failed_message"] == "plc-io did not answer within 60 s"


def test_a_tampered_download_is_a_security_event_in_metrics_not_a_failure(plant: Plant) -> None:
    plant.add_device("plc-1")
    plant.add_device("plc-2")
    rid = plant.start(waves="all:100%")
    plant.report(
        "plc-1",
        "failed",
        installed_version="1.0.0",
        target_version="1.2.0",
        rollout_id=rid,
        error_code="target_hash_mismatch",
        message="firmware hash differs from the signed one",
    )
    plant.ctx.controller.tick()
    status = plant.ctx.controller.status(rid)
    assert (status.state, status.total.failed, status.security_events) == ("active", 0, 1)
    text = requests.get(f"{plant.url}/metrics", headers=plant.auth(), timeout=10).text
    assert 'tufota_security_events{hardware_id="gw-100"} 1.0' in text
    assert 'tufota_rollout_failed_devices{hardware_id="gw-100",rollout_id="' in text
    failed = next(line for line in text.splitlines() if line.startswith("tufota_rollout_failed"))
    assert failed.endswith(" 0.0")
