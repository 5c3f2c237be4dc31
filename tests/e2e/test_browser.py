"""A person in headless Debian chromium: log in, search, drill down to an instance."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import ADMIN_PASSWORD, require_tools

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def wait_until(page, expression: str, timeout: float = 30_000) -> None:
    """Wait for a JavaScript expression to be true. Playwright's ``wait_for_function`` evaluates
    its predicate with eval() inside the page, which the Content-Security-Policy forbids (as it
    should); ``page.evaluate`` goes through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout / 1000:.0f} s: {expression}")
        page.wait_for_timeout(50)


@pytest.fixture(scope="module")
def browser():
    require_tools("chromium", "storescu")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_login_search_and_drill_down_to_a_cine_loop(server, samples, browser, tmp_path):
    for key in ("cine_jpeg", "us_rle_palette"):
        flag = "-xy" if key == "cine_jpeg" else "-xr"
        subprocess.run(["storescu", "-R", flag, "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port),
                        str(samples[key])], check=True, timeout=120)
    page = browser.new_page()
    page.goto(f"{server.url}/studies/")
    assert "/login/" in page.url
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".error-message").is_visible()
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/studies/")
    assert page.locator("#study-table tbody tr").count() == 2

    page.fill("input[name=q]", "PLA")
    page.click("form.search button")
    rows = page.locator("#study-table tbody tr")
    assert rows.count() == 1 and "PLA" in rows.first.inner_text()

    rows.first.locator("a").click()
    page.locator(".card").first.click()
    page.locator(".card.instance").first.click()
    page.wait_for_selector("#frame-image")
    assert "Ultrasound Multi-frame Image Storage" in page.inner_text("h1")
    assert "120" in page.inner_text("#instance-attributes")
    wait_until(page, "document.querySelector('#frame-image').naturalWidth > 0")

    page.fill("input[name=frame]", "60")
    page.click("form.frames button")
    wait_until(page, "document.querySelector('#frame-image').naturalWidth > 0")
    assert "frame=60" in page.get_attribute("#frame-image", "src")
    page.screenshot(path=str(tmp_path / "instance.png"))
    page.close()
