"""Email-client compatibility of the final HTML, from the caniemail.com data set.

:func:`features_used` lists what the HTML uses, each with where: CSS properties, the
values caniemail tests on their own (``display:none``, ``rgba()``, units, ``!important``
…), selectors, at-rules and media features, HTML elements and attributes, and images
given as ``data:`` URIs (caniemail's ``image-base64``).
:func:`check_compat` looks each up for the chosen clients and reports what a client
doesn't support (warning), supports partly or hasn't been tested in (info), and what
caniemail has no data on at all (info: unknown, never taken as supported).

The data is ``newsletter/preflight/data/caniemail.json``, made by ``scripts/caniemail_data.py``
from caniemail's ``_features/*.md`` (MIT licence in ``data/CANIEMAIL-LICENSE``); for each
client and platform it holds the level of the latest version tested.

Two details make the findings true to what a reader sees:

- HTML inside Outlook's ``<!--[if mso]>`` comments is checked against Outlook for
  Windows only, and HTML inside ``<!--[if !mso]><!-->`` against everyone else.
- A feature used only inside something a client ignores (a rule inside ``@media`` in
  Outlook for Windows) is not reported again for that client: the ``@media`` finding says it.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from newsletter.preflight.css import Declaration, Selector, parse_declarations, parse_stylesheet
from newsletter.preflight.finding import Finding, Severity, where_list
from newsletter.preflight.htmldom import Document, Element, describe, parse_document, text_content

__all__ = [
    "Accepted",
    "BRIEFING_CHOICES",
    "CaniemailData",
    "Client",
    "DEFAULT_CLIENTS",
    "Feature",
    "Usage",
    "check_compat",
    "features_used",
    "known_clients",
    "load_caniemail",
    "resolve_clients",
    "target_name",
]

#: the clients ``newsletter check`` looks at unless told otherwise
DEFAULT_CLIENTS = ("gmail", "outlook-windows", "apple-mail", "yahoo")

Audience = Literal["all", "mso", "not-mso"]
_MSO_TARGET = ("outlook", "windows")  # the Word-based Outlook that reads <!--[if mso]>

# caniemail.com's own names (its _data/nicenames.yml)
_FAMILY_NAMES = {
    "gmail": "Gmail", "outlook": "Outlook", "yahoo": "Yahoo! Mail", "apple-mail": "Apple Mail", "aol": "AOL",
    "thunderbird": "Mozilla Thunderbird", "samsung-email": "Samsung Email", "sfr": "SFR", "orange": "Orange",
    "protonmail": "ProtonMail", "hey": "HEY", "mail-ru": "Mail.ru", "fastmail": "Fastmail",
    "laposte": "LaPoste.net", "t-online-de": "T-online.de", "free-fr": "Free.fr", "gmx": "GMX", "web-de": "WEB.DE",
    "ionos-1and1": "1&1", "wp-pl": "WP.pl", "rainloop": "RainLoop",
}
_PLATFORM_NAMES = {
    "desktop-app": "desktop", "desktop-webmail": "webmail", "mobile-webmail": "mobile webmail", "webmail": "webmail",
    "ios": "iOS", "android": "Android", "windows": "Windows", "macos": "macOS", "windows-mail": "Windows Mail",
    "outlook-com": "Outlook.com",
}
# Friendly ids for the clients people name; every "<client>-<platform>" and bare "<client>"
# (all its platforms) from the data works too.
_ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gmail": ("gmail", ("desktop-webmail", "ios", "android")),  # the apps and webmail, not the legacy mobile site
    "outlook-windows": ("outlook", ("windows",)),
    "outlook-windows-mail": ("outlook", ("windows-mail",)),
    "outlook-macos": ("outlook", ("macos",)),
    "outlook-com": ("outlook", ("outlook-com",)),
    "outlook-ios": ("outlook", ("ios",)),
    "outlook-android": ("outlook", ("android",)),
    "apple-mail": ("apple-mail", ("macos", "ios")),
    "yahoo": ("yahoo", ("desktop-webmail", "ios", "android")),
}
# The fabric of every HTML email, which caniemail has no page for because every client
# must render it: reporting these as "unknown" would bury the unknowns that matter.
_BASELINE_ELEMENTS = frozenset({"#document", "html", "head", "title", "meta", "a", "br", "em", "b", "i"})
_BASELINE_ATTRIBUTES = frozenset({
    "class", "id", "style", "href", "src", "alt", "title", "name", "content", "http-equiv", "charset", "type",
    "xmlns", "media",
})
_BASELINE_PROPERTIES = frozenset({"color", "font-family", "font-style"})

_ELEMENT_FEATURES = {
    **{tag: f"html-{tag}" for tag in (
        "abbr", "acronym", "address", "audio", "base", "bdi", "blockquote", "body", "code", "del", "dfn", "dialog",
        "div", "form", "hr", "img", "link", "marquee", "meter", "object", "p", "picture", "pre", "progress", "rp",
        "rt", "ruby", "select", "small", "span", "strike", "strong", "style", "svg", "textarea", "video", "wbr")},
    **{f"h{level}": "html-h1-h6" for level in range(1, 7)},
    **dict.fromkeys(("ul", "ol", "li", "dl", "dt", "dd"), "html-lists"),
    **dict.fromkeys(("table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "col", "colgroup"),
                    "html-table"),
    **dict.fromkeys(("article", "aside", "details", "figcaption", "figure", "footer", "header", "main", "mark",
                     "nav", "section", "summary", "time"), "html-semantics"),
    **dict.fromkeys(("map", "area"), "html-image-maps"),
}
_ATTRIBUTE_FEATURES = {
    **{name: f"html-{name}" for name in (
        "align", "valign", "width", "height", "background", "cellpadding", "cellspacing", "dir", "lang", "role",
        "target", "hidden", "required", "popover", "aria-describedby", "aria-hidden", "aria-label",
        "aria-labelledby", "aria-live")},
    "srcset": "html-srcset", "sizes": "html-srcset", "usemap": "html-image-maps", "inert": "css-inert-attribute",
    "loading": "html-loading-attribute",
}
_PROPERTY_FEATURES: dict[str, str] = {
    **dict.fromkeys(("border-width", "border-style", "border-color", "border-top", "border-right", "border-bottom",
                     "border-left", *(f"border-{side}-{part}" for side in ("top", "right", "bottom", "left")
                                      for part in ("width", "style", "color"))), "css-border"),
    **dict.fromkeys((f"border-{a}-{b}-radius" for a in ("top", "bottom") for b in ("left", "right")),
                    "css-border-radius"),
    **dict.fromkeys((f"border-{a}-{b}-radius" for a in ("start", "end") for b in ("start", "end")),
                    "css-border-radius-logical"),
    **dict.fromkeys(("border-inline", "border-block"), "css-border-inline-block"),
    **dict.fromkeys((f"border-{axis}-{part}" for axis in ("inline", "block") for part in
                     ("color", "style", "width", "start", "end")), "css-border-inline-block-individual"),
    **dict.fromkeys((f"border-{axis}-{edge}-{part}" for axis in ("inline", "block") for edge in ("start", "end")
                     for part in ("color", "style", "width")), "css-border-inline-block-longhand"),
    **dict.fromkeys((f"border-image-{part}" for part in ("source", "slice", "width", "outset", "repeat")),
                    "css-border-image"),
    **dict.fromkeys(("margin-top", "margin-right", "margin-bottom", "margin-left"), "css-margin"),
    **dict.fromkeys(("margin-inline", "margin-block"), "css-margin-inline-block"),
    **dict.fromkeys(("margin-inline-start", "margin-inline-end"), "css-margin-inline-start-end"),
    **dict.fromkeys(("margin-block-start", "margin-block-end"), "css-margin-block-start-end"),
    **dict.fromkeys(("padding-top", "padding-right", "padding-bottom", "padding-left"), "css-padding"),
    **dict.fromkeys(("padding-inline", "padding-block"), "css-padding-inline-block"),
    **dict.fromkeys(("padding-inline-start", "padding-inline-end"), "css-padding-inline-start-end"),
    **dict.fromkeys(("padding-block-start", "padding-block-end"), "css-padding-block-start-end"),
    **dict.fromkeys(("columns", "column-fill", "column-rule", "column-rule-color", "column-rule-style",
                     "column-rule-width", "column-span", "column-width"), "css-column-layout-properties"),
    **dict.fromkeys(("gap", "row-gap", "column-gap"), "css-gap"),
    **dict.fromkeys(("grid-template", "grid-template-areas", "grid-template-columns", "grid-template-rows"),
                    "css-grid-template"),
    **dict.fromkeys(("top", "right", "bottom", "left"), "css-left-right-top-bottom"),
    **dict.fromkeys(("inset-block", "inset-inline", "inset-inline-start", "inset-inline-end", "inset-block-start",
                     "inset-block-end"), "css-inset"),
    **dict.fromkeys(("overflow-x", "overflow-y", "overflow-block", "overflow-inline"), "css-overflow"),
    **dict.fromkeys((f"animation-{part}" for part in ("name", "duration", "timing-function", "delay",
                                                     "iteration-count", "direction", "fill-mode", "play-state")),
                    "css-animation"),
    **dict.fromkeys((f"transition-{part}" for part in ("property", "duration", "timing-function", "delay")),
                    "css-transition"),
    **dict.fromkeys(("transform-origin", "transform-style"), "css-transform"),
    **dict.fromkeys(("scroll-snap-type", "scroll-snap-align", "scroll-snap-stop"), "css-scroll-snap"),
    **dict.fromkeys(("text-emphasis-style", "text-emphasis-color"), "css-text-emphasis"),
    "block-size": "css-block-inline-size",
    "display": "css-display",
}
_DISPLAY_FEATURES = {"none": "css-display-none", "flex": "css-display-flex", "inline-flex": "css-display-flex",
                     "grid": "css-display-grid", "inline-grid": "css-display-grid"}
_FUNCTION_FEATURES = {
    "rgb": "css-rgb", "rgba": "css-rgba", "calc": "css-unit-calc", "clamp": "css-function-clamp",
    "min": "css-function-min", "max": "css-function-max", "light-dark": "css-function-light-dark",
    "var": "css-variables", "linear-gradient": "css-linear-gradient",
    "repeating-linear-gradient": "css-linear-gradient", "radial-gradient": "css-radial-gradient",
    "repeating-radial-gradient": "css-radial-gradient", "conic-gradient": "css-conic-gradient",
    "repeating-conic-gradient": "css-conic-gradient", "lch": "css-modern-color", "oklch": "css-modern-color",
    "lab": "css-modern-color", "oklab": "css-modern-color",
}
_UNITS = ("px", "em", "rem", "%", "pt", "ch", "cm", "mm", "in", "pc", "ex", "vh", "vw", "vmin", "vmax")
_UNIT_RE = re.compile(r"(?<![\w#.-])[+-]?(?:\d+\.?\d*|\.\d+)(px|em|rem|%|pt|ch|cm|mm|in|pc|ex|vh|vw|vmin|vmax)"
                      r"(?![\w-])", re.I)
_FUNCTION_RE = re.compile(r"(?<![\w-])([a-z-]+)\(", re.I)
_HEX_RE = re.compile(r"#[0-9a-f]+\b", re.I)
_QUOTED_RE = re.compile(r"\"[^\"]*\"|'[^']*'|url\([^)]*\)", re.I)
_SYSTEM_FONTS = re.compile(r"(?<![\w-])(system-ui|ui-serif|ui-sans-serif|ui-rounded|ui-monospace)(?![\w-])", re.I)
_INTRINSIC = re.compile(r"(?<![\w-])(fit-content|min-content|max-content)(?![\w-])", re.I)
_MEDIA_FEATURES = {
    "prefers-color-scheme": "css-at-media-prefers-color-scheme",
    "prefers-reduced-motion": "css-at-media-prefers-reduced-motion",
    "orientation": "css-at-media-orientation",
    "hover": "css-at-media-hover", "any-hover": "css-at-media-hover",
}
_PIXEL_RATIO = re.compile(r"device-pixel-ratio|resolution", re.I)
_AT_RULE_FEATURES = {"font-face": "css-at-font-face", "import": "css-at-import", "keyframes": "css-at-keyframes",
                     "-webkit-keyframes": "css-at-keyframes", "supports": "css-at-supports", "media": "css-at-media"}


# --- the data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    """One caniemail feature: its page, and the latest tested level per (client, platform)."""

    slug: str
    title: str
    category: str  # css | html
    url: str
    support: Mapping[tuple[str, str], tuple[str, str]]  # (client, platform) -> (version, level y/a/n/u)

    def level(self, target: tuple[str, str]) -> tuple[str, str] | None:
        """(version, level) for a (client, platform), or None when caniemail didn't test it."""
        return self.support.get(target)


