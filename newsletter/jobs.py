"""The library functions behind the CLI commands: each takes paths and settings, does the job.

The CLI only parses arguments, calls these and prints; tests call them directly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.checks import Finding, check_issue, check_rendered, check_source
from newsletter.compose import compile_message, fill_html, fill_text, now_header_date, personalise
from newsletter.config import Settings
from newsletter.errors import ConfigError, DeliveryError, IssueError, SubscriberError
from newsletter.issues import is_valid_name, load_issue
from newsletter.models import Issue, Recipient, RenderedIssue
from newsletter.render import render_issue
from newsletter.store import Store, UpsertCounts
from newsletter.subscribers import UniqueRows, csv_lines, normalise_address, read_csv
from newsletter.tokens import TokenSigner, split_keys, unsubscribe_links
from newsletter.transport import SendResult, SmtpConnection

if TYPE_CHECKING:
    from newsletter.compat import Accepted
    from newsletter.preflight import PreflightFinding

__all__ = [
    "ACCESSIBILITY_CHECKS",
    "CHECK_JSON_VERSION",
    "COMPAT_KINDS",
    "CheckReport",
    "FileChecks",
    "ImportReport",
    "RenderedFiles",
    "Sample",
    "SentTest",
    "accepted_choices",
    "check_files",
    "check_list_name",
    "example_recipient",
    "import_subscribers",
    "message_signer",
    "preflight_findings",
    "render_sample",
    "render_to_files",
    "send_test",
]


@dataclass(frozen=True)
class RenderedFiles:
    """What ``render_to_files`` wrote."""

    html: Path
    text: Path
    eml: Path
    html_bytes: int
    eml_bytes: int


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
        from newsletter.compat import load_caniemail

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
            "summary": {
                "files": len(self.files) + len(self.errors),
                "invalid": len(self.errors),
                "findings": severities["error"] + severities["warning"],
                **{f"{severity}s" if severity != "info" else severity: count
                   for severity, count in severities.items()},
                "exit_code": self.exit_code,
            },
        }


def example_recipient(settings: Settings) -> Recipient:
    """The made-up subscriber that previews are personalised for."""
    return Recipient(
        email="reader@example.com",
        name="Example Reader",
        unsubscribe_url=f"{settings.sender.site_url}/unsubscribe/example-token",
    )


@dataclass(frozen=True)
class Sample:
    """An issue rendered for the example reader: what ``render``, ``preview`` and ``check`` look at."""

    issue: Issue
    rendered: RenderedIssue
    #: the whole message (headers and both parts), as a subscriber would get it
    message: bytes
    html: str
    text: str


def render_sample(issue_path: str | Path, settings: Settings) -> Sample:
    """Parse and render ``issue_path`` and personalise it for :func:`example_recipient`."""
    issue = load_issue(issue_path)
    rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
    recipient = example_recipient(settings)
    message = personalise(
        compile_message(rendered, sender=settings.sender, list_id=issue.list_name),
        recipient,
        message_id=f"{issue.slug}.preview@{settings.sender.domain}",
        date=now_header_date(),
    )
    return Sample(issue, rendered, message, fill_html(rendered, recipient), fill_text(rendered, recipient))


def render_to_files(issue_path: str | Path, out_dir: str | Path, settings: Settings) -> RenderedFiles:
    """Render an issue file into ``out_dir/<slug>.html``, ``.txt`` and ``.eml``.

    Everything is rendered before anything is written, and each file is replaced
    atomically, so a bad issue leaves ``out_dir`` as it was.
    """
    sample = render_sample(issue_path, settings)
    issue, message = sample.issue, sample.message
    html, text = sample.html.encode("utf-8"), sample.text.encode("utf-8")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / f"{issue.slug}.html", folder / f"{issue.slug}.txt", folder / f"{issue.slug}.eml")
    for path, data in zip(paths, (html, text, message), strict=True):
        _write_atomically(path, data)
    return RenderedFiles(paths[0], paths[1], paths[2], len(html), len(message))


def check_files(paths: Iterable[str | Path], settings: Settings, *, clients: Sequence[str] | None = None,
                browser: bool = False, screenshots: Path | None = None) -> CheckReport:
    """Check each issue file: parse it, render it, and collect the findings.

    Besides the file's own checks: email-client compatibility for ``clients`` (caniemail.com
    data; default Gmail, Outlook for Windows, Apple Mail, Yahoo), accessibility (light and
    dark scheme), and with ``browser`` (or ``screenshots``) the dark-mode check in Chromium,
    which also saves light, dark and 375 px screenshots into ``screenshots``. Raises
    ValueError for an unknown client, ConfigError when the browser check can't run.
    """
    from newsletter.compat import DEFAULT_CLIENTS, check_compat, resolve_clients

    chosen = [client.id for client in resolve_clients(clients or DEFAULT_CLIENTS)]
    report = CheckReport()
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
        report.findings.extend(check_rendered(issue.source, html, text))
        accepted = accepted_choices(issue, settings)
        table: dict[str, dict[str, int]] = {}
        for client in chosen:
            counts = dict.fromkeys(COMPAT_KINDS, 0)
            for finding in check_compat(html, clients=[client], accepted=accepted):
                counts[_compat_kind(finding.check, finding.message)] += 1
            table[client] = counts
        report.findings.extend(preflight_findings(issue, html, text, settings, clients=chosen))
        checks = FileChecks(issue.source, table)
        if browser or screenshots is not None:
            from newsletter.darkmode import check_dark_mode, find_chromium

            dark = check_dark_mode(html, chromium=find_chromium({"NEWSLETTER_CHROMIUM": settings.chromium}),
                                   screenshots=screenshots, name=issue.slug if screenshots else "")
            report.findings.extend(_finding(issue.source, finding) for finding in dark.findings)
            checks = replace(checks, dark_mode_in_browser=True, screenshots=tuple(map(str, dark.screenshots)))
        report.files.append(checks)
    return report


def accepted_choices(issue: Issue, settings: Settings) -> tuple[Accepted, ...]:
    """The built-in template's deliberate choices (e.g. @media, which Outlook for Windows ignores),
    reported as info; a template of one's own gets no such pass."""
    from newsletter.compat import BRIEFING_CHOICES

    return BRIEFING_CHOICES if settings.templates_dir is None and issue.template == "briefing" else ()


