"""The CSS cascade, statically: each element's colour, background, font size and visibility.

For a colour scheme (light or dark) and a window width, the rules of the ``<style>``
blocks whose ``@media`` conditions hold there, the ``style`` attributes and the
``bgcolor`` attribute are cascaded as a browser does (importance, inline before sheet,
specificity, order), with the defaults a browser adds (heading sizes, link colours, the
dark canvas of a document that declares ``color-scheme: dark``). Only the properties the
accessibility checks read are computed.

The rules come from :mod:`~newsletter.preflight.css` (tinycss2); which of them apply to an
element, and how specific they are, cssselect2's ``Matcher`` says; values (colours,
lengths) are read with tinycss2. The media queries and the cascade itself are ours.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import cssselect2
import tinycss2

from newsletter.preflight.colour import RGBA, blend, parse_colour
from newsletter.preflight.css import Declaration, StyleRule, parse_declarations, parse_stylesheet, serialize, wrap
from newsletter.preflight.htmldom import Document, Element, own_text, text_content

__all__ = [
    "ComputedStyle",
    "Scheme",
    "StyledDocument",
    "media_matches",
]

Scheme = Literal["light", "dark"]

# What Chromium paints when a page sets no colour; a document that opts into dark
# (color-scheme: light dark) gets the dark canvas in the dark scheme.
_CANVAS = {"light": RGBA(255, 255, 255), "dark": RGBA(18, 18, 18)}
_CANVAS_TEXT = {"light": RGBA(0, 0, 0), "dark": RGBA(255, 255, 255)}
_LINK_TEXT = {"light": RGBA(0, 0, 238), "dark": RGBA(158, 158, 255)}
_ROOT_FONT_SIZE = 16.0
_UA_FONT_SIZE = {"h1": "2em", "h2": "1.5em", "h3": "1.17em", "h4": "1em", "h5": "0.83em", "h6": "0.67em",
                 "small": "smaller", "sub": "smaller", "sup": "smaller"}
_NEVER_RENDERED = frozenset({"head", "title", "style", "script", "meta", "link", "template", "noscript"})
_KEYWORD_SIZES = {"xx-small": 9.0, "x-small": 10.0, "small": 13.0, "medium": 16.0, "large": 18.0,
                  "x-large": 24.0, "xx-large": 32.0, "xxx-large": 48.0}
_FONT_SIZE_IN_SHORTHAND = re.compile(
    r"(?:^|\s)((?:\d*\.?\d+)(?:px|pt|pc|em|rem|%)|xx-small|x-small|small|medium|large|x-large|xx-large)(?:\s*/|\s|$)",
    re.I,
)
_MEDIA_FEATURE = re.compile(r"\(\s*([a-z-]+)\s*(?::\s*([^)]+?))?\s*\)", re.I)


@dataclass(frozen=True)
class ComputedStyle:
    """The computed values the checks need for one element."""

    colour: RGBA | None  # None when it can't be known statically (var(), currentcolor …)
    background: RGBA  # this element's own background colour (often transparent)
    background_image: bool  # a url() or gradient that text may sit on
    font_size: float  # px
    removed: bool  # display:none, opacity:0, a zero height with overflow hidden … here or above
    visible: bool  # the inherited visibility

    @property
    def hidden(self) -> bool:
        """Whether the element's text can't be seen at all."""
        return self.removed or not self.visible or self.font_size <= 0


def media_matches(query: str, *, scheme: Scheme, width: int) -> bool:
    """Whether a media query list (``@media`` prelude or ``media`` attribute) holds for a screen.

    Knows media types and the width, height, colour-scheme, reduced-motion and hover
    features; a query with any other feature is taken not to hold.
    """
    text = query.strip().lower()
    if text.startswith("@media"):
        text = text[len("@media"):]
    return any(_single_media_query(part.strip(), scheme, width) for part in text.split(",")) if text.strip() else True


def _single_media_query(query: str, scheme: Scheme, width: int) -> bool:
    negate = query.startswith("not ")
    query = query.removeprefix("not ").removeprefix("only ").strip()
    media_type = re.match(r"^([a-z]+)\b", query)
    result = True
    if media_type and media_type.group(1) not in ("and",):
        result = media_type.group(1) in ("all", "screen")
    for name, value in _MEDIA_FEATURE.findall(query):
        result = result and _media_feature(name.lower(), value.strip().lower(), scheme, width)
    return not result if negate else result


def _media_feature(name: str, value: str, scheme: Scheme, width: int) -> bool:
    if name == "prefers-color-scheme":
        return value == scheme
    if name in ("min-width", "max-width", "width", "min-device-width", "max-device-width"):
        pixels = _length_px(value, 16.0)
        if pixels is None:
            return False
        if name.startswith("min"):
            return width >= pixels
        if name.startswith("max"):
            return width <= pixels
        return width == pixels
    if name in ("min-height", "max-height", "height"):
        return name.startswith("min")  # a window is taller than any breakpoint an email uses
    if name == "prefers-reduced-motion":
        return value in ("", "no-preference")
    if name in ("hover", "any-hover"):
        return value in ("", "hover")
    if name == "orientation":
        return value == "landscape"
    return False


class StyledDocument:
    """A parsed document seen in one colour scheme at one window width."""

    def __init__(self, document: Document, *, scheme: Scheme, width: int = 800) -> None:
        self.document = document
        self.scheme: Scheme = scheme
        self.width = width
        self.rules = list(self._active_rules())
        self._matcher = cssselect2.Matcher()
        for index, rule in enumerate(self.rules):
            for selector in rule.selectors:
                if selector.compiled is not None:
                    self._matcher.add_selector(selector.compiled, index)
        self._wrappers = _wrappers(document)
        self.dark_canvas = scheme == "dark" and self._opts_into_dark()
        canvas_scheme: Scheme = "dark" if self.dark_canvas else "light"
        self.canvas = _CANVAS[canvas_scheme]
        self._canvas_text = _CANVAS_TEXT[canvas_scheme]
        self._link_text = _LINK_TEXT[canvas_scheme]
        self._styles: dict[Element, ComputedStyle] = {}

    def style(self, element: Element) -> ComputedStyle:
        """The computed style of ``element`` (its ancestors' computed first, for inheritance)."""
        cached = self._styles.get(element)
        if cached is None:
            parent = element.getparent()
            inherited = self.style(parent) if parent is not None else None
            cached = self._compute(element, inherited)
            self._styles[element] = cached
        return cached

    def backdrop(self, element: Element) -> tuple[RGBA, bool]:
        """The opaque colour behind ``element``'s text, and whether an image may lie under the text."""
        layers: list[RGBA] = []
        image = False
        for node in (element, *element.iterancestors()):
            style = self.style(node)
            image = image or style.background_image
            if not style.background.transparent:
                layers.append(style.background)
                if style.background.opaque:
                    break
        colour = self.canvas
        for layer in reversed(layers):
            colour = layer if layer.opaque else blend(layer, colour)
        return colour, image

    def text_elements(self) -> Iterator[Element]:
        """Every rendered element under ``<body>`` with text of its own (not just white space)."""
        body = self.document.body
        for element in (body if body is not None else self.document.html).iter():
            if isinstance(element.tag, str) and own_text(element).strip() and not self.style(element).hidden:
                yield element

    # --- the cascade ---------------------------------------------------------------

    def _active_rules(self) -> Iterator[StyleRule]:
        for element in self.document.iter():
            if element.tag != "style":
                continue
            media = element.get("media")
            if media and not media_matches(media, scheme=self.scheme, width=self.width):
                continue
            sheet = parse_stylesheet(text_content(element))
            for rule in sheet.rules:
                if all(self._condition_holds(condition) for condition in rule.conditions):
                    yield rule

    def _condition_holds(self, condition: str) -> bool:
        if condition.lower().startswith("@media"):
            return media_matches(condition, scheme=self.scheme, width=self.width)
        return True  # @supports and the like: the clients that read them are modern browsers

    def _opts_into_dark(self) -> bool:
        for element in self.document.iter():
            if element.tag == "meta" and (element.get("name") or "").lower() in ("color-scheme",
                                                                                  "supported-color-schemes"):
                if "dark" in (element.get("content") or "").lower():
                    return True
        root = self.document.html
        for declaration in self._declarations(root):
            if declaration.name == "color-scheme" and "dark" in declaration.value.lower():
                return True
        return False

    def _declarations(self, element: Element) -> list[Declaration]:
        """The declarations that apply to ``element``, the winning one last for each property."""
        ranked: list[tuple[tuple[int, int, tuple[int, int, int], int], Declaration]] = []
        best: dict[int, tuple[int, int, int]] = {}  # rule index -> the specificity of its best matching selector
        wrapper = self._wrappers.get(element)
        for specificity, _, _, index in self._matcher.match(wrapper) if wrapper is not None else ():
            best[index] = max(best.get(index, specificity), specificity)
        order = 0
        for index in sorted(best):
            for declaration in self.rules[index].declarations:
                order += 1
                ranked.append(((int(declaration.important), 0, best[index], order), declaration))
        for declaration in parse_declarations(element.get("style") or ""):
            order += 1
            ranked.append(((int(declaration.important), 1, (0, 0, 0), order), declaration))
        ranked.sort(key=lambda item: item[0])
        return [declaration for _, declaration in ranked]

    def _compute(self, element: Element, inherited: ComputedStyle | None) -> ComputedStyle:
        values: dict[str, str] = {}
        bgcolor = element.get("bgcolor")
        if bgcolor:  # a presentational hint: any CSS overrides it
            values["background-color"] = bgcolor
        if element.tag == "font" and element.get("color"):
            values["color"] = element.get("color") or ""
        if element.tag in _UA_FONT_SIZE:
            values["font-size"] = _UA_FONT_SIZE[element.tag]
        for declaration in self._declarations(element):
            _assign(values, declaration)

        parent_size = inherited.font_size if inherited else _ROOT_FONT_SIZE
        font_size = _font_size(values.get("font-size"), parent_size)
        colour = self._colour(element, values.get("color"), inherited)
        background = RGBA(0, 0, 0, 0.0)
        image = False
        if "background-color" in values:
            background = parse_colour(values["background-color"]) or background
        if "background-image" in values:
            image = values["background-image"].strip().lower() not in ("none", "")
        removed = (inherited.removed if inherited else False) or self._removes(element, values)
        visibility = values.get("visibility", "").strip().lower()
        if visibility in ("hidden", "collapse"):
            visible = False
        elif visibility == "visible":
            visible = True  # visibility, unlike display, can be undone by a child
        else:
            visible = inherited.visible if inherited else True
        return ComputedStyle(colour, background, image, font_size, removed, visible)

    def _colour(self, element: Element, value: str | None, inherited: ComputedStyle | None) -> RGBA | None:
        if value is not None and value.strip().lower() not in ("inherit", "currentcolor", "unset"):
            return parse_colour(value)
        if value is None and element.tag == "a" and element.get("href") is not None:
            return self._link_text
        if inherited is not None:
            return inherited.colour
        return self._canvas_text

    def _removes(self, element: Element, values: dict[str, str]) -> bool:
        if element.tag in _NEVER_RENDERED or element.get("hidden") is not None:
            return True
        return _hidden_by_box(values)


# cssselect2's view of a document's elements, built once for the four views of one document
_WRAPPERS: weakref.WeakKeyDictionary[Document, dict[Element, Any]] = weakref.WeakKeyDictionary()


def _wrappers(document: Document) -> dict[Element, Any]:
    found = _WRAPPERS.get(document)
    if found is None:
        found = _WRAPPERS[document] = wrap(document.root)
    return found


def _assign(values: dict[str, str], declaration: Declaration) -> None:
    name, value = declaration.name, declaration.value
    if name == "background":
        lowered = value.lower()
        values["background-image"] = value if "url(" in lowered or "gradient(" in lowered else "none"
        parts = (serialize([token]) for token in tinycss2.parse_component_value_list(value)
                 if token.type != "whitespace")
        values["background-color"] = next((part for part in parts if parse_colour(part) is not None), "transparent")
    elif name == "font":
        size = _FONT_SIZE_IN_SHORTHAND.search(value)
        if size:
            values["font-size"] = size.group(1)
    else:
        values[name] = value


def _hidden_by_box(values: dict[str, str]) -> bool:
    if values.get("display", "").strip().lower() == "none":
        return True
    opacity = values.get("opacity", "").strip()
    if opacity and _number(opacity.removesuffix("%")) == 0:
        return True
    overflow = values.get("overflow", values.get("overflow-y", "")).strip().lower()
    if overflow in ("hidden", "clip"):
        for name in ("max-height", "height"):
            if name in values and _length_px(values[name], 16.0) == 0:
                return True
    return False


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _quantity(value: str) -> tuple[float, str] | None:
    """A number and its unit ("" for none, "%"), as tinycss2 reads them; None for anything else."""
    token = tinycss2.parse_one_component_value(value, skip_comments=True)
    if token.type == "dimension":
        return float(token.value), str(token.lower_unit)
    if token.type == "percentage":
        return float(token.value), "%"
    if token.type == "number":
        return float(token.value), ""
    return None


def _length_px(value: str, em: float) -> float | None:
    quantity = _quantity(value)
    if quantity is None:
        return None
    number, unit = quantity
    factors = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4,
               "q": 96 / 101.6, "em": em, "%": em / 100, "rem": _ROOT_FONT_SIZE}
    if unit not in factors or (unit == "" and number != 0):
        return None  # a bare number is no length (except 0)
    return number * factors[unit]


def _font_size(value: str | None, parent: float) -> float:
    if value is None:
        return parent
    text = value.strip().lower()
    if text in _KEYWORD_SIZES:
        return _KEYWORD_SIZES[text]
    if text == "smaller":
        return parent / 1.2
    if text == "larger":
        return parent * 1.2
    pixels = _length_px(text, parent)
    return parent if pixels is None else pixels
