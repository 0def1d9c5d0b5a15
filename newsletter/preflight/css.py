"""An email's CSS, read by tinycss2; its selectors parsed and matched by cssselect2 (both Kozea).

tinycss2 reads the ``<style>`` blocks and ``style`` attributes: style rules, the rules
inside ``@media``/``@supports`` blocks (they carry the conditions they sit in), other
at-rules (recorded, not entered), ``!important``, comments, CSS nesting. cssselect2 parses
each selector (escapes, ``:is()``/``:not()``/``:has()``, ``[x="a" i]`` …) into what a
check can ask it *uses* (combinators, pseudo-classes …), and compiles it to *match* lxml
elements; its specificity is the selector's.

Dynamic pseudo-classes (``:hover``, ``:focus`` …) never match: the checks look at the
message as it first appears. A selector cssselect2 parses but can't match (an unknown
pseudo-class) is kept for what it uses and never matches; one it can't parse is left out,
and the others of its list stay.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cssselect2
import tinycss2
from cssselect2 import parser as selectors

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
    "serialize",
    "wrap",
]

# At-rules whose block holds style rules; any other block at-rule is recorded, not entered.
_CONDITIONAL_AT_RULES = frozenset({"media", "supports", "document", "-moz-document", "layer", "container"})
# A default namespace no element has: parsed with it, "*" leaves a trace (cssselect2 drops a bare "*").
_UNIVERSAL = "urn:newsletter:universal"


@dataclass(frozen=True)
class Declaration:
    """``name: value [!important]``; the name in lower case, the value as written (trimmed, no comments)."""

    name: str
    value: str
    important: bool = False


@dataclass(frozen=True)
class Compound:
    """A compound selector, as what it uses: ``div.card#top[lang]:first-child::before``."""

    tag: str | None = None  # None when absent; "*" for the universal selector
    ids: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()  # the attribute names
    pseudo_classes: tuple[str, ...] = ()  # the names, in lower case
    pseudo_elements: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Selector:
    """A complex selector: compounds joined by combinators (" ", ">", "+", "~"), left to right."""

    text: str
    parts: tuple[Compound, ...]
    combinators: tuple[str, ...]  # len(parts) - 1 of them
    specificity: tuple[int, int, int]  # (ids, classes + attributes + pseudo-classes, types + pseudo-elements)
    compiled: Any  # cssselect2's CompiledSelector; None when it never matches an element


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


@dataclass(frozen=True)
class Stylesheet:
    """Everything read from one style sheet, in source order."""

    rules: tuple[StyleRule, ...] = ()
    at_rules: tuple[AtRule, ...] = ()
    has_comments: bool = False


def serialize(tokens: Iterable[Any]) -> str:
    """tinycss2 tokens back to text, white space collapsed: how a message shows a prelude or a value."""
    return " ".join(_written(tokens).split())


def _written(tokens: Iterable[Any]) -> str:
    """The tokens as written (tinycss2 keeps each one's representation; strings get double quotes).

    ``tinycss2.serialize`` would put ``/**/`` between tokens that could run together when
    read again (``2n/**/+1``); a message wants the text as its author wrote it.
    """
    parts: list[str] = []
    for token in tokens:
        if token.type == "function":
            parts.append(f"{tinycss2.serializer.serialize_identifier(token.name)}({_written(token.arguments)})")
        elif token.type in ("() block", "[] block", "{} block"):
            parts.append(f"{token.type[0]}{_written(token.content)}{token.type[1]}")
        else:
            parts.append(tinycss2.serialize([token]))
    return "".join(parts)


@functools.lru_cache(maxsize=256)
def parse_stylesheet(text: str, *, conditions: tuple[str, ...] = ()) -> Stylesheet:
    """Read a style sheet; ``conditions`` are put around every rule (a ``<style media>``, say).

    Cached: the checks read the same ``<style>`` blocks once per client and colour scheme.
    """
    rules: list[StyleRule] = []
    at_rules: list[AtRule] = []
    _read_rules(tinycss2.parse_stylesheet(text, skip_comments=True, skip_whitespace=True), conditions,
                rules, at_rules)
    return Stylesheet(tuple(rules), tuple(at_rules), "/*" in text and _has_comment(text))


@functools.lru_cache(maxsize=4096)
def parse_declarations(text: str) -> tuple[Declaration, ...]:
    """The declarations of a ``style`` attribute or a rule's block (empty and broken ones dropped)."""
    return tuple(_declarations(tinycss2.parse_blocks_contents(text, skip_comments=True, skip_whitespace=True)))


def parse_selector_list(text: str) -> list[Selector]:
    """``a, b > c`` as selectors; a selector that can't be read is left out."""
    return _selector_list(tinycss2.parse_component_value_list(text, skip_comments=True))


def wrap(root: Element) -> dict[Element, Any]:
    """cssselect2's view of every element under ``root`` (its ElementWrapper), for matching."""
    return {wrapper.etree_element: wrapper
            for wrapper in cssselect2.ElementWrapper.from_html_root(root).iter_subtree()}


def matches(selector: Selector, element: Element) -> bool:
    """Whether ``selector`` matches ``element`` (a selector with a pseudo-element never does)."""
    if selector.compiled is None:
        return False
    root = element
    while (parent := root.getparent()) is not None:
        root = parent
    return bool(selector.compiled.test(wrap(root)[element]))