@dataclass(frozen=True)
class CaniemailData:
    """The packaged data set: its source commit and the features by slug."""

    commit: str
    features: Mapping[str, Feature]

    def targets(self) -> list[tuple[str, str]]:
        """Every (client, platform) the data has a level for."""
        return sorted({target for feature in self.features.values() for target in feature.support})


@functools.lru_cache(maxsize=1)
def load_caniemail() -> CaniemailData:
    """The caniemail data shipped in the package (read once, from ``newsletter/preflight/data/caniemail.json``)."""
    text = resources.files("newsletter.preflight").joinpath("data", "caniemail.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    features = {
        slug: Feature(
            slug=slug,
            title=entry["title"],
            category=entry["category"],
            url=entry["url"],
            support={
                (client, platform): (version, level)
                for client, platforms in entry["support"].items()
                for platform, (version, level) in platforms.items()
            },
        )
        for slug, entry in raw["features"].items()
    }
    return CaniemailData(commit=raw["commit"], features=features)


# --- clients -----------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A client as ``--clients`` names it, and the caniemail (client, platform) pairs it stands for."""

    id: str
    targets: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """E.g. ``Outlook Windows`` or ``Gmail (webmail, iOS, Android)``."""
        families = {family for family, _ in self.targets}
        if len(families) == 1 and len(self.targets) == 1:
            return target_name(self.targets[0])
        family = _FAMILY_NAMES.get(next(iter(families)), next(iter(families))) if len(families) == 1 else self.id
        return f"{family} ({', '.join(_PLATFORM_NAMES.get(p, p) for _, p in self.targets)})"


