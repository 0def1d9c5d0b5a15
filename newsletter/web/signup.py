"""Readers sign up themselves: what ``/subscribe`` and ``/api/subscribe`` accept, and how it is checked.

A signup says an address, optionally a name, the lists asked for (those ``[lists.NAME]``
offers with ``signup = true``) and the page the form was on. It comes as a form (from our
own ``/subscribe`` page or from a plain HTML form pasted into any other site) or as a JSON
object from a script; both are read into a :class:`SignupInput` (what was typed, kept to
show the form again) and checked by :func:`validate` into a :class:`ValidSignup` or the
errors, one per field, worded for the person who typed it.

The form has a honeypot: a field people never see (moved off screen, out of the tab order,
hidden from screen readers, no autofill) that form-filling bots fill in. A signup with it
filled gets the same answer as any other and nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from newsletter.config import ListSettings, Settings
from newsletter.errors import SubscriberError
from newsletter.language import DEFAULT_LANGUAGE, parse_language
from newsletter.render.i18n import Wording
from newsletter.sanitize import one_line
from newsletter.store.consent import SOURCE_LIMIT
from newsletter.store.subscriber_files import MAX_NAME, normalise_address

__all__ = [
    "EMAIL_FIELD",
    "HONEYPOT_FIELD",
    "JSON_KEYS",
    "LIST_FIELD",
    "MAX_EMAIL",
    "NAME_FIELD",
    "SOURCE_FIELD",
    "SignupInput",
    "ValidSignup",
    "form_input",
    "json_input",
    "offered_lists",
    "validate",
]

#: the form's fields (the README's snippet for other sites uses the same names)
EMAIL_FIELD = "email"
NAME_FIELD = "name"
LIST_FIELD = "list"  # once per list ticked; also ``/subscribe?list=NAME``
SOURCE_FIELD = "source"  # the page the form is on (else the Referer says it)
#: the honeypot: a name bots like to fill (people never see the field)
HONEYPOT_FIELD = "website"
#: the keys a JSON signup may have
JSON_KEYS = ("email", "lists", "name", "source")
#: the longest address (RFC 5321's path limit less the angle brackets)
MAX_EMAIL = 254


@dataclass(frozen=True)
class SignupInput:
    """A signup as it came, unchecked: what the form shows again when something is wrong."""

    email: str = ""
    name: str = ""
    #: list names asked for, in order, each once
    lists: tuple[str, ...] = ()
    #: the form's page (a hidden field, else the Referer), untrusted
    source: str = ""
    #: the honeypot was filled in: a bot (the answer is the usual one; nothing is stored)
    honeypot: bool = False


@dataclass(frozen=True)
class ValidSignup:
    """A checked signup: the address normalised, the name on one line, lists that are offered."""

    email: str
    name: str
    lists: tuple[str, ...]
    source: str


def offered_lists(settings: Settings) -> tuple[ListSettings, ...]:
    """The lists ``/subscribe`` offers: every ``[lists.NAME]`` with ``signup = true``, in the file's order."""
    return tuple(item for item in settings.lists if item.signup)


def form_input(fields: Mapping[str, Sequence[str]], *, referer: str = "") -> SignupInput:
    """A signup from a form's fields (each name -> its values, in order), and the request's Referer."""

    def first(name: str) -> str:
        values = fields.get(name) or ()
        return values[0] if values else ""

    return SignupInput(
        email=first(EMAIL_FIELD).strip(),
        name=first(NAME_FIELD),
        lists=_unique(value.strip() for value in fields.get(LIST_FIELD, ()) if value.strip()),
        source=first(SOURCE_FIELD) or referer,
        honeypot=bool(first(HONEYPOT_FIELD).strip()),
    )


def json_input(body: bytes, *, referer: str = "") -> SignupInput | tuple[str | None, str]:
    """A signup from a JSON body ``{"email", "name"?, "lists"?, "source"?}``, or (field, error).

    The body must be UTF-8 (RFC 8259), one object, each key once and known, each value of
    its type; field is None when the error is about the body as a whole.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the body is not UTF-8"
    try:
        data = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except _RepeatedKey as exc:
        return str(exc), f"the key {str(exc)!r} appears twice"
    except ValueError as exc:  # JSONDecodeError, and a number too long to convert
        return None, f"the body is not JSON: {one_line(str(exc), 200)}"
    except RecursionError:  # nested deeper than the parser goes: 16 KiB of "[" is
        return None, "the body is nested too deeply"
    if not isinstance(data, dict):
        return None, 'the body must be a JSON object: {"email": "..."}'
    for key in data:
        if key not in JSON_KEYS:
            return one_line(key, 100), f"unknown key {one_line(key, 100)!r} (known: {', '.join(JSON_KEYS)})"
    for key in ("email", "name", "source"):
        if not isinstance(data.get(key, ""), str):
            return key, f"{key} must be a string"
    lists = data.get("lists", [])
    if not isinstance(lists, list) or not all(isinstance(item, str) for item in lists):
        return "lists", 'lists must be an array of list names: ["news"]'
    return SignupInput(
        email=str(data.get("email", "")).strip(),
        name=str(data.get("name", "")),
        lists=_unique(item.strip() for item in lists if item.strip()),
        source=str(data.get("source", "")) or referer,
    )


def validate(signup: SignupInput, offered: Sequence[ListSettings], *,
             wording: Wording | None = None) -> ValidSignup | dict[str, str]:
    """The checked signup, or an error per field (``email``, ``name``, ``lists``), in the form's order.

    No list named means the only list offered, when there is one; a list that isn't
    offered (unknown, or ``signup = false``) is an error, not silently dropped. The errors
    are worded for the reader, in ``wording``'s language (English without).
    """
    words = wording or Wording(parse_language(DEFAULT_LANGUAGE))
    errors: dict[str, str] = {}
    email = ""
    if not signup.email:
        errors["email"] = words.gettext("Enter your email address.")
    elif len(signup.email) > MAX_EMAIL:
        errors["email"] = words.ngettext("This address is too long: at most %(num)s character.",
                                         "This address is too long: at most %(num)s characters.", MAX_EMAIL)
    else:
        try:
            email = normalise_address(signup.email)
        except SubscriberError as exc:
            reason = str(exc.__cause__ or exc)
            # Translators: the reason comes from the address checker, in English.
            errors["email"] = words.gettext("This is not an email address we can send to. %(reason)s",
                                            reason=one_line(reason, 200))
    name = one_line(signup.name)
    if len(name) > MAX_NAME:
        errors["name"] = words.ngettext("A name is at most %(num)s character.", "A name is at most %(num)s characters.",
                                        MAX_NAME)
    names = {item.name for item in offered}
    lists = signup.lists
    if not lists and len(offered) == 1:
        lists = (offered[0].name,)
    unknown = [item for item in lists if item not in names]
    if unknown:
        # Translators: the list's name comes in quotes: 'news'.
        errors["lists"] = words.gettext("There is no list %(list)s to sign up to here.",
                                        list=repr(one_line(unknown[0], 100)))
    elif not lists:
        errors["lists"] = words.gettext("Choose at least one list.")
    if errors:
        return errors
    return ValidSignup(email, name, lists, one_line(signup.source, SOURCE_LIMIT))


def _unique(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class _RepeatedKey(ValueError):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"email": "a@x", "email": "b@y"} means one or the other depending on the parser: refuse it.
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(one_line(key, 100))
        found[key] = value
    return found
