"""The dashboard's JSON and page routes: content, access, patch status, role health."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from repo_server._dashboard import patch_status, role_health
from staging import DeviceRecord
from tests.dashboard.conftest import HW, RELEASES, Plant
from tufota_core import utcnow


def test_the_page_and_its_files_are_served_with_a_strict_policy(plant: Plant) -> None:
    page = requests.get(f"{plant.url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("dashboard.js", "dashboard.css"):
        assert requests.get(f"{plant.url}/dashboard/static/{name}", timeout=10).status_code == 200
    for name in ("../_app.py", "index.html.bak", "%2e%2e%2f_auth.py"):
        missing = requests.get(f"{plant.url}/dashboard/static/{name}", timeout=10)
        assert missing.status_code == 404


def test_overview_tells_who_asks_and_what_they_may_do(plant: Plant) -> None:
    url = f"{plant.url}/api/v1/dashboard"
    assert requests.get(url, timeout=10).status_code == 401  # no tokenless reads by default
    assert requests.get(url, headers=plant.auth(), timeout=10).json()["principal"] == {
        "name": "test-viewer",
        "role": "viewer",
        "may_operate": False,
    }
    operator = plant.auth("operator")
    assert requests.get(url, headers=operator, timeout=10).json()["principal"]["may_operate"]
    uploader = plant.auth("uploader")
    assert requests.get(url, headers=uploader, timeout=10).status_code == 403
    plant.ctx.local_viewer = True  # the explicit 'serve --local-viewer'
    assert requests.get(url, timeout=10).json()["principal"]["name"] == "local"


def test_overview_holds_funnel_findings_versions_patch_and_health(plant: Plant) -> None:
    rollout_id = plant.story()
    data = requests.get(f"{plant.url}/api/v1/dashboard", headers=plant.auth(), timeout=10).json()
    (rollout,) = data["rollouts"]
    assert rollout["rollout_id"] == rollout_id
    assert [row["name"] for row in rollout["funnel"]] == ["canary", "wave-2", "wave-3", "total"]
    assert rollout["wave_states"] == ["done", "done", "open"]
    kinds = sorted(f["kind"] for f in rollout["findings"])
    assert kinds == ["failed", "rolled_back", "stalled", "stalled", "stalled"]
    stalled = {f["reason"].split(":")[0] for f in rollout["findings"] if f["kind"] == "stalled"}
    assert stalled == {"download stalled", "never checked in"}
    assert rollout["adoption"]["targeted"] == 40
    healthy = [p[1] for p in rollout["adoption"]["points"]]
    assert healthy == sorted(healthy)
    assert healthy[-1] == rollout["total"]["succeeded"]
    (hw,) = data["fleet"]["hardware"]
    assert hw["latest_version"] == "1.2.0"
    assert sum(hw["versions"].values()) == 40
    assert data["patch"]["cves"][0]["cve"] == "CVE-2026-2222"  # highest CVSS first
    assert {r["role"] for r in data["health"]} >= {"root", "timestamp", "snapshot", "rollouts"}
    assert all(r["level"] == "ok" for r in data["health"])
    assert isinstance(data["alerts"], list)


def test_an_unknown_rollout_or_device_is_404(plant: Plant) -> None:
    for path in ("/api/v1/dashboard/rollouts/nope", "/api/v1/devices/nope"):
        response = requests.get(f"{plant.url}{path}", headers=plant.auth(), timeout=10)
        assert response.status_code == 404
        assert set(response.json()) == {"error", "message"}


def _device(device_id: str, version: str | None, status: str = "accepted") -> DeviceRecord:
    return DeviceRecord(device_id, HW, (), {}, status, utcnow(), installed_version=version)


@pytest.mark.parametrize(
    ("version", "status", "cves", "max_cvss"),
    [
        ("1.0.0", "accepted", ["CVE-2026-2222", "CVE-2026-1111"], 9.8),
        ("1.1.0", "accepted", ["CVE-2026-2222"], 9.8),
        ("1.2.0", "accepted", None, None),
        ("1.0.0", "revoked", None, None),
        (None, "accepted", None, None),
    ],
)
def test_patch_status_lists_missing_fixes_by_cvss(
    version: str | None, status: str, cves: list[str] | None, max_cvss: float | None
) -> None:
    result = patch_status([_device("d", version, status)], {HW: list(RELEASES)}, limit=10)
    if cves is None:
        assert result["devices"] == []
        assert result["unknown_devices"] == (1 if version is None and status != "revoked" else 0)
    else:
        (row,) = result["devices"]
        assert row["cves"] == cves
        assert row["max_cvss"] == max_cvss
        assert row["latest_version"] == "1.2.0"


def test_patch_status_puts_the_most_exposed_devices_first_and_caps_rows() -> None:
    devices = [_device("a-new", "1.1.0"), _device("b-old", "1.0.0"), _device("c-none", "1.2.0")]
    result = patch_status(devices, {HW: list(RELEASES)}, limit=1)
    assert result["exposed_devices"] == 2
    assert result["critical_devices"] == 2
    assert [r["device_id"] for r in result["devices"]] == ["a-new"]  # both 9.8: by id
    assert result["truncated"]
    assert [c["devices"] for c in result["cves"]] == [2, 1]


def test_role_health_warns_before_devices_would_refuse_the_repository(plant: Plant) -> None:
    levels = {r["role"]: r["level"] for r in role_health(plant.ctx, utcnow())}
    assert set(levels.values()) == {"ok"}
    # 23 h 50 min later, without the server's refresh: timestamp has 10 min of 24 h left.
    later = {
        r["role"]: r for r in role_health(plant.ctx, utcnow() + timedelta(hours=23, minutes=50))
    }
    assert later["timestamp"]["level"] == "critical"
    assert later["snapshot"]["level"] == "ok"
    assert later["root"]["level"] == "ok"
    assert later["timestamp"]["online"]
    assert not later["root"]["online"]
    expired = {r["role"]: r for r in role_health(plant.ctx, utcnow() + timedelta(days=360))}
    assert expired["timestamp"]["seconds_left"] < 0
    assert expired["root"]["level"] == "critical"