def target_name(target: tuple[str, str]) -> str:
    """A (client, platform) in words: ``Outlook Windows``, ``Gmail webmail``."""
    family, platform = target
    return f"{_FAMILY_NAMES.get(family, family)} {_PLATFORM_NAMES.get(platform, platform)}"


@functools.lru_cache(maxsize=1)
def known_clients() -> dict[str, Client]:
    """Every client id ``resolve_clients`` accepts, with what it stands for."""
    targets = load_caniemail().targets()
    by_family: dict[str, list[tuple[str, str]]] = {}
    for target in targets:
        by_family.setdefault(target[0], []).append(target)
    clients: dict[str, Client] = {}
    for family, pairs in by_family.items():
        clients[family] = Client(family, tuple(pairs))
        for pair in pairs:
            clients[f"{family}-{pair[1]}"] = Client(f"{family}-{pair[1]}", (pair,))
    for alias, (family, platforms) in _ALIASES.items():
        clients[alias] = Client(alias, tuple((family, platform) for platform in platforms))
    return dict(sorted(clients.items()))


def resolve_clients(ids: Iterable[str]) -> list[Client]:
    """The clients named by ``ids`` (``gmail``, ``outlook-windows`` …), in order, once each.

    Raises ValueError naming the unknown id, with the nearest known ones.
    """
    known = known_clients()
    chosen: dict[str, Client] = {}
    for raw in ids:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(f"unknown client '{raw}'{hint}; known: {', '.join(known)}")
        chosen.setdefault(name, known[name])
    return list(chosen.values())


