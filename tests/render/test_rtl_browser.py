"""Arabic and Hebrew briefings in a real browser (Debian's Chromium, driven by Playwright).

The email and its web version (the archive's page of the issue) at a 375 px phone and an
800 px desktop, with images loaded and blocked: every paragraph, heading, list item, quote
and footer line is laid out right to left and starts at the right edge (from computed styles
and from where the first line's glyphs really are), list indents and the quote's rule are on
the right, nothing overflows on either side, and a Latin citation at the end of a bullet
keeps its brackets in order (glyph positions measured with ``Range.getBoundingClientRect``)
and ends the bullet, i.e. sits leftmost on its line. The web pages in ``[sender] language``
are right to left too, and nothing on them scrolls sideways.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from newsletter.compose.message import fill_html
from newsletter.compose.sample import example_recipient
from newsletter.config import ListSettings, Settings
from newsletter.issue.parse import parse_issue
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import render_issue
from newsletter.web.archive import page, web_version
from tests.harness.browser import CHROMIUM, FLAGS
from tests.render.test_browser import _ImageHandler

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"
ISSUES = {"ar": FIXTURES / "2017-07-07-trump-putin-ar.md", "he": FIXTURES / "2017-07-07-trump-putin-he.md"}
#: a picture for the end of each issue's introduction (the fixtures are the seed's shape, which has none),
#: served from 127.0.0.1 or blocked
IMAGES = {
    "ar": "![الرئيسان ترامب وبوتين يتصافحان أمام الصحفيين في قمة هامبورغ](BASE/handshake.png \"1200x675\")",
    "he": "![הנשיאים טראמפ ופוטין לוחצים ידיים מול הצלמים בפסגה בהמבורג](BASE/handshake.png \"1200x675\")",
}

# Everything a reader reads, as the template and markup.py write it.
TEXT_SELECTOR = ("p.nl-p, li.nl-li, h1.nl-headline, h2.nl-section-title, p.nl-kicker, blockquote.nl-quote,"
                 " p.nl-footer-text")

LAYOUT_JS = """(selector) => {
  const width = document.documentElement.clientWidth;
  const report = {width, scroll: document.documentElement.scrollWidth, wide: [], ltr: [], unaligned: [], count: 0};
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('[aria-hidden="true"]')) continue;  // the signup form's honeypot is off screen on purpose
    const box = el.getBoundingClientRect();
    if (el.getClientRects().length && (box.right > width + 0.5 || box.left < -0.5))
      report.wide.push(el.tagName + '.' + el.className);
  }
  for (const el of document.querySelectorAll(selector)) {
    report.count += 1;
    const style = getComputedStyle(el);
    const name = el.tagName + '.' + el.className + ': ' + el.textContent.trim().slice(0, 30);
    if (style.direction !== 'rtl') report.ltr.push(name);
    // right-aligned: the declared alignment is the right edge (start is the right edge in rtl) ...
    const declared = style.textAlign === 'right' || (style.textAlign === 'start' && style.direction === 'rtl');
    // ... and the first line's glyphs really begin at the content box's right edge (a line
    // of mixed directions or with an isolate is several rects: take the line's rightmost)
    const range = document.createRange();
    range.selectNodeContents(el);
    const rects = [...range.getClientRects()].filter(r => r.width > 0);
    const top = Math.min(...rects.map(r => r.top));
    const firstLine = rects.filter(r => Math.abs(r.top - top) < 2);
    const box = el.getBoundingClientRect();
    const contentRight = box.right - parseFloat(style.paddingRight) - parseFloat(style.borderRightWidth);
    const gap = firstLine.length ? contentRight - Math.max(...firstLine.map(r => r.right)) : null;
    if (!declared || gap === null || Math.abs(gap) > 1.5)
      report.unaligned.push({name, textAlign: style.textAlign, gap});
  }
  return report;
}"""

BOXES_JS = """() => {
  const css = el => { const s = getComputedStyle(el); return {
    paddingLeft: s.paddingLeft, paddingRight: s.paddingRight, borderLeft: s.borderLeftWidth,
    borderRight: s.borderRightWidth, marginLeft: s.marginLeft, marginRight: s.marginRight}; };
  const list = document.querySelector('ul.nl-list'), item = list.querySelector('li.nl-li');
  const quote = document.querySelector('blockquote.nl-quote');
  return {list: css(list), item: css(item), quote: css(quote),
          itemRight: item.getBoundingClientRect().right, listRight: list.getBoundingClientRect().right,
          itemLeft: item.getBoundingClientRect().left, listLeft: list.getBoundingClientRect().left};
}"""

# For every citation: where its first and last glyphs ('[' and ']') are, against their
# neighbours in the text, and whether it is the leftmost thing on the line it ends on.
CITATIONS_JS = """() => {
  const glyph = (node, offset) => {
    const range = document.createRange();
    range.setStart(node, offset);
    range.setEnd(node, offset + 1);
    return range.getBoundingClientRect();
  };
  const out = [];
  for (const cite of document.querySelectorAll('li.nl-li > .nl-citation')) {
    const walker = document.createTreeWalker(cite, NodeFilter.SHOW_TEXT);
    const chars = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode())
      for (let i = 0; i < node.data.length; i++) chars.push([node, i]);
    const text = chars.map(([node, i]) => node.data[i]).join('');
    const at = i => glyph(...chars[i]);
    const open = at(0), second = at(1), last = at(chars.length - 1), before = at(chars.length - 2);
    const sameLine = (a, b) => Math.abs(a.top - b.top) < 2;
    // the bullet's whole text, rect by rect: what else is on the line the citation ends on?
    const li = cite.parentElement, range = document.createRange();
    range.selectNodeContents(li);
    const ends = [...cite.getClientRects()].filter(r => r.width > 0).pop();
    const onLine = [...range.getClientRects()].filter(r => r.width > 0 && sameLine(r, ends));
    out.push({
      text,
      dir: getComputedStyle(cite).direction,
      openLeftOfNext: sameLine(open, second) ? open.left < second.left : null,
      closeRightOfPrevious: sameLine(last, before) ? last.left > before.left : null,
      openLeftOfClose: sameLine(open, last) ? open.left < last.left : null,
      leftmost: ends.left <= Math.min(...onLine.map(r => r.left)) + 0.5,
      lineLeft: Math.min(...onLine.map(r => r.left)), citationLeft: ends.left,
    });
  }
  return out;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/bootstrap.sh --browser (apt install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ok"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, image_server: str) -> dict[tuple[str, str], Path]:
    """(language, "email" | "web") -> the HTML file, its images served by ``image_server``."""
    folder = tmp_path_factory.mktemp("rtl")
    settings = Settings()
    out: dict[tuple[str, str], Path] = {}
    for language, path in ISSUES.items():
        picture = IMAGES[language].replace("BASE", image_server)
        text = path.read_text(encoding="utf-8").replace("\n\n## ", f"\n\n{picture}\n\n## ", 1)
        rendered = render_issue(parse_issue(text, source=path.name), sender=settings.sender)
        email = folder / f"{language}-email.html"
        email.write_text(fill_html(rendered, example_recipient(settings)), encoding="utf-8")
        web = folder / f"{language}-web.html"
        web.write_text(web_version(text, path.name, settings), encoding="utf-8")
        out[language, "email"], out[language, "web"] = email, web
    return out


def _open(browser: Browser, path: Path, width: int, images: str) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    if images == "blocked":  # what a client that blocks images does: the request never goes out
        context.route("**/*", lambda route: route.abort() if route.request.resource_type == "image"
                      else route.continue_())
    page = context.new_page()
    page.goto(path.resolve().as_uri(), wait_until="load")
    loaded = page.evaluate("() => [...document.images].map(img => img.complete && img.naturalWidth > 0)")
    assert loaded == [images == "loaded"], loaded  # the state is the one meant
    return context, page


CASES = [(language, kind, width, images) for language in ISSUES for kind in ("email", "web")
         for width in (375, 800) for images in ("loaded", "blocked")]


@pytest.mark.parametrize(("language", "kind", "width", "images"), CASES,
                         ids=["-".join(map(str, case)) for case in CASES])
def test_everything_reads_right_to_left(browser: Browser, pages: dict[tuple[str, str], Path], language: str,
                                        kind: str, width: int, images: str) -> None:
    context, page = _open(browser, pages[language, kind], width, images)
    try:
        layout = page.evaluate(LAYOUT_JS, TEXT_SELECTOR)
        boxes = page.evaluate(BOXES_JS)
        citations = page.evaluate(CITATIONS_JS)
    finally:
        context.close()
    assert layout["scroll"] <= layout["width"] and not layout["wide"], layout
    assert layout["count"] >= 20, layout  # the selector found the issue's text
    assert not layout["ltr"], layout["ltr"]
    assert not layout["unaligned"], layout["unaligned"]
    # bullets and their indent on the right, the quote's rule on the right
    assert (boxes["list"]["paddingRight"], boxes["list"]["paddingLeft"]) == ("22px", "0px"), boxes
    assert boxes["itemRight"] < boxes["listRight"] - 20 and abs(boxes["itemLeft"] - boxes["listLeft"]) < 0.5, boxes
    assert (boxes["quote"]["borderRight"], boxes["quote"]["borderLeft"]) == ("4px", "0px"), boxes
    assert (boxes["quote"]["paddingRight"], boxes["quote"]["paddingLeft"]) == ("16px", "0px"), boxes
    # Latin citations: isolated left to right, brackets in order, at the end (left) of their bullet
    assert len(citations) == 6, citations
    assert all(cite["dir"] == "ltr" for cite in citations), citations
    assert all(cite["leftmost"] for cite in citations), citations
    # (a pair of glyphs is compared only on one line: a long citation wraps on a phone)
    for key, least in (("openLeftOfNext", 5), ("closeRightOfPrevious", 5), ("openLeftOfClose", 2)):
        measured = [cite[key] for cite in citations if cite[key] is not None]
        assert len(measured) >= least and all(measured), (key, citations)


@pytest.mark.parametrize("width", [375, 800])
@pytest.mark.parametrize("template", ["subscribe.html", "preferences.html", "message.html"])
def test_web_pages_in_a_right_to_left_language(browser: Browser, tmp_path: Path, template: str, width: int) -> None:
    settings = Settings()
    settings = dataclasses.replace(settings, sender=dataclasses.replace(settings.sender, language="ar"))
    values: dict[str, object] = {
        "subscribe.html": {"email": "", "name": "", "errors": {}, "lists": [{"name": "a", "title": "A", "description": ""}],
                           "chosen": [], "source": "", "max_name": 100, "all_lists_href": ""},
        "preferences.html": {"email": "a@example.org", "name": "", "saved": {"outcome": "changed", "renamed": True},
                             "joined": ["A"], "left": [], "suppressed": False, "complained": False, "action": "/p",
                             "lists": [{"name": "a", "title": "A", "description": "", "pending": False,
                                        "receives": True}], "max_name": 100, "name_error": ""},
        "message.html": {"heading": "h", "text": "t", "link": ""},
    }[template]
    path = tmp_path / "page.html"
    path.write_text(page(template, settings, **values), encoding="utf-8")
    context, view = browser.new_context(viewport={"width": width, "height": 900}), None
    try:
        view = context.new_page()
        view.goto(path.resolve().as_uri())
        layout = view.evaluate(LAYOUT_JS, "main p, main h1")
        notice = view.evaluate("() => { const n = document.querySelector('.notice'); if (!n) return null;"
                               " const s = getComputedStyle(n); return [s.borderRightWidth, s.borderLeftWidth]; }")
    finally:
        context.close()
    assert layout["scroll"] <= layout["width"] and not layout["wide"], layout
    assert layout["count"] >= 1 and not layout["ltr"] and not layout["unaligned"], layout
    if template == "preferences.html":
        assert notice == ["4px", "0px"], notice


@pytest.mark.parametrize("width", [375, 800])
def test_the_confirmation_email_in_a_right_to_left_language(browser: Browser, tmp_path: Path, width: int) -> None:
    sender = dataclasses.replace(Settings().sender, language="he")
    url = "https://news.example.com/confirm/" + "A1b2-_" * 12  # a token may end in - or _: neutral characters
    notice = render_confirmation(email="someone.with.a.rather.long.address@subdomain.example.org",
                                 lists=(ListSettings("briefing", "התדריך היומי", "החדשות של היום בחמש דקות."),
                                        ListSettings("weekly", "The Weekly")),
                                 confirm_url=url, expires=dt.date(2025, 3, 3), sender=sender)
    path = tmp_path / "confirm.html"
    path.write_text(notice.html, encoding="utf-8")
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        view = context.new_page()
        view.goto(path.resolve().as_uri())
        layout = view.evaluate(LAYOUT_JS, "p.nl-p, p.nl-note, li.nl-li, h1.nl-headline, p.nl-kicker, p.nl-footer-text")
        placed = view.evaluate("""() => {
          const button = document.querySelector('.nl-button a').getBoundingClientRect();
          const column = document.querySelector('.nl-button').getBoundingClientRect();
          const link = document.querySelector('a.nl-link[href^="https:"]');
          const text = link.firstChild.firstChild ?? link.firstChild;  // the URL's text, in its isolating span
          const glyph = i => { const r = document.createRange(); r.setStart(text, i); r.setEnd(text, i + 1);
                               return r.getBoundingClientRect(); };
          return {buttonGap: column.right - 24 - button.right, buttonLeft: button.left - column.left,
                  first: glyph(0).left, second: glyph(1).left, firstTop: glyph(0).top, lastTop: glyph(text.length - 1).top,
                  last: glyph(text.length - 1).left, beforeLast: glyph(text.length - 2).left};
        }""")
    finally:
        context.close()
    assert layout["scroll"] <= layout["width"] and not layout["wide"], layout
    assert layout["count"] >= 8 and not layout["ltr"] and not layout["unaligned"], layout
    assert abs(placed["buttonGap"]) < 1 and placed["buttonLeft"] > 24, placed  # on the right, not the left
    # the URL reads left to right: 'h' left of 't', and its final '_' right of the character before it
    assert placed["first"] < placed["second"] and placed["last"] > placed["beforeLast"], placed
