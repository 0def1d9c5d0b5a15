"""``newsletter check``: every check on each issue file, gathered into one report (text and JSON).

For each file: its own checks (:mod:`~newsletter.preflight.content`), whether its text and
its template fit its language (:mod:`~newsletter.preflight.language`), email-client
compatibility (:mod:`~newsletter.preflight.compat`), accessibility, and on request dark
mode in Chromium; plus the per-client table and the list of what ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.compose.message import fill_html, fill_text
from newsletter.compose.sample import example_recipient
from newsletter.config import Settings
from newsletter.errors import IssueError
from newsletter.issue.parse import load_issue
from newsletter.models import Issue, RenderedIssue
from newsletter.preflight.content import check_issue, check_rendered, check_source
from newsletter.preflight.finding import Finding
from newsletter.preflight.language import check_language, check_template_language
from newsletter.render.engine import default_templates_dir, issue_language, render_issue

if TYPE_CHECKING:
    from newsletter.preflight.compat import Accepted

__all__ = [
    "ACCESSIBILITY_CHECKS",
    "CHECK_JSON_VERSION",
    "COMPAT_KINDS",
    "CheckReport",
    "FileChecks",
    "accepted_choices",
    "check_files",
    "preflight_findings",
]


#: the kinds of compatibility finding, as the table's columns
COMPAT_KINDS = ("unsupported", "partial", "untested", "accepted", "unknown")


#: the accessibility checks run on every file's final HTML and text, as ``check`` lists them
ACCESSIBILITY_CHECKS = ("lang/dir", "layout tables", "heading order", "alt text", "link text",
                        "contrast light+dark (static)", "font size", "plain text")


#: the version of the document ``check --json`` prints (README: "check --json")
CHECK_JSON_VERSION = 1


@dataclass(frozen=True)
class FileChecks:
    """What ran on one issue file that parsed and rendered, beyond the findings themselves."""

    source: str
    #: per client, how many compatibility findings of each kind (COMPAT_KINDS): the table ``check`` prints
    compat: dict[str, dict[str, int]]
    #: the accessibility checks that ran
    accessibility: tuple[str, ...] = ACCESSIBILITY_CHECKS
    #: whether dark mode was rendered in Chromium (else only computed from the dark-scheme CSS)
    dark_mode_in_browser: bool = False
    #: the screenshots the browser check wrote
    screenshots: tuple[str, ...] = ()


@dataclass
class CheckReport:
    """Everything ``check_files`` found, what it ran on each file, and the files that couldn't be read at all."""

    findings: list[Finding] = field(default_factory=list)
    errors: list[IssueError] = field(default_factory=list)
    files: list[FileChecks] = field(default_factory=list)
    #: what is said once about the settings rather than a file (e.g. no bounce mailbox); not findings
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """2 when a file is invalid, 1 when there are findings, 0 when clean."""
        if self.errors:
            return 2
        return 1 if any(finding.counts for finding in self.findings) else 0

    def accessibility_findings(self, source: str) -> int:
        """How many of ``source``'s findings that count (not info) are about accessibility."""
        return self._counted(source, ("a11y-", "image-alt"))

    def dark_mode_findings(self, source: str) -> int:
        """How many of ``source``'s findings that count are the browser's dark-mode check's."""
        return self._counted(source, ("darkmode-",))

    def _counted(self, source: str, prefixes: tuple[str, ...]) -> int:
        return sum(1 for finding in self.findings
                   if finding.source == source and finding.counts and finding.code.startswith(prefixes))

    def as_json(self) -> dict[str, object]:
        """The whole report as one JSON-ready document: the shape README's "check --json" describes.

        It holds everything the text output shows (each finding, info included; the
        per-client table; the accessibility and dark-mode checks that ran, with their
        counts and screenshots; the totals) and the exit status.
        """
        from newsletter.preflight.compat import load_caniemail

        invalid = [{"source": err.source, "line": err.line, "severity": "error", "code": "invalid",
                    "message": err.message + (f" ({err.hint})" if err.hint else "")} for err in self.errors]
        severities = {severity: sum(1 for finding in self.findings if finding.severity == severity)
                      for severity in ("error", "warning", "info")}
        data = load_caniemail()
        return {
            "version": CHECK_JSON_VERSION,
            "findings": [*invalid, *(finding.as_dict() for finding in self.findings)],
            "files": [{
                "source": checks.source,
                "compatibility": {
                    "data": {"source": "caniemail.com", "commit": data.commit},
                    "kinds": list(COMPAT_KINDS),
                    "clients": {client: dict(counts) for client, counts in checks.compat.items()},
                },
                "accessibility": {"checks": list(checks.accessibility),
                                  "findings": self.accessibility_findings(checks.source)},
                "dark_mode": {"browser": checks.dark_mode_in_browser,
                              "findings": self.dark_mode_findings(checks.source),
                              "screenshots": list(checks.screenshots)},
                "findings": {severity: sum(1 for finding in self.findings
                                           if finding.source == checks.source and finding.severity == severity)
                             for severity in ("error", "warning", "info")},
            } for checks in self.files],
            "notes": list(self.notes),
            "summary": {
                "files": len(self.files) + len(self.errors),
                "invalid": len(self.errors),
                "findings": severities["error"] + severities["warning"],
                **{f"{severity}s" if severity != "info" else severity: count
                   for severity, count in severities.items()},
                "exit_code": self.exit_code,
            },
        }


