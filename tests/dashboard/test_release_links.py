"""The dashboard links each hardware line to its releases: the data 'tufota release list' shows."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import HW, Plant
from tests.dashboard.test_browser import Console, _open, browser, page  # noqa: F401 - fixtures


def test_hardware_line_links_to_its_releases_as_the_cli_lists_them(
    plant: Plant,
    page: Page,  # noqa: F811 - the fixture imported above
) -> None:
    plant.add_device("dev-0")
    console = Console(page)
    _open(page, f"{plant.url}/dashboard", plant.token("viewer"))
    page.locator(f'#versions a.release:text-is("{HW}")').first.click()
    expect(page).to_have_url(re.compile(rf"#/releases/{HW}$"))
    rows = page.locator("#releases tbody tr")
    expect(rows).to_have_count(3)
    lines = requests.get(
        f"{plant.url}/api/v1/release-lines", headers=plant.auth("viewer"), timeout=10
    ).json()["lines"]
    newest = lines[0]["releases"][-1]
    first = page.locator("#releases tbody tr").first
    expect(first).to_contain_text(newest["version"])
    expect(first).to_contain_text(" ".join(newest["fixes"]))
    expect(page.locator("#releases")).to_contain_text(lines[0]["signing_keys"][0])
    expect(page.locator("#releases")).to_contain_text(f"tufota release list --hardware {HW}")
    assert console.errors == []
