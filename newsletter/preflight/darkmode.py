"""The email in a real browser: text contrast in the light and dark schemes, and screenshots.

Headless Chromium (Debian's package, driven by Playwright; no browser download) renders
the final HTML twice at 800 px, once with ``prefers-color-scheme: light`` and once with
``dark`` emulated. For every element with text of its own that is rendered, the computed
text colour is set against the computed backgrounds behind it (down to the canvas, which
is dark in the dark scheme when the email declares ``color-scheme: light dark``), and
any contrast under 4.5:1 (WCAG 2 AA) is reported. With ``screenshots`` it also writes
``light.png``, ``dark.png`` and ``375.png`` (a phone, light scheme), full page.

The page has JavaScript off and every network request refused: remote images show as
their alt text, and nothing the email links to is fetched.

Playwright is imported only when the check runs, so the rest of the package works
without it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from newsletter.errors import ConfigError, RenderError
from newsletter.preflight.colour import AA_NORMAL_TEXT, RGBA, blend, contrast_ratio, parse_colour
from newsletter.preflight.finding import Finding, where_list

__all__ = [
    "CHROMIUM_FLAGS",
    "DEFAULT_CHROMIUM",
    "DarkModeReport",
    "check_dark_mode",
    "find_chromium",
]

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
#: Flags for a closed network and root: no sandbox, no background connections.
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
# (scheme, window width, screenshot name): contrast is measured in the two desktop views
_VIEWS: tuple[tuple[Literal["light", "dark"], int, str], ...] = (
    ("light", 800, "light"), ("dark", 800, "dark"), ("light", 375, "375"),
)
_TIMEOUT_MS = 15_000
_CONTRAST_URL = "https://www.w3.org/WAI/WCAG22/Understanding/contrast-minimum.html"

# For each rendered element with text of its own: where it is, its colour, and the
# background colours from it up to the first opaque one (then the canvas).
_TEXT_COLOURS_JS = """() => {
  const probe = document.createElement('div');
  probe.style.backgroundColor = 'Canvas';
  document.documentElement.appendChild(probe);
  const canvas = getComputedStyle(probe).backgroundColor;
  probe.remove();
  const describe = (el) => {
    let name = el.tagName.toLowerCase();
    if (el.id) name += '#' + el.id;
    for (const cls of [...el.classList].slice(0, 2)) name += '.' + cls;
    return name;
  };
  const clipped = (el) => {
    for (let node = el; node && node !== document.documentElement; node = node.parentElement) {
      const style = getComputedStyle(node);
      const rect = node.getBoundingClientRect();
      if (style.overflow !== 'visible' && (rect.width < 1 || rect.height < 1)) return true;
    }
    return false;
  };
  const seen = new Set();
  const found = [];
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!el || seen.has(el) || !node.textContent.trim()) continue;
    seen.add(el);
    const style = getComputedStyle(el);
    if (!el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
    if (parseFloat(style.fontSize) === 0 || clipped(el)) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const box = range.getBoundingClientRect();
    if (box.width < 1 || box.height < 1) continue;
    const layers = [];
    let image = false;
    for (let n = el; n; n = n.parentElement) {
      const s = getComputedStyle(n);
      if (s.backgroundImage && s.backgroundImage !== 'none') image = true;
      layers.push(s.backgroundColor);
      if (/^rgb\\(/.test(s.backgroundColor)) break;
    }
    found.push({where: describe(el), colour: style.color, layers, image, canvas,
                text: node.textContent.trim().slice(0, 40)});
  }
  return found;
}"""


@dataclass(frozen=True)
class DarkModeReport:
    """What the browser check found, and the screenshots it wrote."""

    findings: list[Finding] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


def find_chromium(environ: Mapping[str, str]) -> Path:
    """The Chromium to drive: ``NEWSLETTER_CHROMIUM`` in ``environ``, else ``chromium`` on the PATH, else Debian's."""
    named = environ.get("NEWSLETTER_CHROMIUM", "").strip()
    if named:
        return Path(named)
    found = shutil.which("chromium")
    return Path(found) if found else DEFAULT_CHROMIUM