def check_files(paths: Iterable[str | Path], settings: Settings, *, clients: Sequence[str] | None = None,
                browser: bool = False, screenshots: Path | None = None) -> CheckReport:
    """Check each issue file: parse it, render it, and collect the findings.

    Besides the file's own checks: email-client compatibility for ``clients`` (caniemail.com
    data; default Gmail, Outlook for Windows, Apple Mail, Yahoo), accessibility (light and
    dark scheme), and with ``browser`` (or ``screenshots``) the dark-mode check in Chromium,
    which also saves light, dark and 375 px screenshots into ``screenshots``. What concerns
    the settings rather than a file goes, once, into ``notes``. Raises
    ValueError for an unknown client, ConfigError when the browser check can't run.
    """
    from newsletter.preflight.compat import DEFAULT_CLIENTS, check_compat, resolve_clients

    chosen = [client.id for client in resolve_clients(clients or DEFAULT_CLIENTS)]
    report = CheckReport()
    if settings.sender.bounce_notice:
        report.notes.append(settings.sender.bounce_notice)
    for path in paths:
        try:
            issue = load_issue(path)
            rendered: RenderedIssue = render_issue(
                issue, sender=settings.sender, templates_dir=settings.templates_dir
            )
        except IssueError as exc:
            report.errors.append(exc)
            continue
        recipient = example_recipient(settings)
        html, text = fill_html(rendered, recipient), fill_text(rendered, recipient)
        report.findings.extend(check_issue(issue))
        # load_issue read it as UTF-8 a moment ago; the characters' lines are the file's own
        report.findings.extend(check_source(issue.source, Path(path).read_bytes().decode("utf-8")))
        report.findings.extend(check_language(issue, settings.sender))
        folder = settings.templates_dir or default_templates_dir()
        report.findings.extend(check_template_language(
            issue, html, language=issue_language(issue, settings.sender), template=folder / f"{issue.template}.mjml",
            builtin=settings.templates_dir is None))
        report.findings.extend(check_rendered(issue.source, html, text))
        accepted = accepted_choices(issue, settings)
        table: dict[str, dict[str, int]] = {}
        for client in chosen:
            counts = dict.fromkeys(COMPAT_KINDS, 0)
            for finding in check_compat(html, clients=[client], accepted=accepted):
                counts[_compat_kind(finding)] += 1
            table[client] = counts
        report.findings.extend(preflight_findings(issue, html, text, settings, clients=chosen))
        checks = FileChecks(issue.source, table)
        if browser or screenshots is not None:
            from newsletter.preflight.darkmode import check_dark_mode, find_chromium

            dark = check_dark_mode(html, chromium=find_chromium({"NEWSLETTER_CHROMIUM": settings.chromium}),
                                   screenshots=screenshots, name=issue.slug if screenshots else "")
            report.findings.extend(finding.at(issue.source) for finding in dark.findings)
            checks = replace(checks, dark_mode_in_browser=True, screenshots=tuple(map(str, dark.screenshots)))
        report.files.append(checks)
    return report


def accepted_choices(issue: Issue, settings: Settings) -> tuple[Accepted, ...]:
    """The built-in template's deliberate choices (e.g. @media, which Outlook for Windows ignores),
    reported as info; a template of one's own gets no such pass."""
    from newsletter.preflight.compat import BRIEFING_CHOICES

    return BRIEFING_CHOICES if settings.templates_dir is None and issue.template == "briefing" else ()


def preflight_findings(issue: Issue, html: str, text: str, settings: Settings, *,
                       clients: Sequence[str]) -> list[Finding]:
    """What client support (for ``clients``) and accessibility find in the rendered email, as check findings."""
    from newsletter.preflight.accessibility import check_accessibility
    from newsletter.preflight.compat import check_compat

    # An image without an alt attribute is check_rendered's image-alt already; weak alt text
    # (empty, a file name, only "photo") is reported here.
    found = [*check_compat(html, clients=clients, accepted=accepted_choices(issue, settings)),
             *check_accessibility(html, text, missing_alt=False)]
    return [finding.at(issue.source) for finding in found]


def _compat_kind(finding: Finding) -> str:
    if finding.code == "compat-unknown":
        return "unknown"
    if finding.accepted:
        return "accepted"
    return {"compat-unsupported": "unsupported", "compat-partial": "partial"}.get(finding.code, "untested")
