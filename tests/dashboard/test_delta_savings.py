"""Bytes fetched and saved by deltas: signed reports -> tracker -> rollout status and /metrics."""

from __future__ import annotations

import requests
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import HW, Plant
from tests.dashboard.test_browser import Console, _open, browser, page  # noqa: F401 - fixtures
from tests.dashboard.test_metrics import scrape, value
from tufota_cli.rollout_cmds import render_status

IMAGE = 100_000_000


def test_rollout_status_and_metrics_count_bytes_fetched_and_saved(plant: Plant) -> None:
    for device_id in ("d-delta", "d-full", "d-old-agent"):
        plant.add_device(device_id, tags=("canary",))
    rollout_id = plant.start()
    common = {"target_version": "1.2.0", "rollout_id": rollout_id, "bytes_total": IMAGE}
    plant.report("d-delta", "downloading", **common)
    plant.report("d-delta", "downloaded", bytes_fetched=7_000_000, delta_from="1.0.0", **common)
    plant.report("d-full", "downloaded", bytes_fetched=IMAGE, **common)
    # An agent that predates the fields sends no figure: nothing is counted for it.
    plant.report("d-old-agent", "downloaded", **common)

    status = plant.ctx.controller.status(rollout_id)
    assert (status.bytes_fetched, status.bytes_saved, status.delta_downloads) == (
        107_000_000,
        93_000_000,
        1,
    )
    response = requests.get(
        f"{plant.url}/api/v1/rollouts/{rollout_id}", headers=plant.auth(), timeout=10
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["bytes_fetched"], data["bytes_saved"], data["delta_downloads"]) == (
        107_000_000,
        93_000_000,
        1,
    )
    assert "transfer: 107,000,000 bytes fetched, 93,000,000 saved by 1 delta download(s)" in (
        render_status(status)
    )
    device = requests.get(f"{plant.url}/api/v1/devices/d-delta", headers=plant.auth(), timeout=10)
    assert device.status_code == 200, device.text
    [transfer] = device.json()["transfers"]
    assert (transfer["fetched_bytes"], transfer["saved_bytes"], transfer["delta_from"]) == (
        7_000_000,
        93_000_000,
        "1.0.0",
    )
    old_agent = requests.get(
        f"{plant.url}/api/v1/devices/d-old-agent", headers=plant.auth(), timeout=10
    )
    assert old_agent.json()["transfers"] == []
    samples = scrape(plant)
    ids = {"rollout_id": rollout_id, "hardware_id": HW, "version": "1.2.0"}
    assert value(samples, "tufota_rollout_fetched_bytes", **ids) == 107_000_000
    assert value(samples, "tufota_rollout_saved_bytes", **ids) == 93_000_000
    assert value(samples, "tufota_rollout_delta_downloads", **ids) == 1


def test_rollout_page_shows_the_transfer_figures(plant: Plant, page: Page) -> None:  # noqa: F811
    plant.add_device("d-delta", tags=("canary",))
    rollout_id = plant.start()
    plant.report(
        "d-delta",
        "downloaded",
        target_version="1.2.0",
        rollout_id=rollout_id,
        bytes_total=IMAGE,
        bytes_fetched=7_340_032,
        delta_from="1.0.0",
    )
    console = Console(page)
    _open(page, f"{plant.url}/dashboard#/rollouts/{rollout_id}", plant.token("viewer"))
    expect(page.locator("#gates")).to_contain_text(
        "7.0 MiB fetched, 88.4 MiB saved by 1 delta downloads"
    )
    page.goto(f"{plant.url}/dashboard#/devices/d-delta")
    expect(page.locator("#device")).to_contain_text(
        "7.0 MiB fetched, 88.4 MiB saved (last: 1.2.0 by delta from 1.0.0)"
    )
    assert console.errors == []
