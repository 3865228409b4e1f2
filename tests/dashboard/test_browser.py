"""The dashboard in real headless Chromium (Debian's ``chromium``), driven by Playwright.

What an operator would notice: the page loads clean, shows the running
rollout, redraws when a device reports (a real signed report over HTTP), the
pause button pauses the rollout after a confirmation, a viewer cannot pause,
an unknown rollout is a clear 404, device-supplied text stays text, and the
page recovers by itself when the server restarts. The same tests write the
README screenshots to ``docs/screenshots/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.dashboard.conftest import Plant
from tufota_core import utcnow, wave_index

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT_MS = 15_000  # a few poll periods (3 s), with backoff after a restart
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty session storage) and page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        yield page
    finally:
        context.close()


def _card(page: Page, rollout_id: str) -> Any:
    return page.locator(f'article.rollout[data-rollout="{rollout_id}"]')


def _cell(page: Page, rollout_id: str, wave: str, key: str) -> Any:
    return _card(page, rollout_id).locator(f'tr[data-wave="{wave}"] td[data-key="{key}"]')


def _sign_in(page: Page, token: str) -> None:
    if page.locator("#signin").is_hidden():
        page.click("#signin-toggle")
    page.fill("#token", token)
    page.click("#token-save")


def _open(page: Page, url: str, token: str) -> None:
    """Load the page already signed in (the token in this tab's session storage)."""
    page.add_init_script(f"sessionStorage.setItem('tufota.token', {json.dumps(token)})")
    page.goto(url)


def _small_fleet(plant: Plant) -> str:
    for i in range(6):
        plant.add_device(f"dev-{i}", tags=("canary",) if i < 2 else ())
    rollout_id = plant.start()
    plant.report("dev-0", "downloading", target_version="1.2.0", rollout_id=rollout_id)
    return rollout_id


def test_page_loads_clean_shows_the_rollout_and_redraws_when_a_device_reports(
    plant: Plant, page: Page
) -> None:
    rollout_id = plant.story()
    plant.ctx.controller.tick()  # what the server's background task does: raises stall alerts
    console = Console(page)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    card = _card(page, rollout_id)
    expect(card).to_have_attribute("data-state", "active")
    expect(card.locator(".gate-text")).to_contain_text("waits for")
    expect(page.locator("#conn")).to_have_text("live")
    expect(card.locator("svg.chart path.line.healthy")).to_have_count(1)
    expect(page.locator("#versions [data-hardware='gw-100']")).to_contain_text("1.2.0 (latest)")
    expect(page.locator("#patch [data-cve='CVE-2026-2222']")).to_contain_text("9.8")
    expect(page.locator("#health [data-role='timestamp']")).to_contain_text("ok")
    expect(page.locator("#attention tr.finding.stalled")).to_have_count(3)
    expect(page.locator("#alerts tr.alert[data-kind='download_stalled']")).to_have_count(1)
    expect(page.locator("#attention tr.finding.failed")).to_contain_text("health_check")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-overview.png"), full_page=True)

    # A device of the open wave that is downloading now reports success.
    rollout = plant.store.get_rollout(rollout_id)
    device = next(
        d
        for d in plant.store.list_devices()
        if d.state == "downloading"
        and wave_index(rollout_id, list(rollout.waves), d.device_id, d.tags) == 2
        and d.last_seen is not None
        and utcnow() - d.last_seen < timedelta(minutes=15)
    )
    healthy = _cell(page, rollout_id, rollout.waves[2].name, "succeeded")
    status = plant.ctx.controller.status(rollout_id)
    before, total = status.waves[2].succeeded, status.total.succeeded
    expect(healthy).to_have_text(str(before))
    plant.report(
        device.device_id,
        "succeeded",
        installed_version="1.2.0",
        target_version="1.2.0",
        rollout_id=rollout_id,
    )
    expect(healthy).to_have_text(str(before + 1))
    expect(card.locator("figcaption .key.healthy")).to_contain_text(f"{total + 1}/40")
    page.goto(f"{plant.url}/dashboard#/rollouts/{rollout_id}")
    expect(page.locator("#findings tr.finding")).to_have_count(5)
    expect(page.locator("#events")).to_contain_text("wave advanced")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-rollout.png"), full_page=True)
    assert console.errors == []


def test_operator_pauses_the_rollout_after_confirming(plant: Plant, page: Page) -> None:
    rollout_id = _small_fleet(plant)
    console = Console(page)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    card = _card(page, rollout_id)
    expect(card.locator("button[data-action='pause']")).to_be_disabled()  # a viewer
    _sign_in(page, plant.token("operator"))
    expect(page.locator("#who")).to_have_text("test-operator · operator")
    pause = card.locator("button[data-action='pause']")
    expect(pause).to_be_enabled()
    pause.click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(rollout_id)
    page.fill("#confirm-reason", "line 3 maintenance")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-pause-confirm.png"))
    page.click("#confirm-cancel")  # cancelling changes nothing
    expect(dialog).to_be_hidden()
    assert plant.store.get_rollout(rollout_id).state == "active"

    pause.click()
    page.fill("#confirm-reason", "line 3 maintenance")
    page.click("#confirm-ok")
    expect(card).to_have_attribute("data-state", "paused")
    record = plant.store.get_rollout(rollout_id)
    assert record.state == "paused"
    assert record.reason == "line 3 maintenance"
    expect(card.locator("button[data-action='resume']")).to_be_enabled()
    expect(card.locator("button[data-action='pause']")).to_have_count(0)
    assert console.errors == []


def test_a_viewer_token_cannot_pause(plant: Plant, page: Page) -> None:
    rollout_id = _small_fleet(plant)
    viewer = plant.token("viewer")
    page.goto(f"{plant.url}/dashboard")
    expect(page.locator("#conn")).to_have_text("sign-in needed")  # no tokenless reads
    _sign_in(page, viewer)
    expect(page.locator("#who")).to_have_text("test-viewer · viewer")
    card = _card(page, rollout_id)
    expect(card.locator("button[data-action='pause']")).to_be_disabled()
    expect(card.locator(".actions")).to_contain_text("operator token needed")
    # The server, not the page, enforces it.
    response = requests.post(
        f"{plant.url}/api/v1/rollouts/{rollout_id}/pause",
        json={"reason": "viewer tries"},
        headers={"Authorization": f"Bearer {viewer}"},
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert plant.store.get_rollout(rollout_id).state == "active"


def test_a_bad_token_asks_to_sign_in_again(plant: Plant, page: Page) -> None:
    _small_fleet(plant)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    expect(page.locator("#conn")).to_have_text("live")
    _sign_in(page, "tfo_00000000_not-a-real-token")
    expect(page.locator("#conn")).to_have_text("sign-in needed")
    expect(page.locator("#banner")).to_contain_text("unknown or revoked API token")
    expect(page.locator("#signin")).to_be_visible()
    page.click("#token-clear")  # no token: still refused, reads need one
    expect(page.locator("#banner")).to_contain_text("needs an API token")
    expect(page.locator("#conn")).to_have_text("sign-in needed")


def test_an_unknown_rollout_is_404_on_the_api_and_a_clear_page(plant: Plant, page: Page) -> None:
    _small_fleet(plant)
    viewer = plant.token("viewer")
    response = requests.get(
        f"{plant.url}/api/v1/dashboard/rollouts/no-such-rollout",
        headers={"Authorization": f"Bearer {viewer}"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    _open(page, f"{plant.url}/dashboard#/rollouts/no-such-rollout", viewer)
    expect(page.locator("#not-found")).to_contain_text("No rollout no-such-rollout")
    page.click("#not-found a")
    expect(page.locator("article.rollout")).to_have_count(1)


def test_device_links_lead_to_report_history_and_device_text_stays_text(
    plant: Plant, page: Page
) -> None:
    rollout_id = _small_fleet(plant)
    hostile = "<img src=x onerror=\"document.title='owned'\"><b>boom</b>"
    plant.report(
        "dev-1",
        "failed",
        target_version="1.2.0",
        rollout_id=rollout_id,
        error_code="install_failed",
        message=hostile,
    )
    console = Console(page)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    row = page.locator("#attention tr.finding[data-device='dev-1']")
    expect(row).to_contain_text(hostile)  # shown literally
    assert page.locator("#attention img").count() == 0
    row.locator("a.device").click()
    expect(page).to_have_url(re.compile(r"#/devices/dev-1$"))
    reports = page.locator("#reports tbody tr")
    expect(reports.first).to_contain_text("failed")
    expect(page.locator("#reports")).to_contain_text(hostile)
    assert page.title() != "owned"
    page.goto(f"{plant.url}/dashboard#/rollouts/{rollout_id}")
    expect(page.locator("#findings tr.finding")).to_have_count(1)
    expect(page.locator("#events")).to_contain_text("started")
    assert console.errors == []


def test_bidi_overrides_in_device_text_are_shown_not_obeyed(plant: Plant, page: Page) -> None:
    rollout_id = _small_fleet(plant)
    # Rendered as is, U+202E makes "evil" read as "live".
    plant.report(
        "dev-1",
        "failed",
        target_version="1.2.0",
        rollout_id=rollout_id,
        error_code="install_failed",
        message="status \u202elive",
    )
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    row = page.locator("#attention tr.finding[data-device='dev-1']")
    expect(row).to_contain_text("status \\u{202E}live")
    assert "\u202e" not in row.inner_text()
    row.locator("a.device").click()
    reports = page.locator("#reports")
    expect(reports).to_contain_text("status \\u{202E}live")  # the raw history, escaped by the page
    assert "\u202e" not in reports.inner_text()


def test_the_page_recovers_by_itself_when_the_server_restarts(plant: Plant, page: Page) -> None:
    rollout_id = _small_fleet(plant)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    expect(_cell(page, rollout_id, "canary", "succeeded")).to_have_text("0")
    plant.stop_server()
    expect(page.locator("#conn")).to_have_text("reconnecting…")
    expect(page.locator("#banner")).to_contain_text("server is unreachable")
    expect(_card(page, rollout_id)).to_be_visible()  # the last good data stays
    plant.start_server()
    plant.report(
        "dev-0",
        "succeeded",
        installed_version="1.2.0",
        target_version="1.2.0",
        rollout_id=rollout_id,
    )
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#banner")).to_be_hidden()
    expect(_cell(page, rollout_id, "canary", "succeeded")).to_have_text("1")
