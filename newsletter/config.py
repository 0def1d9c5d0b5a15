"""Settings: ``newsletter.toml`` for everything that isn't secret, the environment for secrets.

``load_settings`` is the only reader of the environment in the package. Without a
config file the embedded defaults apply: a local capture SMTP server on
127.0.0.1:8025, ``newsletter.db`` and ``issues/`` in the current directory.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from newsletter.errors import ConfigError
from newsletter.sanitize import direction_control

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DatabaseSettings",
    "DispatchSettings",
    "DkimSettings",
    "Secret",
    "SenderSettings",
    "Settings",
    "SmtpSettings",
    "is_loopback",
    "load_settings",
]

DEFAULT_CONFIG_NAME = "newsletter.toml"
_SECURITY_MODES = ("starttls", "tls", "none")
_ADDR_SPEC_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


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


@dataclass(frozen=True)
class SenderSettings:
    """Who the issue comes from, and where its links point."""

    from_name: str = "The Briefing"
    from_email: str = "briefing@news.example.com"
    reply_to: str = ""
    postal_address: str = "1 Example Street, Springfield"
    site_url: str = "https://news.example.com"
    #: the address of the ``mailto:`` in List-Unsubscribe; default: reply_to, else from
    unsubscribe_mailto: str = ""

    @property
    def unsubscribe_address(self) -> str:
        """Where List-Unsubscribe's ``mailto:`` points: unsubscribe_mailto, else the reply-to, else from."""
        return self.unsubscribe_mailto or parseaddr(self.reply_to)[1] or self.from_email

    @property
    def domain(self) -> str:
        """The domain of the From address, used in Message-IDs."""
        return self.from_email.rpartition("@")[2]


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the SMTP relay."""

    host: str = "127.0.0.1"
    port: int = 8025
    security: str = "none"
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 30.0
    #: how long the reply to a whole message may take (Postfix's smtp_data_done_timeout): a
    #: server may scan the message first, and giving up early risks a duplicate
    final_reply_timeout: float = 600.0
    connections: int = 8
    rate: float = 0.0
    max_per_hour: int = 0
    #: a CA bundle to trust instead of the system's (a private relay's own CA)
    ca_file: Path | None = None
    #: certificate checks are off only for this host name, and only when it is ``host``
    tls_skip_verify_for: str = ""

    @property
    def verify_certificates(self) -> bool:
        """Whether the relay's TLS certificate is checked (always, unless named off for this host)."""
        return not (self.tls_skip_verify_for and self.tls_skip_verify_for == self.host)


@dataclass(frozen=True)
class DispatchSettings:
    """How a dispatch run retries temporary failures."""

    #: seconds before the first retry of a deferred delivery; doubles each time, with jitter
    retry_initial: float = 60.0
    #: the longest wait between two retries, in seconds
    retry_max: float = 3600.0
    #: hours after the first attempt when a deferred delivery is given up as failed
    give_up_after_hours: float = 24.0
    #: how long a run stays to retry deliveries that come due soon, in seconds; later ones wait for the next run
    wait_for_retries: float = 600.0


