"""A small CSS reader for the preflight checks: style sheets, declarations, selectors.

It reads what an email's ``<style>`` blocks and ``style`` attributes hold: style rules,
``@media``/``@supports`` blocks (their rules carry the conditions they sit in), other
at-rules (recorded, not entered), ``!important``, comments. Selectors are parsed into
compound parts so a check can ask what a selector *uses* (combinators, pseudo-classes …)
and whether it *matches* an element of :mod:`newsletter.preflight.htmldom`.

Dynamic pseudo-classes (``:hover``, ``:focus`` …) never match: the checks look at the
message as it first appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from newsletter.preflight.htmldom import Element

__all__ = [
    "AtRule",
    "Compound",
    "Declaration",
    "Selector",
    "StyleRule",
    "Stylesheet",
    "matches",
    "parse_declarations",
    "parse_selector_list",
    "parse_stylesheet",
    "specificity",
]

# At-rules whose block holds style rules; any other block at-rule is recorded, not entered.
_CONDITIONAL_AT_RULES = frozenset({"media", "supports", "document", "-moz-document", "layer", "container"})
_COMMENT = re.compile(r"/\*.*?(\*/|\Z)", re.S)
_IMPORTANT = re.compile(r"!\s*important\s*$", re.I)
_AT_NAME = re.compile(r"@(-?[a-zA-Z][\w-]*)")


@dataclass(frozen=True)
class Declaration:
    """``name: value [!important]``; the name in lower case, the value as written (trimmed)."""

    name: str
    value: str
    important: bool = False


@dataclass(frozen=True)
class Compound:
    """A compound selector: ``div.card#top[lang]:first-child::before``."""

    tag: str | None = None  # None when absent; "*" for the universal selector
    ids: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str, str], ...] = ()  # (name, operator or "", value)
    pseudo_classes: tuple[tuple[str, str], ...] = ()  # (name, argument or "")
    pseudo_elements: tuple[str, ...] = ()

    @property
    def simple_count(self) -> int:
        """How many simple selectors are chained in it (``a.b`` is 2)."""
        return (
            (self.tag is not None) + len(self.ids) + len(self.classes) + len(self.attributes)
            + len(self.pseudo_classes) + len(self.pseudo_elements)
        )


@dataclass(frozen=True)
class Selector:
    """A complex selector: compounds joined by combinators (" ", ">", "+", "~"), left to right."""

    text: str
    parts: tuple[Compound, ...]
    combinators: tuple[str, ...]  # len(parts) - 1 of them


@dataclass(frozen=True)
class StyleRule:
    """``selectors { declarations }``, with the at-rule conditions around it (outermost first)."""

    selector_text: str
    selectors: tuple[Selector, ...]
    declarations: tuple[Declaration, ...]
    conditions: tuple[str, ...] = ()  # e.g. ("@media (prefers-color-scheme: dark)",)
    nested: bool = False  # the block held nested rules (CSS nesting), which are not read


@dataclass(frozen=True)
class AtRule:
    """Any at-rule: its name (lower case, no ``@``), prelude, and the conditions around it."""

    name: str
    prelude: str
    conditions: tuple[str, ...] = ()


@dataclass
class Stylesheet:
    """Everything read from one style sheet, in source order."""

    rules: list[StyleRule] = field(default_factory=list)
    at_rules: list[AtRule] = field(default_factory=list)
    has_comments: bool = False


def parse_stylesheet(text: str, *, conditions: tuple[str, ...] = ()) -> Stylesheet:
    """Read a style sheet; ``conditions`` are put around every rule (a ``<style media>``, say)."""
    sheet = Stylesheet(has_comments=bool(_COMMENT.search(text)))
    _read_block(_COMMENT.sub(" ", text), conditions, sheet)
    return sheet


def parse_declarations(text: str) -> list[Declaration]:
    """The declarations of a ``style`` attribute or a rule's block (empty and broken ones dropped)."""
    found: list[Declaration] = []
    for part in _split_top(_COMMENT.sub(" ", text), ";"):
        name, colon, value = part.partition(":")
        name = name.strip().lower()
        if not colon or not name or not re.fullmatch(r"-{0,2}[a-z_][\w-]*", name):
            continue
        value = value.strip()
        important = bool(_IMPORTANT.search(value))
        if important:
            value = _IMPORTANT.sub("", value).strip()
        if value:
            found.append(Declaration(name, value, important))
    return found