def preflight_findings(issue: Issue, html: str, text: str, settings: Settings, *,
                       clients: Sequence[str]) -> list[Finding]:
    """What client support (for ``clients``) and accessibility find in the rendered email, as check findings."""
    from newsletter.accessibility import check_accessibility
    from newsletter.compat import check_compat

    # An image without an alt attribute is check_rendered's image-alt already; weak alt text
    # (empty, a file name, only "photo") is reported here.
    found = [*check_compat(html, clients=clients, accepted=accepted_choices(issue, settings)),
             *check_accessibility(html, text, missing_alt=False)]
    return [_finding(issue.source, finding) for finding in found]


def _finding(source: str, finding: PreflightFinding) -> Finding:
    return Finding(source, 1, finding.severity, finding.check, str(finding))


def _compat_kind(check: str, message: str) -> str:
    if check == "compat-unknown":
        return "unknown"
    if ": accepted, " in message:
        return "accepted"
    return {"compat-unsupported": "unsupported", "compat-partial": "partial"}.get(check, "untested")


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ImportReport:
    """What ``import_subscribers`` did, and the rows it refused."""

    counts: UpsertCounts | None
    errors: list[SubscriberError]


def import_subscribers(csv_path: str | Path, list_name: str, settings: Settings, *, all_or_nothing: bool = False
                       ) -> ImportReport:
    """Import a CSV into ``list_name``: good rows in one transaction, bad rows reported by line.

    With ``all_or_nothing`` a single bad row means nothing is imported.
    """
    source = str(csv_path)
    check_list_name(list_name)
    errors: list[SubscriberError] = []
    # The file is read a line at a time into a temporary file of unique rows, then merged
    # chunk by chunk in one transaction: memory stays flat for a million rows, and the
    # database is opened only once the whole file has been read and judged.
    try:
        with open(csv_path, "rb") as stream, UniqueRows() as rows:
            for item in read_csv(csv_lines(stream, source=source), source=source):
                if isinstance(item, SubscriberError):
                    errors.append(item)
                else:
                    rows.add(item)
            if errors and all_or_nothing:
                return ImportReport(None, errors)
            with Store.open(settings.database.location) as store:
                counts = store.upsert_subscribers(rows, list_name=list_name)
    except OSError as exc:
        raise SubscriberError(f"{source}: can't read it: {exc.strerror or exc}") from exc
    return ImportReport(counts, errors)


