"""The rendered seed in a real browser (Debian's Chromium, driven by Playwright).

At a 375 px phone and an 800 px desktop window nothing may scroll sideways, the body
stays within 600 px on desktop, and the dark scheme really changes the colours.
"""

from __future__ import annotations

import http.server
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from newsletter.compose.sample import render_to_files
from newsletter.config import Settings
from tests.conftest import SEED_ISSUE, write_issue
from tests.harness.browser import CHROMIUM, FLAGS

pytestmark = pytest.mark.browser



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


# --- images: loaded, blocked, broken ---------------------------------------------------
# Outlook for Windows and many company gateways block images by default, and remote
# images fail: a blocked or broken <img> is drawn as a box of its width attribute with
# the alt text in it, and that box must not widen a phone's layout either.

IMAGES_BODY = """# Images in every state

Some words before the pictures.

![A chart of the results over the last ten years, region by region](BASE/photo.jpg)

![A wide chart whose size is given, wider than the column](BASE/wide.png "1200x600")

![A medium picture between a phone's width and the column's](BASE/medium.png "400x200")

![A small portrait](BASE/small.png "120x120")

[![A linked photo: Supercalifragilisticexpialidociouslylongwordwithoutanyspaces](BASE/linked.jpg)](https://example.com/story)

## After the pictures

- A bullet under them [NYT]
"""

IMAGE_STATES_JS = """() => [...document.querySelectorAll('img.nl-image')].map(img => {
  const box = img.getBoundingClientRect();
  return {src: img.getAttribute('src').split('/').pop(), width: box.width, right: box.right,
          loaded: img.complete && img.naturalWidth > 0};
})"""


def _png(width: int, height: int) -> bytes:
    """A real PNG of one colour: what the server answers for a loaded image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x2a\x6f\xb4" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    """``/ok/*`` a real 1200x600 PNG, ``/bad/*`` bytes that are no image, anything else 404."""

    picture = _png(1200, 600)

    def do_GET(self) -> None:
        if self.path.startswith("/ok/"):
            status, body = 200, self.picture
        elif self.path.startswith("/bad/"):
            status, body = 200, b"<html>this is not an image</html>"
        else:
            status, body = 404, b"not found"
        self.send_response(status)
        self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


# state -> (the folder the images come from, whether the browser refuses image requests)
IMAGE_STATES = {"loaded": ("ok", False), "blocked": ("ok", True), "broken-404": ("missing", False),
                "broken-bytes": ("bad", False)}


def _image_page(browser: Browser, tmp_path: Path, base: str, state: str, width: int) -> tuple[Page, BrowserContext]:
    folder, blocked = IMAGE_STATES[state]
    issue = write_issue(tmp_path, IMAGES_BODY.replace("BASE", f"{base}/{folder}"))
    files = render_to_files(issue, tmp_path / "out", Settings())
    context = browser.new_context(viewport={"width": width, "height": 900})
    if blocked:  # what a client that blocks images does: the request never goes out
        context.route("**/*", lambda route: route.abort() if route.request.resource_type == "image"
                      else route.continue_())
    page = context.new_page()
    page.goto(files.html.resolve().as_uri(), wait_until="load")
    return page, context


@pytest.mark.parametrize("state", list(IMAGE_STATES))
def test_images_never_widen_a_phone(browser: Browser, image_server: str, tmp_path: Path, state: str) -> None:
    page, context = _image_page(browser, tmp_path, image_server, state, 375)
    result = page.evaluate(OVERFLOW_JS)
    images = page.evaluate(IMAGE_STATES_JS)
    context.close()
    assert len(images) == 5
    assert all(image["loaded"] == (state == "loaded") for image in images), images  # the state is the one meant
    assert result["scroll"] <= 375, (result, images)
    assert not result["wide"], (result, images)
    assert all(image["right"] <= 375 for image in images), images


@pytest.mark.parametrize("state", list(IMAGE_STATES))
def test_images_on_the_desktop(browser: Browser, image_server: str, tmp_path: Path, state: str) -> None:
    page, context = _image_page(browser, tmp_path, image_server, state, 800)
    result = page.evaluate(OVERFLOW_JS)
    images = {image["src"]: image for image in page.evaluate(IMAGE_STATES_JS)}
    card = page.evaluate("() => document.querySelector('h1.nl-headline').closest('table').getBoundingClientRect().width")
    context.close()
    assert result["scroll"] <= 800 and not result["wide"], result
    assert card <= 600
    # the column's width for a picture without a size or a wider one; a smaller one keeps its own size
    assert [round(images[name]["width"]) for name in ("photo.jpg", "wide.png", "medium.png", "small.png")] == [
        552, 552, 400, 120]