def _read_block(text: str, conditions: tuple[str, ...], sheet: Stylesheet) -> None:
    position = 0
    while position < len(text):
        stop = _find_top(text, "{;}", position)
        if stop < 0:
            break
        prelude = " ".join(text[position:stop].split())
        if text[stop] == "}":  # a stray closing brace: skip it
            position = stop + 1
            continue
        if text[stop] == ";":
            if prelude.startswith("@"):
                sheet.at_rules.append(_at_rule(prelude, conditions))
            position = stop + 1
            continue
        end = _matching_brace(text, stop)
        inner = text[stop + 1:end]
        position = end + 1
        if prelude.startswith("@"):
            rule = _at_rule(prelude, conditions)
            sheet.at_rules.append(rule)
            if rule.name in _CONDITIONAL_AT_RULES:
                _read_block(inner, (*conditions, prelude), sheet)
        elif prelude:
            nested = _find_top(inner, "{", 0) >= 0
            body = _strip_nested(inner) if nested else inner
            sheet.rules.append(StyleRule(
                prelude, tuple(parse_selector_list(prelude)), tuple(parse_declarations(body)), conditions, nested,
            ))


def _at_rule(prelude: str, conditions: tuple[str, ...]) -> AtRule:
    match = _AT_NAME.match(prelude)
    name = match.group(1).lower() if match else ""
    return AtRule(name, prelude[len(name) + 1:].strip(), conditions)


def _strip_nested(block: str) -> str:
    """The declarations of a block with its nested rules taken out."""
    kept: list[str] = []
    position = 0
    while True:
        brace = _find_top(block, "{", position)
        if brace < 0:
            kept.append(block[position:])
            return "".join(kept)
        start = max(block.rfind(";", position, brace), block.rfind("}", position, brace)) + 1
        kept.append(block[position:max(start, position)] + ";")
        position = _matching_brace(block, brace) + 1


def _find_top(text: str, chars: str, start: int) -> int:
    """The index of the first of ``chars`` outside strings and brackets, or -1."""
    depth = 0
    quote = ""
    index = start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "([" and char not in chars:
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif depth == 0 and char in chars:
            return index
        index += 1
    return -1


def _matching_brace(text: str, opening: int) -> int:
    depth = 0
    index = opening
    while index < len(text):
        found = _find_top(text, "{}", index)
        if found < 0:
            return len(text)
        depth += 1 if text[found] == "{" else -1
        if depth == 0:
            return found
        index = found + 1
    return len(text)


def _split_top(text: str, separator: str) -> Iterator[str]:
    position = 0
    while True:
        found = _find_top(text, separator, position)
        if found < 0:
            yield text[position:]
            return
        yield text[position:found]
        position = found + 1


# --- selectors -------------------------------------------------------------------

_IDENT = r"-?(?:[_a-zA-Z]|[^\x00-\x7f]|\\.)(?:[\w-]|[^\x00-\x7f]|\\.)*"
_TOKEN = re.compile(
    rf"""(?P<space>\s*(?P<comb>[>+~])\s*|\s+)
      | (?P<tag>{_IDENT}|\*)(?:\|(?P<tag2>{_IDENT}|\*))?
      | \#(?P<id>(?:[\w-]|[^\x00-\x7f]|\\.)+)
      | \.(?P<cls>{_IDENT})
      | \[\s*(?P<attr>{_IDENT})\s*(?:(?P<op>[~|^$*]?=)\s*(?P<val>"[^"]*"|'[^']*'|[^\s\]]+)\s*(?:[is]\s*)?)?\]
      | (?P<pe>::)(?P<pename>{_IDENT})
      | :(?P<pc>{_IDENT})(?:\((?P<arg>(?:[^()]|\([^()]*\))*)\))?
    """,
    re.X,
)
# Pseudo-classes written with one colon that are really pseudo-elements (CSS 2 spelling).
_LEGACY_PSEUDO_ELEMENTS = frozenset({"before", "after", "first-line", "first-letter"})


