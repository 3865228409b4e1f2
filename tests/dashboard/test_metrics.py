"""``GET /metrics``: parsed with the Prometheus client's own parser, checked against the tracker."""

from __future__ import annotations

from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard.conftest import HW, Plant
from tufota_core import Report, sign_report, utcnow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(plant: Plant, headers: dict[str, str] | None = None) -> Samples:
    response = requests.get(f"{plant.url}/metrics", headers=headers or plant.auth(), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_match_the_tracker(plant: Plant) -> None:
    rollout_id = plant.story()
    samples = scrape(plant)
    devices = plant.store.list_devices()

    by_version = Counter(
        (d.hardware_id, d.installed_version or "unknown", d.status) for d in devices
    )
    for (hw, version, status), count in by_version.items():
        labels = {"hardware_id": hw, "version": version, "status": status}
        assert value(samples, "tufota_devices", **labels) == count
    by_state = Counter(d.state or "unknown" for d in devices)
    for state, count in by_state.items():
        assert value(samples, "tufota_device_states", hardware_id=HW, state=state) == count

    rollout = plant.store.get_rollout(rollout_id)
    ids = {"rollout_id": rollout_id, "hardware_id": HW, "version": "1.2.0"}
    for state in ("active", "paused", "aborted", "completed"):
        expected = 1.0 if state == rollout.state else 0.0
        assert value(samples, "tufota_rollout_state", **ids, state=state) == expected
    assert value(samples, "tufota_rollout_current_wave", **ids) == rollout.current_wave + 1
    assert value(samples, "tufota_rollout_waves", **ids) == 3
    for index, wave in enumerate(rollout.waves):
        state = "done" if index < rollout.current_wave else "open"
        labels = {"rollout_id": rollout_id, "wave": wave.name, "state": state}
        assert value(samples, "tufota_wave_state", **labels) == 1

    status = plant.ctx.controller.status(rollout_id)
    for wave in [*status.waves, status.total]:
        data = wave.to_json()
        labels = {"rollout_id": rollout_id, "wave": data["name"]}
        assert value(samples, "tufota_rollout_eligible_devices", **labels) == data["eligible"]
        for outcome in ("checked_in", "downloading", "installed", "succeeded", "failed", "waiting"):
            got = value(samples, "tufota_rollout_devices", **labels, outcome=outcome)
            assert got == data[outcome], (data["name"], outcome)
    failed = status.total.failed + status.total.rolled_back
    assert failed == 2
    assert value(samples, "tufota_rollout_failed_devices", **ids) == failed
    # The story has one stalled download and two devices that never checked in.
    assert value(samples, "tufota_rollout_stalled_devices", **ids) == 3
    total = {"rollout_id": rollout_id, "wave": "total", "outcome": "stalled"}
    assert value(samples, "tufota_rollout_devices", **total) == 3

    exposed = sum(1 for d in devices if d.installed_version != "1.2.0")
    assert value(samples, "tufota_patch_exposed_devices", min_cvss="0") == exposed
    assert value(samples, "tufota_patch_exposed_devices", min_cvss="7") == exposed
    on_1_0 = sum(1 for d in devices if d.installed_version == "1.0.0")
    assert (
        value(samples, "tufota_patch_cve_exposed_devices", cve="CVE-2026-1111", cvss="7.5")
        == on_1_0
    )

    now = utcnow()
    for role, expires in plant.ctx.publisher.expiries().items():
        online = "true" if role in ("timestamp", "snapshot", "rollouts") else "false"
        got = value(samples, "tufota_role_expiry_seconds", role=role, online=online)
        assert got == pytest.approx((expires - now).total_seconds(), abs=5)
    for section in ("devices", "rollouts", "repository"):
        assert value(samples, "tufota_scrape_errors", section=section) == 0


def test_report_ingest_is_counted_by_result(plant: Plant) -> None:
    plant.add_device("dev-1")
    before = scrape(plant)
    assert value(before, "tufota_reports_total", result="accepted") == 0

    plant.report("dev-1", "idle")
    report = Report("dev-1", HW, 99, "idle")
    envelope = sign_report(report, plant.signers["dev-1"])
    url = f"{plant.url}/api/v1/devices/dev-1/reports"
    assert requests.post(url, json=envelope, timeout=10).status_code == 202
    assert requests.post(url, json=envelope, timeout=10).status_code == 409
    assert requests.post(url, data=b"{nope", timeout=10).status_code == 400
    unknown = sign_report(Report("dev-9", HW, 1, "idle"), plant.signers["dev-1"])
    assert (
        requests.post(
            f"{plant.url}/api/v1/devices/dev-9/reports", json=unknown, timeout=10
        ).status_code
        == 401
    )

    after = scrape(plant)
    assert value(after, "tufota_reports_total", result="accepted") == 2
    assert value(after, "tufota_reports_total", result="replayed") == 1
    assert value(after, "tufota_reports_total", result="malformed") == 1
    assert value(after, "tufota_reports_total", result="refused") == 1
    assert value(after, "tufota_reports_total", result="error") == 0
    assert value(after, "tufota_report_ingest_seconds_count") == 5
    # Reads are not reports.
    requests.get(f"{plant.url}/api/v1/devices/dev-1", headers=plant.auth(), timeout=10)
    assert value(scrape(plant), "tufota_report_ingest_seconds_count") == 5


def test_metrics_need_a_read_token(plant: Plant) -> None:
    url = f"{plant.url}/metrics"
    assert requests.get(url, timeout=10).status_code == 401
    bad = {"Authorization": "Bearer tfo_00000000_wrong"}
    assert requests.get(url, headers=bad, timeout=10).status_code == 401
    uploader = {"Authorization": f"Bearer {plant.token('uploader')}"}
    assert requests.get(url, headers=uploader, timeout=10).status_code == 403
    viewer = {"Authorization": f"Bearer {plant.token('viewer')}"}
    assert ("tufota_scrape_errors", frozenset({("section", "devices")})) in scrape(plant, viewer)


def test_a_finished_rollout_stays_visible_and_old_ones_drop_out(plant: Plant) -> None:
    for i in range(2):
        plant.add_device(f"dev-{i}")
    first = plant.start(version="1.1.0", waves="100%")
    plant.ctx.controller.abort(first, "wrong build")
    second = plant.start(version="1.2.0", waves="100%")
    samples = scrape(plant)
    ids = {"hardware_id": HW, "state": "aborted"}
    assert value(samples, "tufota_rollout_state", rollout_id=first, version="1.1.0", **ids) == 1
    plant.ctx.controller.abort(second, "also wrong")
    samples = scrape(plant)
    assert value(samples, "tufota_rollout_state", rollout_id=second, version="1.2.0", **ids) == 1
    assert not any(labels and ("rollout_id", first) in labels for _, labels in samples)