# --- what the HTML uses -----------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One use of a feature: the caniemail slug ("" when caniemail has none), what, where."""

    feature: str
    label: str  # e.g. "max-width", "display:none", "<table>", "role attribute", ":hover"
    where: str
    conditions: tuple[str, ...] = ()  # features it sits inside (html-style, css-at-media …)
    audience: Audience = "all"


@dataclass(frozen=True)
class Accepted:
    """A deliberate use of a feature a client lacks: its findings become info, with the reason."""

    feature: str  # caniemail slug
    clients: tuple[str, ...]  # client ids as in --clients; empty: every client; else it must cover them all
    reason: str  # what degrades, and why that is fine


_PREHEADER = "one of the hidden preheader's fallbacks; Outlook for Windows hides it with mso-hide:all"
#: The deliberate choices of the built-in template (templates/briefing.mjml) and of the
#: MJML around it: what a client without the feature shows instead. For the README.
BRIEFING_CHOICES: tuple[Accepted, ...] = (
    Accepted("css-at-media", ("outlook-windows",),
             "Outlook for Windows ignores media queries: MJML's conditional tables give it the fixed 600 px "
             "desktop layout, in the light design"),
    Accepted("css-at-media-prefers-color-scheme", (),
             "a client without it shows the light design, whose text passes WCAG AA contrast on its own "
             "(some apply their own dark inversion)"),
    Accepted("css-color-scheme", (),
             "only a hint that the design has a dark variant; without it the light design shows"),
    Accepted("html-meta-color-scheme", (),
             "only a hint that the design has a dark variant; without it the light design shows"),
    Accepted("css-max-height", ("outlook-windows",), _PREHEADER),
    Accepted("css-opacity", ("outlook-windows",), _PREHEADER),
    Accepted("css-overflow", ("outlook-windows",), _PREHEADER),
    Accepted("css-display-none", ("outlook-windows",), _PREHEADER),
    Accepted("css-white-space", ("outlook-windows",),
             "white-space: normal on citations is the initial value, so dropping it changes nothing"),
    Accepted("css-word-spacing", ("outlook-windows",),
             "MJML's word-spacing: normal on <body> is the initial value, so dropping it changes nothing"),
    Accepted("css-table-layout", ("outlook-windows",),
             "table-layout: fixed on the card's tables keeps a blocked or broken image's box from widening "
             "a phone's layout; Outlook for Windows gets MJML's fixed 600 px tables instead"),
    Accepted("css-word-break", (),
             "MJML's word-break: break-word on text cells; where it is dropped, only a very long unbroken word "
             "or bare URL could widen the card"),
    Accepted("html-aria-label", ("yahoo",),
             "MJML's label of the wrapper (the subject) for screen readers; without it the subject is still "
             "the message's title"),
    Accepted("html-body", ("yahoo",),
             "Yahoo's apps replace <body>; its background is repeated on the wrapper div.nl-bg, so nothing is lost"),
    Accepted("html-doctype", (),
             "a client that drops the doctype renders as it always does; it puts browsers in standards mode"),
)


