"""The exception tree of newsletter: every error the library raises on purpose.

::

    NewsletterError                  root: catch this to catch everything below
    ├── IssueError                   an issue file is wrong (carries file and line)
    ├── ConfigError                  newsletter.toml or the environment is wrong
    ├── RenderError                  the template or the MJML/CSS toolchain failed
    ├── ComposeError                 a message can't be built (bad address, header)
    ├── StoreError                   the database can't be opened, read or written
    ├── SubscriberError              a subscriber row or address is invalid (carries file and line)
    ├── DeliveryError                the SMTP relay can't be used (unreachable, login or sender refused)
    └── InboundError                 a mailbox to read can't be used (missing, unreadable, IMAP refused or dropped)

Third-party exceptions are translated once, in the module that imports the
library, with ``raise ... from exc``; nothing else leaks out of the package. The
``newsletter`` command turns each class into its exit code in one table,
:data:`newsletter.cli.commands.EXIT_CODES` (2 bad input, 1 a failure).
"""

from __future__ import annotations

__all__ = [
    "ComposeError",
    "ConfigError",
    "DeliveryError",
    "InboundError",
    "IssueError",
    "NewsletterError",
    "RenderError",
    "StoreError",
    "SubscriberError",
]


class NewsletterError(Exception):
    """Base class of every error raised on purpose by newsletter."""


class IssueError(NewsletterError):
    """An issue file can't be used: says which file, which line, what and how to fix it.

    ``str(error)`` is one line, ``issues/x.md:3: what is wrong; fix``, ready to print.
    """

    def __init__(self, source: str, line: int, message: str, hint: str = "") -> None:
        self.source = source
        self.line = line
        self.message = _one_line(message)
        self.hint = _one_line(hint)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.source}:{self.line}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(NewsletterError):
    """The configuration file or the environment is wrong."""


class RenderError(NewsletterError):
    """A template or the MJML/CSS toolchain failed to produce the email."""


class ComposeError(NewsletterError):
    """A message can't be built, e.g. an invalid recipient address."""


class StoreError(NewsletterError):
    """The database can't be opened, read or written (locked, full disk, read-only, damaged file).

    ``str(error)`` is one line: the database's path, what is wrong and what to do about it.
    """


class SubscriberError(NewsletterError):
    """A subscriber can't be accepted: names the file and line when it came from one."""


class DeliveryError(NewsletterError):
    """The relay can't take mail: unreachable, or it refused our login or sender address.

    ``fatal`` is True when waiting won't help (a refused login or sender): a run stops
    instead of retrying. Per-recipient refusals are results, not exceptions.
    """

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(_one_line(message))
        self.fatal = fatal


class InboundError(NewsletterError):
    """A mailbox of returned mail can't be read or filed: missing, unreadable, too large, IMAP refused or dropped.

    ``temporary`` is True when trying again later may work (the IMAP server unreachable or the
    connection dropped): ``newsletter inbound -`` then exits 75 for the MTA to retry. Whatever was
    handled before the error is filed; the rest stays where it was.
    """

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(_one_line(message))
        self.temporary = temporary


def _one_line(text: str) -> str:
    """Fold any whitespace run (newlines included) into one space."""
    return " ".join(text.split())
