"""The one finding type of every preflight check: the issue's own checks and the rendered email's.

A check of the issue file knows its ``source`` and ``line``; a check of the rendered HTML
(client compatibility, accessibility, dark mode) knows instead *where* in the HTML
(``where``) and which page explains it (``url``), and :mod:`~newsletter.preflight.report`
gives it the file with :meth:`Finding.at`. ``accepted`` marks a compatibility finding that
the template chose knowingly (its severity is then ``info`` and the message says why).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

__all__ = [
    "Finding",
    "SEVERITIES",
    "Severity",
    "where_list",
]

Severity = Literal["error", "warning", "info"]
#: from worst to mildest; ``error`` and ``warning`` make ``newsletter check`` exit 1
SEVERITIES: tuple[Severity, ...] = get_args(Severity)


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, which check (a stable code), what, and where to look.

    ``str()`` is the line ``newsletter check`` prints: ``source:line: severity: message
    (in where); see url [code]``.
    """

    severity: Severity
    code: str  # a stable id, e.g. "subject-length", "compat-unsupported", "a11y-contrast"
    message: str
    where: str = ""  # the elements or CSS rules concerned, e.g. "p.nl-kicker (+3 more)"
    url: str = ""  # caniemail.com page or WCAG reference, when there is one
    source: str = ""  # the issue file; "" until the report says which
    line: int = 1  # a finding about the rendered email points at the file's first line
    accepted: bool = False  # a deliberate choice of the template (compatibility findings only)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    @property
    def full_message(self) -> str:
        """The message with where it is and the page that explains it: what ``check`` prints."""
        text = self.message
        if self.where:
            text += f" (in {self.where})"
        if self.url:
            text += f"; see {self.url}"
        return text

    def __str__(self) -> str:
        place = f"{self.source}:{self.line}: " if self.source else ""
        return f"{place}{self.severity}: {self.full_message} [{self.code}]"

    def at(self, source: str) -> Finding:
        """The same finding, in the issue file ``source``."""
        return replace(self, source=source)

    def as_dict(self) -> dict[str, object]:
        """The finding as ``check --json`` prints it (README: "check --json")."""
        return {"source": self.source, "line": self.line, "severity": self.severity, "code": self.code,
                "message": self.full_message}

    @property
    def counts(self) -> bool:
        """Whether this finding makes ``check`` exit 1 (info doesn't)."""
        return self.severity != "info"


def where_list(places: list[str], *, limit: int = 3) -> str:
    """The first ``limit`` distinct places, and how many more there are."""
    distinct = list(dict.fromkeys(places))
    shown = ", ".join(distinct[:limit])
    rest = len(distinct) - limit
    return f"{shown} (+{rest} more)" if rest > 0 else shown