def features_used(html: str) -> list[Usage]:
    """Every feature the HTML uses, in document order, each with where it is used."""
    document = parse_document(html)
    known = load_caniemail().features
    usages: list[Usage] = []
    if document.doctype is not None:
        usages.append(Usage("html-doctype", "<!doctype>", f"<!{document.doctype}>"))
    if document.comments or document.conditional or document.revealed:
        where = "<!--[if mso]> comments" if document.conditional or document.revealed else "<!-- comment -->"
        usages.append(Usage("html-comments", "HTML comments", where))
    usages.extend(_document_usages(document, known, "all"))
    for block in document.conditional:
        fragment = parse_document(block.html, fragment=True)
        usages.extend(_document_usages(fragment, known, "mso", prefix=f"<!--[if {block.condition}]> "))
    return usages


def _document_usages(document: Document, known: Mapping[str, Feature], audience: Audience, *,
                     prefix: str = "") -> Iterator[Usage]:
    for element in document.iter():
        who: Audience = "not-mso" if audience == "all" and document.hidden_from_mso(element) else audience
        place = prefix + describe(element)
        yield from _element_usages(element, known, place, who)
        for declaration in parse_declarations(element.get("style") or ""):
            yield from _declaration_usages(declaration, known, f"{place}[style]", (), who)
        if element.tag == "style":
            yield from _stylesheet_usages(element, known, prefix, who)


