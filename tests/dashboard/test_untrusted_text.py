"""Device-supplied text with bidi overrides and control characters: shown, never obeyed."""

from __future__ import annotations

import requests

from tests.dashboard.conftest import Plant
from tufota_cli._common import table

RLO = "\u202e"
HOSTILE = f"ok {RLO}live\x1b[2J\u2066"  # reads "evil" reversed; clears a terminal


def test_cli_tables_show_control_and_bidi_characters_as_escapes() -> None:
    text = table(["device", "message"], [["dev-1", HOSTILE]])
    assert RLO not in text
    assert "\x1b" not in text
    assert "\\u{202E}live\\u{001B}[2J\\u{2066}" in text


def test_dashboard_findings_neutralise_device_messages(plant: Plant) -> None:
    for i in range(2):
        plant.add_device(f"dev-{i}")
    rollout_id = plant.start(waves="100%")
    plant.report(
        "dev-1",
        "failed",
        target_version="1.2.0",
        rollout_id=rollout_id,
        error_code="install_failed",
        message=HOSTILE,
    )
    data = requests.get(
        f"{plant.url}/api/v1/dashboard/rollouts/{rollout_id}", headers=plant.auth(), timeout=10
    ).json()
    (finding,) = [f for f in data["rollout"]["findings"] if f["device_id"] == "dev-1"]
    assert RLO not in finding["reason"]
    assert "\\u{202E}live" in finding["reason"]
