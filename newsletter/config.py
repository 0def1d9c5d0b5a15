"""Settings: ``newsletter.toml`` for everything that isn't secret, the environment for secrets.

``load_settings`` is the only reader of the environment in the package. Without a
config file the embedded defaults apply: a local capture SMTP server on
127.0.0.1:8025, ``newsletter.db`` and ``issues/`` in the current directory.

The file's schema is declared once, on the dataclasses below: a field that a key of the
file sets says so with ``_key(default, kind)``, where the kind (``_text``, ``_number(...)``,
``_whole(...)``, ...) checks the value and words the one-line error that names the key; a
field that is a whole table says so with ``_table``. Which tables and keys the file may hold
(:func:`known_keys`) follows from those declarations. Only what spans several keys (a
retry_max below retry_initial, a password over plain SMTP) is checked by hand, afterwards.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from email.headerregistry import Address
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from newsletter.errors import ConfigError
from newsletter.language import DEFAULT_LANGUAGE, LanguageError, check_date_format, parse_language
from newsletter.models import is_valid_name
from newsletter.sanitize import direction_control
from newsletter.tokens import MAX_BOUNCE_LOCAL_PART, UNSUBSCRIBE_TAG

__all__ = [
    "BouncesSettings",
    "DEFAULT_CONFIG_NAME",
    "DatabaseSettings",
    "DispatchSettings",
    "DkimSettings",
    "InboundSettings",
    "ListSettings",
    "Secret",
    "SenderSettings",
    "Settings",
    "SignupSettings",
    "SmtpSettings",
    "is_loopback",
    "known_keys",
    "load_settings",
]

DEFAULT_CONFIG_NAME = "newsletter.toml"
_ADDR_SPEC_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
#: control characters other than tab (a TOML escape can put one in a value; no header or page wants it)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: the largest number a setting may be: seconds in a year; more would overflow sleeps and timers
_MAX_NUMBER = 366 * 24 * 3600.0
#: what a site_url may hold: printable ASCII but space, '"', '<', '>' (as a link in a header must)
_URL_CHARACTERS_RE = re.compile(r"[!#-;=?-~]+")


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call this only where it is used, never to print it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


# --- the kinds of value a key may hold -------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Where a value was read: the file, ``[table] key``, and the folder its relative paths start from."""

    path: Path
    table: str
    key: str
    base: Path

    def error(self, rest: str) -> ConfigError:
        """The one line that names the key: ``<file>: [table] key<rest>``."""
        return ConfigError(f"{self.path}: [{self.table}] {self.key}{rest}")


#: a kind of value: the setting a value of the file makes, or a ConfigError naming the key
_Kind = Callable[[object, _Where], Any]


def _text(value: object, where: _Where) -> str:
    """One line of text, without control characters or invisible direction overrides."""
    if not isinstance(value, str):
        raise where.error(" must be a string")
    if "\n" in value or "\r" in value:
        raise where.error(" must be one line")
    if _CONTROL.search(value):
        raise where.error(" contains a control character; remove it")
    found = direction_control(value)
    if found is not None:
        raise where.error(f" contains the direction control {found}, which makes text read in another order than"
                          " it is written; remove it")
    return value


def _choice(*choices: str) -> _Kind:
    """One of a few words."""
    def check(value: object, where: _Where) -> str:
        if _text(value, where) not in choices:
            raise where.error(f" must be one of {', '.join(choices)}")
        return str(value)
    return check


