"""The search page in headless Chromium: type, see results, switch model, see an error.

Chromium is Debian's (`make test` installs it when missing); Playwright drives it through
`executable_path`, so no browser is downloaded.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.servers import free_port, start_server, stop, wait_ready

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make test installs it)"),
]


@pytest.fixture(scope="module")
def base_url(demo_bundle_both: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("page") / "stderr.log"
    process = start_server(demo_bundle_both, port, log)
    try:
        wait_ready(process, base, log)
        yield base
    finally:
        stop(process)


@pytest.fixture
def page() -> Iterator[Page]:
    """A fresh page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page()
        browser.close()


def test_type_search_switch_model_and_see_errors(base_url: str, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(base_url + "/")
    options = page.locator("#model option")
    expect(options).to_have_count(3)
    assert sorted(options.all_inner_texts()) == ["astra", "hybrid (default)", "mach"]

    page.fill("#q", "cordless drill")
    results = page.locator("#results li")
    expect(results).to_have_count(10)
    expect(page.locator("#status")).to_contain_text("results from hybrid in")
    assert "Drill" in results.first.inner_text()
    assert "id D" in results.first.locator(".meta").inner_text()

    page.select_option("#model", "mach")
    expect(page.locator("#status")).to_contain_text("results from mach in")
    expect(results).to_have_count(10)

    page.fill("#q", "x" * 600)
    status = page.locator("#status")
    expect(status).to_contain_text("Error 422: query: must be at most 512 characters")
    expect(status).to_have_class("error")
    expect(results).to_have_count(0)


def test_the_url_keeps_the_query_explain_and_models_side_by_side(base_url: str, page: Page) -> None:
    from playwright.sync_api import expect

    # A shared link: the query and model come from the URL and are searched at once.
    page.goto(base_url + "/?q=cordless+drill&model=mach")
    expect(page.locator("#q")).to_have_value("cordless drill")
    expect(page.locator("#status")).to_contain_text("results from mach in")
    expect(page.locator("#model")).to_have_value("mach")
    # Typing and switching model keep the URL in step, so a reload shows the same page.
    page.select_option("#model", "astra")
    page.fill("#q", "garden hose")
    expect(page).to_have_url(re.compile(r"\?q=garden\+hose&model=astra$"))
    expect(page.locator("#status")).to_contain_text("results from astra in")
    page.reload()
    expect(page.locator("#q")).to_have_value("garden hose")
    expect(page.locator("#status")).to_contain_text("results from astra in")
    # Explain: each result says what ranked it and its largest contributions.
    page.check("#explain")
    why = page.locator("#results li .why")
    expect(why).to_have_count(10)
    assert why.first.inner_text().startswith("formula: ")
    assert "astra" in why.first.inner_text()
    # Every model side by side, for the same query.
    page.check("#compare")
    columns = page.locator("#columns section")
    expect(columns).to_have_count(3)
    assert sorted(columns.locator("h2").all_inner_texts()) == ["astra", "hybrid", "mach"]
    expect(columns.nth(0).locator("li")).to_have_count(10)
    expect(page.locator("#results li")).to_have_count(0)
