"""The rendered seed in a real browser (Debian's Chromium, driven by Playwright).

At a 375 px phone and an 800 px desktop window nothing may scroll sideways, the body
stays within 600 px on desktop, and the dark scheme really changes the colours.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from newsletter.config import Settings
from newsletter.jobs import render_to_files

from .conftest import SEED_ISSUE

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("NEWSLETTER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network and root: no sandbox, no background connections.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/bootstrap.sh --browser (apt install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def seed_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    files = render_to_files(SEED_ISSUE, tmp_path_factory.mktemp("seed"), Settings())
    return files.html.resolve().as_uri()


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')]
    .filter(el => el.getBoundingClientRect().right > width + 0.5 && el.getClientRects().length)
    .map(el => el.tagName + '.' + el.className);
  return {scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 5)};
}"""


@pytest.mark.parametrize("width", [375, 800])
def test_no_horizontal_overflow(browser: Browser, seed_page: str, width: int) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(seed_page)
    result = page.evaluate(OVERFLOW_JS)
    page.close()
    assert result["scroll"] <= result["width"], result
    assert not result["wide"], result


def test_desktop_body_is_at_most_600px_and_phone_uses_the_width(browser: Browser, seed_page: str) -> None:
    widths = {}
    for width in (375, 800):
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(seed_page)
        widths[width] = page.evaluate(
            "() => document.querySelector('h1.nl-headline').closest('table').getBoundingClientRect().width"
        )
        page.close()
    assert widths[800] <= 600
    assert widths[375] >= 370  # the card fills a phone, no side margins wasted
    # the body text stays readable on a phone
    page = browser.new_page(viewport={"width": 375, "height": 900})
    page.goto(seed_page)
    size = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('li.nl-li')).fontSize)")
    page.close()
    assert size >= 14


def test_dark_scheme_changes_colours(browser: Browser, seed_page: str) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme, viewport={"width": 800, "height": 900})
        page = context.new_page()
        page.goto(seed_page)
        colours[scheme] = page.evaluate(
            "() => [getComputedStyle(document.querySelector('li.nl-li')).color,"
            " getComputedStyle(document.querySelector('.nl-card td')).backgroundColor]"
        )
        context.close()
    assert colours["light"] != colours["dark"]
    assert colours["dark"][0] != "rgb(31, 31, 35)"  # light text on the dark card
