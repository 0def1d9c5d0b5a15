"""The dark-mode check in a real browser (Debian's Chromium through Playwright, no download).

contrast-dark.html keeps its inline text colour when the dark rules darken the card:
Chromium must find that; good.html passes and gets its three screenshots.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from newsletter.errors import ConfigError
from newsletter.preflight.darkmode import DEFAULT_CHROMIUM, check_dark_mode, find_chromium

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preflight"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def chromium() -> Path:
    path = find_chromium({})
    if not path.exists():
        pytest.fail(f"Chromium not found at {path}: run scripts/bootstrap.sh --browser (apt install chromium)")
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_text_that_loses_its_contrast_in_dark_mode_is_found(chromium: Path) -> None:
    report = check_dark_mode(fixture("contrast-dark.html"), chromium=chromium)
    assert [(finding.severity, finding.code) for finding in report.findings] == [("warning", "darkmode-contrast")]
    finding = report.findings[0]
    assert "dark scheme, text #33333a on #1c1c1f is 1.36:1" in finding.message
    assert finding.where.startswith("p.forgotten 'Dark on dark")
    assert report.screenshots == []


def test_good_email_passes_and_gets_light_dark_and_phone_screenshots(chromium: Path, tmp_path: Path) -> None:
    report = check_dark_mode(fixture("good.html"), chromium=chromium, screenshots=tmp_path / "shots", name="good")
    assert report.findings == []
    names = [path.name for path in report.screenshots]
    assert names == ["good-light.png", "good-dark.png", "good-375.png"]
    light, dark, phone = (png_size(path) for path in report.screenshots)
    assert light[0] == dark[0] == 800 and phone[0] == 375
    assert len({path.read_bytes() for path in report.screenshots}) == 3  # three different pictures


def test_chromium_location() -> None:
    assert find_chromium({"NEWSLETTER_CHROMIUM": "/opt/chrome/chrome"}) == Path("/opt/chrome/chrome")
    assert find_chromium({}).name == "chromium" or find_chromium({}) == DEFAULT_CHROMIUM
    with pytest.raises(ConfigError, match="Chromium not found at /nonexistent/chromium"):
        check_dark_mode("<p>x</p>", chromium="/nonexistent/chromium")