def _element_usages(element: Element, known: Mapping[str, Feature], place: str,
                    audience: Audience) -> Iterator[Usage]:
    tag = str(element.tag)
    if ":" in tag or tag == "xml":
        return  # Office XML (<o:OfficeDocumentSettings>) is read by Word only, and is no HTML
    kind = (element.get("type") or "").lower()
    if tag == "input":
        slug = f"html-input-{kind or 'text'}"
    elif tag == "button":
        slug = f"html-button-{kind or 'submit'}"
    elif tag == "meta" and (element.get("name") or "").lower() == "color-scheme":
        slug = "html-meta-color-scheme"
    else:
        slug = _ELEMENT_FEATURES.get(tag, "")
    if slug in known:
        yield Usage(slug, f"<{tag}>", place, (), audience)
    elif tag not in _BASELINE_ELEMENTS:
        yield Usage("", f"<{tag}> element", place, (), audience)
    src = (element.get("src") or "").strip()
    if tag == "img" and src[:5].lower() == "data:":
        yield Usage("image-base64", "data: image", f"{place}[src={_short(src, 40)}]", (), audience)
    href = (element.get("href") or "").strip().lower()
    if tag == "a" and href.startswith("#"):
        yield Usage("html-anchor-links", "local anchor link", place, (), audience)
    elif tag == "a" and href.startswith("mailto:"):
        yield Usage("html-mailto-links", "mailto: link", place, (), audience)
    for attribute in element.attrib:
        slug = _ATTRIBUTE_FEATURES.get(attribute, "")
        if slug in known:
            yield Usage(slug, f"{attribute} attribute", f"{place}[{attribute}]", (), audience)
        elif attribute not in _BASELINE_ATTRIBUTES and not attribute.startswith("xmlns:"):
            yield Usage("", f"{attribute} attribute", f"{place}[{attribute}]", (), audience)


def _stylesheet_usages(element: Element, known: Mapping[str, Feature], prefix: str,
                       audience: Audience) -> Iterator[Usage]:
    place = prefix + "<style>"
    base: tuple[str, ...] = ("html-style",)
    media = element.get("media")
    if media:
        yield from _media_usages(media, f"{place}[media]", base, audience)
        base = (*base, *_media_conditions(media))
    sheet = parse_stylesheet(text_content(element))
    if sheet.has_comments:
        yield Usage("css-comments", "CSS comments", place, base, audience)
    for at_rule in sheet.at_rules:
        conditions = (*base, *(slug for condition in at_rule.conditions for slug in _media_conditions(condition)))
        where = f"{place} @{at_rule.name} {at_rule.prelude}".strip()
        slug = _AT_RULE_FEATURES.get(at_rule.name, "")
        if at_rule.name == "media":
            yield from _media_usages(at_rule.prelude, where, conditions, audience)
        elif slug:
            yield Usage(slug, f"@{at_rule.name}", where, conditions, audience)
        else:
            yield Usage("", f"@{at_rule.name}", where, conditions, audience)
    for rule in sheet.rules:
        conditions = (*base, *(slug for condition in rule.conditions for slug in _media_conditions(condition)))
        inside = " ".join(rule.conditions)
        where = f"{place} {inside + ' ' if inside else ''}{_short(rule.selector_text)}"
        if rule.nested:
            yield Usage("css-nesting", "CSS nesting", where, conditions, audience)
        if len(rule.selectors) > 1:
            yield Usage("css-selector-grouping", "grouped selectors (a, b)", where, conditions, audience)
        for selector in rule.selectors:
            yield from _selector_usages(selector, known, where, conditions, audience)
        for declaration in rule.declarations:
            yield from _declaration_usages(declaration, known, where, conditions, audience)