def check_list_name(name: str) -> None:
    """Raise SubscriberError unless ``name`` is a list name an issue can address."""
    if not is_valid_name(name):
        raise SubscriberError(f"list name {name!r}: use lower-case letters, digits, '-' and '_' "
                              "(up to 64, starting with a letter or digit), as an issue's list: does")


def message_signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """The DKIM signing function the settings ask for, or None when DKIM is off.

    On when ``NEWSLETTER_DKIM_KEY_FILE`` is set; then ``[dkim] selector`` is required.
    A selector without a key file is an error too: a half-configured DKIM should not
    quietly send unsigned mail.
    """
    dkim = settings.dkim
    if settings.dkim_key_file is None:
        if dkim.selector:
            raise ConfigError("[dkim] selector is set but NEWSLETTER_DKIM_KEY_FILE is not: set it to the key's path")
        return None
    if not dkim.selector:
        raise ConfigError("NEWSLETTER_DKIM_KEY_FILE is set but [dkim] selector is not: add it to newsletter.toml")
    from newsletter.dkim import load_signer  # dkimpy and cryptography: ~55 ms, only with DKIM on

    return load_signer(settings.dkim_key_file, selector=dkim.selector, domain=dkim.domain).sign


@dataclass(frozen=True)
class SentTest:
    """What became of a test message to one address."""

    address: str
    result: SendResult
    message_id: str


def send_test(issue_path: str | Path, addresses: Sequence[str], settings: Settings) -> list[SentTest]:
    """Send ``issue_path`` to ``addresses`` as a subscriber would get it, subject prefixed ``[TEST]``.

    Nothing goes into the ledger. An address that is a subscriber gets their own name,
    merge fields and a working unsubscribe link; any other gets the message as an
    anonymous reader (its unsubscribe link says it was a test). Everything is checked
    and rendered before the first connection.
    """
    recipients = [normalise_address(address) for address in addresses]
    issue = load_issue(issue_path)
    sign = message_signer(settings)
    rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
    template = compile_message(replace(rendered, subject=f"[TEST] {rendered.subject}"), sender=settings.sender,
                               list_id=issue.list_name)
    people = _known_subscribers(settings, issue.list_name, recipients)
    date = now_header_date()
    messages: list[tuple[str, str, bytes]] = []
    for email in recipients:
        message_id = f"test.{issue.slug}.{secrets.token_hex(8)}@{settings.sender.domain}"
        url, mailto = unsubscribe_links(settings.sender.site_url, settings.sender.unsubscribe_address, "test")
        recipient = people.get(email.lower()) or Recipient(email=email, unsubscribe_url=url, unsubscribe_mailto=mailto)
        message = personalise(template, recipient, message_id=message_id, date=date)
        messages.append((email, message_id, sign(message) if sign else message))
    return asyncio.run(_send_all(settings, messages))


def _known_subscribers(settings: Settings, list_name: str, emails: Sequence[str]) -> dict[str, Recipient]:
    """Recipients for the addresses that are subscribers of ``list_name`` (only if the database exists already)."""
    if not settings.database.url and not settings.database.path.exists():
        return {}
    with Store.open(settings.database.location) as store:
        people = store.subscribers(emails=emails)
        list_id = store.find_list(list_name)
    tokens = TokenSigner(split_keys(settings.secret_key.reveal())) if settings.secret_key and list_id else None
    found: dict[str, Recipient] = {}
    for person in people:
        token = tokens.make(person.id, list_id) if tokens is not None and list_id is not None else "test"
        url, mailto = unsubscribe_links(settings.sender.site_url, settings.sender.unsubscribe_address, token)
        found[person.email.lower()] = Recipient(email=person.email, name=person.name, unsubscribe_url=url,
                                                unsubscribe_mailto=mailto, fields=person.fields)
    return found


async def _send_all(settings: Settings, messages: Sequence[tuple[str, str, bytes]]) -> list[SentTest]:
    connection = SmtpConnection(settings.smtp)
    results: list[SentTest] = []
    try:
        for email, message_id, message in messages:
            try:
                result = await connection.send(settings.sender.from_email, email, message)
            except DeliveryError as exc:
                result = SendResult("deferred", None, str(exc))
            results.append(SentTest(email, result, message_id))
    finally:
        await connection.close()
    return results