def check_dark_mode(
    html: str,
    *,
    chromium: str | Path | None = None,
    screenshots: str | Path | None = None,
    name: str = "",
) -> DarkModeReport:
    """Render ``html`` in Chromium in both schemes and report text under 4.5:1 contrast.

    ``chromium`` defaults to :func:`find_chromium` of an empty environment (the PATH, then
    ``/usr/bin/chromium``). With ``screenshots``, the folder gets ``[name-]light.png``,
    ``[name-]dark.png`` and ``[name-]375.png``. Raises ConfigError when Playwright or
    Chromium is missing, RenderError when the browser fails.
    """
    executable = Path(chromium) if chromium else find_chromium({})
    if not executable.exists():
        raise ConfigError(f"Chromium not found at {executable}: install it (apt install chromium) "
                          "or point NEWSLETTER_CHROMIUM at it")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ConfigError("the browser check needs Playwright: pip install playwright "
                          "(no browser download: it drives the system's Chromium)") from exc
    folder = Path(screenshots) if screenshots is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{name}-" if name else ""
    samples: dict[str, list[dict[str, Any]]] = {}
    written: list[Path] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(executable), headless=True, args=list(CHROMIUM_FLAGS), timeout=_TIMEOUT_MS,
            )
            try:
                for scheme, width, shot in _VIEWS:
                    context = browser.new_context(color_scheme=scheme, viewport={"width": width, "height": 900},
                                                  java_script_enabled=False)
                    try:
                        context.route("**/*", lambda route: route.abort())  # the email may fetch nothing
                        page = context.new_page()
                        page.set_default_timeout(_TIMEOUT_MS)
                        page.set_content(html, wait_until="load")
                        if shot != "375":
                            samples[scheme] = page.evaluate(_TEXT_COLOURS_JS)
                        if folder is not None:
                            path = folder / f"{prefix}{shot}.png"
                            page.screenshot(path=str(path), full_page=True)
                            written.append(path)
                    finally:
                        context.close()
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise RenderError(f"Chromium ({executable}) failed: {_first_line(str(exc))}") from exc
    return DarkModeReport(_findings(samples), written)


def _findings(samples: dict[str, list[dict[str, Any]]]) -> list[Finding]:
    low: dict[tuple[str, str, str, float], list[str]] = {}
    unknown: list[str] = []
    over_image: list[str] = []
    for scheme, items in samples.items():
        for item in items:
            colour = parse_colour(str(item["colour"]))
            background = _backdrop([str(layer) for layer in item["layers"]], str(item["canvas"]))
            if item["image"]:
                over_image.append(f"{item['where']} ({scheme})")
                continue
            if colour is None or background is None:
                unknown.append(f"{item['where']} ({scheme})")
                continue
            ratio = contrast_ratio(colour, background)
            if ratio < AA_NORMAL_TEXT:
                key = (scheme, str(colour), str(background), round(ratio, 2))
                low.setdefault(key, []).append(f"{item['where']} '{item['text']}'")
    findings = [
        Finding(
            "warning", "darkmode-contrast",
            f"in Chromium's {scheme} scheme, text {colour} on {background} is {ratio:.2f}:1, "
            f"under {AA_NORMAL_TEXT}:1 (WCAG AA)",
            where_list(places), _CONTRAST_URL)
        for (scheme, colour, background, ratio), places in low.items()
    ]
    if unknown:
        findings.append(Finding("info", "darkmode-contrast", "a colour Chromium computed couldn't be read "
                                         "(a newer colour space?): check the screenshots", where_list(unknown)))
    if over_image:
        findings.append(Finding("info", "darkmode-contrast", "text over a background image: check its "
                                         "contrast in the screenshots", where_list(over_image)))
    return findings


def _backdrop(layers: list[str], canvas: str) -> RGBA | None:
    """The opaque colour the layers (innermost first) make over the canvas."""
    colour = parse_colour(canvas)
    if colour is None:
        return None
    for text in reversed(layers):
        layer = parse_colour(text)
        if layer is None:
            return None
        if not layer.transparent:
            colour = layer if layer.opaque else blend(layer, colour)
    return colour


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")