def parse_selector_list(text: str) -> list[Selector]:
    """``a, b > c`` as selectors; a selector that can't be read is left out."""
    selectors = []
    for part in _split_top(text, ","):
        selector = _parse_selector(part.strip())
        if selector is not None:
            selectors.append(selector)
    return selectors


@dataclass
class _CompoundBuilder:
    tag: str | None = None
    ids: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str, str]] = field(default_factory=list)
    pseudo_classes: list[tuple[str, str]] = field(default_factory=list)
    pseudo_elements: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.tag is None and not (self.ids or self.classes or self.attributes or self.pseudo_classes
                                         or self.pseudo_elements)

    def build(self) -> Compound:
        return Compound(self.tag, tuple(self.ids), tuple(self.classes), tuple(self.attributes),
                        tuple(self.pseudo_classes), tuple(self.pseudo_elements))


def _parse_selector(text: str) -> Selector | None:
    if not text:
        return None
    parts: list[Compound] = []
    combinators: list[str] = []
    current = _CompoundBuilder()
    pending = ""  # the combinator seen since the last compound
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            return None
        position = match.end()
        if match.group("space") is not None:
            if current.empty:
                if match.group("comb") and not parts:
                    return None  # a leading combinator: not a selector we read
                pending = match.group("comb") or pending
                continue
            parts.append(current.build())
            current = _CompoundBuilder()
            pending = match.group("comb") or " "
            continue
        if pending and parts and len(combinators) < len(parts):
            combinators.append(pending)
        pending = ""
        if match.group("tag"):
            current.tag = (match.group("tag2") or match.group("tag")).lower()
        elif match.group("id"):
            current.ids.append(match.group("id"))
        elif match.group("cls"):
            current.classes.append(match.group("cls"))
        elif match.group("attr"):
            value = match.group("val") or ""
            if value[:1] in "\"'":
                value = value[1:-1]
            current.attributes.append((match.group("attr").lower(), match.group("op") or "", value))
        elif match.group("pe"):
            current.pseudo_elements.append(match.group("pename").lower())
        elif match.group("pc"):
            name = match.group("pc").lower()
            if name in _LEGACY_PSEUDO_ELEMENTS:
                current.pseudo_elements.append(name)
            else:
                current.pseudo_classes.append((name, (match.group("arg") or "").strip()))
    if not current.empty:
        parts.append(current.build())
    if not parts or len(combinators) != len(parts) - 1:
        return None
    return Selector(" ".join(text.split()), tuple(parts), tuple(combinators))


def specificity(selector: Selector) -> tuple[int, int, int]:
    """(ids, classes + attributes + pseudo-classes, types + pseudo-elements), as CSS counts them."""
    ids = classes = types = 0
    for part in selector.parts:
        a, b, c = _compound_specificity(part)
        ids, classes, types = ids + a, classes + b, types + c
    return ids, classes, types


def _compound_specificity(part: Compound) -> tuple[int, int, int]:
    ids = len(part.ids)
    classes = len(part.classes) + len(part.attributes)
    types = len(part.pseudo_elements) + (part.tag not in (None, "*"))
    for name, argument in part.pseudo_classes:
        if name in ("not", "is", "has"):
            inner = [specificity(selector) for selector in parse_selector_list(argument)]
            if inner:
                a, b, c = max(inner)
                ids, classes, types = ids + a, classes + b, types + c
        elif name != "where":
            classes += 1
    return ids, classes, types


def matches(selector: Selector, element: Element) -> bool:
    """Whether ``selector`` matches ``element`` (a selector with a pseudo-element never does)."""
    if any(part.pseudo_elements for part in selector.parts):
        return False
    return _match_from(selector, len(selector.parts) - 1, element)


def _match_from(selector: Selector, index: int, element: Element) -> bool:
    if not _match_compound(selector.parts[index], element):
        return False
    if index == 0:
        return True
    combinator = selector.combinators[index - 1]
    if combinator == ">":
        parent = _parent(element)
        return parent is not None and _match_from(selector, index - 1, parent)
    if combinator == " ":
        return any(_match_from(selector, index - 1, ancestor) for ancestor in _element_ancestors(element))
    siblings = _previous_siblings(element)
    if combinator == "+":
        return bool(siblings) and _match_from(selector, index - 1, siblings[0])
    return any(_match_from(selector, index - 1, sibling) for sibling in siblings)


