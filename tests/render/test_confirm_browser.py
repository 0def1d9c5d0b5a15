"""The confirmation email in a real browser (Debian's Chromium): a phone's width, and the dark scheme."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from newsletter.config import ListSettings, SenderSettings
from newsletter.preflight.darkmode import check_dark_mode
from newsletter.render.confirm import render_confirmation
from tests.harness.browser import CHROMIUM, FLAGS
from tests.render.test_browser import OVERFLOW_JS

pytestmark = pytest.mark.browser

LISTS = (ListSettings("briefing", "The Daily Briefing", "The day's news in five minutes, every weekday morning."),
         ListSettings("weekly", "The Weekly"))


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The longest link a token makes, and an address long enough to wrap: neither may widen a phone.
    notice = render_confirmation(email="someone.with.a.rather.long.address@subdomain.example.org", lists=LISTS,
                                 confirm_url="https://news.example.com/confirm/" + "A1b2-_" * 12,
                                 expires=dt.date(2025, 3, 3), sender=SenderSettings())
    path = tmp_path_factory.mktemp("confirm") / "confirm.html"
    path.write_text(notice.html, encoding="utf-8")
    return path


# First: check_dark_mode drives a Playwright of its own, which can't start while the module's browser runs.
def test_contrast_holds_in_both_schemes(page_file: Path) -> None:
    report = check_dark_mode(page_file.read_text(encoding="utf-8"), chromium=CHROMIUM)
    assert report.findings == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/bootstrap.sh --browser (apt install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [375, 800])
def test_nothing_scrolls_sideways_and_the_button_stays_a_button(browser: Browser, page_file: Path, width: int,
                                                                 scheme: str) -> None:
    context = browser.new_context(color_scheme=scheme, viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(page_file.resolve().as_uri())
    result = page.evaluate(OVERFLOW_JS)
    button = page.evaluate("() => { const a = document.querySelector('.nl-button a'); const s = getComputedStyle(a);"
                           " const r = a.getBoundingClientRect();"
                           " return [s.color, s.backgroundColor, r.width, r.height, parseFloat(s.fontSize)]; }")
    context.close()
    assert result["scroll"] <= result["width"], result
    assert not result["wide"], result
    colour, background, button_width, button_height, size = button
    assert (colour, background) == ("rgb(255, 255, 255)", "rgb(26, 85, 201)")  # white on blue in both schemes
    assert button_height >= 44 and button_width <= width - 48  # a finger's target, inside the card's padding
    assert size >= 14
