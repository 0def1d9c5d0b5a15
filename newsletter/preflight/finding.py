"""The finding type shared by the rendered-email checks (client compatibility, accessibility, dark mode).

It is shaped to map one to one onto :class:`newsletter.preflight.content.Finding`: ``severity`` is the
same scale, ``check`` becomes ``code``, and ``message``, ``where`` and ``url`` join into
its message (``str(finding)`` is that joined text).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = [
    "PreflightFinding",
    "SEVERITIES",
    "where_list",
]

#: from worst to mildest; ``error`` and ``warning`` make ``newsletter check`` exit 1
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class PreflightFinding:
    """One problem in the rendered email: how bad, which check, what, where, and where to read more."""

    severity: str  # error | warning | info
    check: str  # a stable id, e.g. "compat-unsupported", "a11y-contrast"
    message: str
    where: str = ""  # the elements or CSS rules concerned, e.g. "p.nl-kicker (+3 more)"
    url: str = ""  # caniemail.com page or WCAG reference, when there is one

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text += f" (in {self.where})"
        if self.url:
            text += f"; see {self.url}"
        return text

    def as_dict(self) -> dict[str, str]:
        """The finding as a JSON-ready mapping."""
        return asdict(self)

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