@dataclass(frozen=True)
class DkimSettings:
    """DKIM signing: on when ``NEWSLETTER_DKIM_KEY_FILE`` names a key and a selector is set."""

    selector: str = ""
    domain: str = ""  # default: the From address's domain


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the database lives: an SQLite file, or a PostgreSQL server (``url``) shared by several workers."""

    path: Path = Path("newsletter.db")
    #: ``postgresql://user@host/db`` (from [database] url or NEWSLETTER_DATABASE_URL); "" means SQLite at ``path``
    url: str = field(default="", repr=False)

    @property
    def location(self) -> str | Path:
        """What :meth:`newsletter.store.Store.open` takes: the URL, or the file."""
        return self.url or self.path



@dataclass(frozen=True)
class Settings:
    """Everything the tool is configured with."""

    sender: SenderSettings = field(default_factory=SenderSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    issues_dir: Path = Path("issues")
    templates_dir: Path | None = None
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    dkim_key_file: Path | None = None
    config_path: Path | None = None
    #: the Chromium that `newsletter check --browser` drives (NEWSLETTER_CHROMIUM); "" = find it
    chromium: str = ""


_KNOWN: dict[str, set[str]] = {
    "sender": {"from", "reply_to", "postal_address", "site_url", "unsubscribe_mailto"},
    "smtp": {"host", "port", "security", "username", "timeout", "final_reply_timeout", "connections", "rate",
             "max_per_hour", "ca_file", "tls_skip_verify_for"},
    "database": {"path", "url"},
    "dispatch": {"retry_initial", "retry_max", "give_up_after_hours", "wait_for_retries"},
    "dkim": {"selector", "domain"},
    "issues": {"dir"},
    "templates": {"dir"},
}


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

    sender_data = data.get("sender", {})
    defaults = SenderSettings()
    from_name, from_email = defaults.from_name, defaults.from_email
    if "from" in sender_data:
        from_name, from_email = _parse_from(_str(sender_data, "from", config_path, "sender"), config_path, "from")
    sender = SenderSettings(
        from_name=from_name,
        from_email=from_email,
        reply_to=_str(sender_data, "reply_to", config_path, "sender", defaults.reply_to),
        postal_address=_str(sender_data, "postal_address", config_path, "sender", defaults.postal_address),
        site_url=_site_url(_str(sender_data, "site_url", config_path, "sender", defaults.site_url), config_path),
        unsubscribe_mailto=_plain_address(
            _str(sender_data, "unsubscribe_mailto", config_path, "sender"), config_path, "unsubscribe_mailto"
        ),
    )
    if sender.reply_to:
        _parse_from(sender.reply_to, config_path, "reply_to")

    smtp_data = data.get("smtp", {})
    smtp_defaults = SmtpSettings()
    security = _str(smtp_data, "security", config_path, "smtp", smtp_defaults.security)
    if security not in _SECURITY_MODES:
        raise ConfigError(f"{config_path}: [smtp] security must be one of {', '.join(_SECURITY_MODES)}")
    smtp = SmtpSettings(
        host=_str(smtp_data, "host", config_path, "smtp", smtp_defaults.host),
        port=_int(smtp_data, "port", config_path, "smtp", smtp_defaults.port, 1, 65535),
        security=security,
        username=_str(smtp_data, "username", config_path, "smtp", ""),
        password=Secret(env.get("NEWSLETTER_SMTP_PASSWORD", "")),
        timeout=_num(smtp_data, "timeout", config_path, "smtp", smtp_defaults.timeout, positive=True),
        final_reply_timeout=_num(smtp_data, "final_reply_timeout", config_path, "smtp",
                                 smtp_defaults.final_reply_timeout, positive=True),
        connections=_int(smtp_data, "connections", config_path, "smtp", smtp_defaults.connections, 1, 1024),
        rate=_num(smtp_data, "rate", config_path, "smtp", 0.0, zero="no limit"),
        max_per_hour=_int(smtp_data, "max_per_hour", config_path, "smtp", 0, 0, 10**9),
        ca_file=base / ca_file if (ca_file := _str(smtp_data, "ca_file", config_path, "smtp")) else None,
        tls_skip_verify_for=_str(smtp_data, "tls_skip_verify_for", config_path, "smtp"),
    )
    if smtp.tls_skip_verify_for and smtp.tls_skip_verify_for != smtp.host:
        raise ConfigError(
            f"{config_path}: [smtp] tls_skip_verify_for = \"{smtp.tls_skip_verify_for}\" but host is"
            f" \"{smtp.host}\"; it turns certificate checks off only for the host it names"
        )
    if smtp.ca_file is not None and not smtp.ca_file.is_file():
        raise ConfigError(f"{config_path}: [smtp] ca_file {smtp.ca_file} is not a readable file")
    if smtp.password and smtp.security == "none" and not is_loopback(smtp.host):
        raise ConfigError(
            f"{config_path}: [smtp] security = \"none\" would send the password in clear to {smtp.host};"
            " use starttls or tls (a password goes unencrypted only to 127.0.0.1)"
        )
    dispatch_data = data.get("dispatch", {})
    dispatch_defaults = DispatchSettings()
    dispatch = DispatchSettings(
        retry_initial=_num(dispatch_data, "retry_initial", config_path, "dispatch", dispatch_defaults.retry_initial,
                           positive=True),
        retry_max=_num(dispatch_data, "retry_max", config_path, "dispatch", dispatch_defaults.retry_max,
                       positive=True),
        give_up_after_hours=_num(
            dispatch_data, "give_up_after_hours", config_path, "dispatch", dispatch_defaults.give_up_after_hours,
            zero="give up at the first temporary failure",
        ),
        wait_for_retries=_num(
            dispatch_data, "wait_for_retries", config_path, "dispatch", dispatch_defaults.wait_for_retries,
            zero="leave every retry to the next run",
        ),
    )
    if dispatch.retry_max < dispatch.retry_initial:
        raise ConfigError(
            f"{config_path}: [dispatch] retry_max = {dispatch.retry_max:g} is less than retry_initial ="
            f" {dispatch.retry_initial:g}; the longest wait between retries can't be shorter than the first"
        )
    dkim_data = data.get("dkim", {})
    dkim_settings = DkimSettings(
        selector=_str(dkim_data, "selector", config_path, "dkim"),
        domain=_str(dkim_data, "domain", config_path, "dkim") or sender.domain,
    )
    db_path = Path(_str(data.get("database", {}), "path", config_path, "database", "newsletter.db"))
    database_url = env.get("NEWSLETTER_DATABASE_URL") or _str(data.get("database", {}), "url", config_path, "database")
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{config_path}: [database] url must start with postgresql:// (SQLite is [database] path)")
    if _str(data.get("database", {}), "url", config_path, "database") and urlsplit(
            _str(data.get("database", {}), "url", config_path, "database")).password:
        raise ConfigError(f"{config_path}: [database] url holds a password; put the URL in NEWSLETTER_DATABASE_URL"
                          " (or the password in ~/.pgpass) instead of the config file")
    issues_dir = Path(_str(data.get("issues", {}), "dir", config_path, "issues", "issues"))
    templates = data.get("templates", {})
    templates_dir = Path(_str(templates, "dir", config_path, "templates")) if "dir" in templates else None
    dkim = env.get("NEWSLETTER_DKIM_KEY_FILE")
    return Settings(
        sender=sender,
        smtp=smtp,
        database=DatabaseSettings(base / db_path, url=database_url),
        dispatch=dispatch,
        dkim=dkim_settings,
        issues_dir=base / issues_dir,
        templates_dir=base / templates_dir if templates_dir else None,
        secret_key=Secret(env.get("NEWSLETTER_SECRET_KEY", "")),
        dkim_key_file=Path(dkim) if dkim else None,
        config_path=config_path if config_path.exists() else None,
        chromium=env.get("NEWSLETTER_CHROMIUM", ""),
    )


def _check_keys(data: dict[str, Any], path: Path) -> None:
    for table, values in data.items():
        if table not in _KNOWN:
            raise ConfigError(f"{path}: unknown table [{table}] (known: {', '.join(sorted(_KNOWN))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{table}' must be a table, [{table}]")
        unknown = set(values) - _KNOWN[table]
        if unknown:
            raise ConfigError(
                f"{path}: unknown key [{table}] {sorted(unknown)[0]} (known: {', '.join(sorted(_KNOWN[table]))})"
            )


#: control characters other than tab (a TOML escape can put one in a value; no header or page wants it)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _str(data: Mapping[str, Any], key: str, path: Path, table: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: [{table}] {key} must be a string")
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{path}: [{table}] {key} must be one line")
    if _CONTROL.search(value):
        raise ConfigError(f"{path}: [{table}] {key} contains a control character; remove it")
    found = direction_control(value)
    if found is not None:
        raise ConfigError(f"{path}: [{table}] {key} contains the direction control {found}, which makes text read"
                          " in another order than it is written; remove it")
    return value


def _int(data: Mapping[str, Any], key: str, path: Path, table: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{path}: [{table}] {key} must be a whole number from {low} to {high}")
    return value


#: the largest number a setting may be: seconds in a year; more would overflow sleeps and timers
_MAX_NUMBER = 366 * 24 * 3600.0


def _num(data: Mapping[str, Any], key: str, path: Path, table: str, default: float, *,
         positive: bool = False, zero: str = "") -> float:
    """A finite number: more than 0 when ``positive``, else 0 or more (``zero`` says what 0 means).

    TOML spells nan and inf; a nan passed every comparison (the check let it through) and
    a timeout of 0 or inf either defers every message or never gives up.
    """
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: [{table}] {key} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        allowed = "more than 0" if positive else f"0 ({zero}) or more"
        raise ConfigError(f"{path}: [{table}] {key} = {value!r}: it must be a finite number {allowed}")
    if value > _MAX_NUMBER:
        raise ConfigError(f"{path}: [{table}] {key} = {value!r}: it must be at most {_MAX_NUMBER:.0f}")
    return float(value)


def _parse_from(value: str, path: Path, key: str) -> tuple[str, str]:
    # parseaddr keeps the first of several addresses and drops the rest without a word.
    if len(getaddresses([value])) > 1:
        raise ConfigError(f"{path}: [sender] {key} '{value}' holds more than one address; give exactly one"
                          " (a name with a comma goes in quotes: '\"Doe, J.\" <j@example.com>')")
    name, address = parseaddr(value)  # strict= only exists from 3.11.10; the checks below are stricter
    try:
        Address(display_name=name, addr_spec=address)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{path}: [sender] {key} '{value}' is not an address") from exc
    if not _ADDR_SPEC_RE.match(address):
        raise ConfigError(f"{path}: [sender] {key} '{value}' is not an address (e.g. 'The Briefing <b@example.com>')")
    return name, address


def _plain_address(value: str, path: Path, key: str) -> str:
    """An ``addr-spec`` (no display name): empty stays empty."""
    if value and not _ADDR_SPEC_RE.match(value):
        raise ConfigError(f"{path}: [sender] {key} '{value}' must be a plain address like editors@example.com")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: what a site_url may hold: printable ASCII but space, '"', '<', '>' (as a link in a header must)
_URL_CHARACTERS_RE = re.compile(r"[!#-;=?-~]+")


def _site_url(value: str, path: Path) -> str:
    """The base of every link in every email: an absolute http(s) URL that can stand in a header as it is."""
    if not _URL_CHARACTERS_RE.fullmatch(value):
        bad = next((char for char in value if not _URL_CHARACTERS_RE.fullmatch(char)), "")
        what = "a space" if bad == " " else f"the character {bad!r}" if bad else "nothing"
        raise ConfigError(f"{path}: [sender] site_url '{value}' holds {what}; a URL in an email header can't"
                          " (percent-encode it, and use the xn-- form of a non-ASCII host name)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{path}: [sender] site_url '{value}' must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ConfigError(f"{path}: [sender] site_url holds a user name or password (before '@'), and it would be"
                          " copied into every email; remove it")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ConfigError(f"{path}: [sender] site_url '{value}' has a query or fragment; links are built by adding"
                          " paths to it, so give the site's base URL only")
    return value.rstrip("/")