def _parent(element: Element) -> Element | None:
    parent = element.parent
    return parent if parent is not None and parent.tag != "#document" else None


def _element_ancestors(element: Element) -> Iterator[Element]:
    return (ancestor for ancestor in element.ancestors() if ancestor.tag != "#document")


def _previous_siblings(element: Element) -> list[Element]:
    """The element siblings before ``element``, nearest first."""
    if element.parent is None:
        return []
    siblings = element.parent.elements
    return list(reversed(siblings[:next(i for i, s in enumerate(siblings) if s is element)]))


def _match_compound(part: Compound, element: Element) -> bool:
    if part.tag not in (None, "*") and part.tag != element.tag:
        return False
    if any(element.get("id") != wanted for wanted in part.ids):
        return False
    classes = element.classes
    if any(wanted not in classes for wanted in part.classes):
        return False
    if not all(_match_attribute(element, *attribute) for attribute in part.attributes):
        return False
    return all(_match_pseudo(element, name, argument) for name, argument in part.pseudo_classes)


def _match_attribute(element: Element, name: str, operator: str, wanted: str) -> bool:
    value = element.get(name)
    if value is None:
        return False
    if operator == "":
        return True
    if operator == "=":
        return value == wanted
    if operator == "~=":
        return wanted in value.split()
    if operator == "|=":
        return value == wanted or value.startswith(wanted + "-")
    if operator == "^=":
        return bool(wanted) and value.startswith(wanted)
    if operator == "$=":
        return bool(wanted) and value.endswith(wanted)
    return bool(wanted) and wanted in value  # *=


def _match_pseudo(element: Element, name: str, argument: str) -> bool:
    parent = element.parent
    siblings = parent.elements if parent is not None else [element]
    same_type = [sibling for sibling in siblings if sibling.tag == element.tag]
    if name == "root":
        return _parent(element) is None
    if name in ("link", "any-link"):
        return element.tag in ("a", "area") and element.get("href") is not None
    if name in ("first-child", "last-child", "only-child", "first-of-type", "last-of-type", "only-of-type"):
        pool = same_type if name.endswith("of-type") else siblings
        first, last = pool[0] is element, pool[-1] is element
        return {"first": first, "last": last, "only": first and last}[name.split("-")[0]]
    if name in ("nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"):
        pool = same_type if name.endswith("of-type") else siblings
        if "last" in name:
            pool = list(reversed(pool))
        position = next(i for i, sibling in enumerate(pool) if sibling is element) + 1
        return _nth(argument, position)
    if name == "not":
        return not any(matches(selector, element) for selector in parse_selector_list(argument))
    if name in ("is", "where", "matches", "-webkit-any"):
        return any(matches(selector, element) for selector in parse_selector_list(argument))
    if name == "lang":
        wanted = argument.strip("\"' ").lower()
        for node in (element, *element.ancestors()):
            lang = node.get("lang")
            if lang is not None:
                return lang.lower() == wanted or lang.lower().startswith(wanted + "-")
        return False
    if name == "empty":
        return not element.children or all(
            not isinstance(child, Element) and not child.text for child in element.children
        )
    # :hover, :focus, :active, :visited, :checked, :target …: states a static look never has
    return False


def _nth(expression: str, position: int) -> bool:
    text = expression.replace(" ", "").lower()
    if text == "odd":
        text = "2n+1"
    elif text == "even":
        text = "2n"
    match = re.fullmatch(r"([+-]?\d*)n([+-]\d+)?|([+-]?\d+)", text)
    if not match:
        return False
    if match.group(3) is not None:
        return position == int(match.group(3))
    step_text = match.group(1)
    step = -1 if step_text == "-" else int(step_text) if step_text not in ("", "+") else 1
    offset = int(match.group(2) or 0)
    if step == 0:
        return position == offset
    return (position - offset) % step == 0 and (position - offset) // step >= 0