def _media_conditions(prelude: str) -> tuple[str, ...]:
    """The features a rule inside ``@media <prelude>`` depends on."""
    text = prelude.lower().removeprefix("@media").strip()
    slugs = ["css-at-media"]
    slugs.extend(slug for name, slug in _MEDIA_FEATURES.items() if re.search(rf"\(\s*{name}\s*[:)]", text))
    if _PIXEL_RATIO.search(text):
        slugs.append("css-at-media-device-pixel-ratio")
    return tuple(dict.fromkeys(slugs))


def _media_usages(prelude: str, where: str, conditions: tuple[str, ...], audience: Audience) -> Iterator[Usage]:
    for slug in _media_conditions(prelude):
        label = "@media" if slug == "css-at-media" else f"@media ({slug.removeprefix('css-at-media-')})"
        yield Usage(slug, label, where, conditions, audience)


def _selector_usages(selector: Selector, known: Mapping[str, Feature], where: str, conditions: tuple[str, ...],
                     audience: Audience) -> Iterator[Usage]:
    def use(slug: str, label: str) -> Usage:
        return Usage(slug if slug in known else "", label, where, conditions, audience)

    names = {" ": ("css-selector-descendant", "descendant combinator (a b)"),
             ">": ("css-selector-child", "child combinator (a > b)"),
             "+": ("css-selector-adjacent-sibling", "adjacent sibling combinator (a + b)"),
             "~": ("css-selector-general-sibling", "general sibling combinator (a ~ b)")}
    for combinator in selector.combinators:
        yield use(*names[combinator])
    for part in selector.parts:
        if part.tag == "*":
            yield use("css-selector-universal", "universal selector *")
        elif part.tag is not None:
            yield use("css-selector-type", "type selector")
        if part.ids:
            yield use("css-selector-id", "ID selector")
        if part.classes:
            yield use("css-selector-class", "class selector")
        if part.attributes:
            yield use("css-selector-attribute", "attribute selector")
        if (part.tag not in (None, "*")) + len(part.ids) + len(part.classes) + len(part.attributes) > 1:
            yield use("css-selector-chaining", "chained selectors (a.b)")
        for name in part.pseudo_classes:
            yield use(f"css-pseudo-class-{name}", f":{name} pseudo-class")
        for name in part.pseudo_elements:
            yield use(f"css-pseudo-element-{name}", f"::{name} pseudo-element")


def _declaration_usages(declaration: Declaration, known: Mapping[str, Feature], where: str,
                        conditions: tuple[str, ...], audience: Audience) -> Iterator[Usage]:
    def use(slug: str, label: str) -> Usage:
        return Usage(slug if slug in known else "", label, where, conditions, audience)

    name, value = declaration.name, declaration.value
    lowered = value.lower()
    if name.startswith("--"):
        yield use("css-variables", "CSS custom property (--name)")
    elif name == "display" and lowered.strip() in _DISPLAY_FEATURES:
        yield use(_DISPLAY_FEATURES[lowered.strip()], f"display:{lowered.strip()}")
    else:
        slug = _PROPERTY_FEATURES.get(name, f"css-{name}")
        if slug in known:
            yield use(slug, name)
        elif name not in _BASELINE_PROPERTIES:
            yield use("", f"{name} property")
    if declaration.important:
        yield use("css-important", "!important")
    bare = _QUOTED_RE.sub(" ", _HEX_RE.sub(" ", lowered))
    for function in dict.fromkeys(match.lower() for match in _FUNCTION_RE.findall(bare)):
        if function in _FUNCTION_FEATURES:
            yield use(_FUNCTION_FEATURES[function], f"{function}()")
    for unit in dict.fromkeys(match.lower() for match in _UNIT_RE.findall(bare)):
        yield use("css-unit-percent" if unit == "%" else f"css-unit-{unit}", f"{unit} unit")
    if re.search(r"(?<![\w-])initial(?![\w-])", bare):
        yield use("css-unit-initial", "initial keyword")
    if name in ("font", "font-family") and _SYSTEM_FONTS.search(lowered):
        yield use("css-sytem-ui", "system-ui fonts")
    if _INTRINSIC.search(bare):
        yield use("css-intrinsic-size", "fit-content / min-content / max-content")


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- the check ------------------------------------------------------------------------