def _has_comment(text: str) -> bool:
    """Whether the tokenizer finds a comment (a ``/*`` in a string or a URL is none)."""
    pending = list(tinycss2.parse_component_value_list(text, skip_comments=False))
    while pending:
        token = pending.pop()
        if token.type == "comment":
            return True
        pending.extend(getattr(token, "content", None) or getattr(token, "arguments", None) or ())
    return False


def _read_rules(nodes: Iterable[Any], conditions: tuple[str, ...], rules: list[StyleRule],
                at_rules: list[AtRule]) -> None:
    for node in nodes:
        if node.type == "at-rule":
            name = str(node.lower_at_keyword)
            at_rules.append(AtRule(name, serialize(node.prelude), conditions))
            if node.content is not None and name in _CONDITIONAL_AT_RULES:
                inner = tinycss2.parse_rule_list(node.content, skip_comments=True, skip_whitespace=True)
                condition = " ".join(f"@{node.at_keyword}{_written(node.prelude)}".split())
                _read_rules(inner, (*conditions, condition), rules, at_rules)
        elif node.type == "qualified-rule":
            content = tinycss2.parse_blocks_contents(node.content, skip_comments=True, skip_whitespace=True)
            nested = any(item.type in ("qualified-rule", "at-rule") for item in content)
            rules.append(StyleRule(serialize(node.prelude), tuple(_selector_list(node.prelude)),
                                   tuple(_declarations(content)), conditions, nested))
        # a parse error: the rule is dropped, as browsers do


def _declarations(items: Iterable[Any]) -> Iterator[Declaration]:
    for item in items:
        if item.type == "declaration":
            value = _written(item.value).strip()
            if value:
                yield Declaration(str(item.lower_name), value, bool(item.important))


# --- selectors -------------------------------------------------------------------


def _selector_list(tokens: list[Any]) -> list[Selector]:
    groups: list[list[Any]] = [[]]
    for token in tokens:
        if token.type == "literal" and token.value == ",":
            groups.append([])
        else:
            groups[-1].append(token)
    found = (_selector(group) for group in groups)
    return [selector for selector in found if selector is not None]


def _selector(tokens: list[Any]) -> Selector | None:
    text = serialize(tokens)
    while tokens and tokens[-1].type == "whitespace":
        tokens = tokens[:-1]
    pseudo_element: str | None = None
    if len(tokens) > 3 and tokens[-3] == ":" and tokens[-2] == ":" and tokens[-1].type == "ident":
        # A pseudo-element ends a selector; cssselect2 refuses those it doesn't know (::-webkit-scrollbar),
        # which a check still wants to see used. No pseudo-element matches an element.
        pseudo_element, tokens = str(tokens[-1].lower_value), tokens[:-3]
    try:
        [shape] = selectors.parse(tokens, {None: _UNIVERSAL})
        [parsed] = selectors.parse(tokens)
    except (selectors.SelectorError, ValueError):
        return None
    pseudo_element = pseudo_element or shape.pseudo_element
    parts: list[Compound] = []
    combinators: list[str] = []
    node = shape.parsed_tree
    while isinstance(node, selectors.CombinedSelector):
        parts.append(_compound(node.right))
        combinators.append(node.combinator)
        node = node.left
    parts.append(_compound(node))
    parts.reverse()
    combinators.reverse()
    specificity = tuple(parsed.specificity)
    compiled = None
    if pseudo_element is not None:
        last = parts[-1]
        parts[-1] = Compound(last.tag, last.ids, last.classes, last.attributes, last.pseudo_classes, (pseudo_element,))
        if parsed.pseudo_element is None:
            specificity = (specificity[0], specificity[1], specificity[2] + 1)
    else:
        try:
            compiled = cssselect2.compiler.CompiledSelector(parsed)
        except (selectors.SelectorError, ValueError, NotImplementedError):
            pass  # parsed, but cssselect2 can't tell what it matches (an unknown pseudo-class …)
        if compiled is not None and compiled.never_matches:
            compiled = None
    return Selector(text, tuple(parts), tuple(combinators), (specificity[0], specificity[1], specificity[2]),
                    compiled)


def _compound(node: Any) -> Compound:
    tag: str | None = None
    ids: list[str] = []
    classes: list[str] = []
    attributes: list[str] = []
    pseudo: list[str] = []
    for simple in node.simple_selectors:
        if isinstance(simple, selectors.LocalNameSelector):
            tag = str(simple.lower_local_name)
        elif isinstance(simple, selectors.NamespaceSelector):
            if simple.namespace == _UNIVERSAL and tag is None:
                tag = "*"
        elif isinstance(simple, selectors.IDSelector):
            ids.append(str(simple.ident))
        elif isinstance(simple, selectors.ClassSelector):
            classes.append(str(simple.class_name))
        elif isinstance(simple, selectors.AttributeSelector):
            attributes.append(str(simple.lower_name))
        else:
            pseudo.append(_pseudo_class_name(simple))
    return Compound(tag, tuple(ids), tuple(classes), tuple(attributes), tuple(pseudo))


def _pseudo_class_name(simple: Any) -> str:
    logical = {selectors.NegationSelector: "not", selectors.MatchesAnySelector: "is",
               selectors.SpecificityAdjustmentSelector: "where", selectors.RelationalSelector: "has"}
    return logical.get(type(simple)) or str(simple.name)