def _whole(low: int, high: int) -> _Kind:
    """A whole number from ``low`` to ``high``."""
    def check(value: object, where: _Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise where.error(f" must be a whole number from {low} to {high}")
        return value
    return check


def _number(*, positive: bool = False, zero: str = "") -> _Kind:
    """A finite number up to a year's seconds: more than 0 when ``positive``, else 0 or more (``zero``: what 0 means).

    TOML spells nan and inf; a nan passed every comparison (the check let it through) and
    a timeout of 0 or inf either defers every message or never gives up.
    """
    def check(value: object, where: _Where) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f" must be a number, not {type(value).__name__} {value!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            allowed = "more than 0" if positive else f"0 ({zero}) or more"
            raise where.error(f" = {value!r}: it must be a finite number {allowed}")
        if value > _MAX_NUMBER:
            raise where.error(f" = {value!r}: it must be at most {_MAX_NUMBER:.0f}")
        return float(value)
    return check


def _mailbox(part: Literal["name", "address", "whole"]) -> _Kind:
    """One address, with or without a display name; the setting is its ``part`` ("" is no address for ``whole``)."""
    def check(value: object, where: _Where) -> str:
        text = _text(value, where)
        if part == "whole" and not text:
            return text
        parsed = _split_mailbox(text)
        if isinstance(parsed, str):
            raise where.error(parsed)
        return {"name": parsed[0], "address": parsed[1], "whole": text}[part]
    return check


@functools.lru_cache(maxsize=8)  # [sender] from is read twice, for its name and for its address
def _split_mailbox(text: str) -> tuple[str, str] | str:
    """The display name and address of the one address in ``text``, or what is wrong with it."""
    # parseaddr keeps the first of several addresses and drops the rest without a word.
    if len(getaddresses([text])) > 1:
        return (f" '{text}' holds more than one address; give exactly one"
                " (a name with a comma goes in quotes: '\"Doe, J.\" <j@example.com>')")
    name, address = parseaddr(text)  # strict= only exists from 3.11.10; the checks below are stricter
    try:
        Address(display_name=name, addr_spec=address)
    except (ValueError, IndexError):
        return f" '{text}' is not an address"
    if not _ADDR_SPEC_RE.match(address):
        return f" '{text}' is not an address (e.g. 'The Briefing <b@example.com>')"
    return name, address


def _plain_address(value: object, where: _Where) -> str:
    """An ``addr-spec`` without a display name, or nothing."""
    text = _text(value, where)
    if text and not _ADDR_SPEC_RE.match(text):
        raise where.error(f" '{text}' must be a plain address like editors@example.com")
    return text


def _bounce_address(value: object, where: _Where) -> str:
    """The bounce mailbox: a plain address whose local part has room for a return path's ``+<id>``."""
    text = _plain_address(value, where)
    local = text.rpartition("@")[0]
    if "+" in local:
        raise where.error(f" '{text}' holds '+'; give the bare mailbox (each message's return path adds"
                          " '+<id>' to it)")
    if len(local) > MAX_BOUNCE_LOCAL_PART:
        raise where.error(f" '{text}': the part before '@' has {len(local)} characters, at most"
                          f" {MAX_BOUNCE_LOCAL_PART} fit (a return path adds up to 42, and SMTP allows 64)")
    return text


def _site_url(value: object, where: _Where) -> str:
    """The base of every link in every email: an absolute http(s) URL that can stand in a header as it is."""
    text = _text(value, where)
    if not _URL_CHARACTERS_RE.fullmatch(text):
        bad = next((char for char in text if not _URL_CHARACTERS_RE.fullmatch(char)), "")
        what = "a space" if bad == " " else f"the character {bad!r}" if bad else "nothing"
        raise where.error(f" '{text}' holds {what}; a URL in an email header can't"
                          " (percent-encode it, and use the xn-- form of a non-ASCII host name)")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise where.error(f" '{text}' must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise where.error(" holds a user name or password (before '@'), and it would be copied into every email;"
                          " remove it")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise where.error(f" '{text}' has a query or fragment; links are built by adding paths to it, so give the"
                          " site's base URL only")
    return text.rstrip("/")


def _language(value: object, where: _Where) -> str:
    """A BCP 47 language tag Babel knows (``de``, ``pt-BR``), in its conventional case."""
    try:
        return parse_language(_text(value, where)).tag
    except LanguageError as exc:
        raise where.error(f": {exc.message} ({exc.hint})" if exc.hint else f": {exc.message}") from exc


def _date_format(value: object, where: _Where) -> str:
    """``full``, ``long``, ``medium``, ``short`` or a CLDR date pattern."""
    try:
        return check_date_format(_text(value, where))
    except LanguageError as exc:
        raise where.error(f": {exc.message} ({exc.hint})" if exc.hint else f": {exc.message}") from exc


def _path(value: object, where: _Where) -> Path:
    """A file or folder, relative to the config file's folder (as a default path is)."""
    return where.base / _text(value, where)


def _path_or_none(value: object, where: _Where) -> Path | None:
    """A file or folder as :func:`_path`; "" is none."""
    return _path(value, where) if _text(value, where) else None


@dataclass(frozen=True)
class _Key:
    """A field's key in newsletter.toml: its kind, and its name and table when not the field's own."""

    kind: _Kind
    name: str
    table: str


_KEY = "newsletter.toml"  # the dataclass field metadata that holds a _Key, or a table's settings class


def _key(default: Any, kind: _Kind, *, name: str = "", table: str = "", repr: bool = True) -> Any:
    """A field that ``[table] name`` of newsletter.toml sets (the field's own name and table unless given)."""
    return field(default=default, repr=repr, metadata={_KEY: _Key(kind, name, table)})


def _table(settings: type[Any]) -> Any:
    """A field that is a whole table of newsletter.toml, named as the field; ``settings`` declares its keys."""
    return field(default_factory=settings, metadata={_KEY: settings})


# --- the settings, and the file's schema -----------------------------------------------------


@dataclass(frozen=True)
class SenderSettings:
    """Who the issue comes from, and where its links point."""

    #: ``[sender] from`` holds both: "The Briefing <briefing@news.example.com>"
    from_name: str = _key("The Briefing", _mailbox("name"), name="from")
    from_email: str = _key("briefing@news.example.com", _mailbox("address"), name="from")
    reply_to: str = _key("", _mailbox("whole"))
    postal_address: str = _key("1 Example Street, Springfield", _text)
    site_url: str = _key("https://news.example.com", _site_url)
    #: the address of the ``mailto:`` in List-Unsubscribe; default: the bounce mailbox's
    #: ``+unsubscribe`` address when bounce_address is set, else reply_to, else from
    unsubscribe_mailto: str = _key("", _plain_address)
    #: the mailbox that ``newsletter inbound`` reads: each message's envelope sender (MAIL FROM)
    #: is ``<local>+<signed id>@<domain>`` there (VERP); "" keeps the From address as MAIL FROM
    bounce_address: str = _key("", _bounce_address)
    #: the language of issues that don't name one (front matter ``language:``), and of the web pages
    language: str = _key(DEFAULT_LANGUAGE, _language)
    #: how an issue's date is written: a CLDR length (``full``: "Friday, July 7, 2017") or pattern
    date_format: str = _key("full", _date_format)

    @property
    def unsubscribe_address(self) -> str:
        """Where List-Unsubscribe's ``mailto:`` points.

        ``unsubscribe_mailto`` when given; else the bounce mailbox's ``+unsubscribe`` address
        (:attr:`newsletter.tokens.ReturnPaths.unsubscribe_address`), where ``newsletter
        inbound`` honours the requests, when ``bounce_address`` is set; else the reply-to,
        else from (a human reads those: nothing honours them on its own).
        """
        if self.unsubscribe_mailto:
            return self.unsubscribe_mailto
        if self.bounce_address:
            local, _, domain = self.bounce_address.rpartition("@")
            return f"{local}+{UNSUBSCRIBE_TAG}@{domain}"
        return parseaddr(self.reply_to)[1] or self.from_email

    @property
    def bounce_notice(self) -> str:
        """The one line ``check`` and ``dispatch`` say when ``bounce_address`` is unset ("" when it is set)."""
        if self.bounce_address:
            return ""
        unprocessed = f"bounces (to {self.from_email})"
        if not self.unsubscribe_mailto:  # an explicit one may be a mailbox that inbound reads
            unprocessed += f" and unsubscribe requests by mail (to {self.unsubscribe_address})"
        return (f"note: [sender] bounce_address is not set, so {unprocessed} can't be processed;"
                " set it to a mailbox that `newsletter inbound` reads")

    @property
    def domain(self) -> str:
        """The domain of the From address, used in Message-IDs."""
        return self.from_email.rpartition("@")[2]


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the SMTP relay."""

    host: str = _key("127.0.0.1", _text)
    port: int = _key(8025, _whole(1, 65535))
    security: str = _key("none", _choice("starttls", "tls", "none"))
    username: str = _key("", _text)
    #: from NEWSLETTER_SMTP_PASSWORD, never the file
    password: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = _key(30.0, _number(positive=True))
    #: how long the reply to a whole message may take (Postfix's smtp_data_done_timeout): a
    #: server may scan the message first, and giving up early risks a duplicate
    final_reply_timeout: float = _key(600.0, _number(positive=True))
    connections: int = _key(8, _whole(1, 1024))
    rate: float = _key(0.0, _number(zero="no limit"))
    max_per_hour: int = _key(0, _whole(0, 10**9))
    #: a CA bundle to trust instead of the system's (a private relay's own CA)
    ca_file: Path | None = _key(None, _path_or_none)
    #: certificate checks are off only for this host name, and only when it is ``host``
    tls_skip_verify_for: str = _key("", _text)

    @property
    def verify_certificates(self) -> bool:
        """Whether the relay's TLS certificate is checked (always, unless named off for this host)."""
        return not (self.tls_skip_verify_for and self.tls_skip_verify_for == self.host)


@dataclass(frozen=True)
class DispatchSettings:
    """How a dispatch run retries temporary failures."""

    #: seconds before the first retry of a deferred delivery; doubles each time, with jitter
    retry_initial: float = _key(60.0, _number(positive=True))
    #: the longest wait between two retries, in seconds
    retry_max: float = _key(3600.0, _number(positive=True))
    #: hours after the first attempt when a deferred delivery is given up as failed
    give_up_after_hours: float = _key(24.0, _number(zero="give up at the first temporary failure"))
    #: how long a run stays to retry deliveries that come due soon, in seconds; later ones wait for the next run
    wait_for_retries: float = _key(600.0, _number(zero="leave every retry to the next run"))


@dataclass(frozen=True)
class DkimSettings:
    """DKIM signing: on when ``NEWSLETTER_DKIM_KEY_FILE`` names a key and a selector is set."""

    selector: str = _key("", _text)
    domain: str = _key("", _text)  # default: the From address's domain


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the database lives: an SQLite file, or a PostgreSQL server (``url``) shared by several workers."""

    path: Path = _key(Path("newsletter.db"), _path)
    #: ``postgresql://user@host/db`` (from [database] url or NEWSLETTER_DATABASE_URL); "" means SQLite at ``path``
    url: str = _key("", _text, repr=False)

    @property
    def location(self) -> str | Path:
        """What :meth:`newsletter.store.engine.Database.open` takes: the URL, or the file."""
        return self.url or self.path


@dataclass(frozen=True)
class BouncesSettings:
    """When soft bounces (temporary failures a relay gave up on, reported by mail) make an address ``bounced``.

    A hard bounce (a permanent failure) does at once. Soft ones count at most once a day and
    once an issue, as Mailman's bounce score counts at most one a day: ``soft_limit`` of them
    within ``soft_window_days`` days stop mail to that address.
    """

    soft_limit: int = _key(3, _whole(1, 1000))
    soft_window_days: int = _key(30, _whole(1, 3660))


@dataclass(frozen=True)
class InboundSettings:
    """The IMAP mailbox that ``newsletter inbound --imap`` reads returned mail from (``[inbound]``)."""

    #: "" is no IMAP mailbox configured
    host: str = _key("", _text)
    #: 0: the usual port of ``security``, 993 for tls, 143 for starttls and none
    port: int = _key(0, _whole(0, 65535))
    security: str = _key("tls", _choice("tls", "starttls", "none"))
    username: str = _key("", _text)
    #: from NEWSLETTER_IMAP_PASSWORD, never the file
    password: Secret = field(default_factory=lambda: Secret(""))
    folder: str = _key("INBOX", _text)
    #: where handled messages are moved (created if missing); never deleted
    processed_folder: str = _key("processed", _text)
    #: where messages no rule understood are moved, for a human (created if missing)
    unhandled_folder: str = _key("unhandled", _text)
    #: messages fetched and filed per round trip: at most this many are handled again after a crash
    batch_size: int = _key(100, _whole(1, 10_000))
    timeout: float = _key(60.0, _number(positive=True))
    #: a CA bundle to trust instead of the system's (a private server's own CA)
    ca_file: Path | None = _key(None, _path_or_none)
    #: where ``newsletter inbound -`` (an MTA's pipe) keeps each message it read, in the Maildir++
    #: subfolders .processed and .unhandled: a pipe's message is never thrown away either
    pipe_maildir: Path = _key(Path("returned-mail"), _path)

    @property
    def effective_port(self) -> int:
        """``port``, or the usual one of ``security`` when it is 0."""
        return self.port or (993 if self.security == "tls" else 143)


@dataclass(frozen=True)
class SignupSettings:
    """How readers sign up themselves (``[signup]``): double opt-in's timing and the abuse limits.

    The limits are counted in the database, so they hold across every ``serve`` process.
    """

    #: at most one confirmation email per address within this many hours (a signup form used to
    #: mail-bomb someone sends the victim one email); a signup within it joins the confirmation sent
    confirm_every_hours: float = _key(24.0, _number(positive=True))
    #: days a confirmation link stays valid; a pending signup that isn't confirmed by then is purged
    pending_days: int = _key(7, _whole(1, 365))
    #: signups accepted per hour from one network (an IPv4 /24 or an IPv6 /48); 0 = no limit
    per_network_per_hour: int = _key(30, _whole(0, 10**9))
    #: signups accepted per hour in all (a flood from many networks); 0 = no limit
    per_hour: int = _key(1000, _whole(0, 10**9))


@dataclass(frozen=True)
class ListSettings:
    """One list readers may sign up to and manage themselves (``[lists.NAME]``)."""

    #: the list's name: what issues name in their front matter (``list:``)
    name: str
    #: what the signup and preferences pages call it (default: the name)
    title: str
    #: one or two sentences under the title on those pages
    description: str = ""
    #: an issue file sent once to each reader who confirms (relative to the config file), or None
    welcome: Path | None = None
    #: whether ``/subscribe`` offers it (False: only the preferences page shows it, to its members)
    signup: bool = True


#: the keys a ``[lists.NAME]`` table may hold
_LIST_KEYS = ("description", "signup", "title", "welcome")


def _lists(data: Mapping[str, Any], path: Path, base: Path) -> tuple[ListSettings, ...]:
    """The ``[lists.NAME]`` tables, in the file's order, each key checked."""
    tables = data.get("lists", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'lists' must hold tables, one per list: [lists.NAME]")
    lists: dict[str, ListSettings] = {}
    for name, values in tables.items():
        if not is_valid_name(name):
            raise ConfigError(f"{path}: [lists.{name}]: a list name is lower-case letters, digits, '-' and '_'"
                              " (it is what issues say in 'list:')")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [lists.{name}] must be a table (lists.{name}.title = ... or [lists.{name}])")
        unknown = sorted(set(values) - set(_LIST_KEYS))
        if unknown:
            raise ConfigError(f"{path}: unknown key [lists.{name}] {unknown[0]} (known: {', '.join(_LIST_KEYS)})")
        where = functools.partial(_Where, path, f"lists.{name}", base=base)
        title = _text(values["title"], where(key="title")).strip() if "title" in values else name
        description = _text(values["description"], where(key="description")).strip() if "description" in values else ""
        welcome = _path_or_none(values["welcome"], where(key="welcome")) if "welcome" in values else None
        signup = values.get("signup", True)
        if not isinstance(signup, bool):
            raise where(key="signup").error(" must be true or false")
        lists[name] = ListSettings(name, title or name, description, welcome, signup)
    return tuple(lists.values())


@dataclass(frozen=True)
class Settings:
    """Everything the tool is configured with."""

    sender: SenderSettings = _table(SenderSettings)
    smtp: SmtpSettings = _table(SmtpSettings)
    database: DatabaseSettings = _table(DatabaseSettings)
    dispatch: DispatchSettings = _table(DispatchSettings)
    dkim: DkimSettings = _table(DkimSettings)
    bounces: BouncesSettings = _table(BouncesSettings)
    inbound: InboundSettings = _table(InboundSettings)
    signup: SignupSettings = _table(SignupSettings)
    #: ``[lists.NAME]``: the lists readers may sign up to and manage, in the file's order
    lists: tuple[ListSettings, ...] = ()
    issues_dir: Path = _key(Path("issues"), _path, name="dir", table="issues")
    templates_dir: Path | None = _key(None, _path, name="dir", table="templates")
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    dkim_key_file: Path | None = None
    config_path: Path | None = None
    #: the Chromium that `newsletter check --browser` drives (NEWSLETTER_CHROMIUM); "" = find it
    chromium: str = ""

    def list_settings(self, name: str) -> ListSettings | None:
        """The ``[lists.NAME]`` settings of list ``name``, or None when the file has none for it."""
        return next((item for item in self.lists if item.name == name), None)


def _declared(settings: type[Any] = Settings, table: str = "") -> Iterator[tuple[type[Any], str, _Key, str]]:
    """Every key of newsletter.toml: (the settings class, its field, the declaration, the table), in field order."""
    for item in fields(settings):
        declared = item.metadata.get(_KEY)
        if isinstance(declared, _Key):
            yield settings, item.name, declared, declared.table or table
        elif declared is not None:
            yield from _declared(declared, item.name)


def known_keys() -> dict[str, tuple[str, ...]]:
    """Every table of newsletter.toml and the keys it may hold, sorted: what the dataclasses declare."""
    return dict(_known_keys())


@functools.cache  # the declarations don't change; every load checks the file's keys against them
def _known_keys() -> Mapping[str, tuple[str, ...]]:
    known: dict[str, set[str]] = {}
    for _, name, declared, table in _declared():
        known.setdefault(table, set()).add(declared.name or name)
    return {table: tuple(sorted(keys)) for table, keys in sorted(known.items())}


# --- reading the file ------------------------------------------------------------------------


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``path`` (or ``$NEWSLETTER_CONFIG``, or ``./newsletter.toml``).

    A missing default file means the embedded defaults; a missing file that was named
    explicitly is an error. Relative paths in the file are relative to the file.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get("NEWSLETTER_CONFIG"))
    config_path = Path(path if path is not None else env.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG_NAME)
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: can't read it: {exc}") from exc
    elif explicit:
        raise ConfigError(f"{config_path}: no such config file")
    base = config_path.resolve().parent if config_path.exists() else Path.cwd()
    _check_keys(data, config_path)
    settings = Settings(**_values(Settings, "", data, config_path, base), lists=_lists(data, config_path, base))
    smtp, dispatch, database = settings.smtp, settings.dispatch, settings.database
    if smtp.tls_skip_verify_for and smtp.tls_skip_verify_for != smtp.host:
        raise ConfigError(
            f"{config_path}: [smtp] tls_skip_verify_for = \"{smtp.tls_skip_verify_for}\" but host is"
            f" \"{smtp.host}\"; it turns certificate checks off only for the host it names"
        )
    if smtp.ca_file is not None and not smtp.ca_file.is_file():
        raise ConfigError(f"{config_path}: [smtp] ca_file {smtp.ca_file} is not a readable file")
    password = Secret(env.get("NEWSLETTER_SMTP_PASSWORD", ""))
    if password and smtp.security == "none" and not is_loopback(smtp.host):
        raise ConfigError(
            f"{config_path}: [smtp] security = \"none\" would send the password in clear to {smtp.host};"
            " use starttls or tls (a password goes unencrypted only to 127.0.0.1)"
        )
    inbound = replace(settings.inbound, password=Secret(env.get("NEWSLETTER_IMAP_PASSWORD", "")))
    _check_inbound(inbound, config_path)
    if dispatch.retry_max < dispatch.retry_initial:
        raise ConfigError(
            f"{config_path}: [dispatch] retry_max = {dispatch.retry_max:g} is less than retry_initial ="
            f" {dispatch.retry_initial:g}; the longest wait between retries can't be shorter than the first"
        )
    database_url = env.get("NEWSLETTER_DATABASE_URL") or database.url
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{config_path}: [database] url must start with postgresql:// (SQLite is [database] path)")
    if database.url and urlsplit(database.url).password:
        raise ConfigError(f"{config_path}: [database] url holds a password; put the URL in NEWSLETTER_DATABASE_URL"
                          " (or the password in ~/.pgpass) instead of the config file")
    dkim_key_file = env.get("NEWSLETTER_DKIM_KEY_FILE")
    return replace(
        settings,
        smtp=replace(smtp, password=password),
        database=replace(database, url=database_url),
        inbound=inbound,
        dkim=replace(settings.dkim, domain=settings.dkim.domain or settings.sender.domain),
        secret_key=Secret(env.get("NEWSLETTER_SECRET_KEY", "")),
        dkim_key_file=Path(dkim_key_file) if dkim_key_file else None,
        config_path=config_path if config_path.exists() else None,
        chromium=env.get("NEWSLETTER_CHROMIUM", ""),
    )


def _check_inbound(inbound: InboundSettings, config_path: Path) -> None:
    """What spans several ``[inbound]`` keys: the password's channel, the folders, the CA file."""
    if inbound.password and inbound.security == "none" and inbound.host and not is_loopback(inbound.host):
        raise ConfigError(
            f"{config_path}: [inbound] security = \"none\" would send the IMAP password in clear to {inbound.host};"
            " use tls or starttls (a password goes unencrypted only to 127.0.0.1)"
        )
    folders = {"folder": inbound.folder, "processed_folder": inbound.processed_folder,
               "unhandled_folder": inbound.unhandled_folder}
    for key, name in folders.items():
        if not name.strip():
            raise ConfigError(f"{config_path}: [inbound] {key} is empty; name an IMAP folder")
    if len({name.casefold() for name in folders.values()}) < len(folders):
        raise ConfigError(f"{config_path}: [inbound] folder, processed_folder and unhandled_folder must be three"
                          " different folders (messages are moved out of the first into the others)")
    if inbound.ca_file is not None and not inbound.ca_file.is_file():
        raise ConfigError(f"{config_path}: [inbound] ca_file {inbound.ca_file} is not a readable file")


def _values(settings: type[Any], table: str, data: Mapping[str, Any], path: Path, base: Path) -> dict[str, Any]:
    """The keyword arguments of ``settings`` from the file's tables: each declared key checked by its kind."""
    values: dict[str, Any] = {}
    for item in fields(settings):
        declared = item.metadata.get(_KEY)
        if isinstance(declared, _Key):
            where = _Where(path, declared.table or table, declared.name or item.name, base)
            section = data.get(where.table, {})
            if where.key in section:
                values[item.name] = declared.kind(section[where.key], where)
            elif isinstance(item.default, Path):  # relative to the file, as a path in it is
                values[item.name] = base / item.default
        elif declared is not None:
            values[item.name] = declared(**_values(declared, item.name, data, path, base))
    return values


def _check_keys(data: dict[str, Any], path: Path) -> None:
    known = _known_keys()
    for table, values in data.items():
        if table == "lists":  # a table of tables, one per list: checked by _lists
            continue
        if table not in known:
            raise ConfigError(f"{path}: unknown table [{table}] (known: {', '.join([*known, 'lists.NAME'])})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{table}' must be a table, [{table}]")
        unknown = set(values) - set(known[table])
        if unknown:
            raise ConfigError(f"{path}: unknown key [{table}] {sorted(unknown)[0]} (known: {', '.join(known[table])})")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