_LEVEL_FINDINGS: dict[str, tuple[Severity, str, str]] = {
    "n": ("warning", "compat-unsupported", "not supported in"),
    "a": ("info", "compat-partial", "only partly supported in"),
    "u": ("info", "compat-untested", "not tested by caniemail in"),
}


@dataclass
class _Tally:
    targets: dict[tuple[str, str], str] = field(default_factory=dict)  # target -> version
    places: list[str] = field(default_factory=list)
    label: str = ""


def check_compat(
    html: str,
    *,
    clients: Sequence[str] = DEFAULT_CLIENTS,
    accepted: Iterable[Accepted] = (),
) -> list[Finding]:
    """What the chosen clients don't support, support partly, or weren't tested with; then the unknowns.

    One finding per feature and level, naming the clients, up to three places where the
    feature is used, and its caniemail.com page. ``accepted`` turns deliberate choices
    into info findings that say why. Raises ValueError for an unknown client id.
    """
    chosen = resolve_clients(clients)
    data = load_caniemail()
    usages = features_used(html)
    tallies: dict[tuple[str, str], _Tally] = {}
    unknown: dict[str, list[str]] = {}
    for usage in usages:
        if not usage.feature:
            unknown.setdefault(usage.label, []).append(usage.where)
            continue
        feature = data.features[usage.feature]
        for client in chosen:
            for target in client.targets:
                if not _reaches(usage, target) or _moot(usage, target, data):
                    continue
                found = feature.level(target)
                version, level = found if found else ("", "u")
                if level == "y":
                    continue
                tally = tallies.setdefault((usage.feature, level), _Tally(label=usage.label))
                tally.targets.setdefault(target, version)
                tally.places.append(usage.where)
    choices = list(accepted)
    findings: list[Finding] = []
    for (slug, level), tally in sorted(tallies.items(), key=lambda item: ("nau".index(item[0][1]), item[0][0])):
        feature = data.features[slug]
        severity, check, phrase = _LEVEL_FINDINGS[level]
        who = ", ".join(f"{target_name(target)}{f' ({version})' if version else ''}"
                        for target, version in tally.targets.items())
        message = f"{_feature_label(feature)} is {phrase} {who}"
        reason = _accepted_reason(choices, slug, tally.targets)
        if reason:
            severity, message = "info", f"{message}: accepted, {reason}"
        findings.append(Finding(severity, check, message, where_list(tally.places), feature.url,
                                accepted=bool(reason)))
    for label, places in unknown.items():
        findings.append(Finding(
            "info", "compat-unknown", f"support for the {label} is unknown: caniemail has no data on it",
            where_list(places),
        ))
    return findings


def _feature_label(feature: Feature) -> str:
    title = feature.title
    if feature.slug == "image-base64":
        return f"{title} (a data: URI in <img src>)"
    if feature.category == "css" and "CSS" not in title and not title.startswith(("@", ":")):
        return f"CSS {title}"
    return title


def _reaches(usage: Usage, target: tuple[str, str]) -> bool:
    if usage.audience == "mso":
        return target == _MSO_TARGET
    if usage.audience == "not-mso":
        return target != _MSO_TARGET
    return True


def _moot(usage: Usage, target: tuple[str, str], data: CaniemailData) -> bool:
    """Whether the client ignores what the usage sits in, so the usage itself can't matter there."""
    for slug in usage.conditions:
        found = data.features[slug].level(target) if slug in data.features else None
        if found is not None and found[1] == "n":
            return True
    return False


def _accepted_reason(choices: list[Accepted], slug: str, targets: Iterable[tuple[str, str]]) -> str:
    """The reason of the choice that covers ``slug`` in every one of ``targets``, or ""."""
    known = known_clients()
    for choice in choices:
        if choice.feature != slug:
            continue
        covered = {target for name in choice.clients if name in known for target in known[name].targets}
        if not choice.clients or set(targets) <= covered:
            return choice.reason
    return ""
