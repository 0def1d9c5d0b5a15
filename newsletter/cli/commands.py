"""The ``newsletter`` command: parses arguments, calls the stages' library functions, prints.

Commands let a :class:`NewsletterError` go: the group prints its one line and exits with
the code :data:`EXIT_CODES` gives its class (:func:`exit_code`), the one place an error
becomes an exit status. What isn't an error (``check`` findings, rows an import refused,
``dispatch`` leaving deliveries for later) each command says with its own code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import os
import sys
import time
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from newsletter.cli.progress import describe, progress_for
from newsletter.compose.sample import render_to_files
from newsletter.compose.signing import message_signer
from newsletter.config import Settings, load_settings
from newsletter.deliver.dispatch import DispatchOptions, dispatch
from newsletter.deliver.outbox import purge_line, request_confirmation
from newsletter.deliver.send_test import send_test
from newsletter.errors import (
    ComposeError,
    ConfigError,
    DeliveryError,
    InboundError,
    IssueError,
    NewsletterError,
    RenderError,
    StoreError,
    SubscriberError,
)
from newsletter.issue.parse import slug_from_path
from newsletter.preflight.report import COMPAT_KINDS, check_files
from newsletter.store.consent import consent_claim
from newsletter.store.feedback import Feedback, feedback_rates, feedback_warnings
from newsletter.store.importing import check_list_name, import_subscribers
from newsletter.store.ledger import STATES, Ledger
from newsletter.store.rights import DataRights
from newsletter.store.subscriber_files import subscriber_row, write_csv, write_json
from newsletter.store.subscribers import Store
from newsletter.tokens import split_keys

__all__ = [
    "EVERY_ERROR_EXITS",
    "EXIT_CODES",
    "exit_code",
    "main",
    "run",
]

EXIT_FINDINGS = 1
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3

#: The exit status of a command that stops on an error, by the error's class (the nearest
#: class in its MRO). 2: something the user wrote or set is wrong and fixing it is the way
#: on; 1: something failed underneath that running again, or later, may get past.
EXIT_CODES: dict[type[NewsletterError], int] = {
    IssueError: EXIT_BAD_INPUT,  # an issue file
    RenderError: EXIT_BAD_INPUT,  # its template (or the MJML/CSS it makes)
    ConfigError: EXIT_BAD_INPUT,  # newsletter.toml, the environment, a key file, a port or folder given
    SubscriberError: EXIT_BAD_INPUT,  # an address, a list name, a subscriber file
    ComposeError: EXIT_BAD_INPUT,  # an address or header a message can't carry
    StoreError: EXIT_ERROR,  # the database: locked, damaged, full, read-only, unreachable
    DeliveryError: EXIT_ERROR,  # the relay: unreachable, or it refused our login or sender
    NewsletterError: EXIT_ERROR,
}

#: Commands that promise one code for every error. ``dispatch`` is what a scheduler runs, and
#: it reads 0 (all sent), 3 (something left for a later run; systemd's SuccessExitStatus=3) and
#: 1 (an error): its report gives 1 for a bad issue file met during the run, and an error that
#: stops the run before it starts is no different to the scheduler.
EVERY_ERROR_EXITS: dict[str, int] = {"dispatch": EXIT_ERROR}


def exit_code(error: NewsletterError, command: str = "") -> int:
    """The exit status for ``error`` raised by ``command`` (a top-level command's name; "" for none)."""
    if command in EVERY_ERROR_EXITS:
        return EVERY_ERROR_EXITS[command]
    return next(EXIT_CODES[kind] for kind in type(error).__mro__ if kind in EXIT_CODES)


def _fail(error: NewsletterError, command: str = "") -> NoReturn:
    # An IssueError already reads "file:line: what is wrong (fix)".
    click.echo(str(error) if isinstance(error, IssueError) else f"error: {error}", err=True)
    sys.exit(exit_code(error, command))


class _Newsletter(click.Group):
    """The ``newsletter`` group: a NewsletterError from any command is one line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            _fail(exc, ctx.invoked_subcommand or "")


def _settings(ctx: click.Context) -> Settings:
    return load_settings(ctx.obj.get("config"))


@contextmanager
def _store(ctx: click.Context) -> Iterator[Store]:
    """The configured database, open."""
    with Store.open(_settings(ctx).database.location) as store:
        yield store


@click.group(cls=_Newsletter, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config", type=click.Path(dir_okay=False), envvar="NEWSLETTER_CONFIG",
    help="Settings file (default ./newsletter.toml; embedded defaults when it doesn't exist).",
)
@click.version_option(package_name="newsletter")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Turn issue files (Markdown + YAML front matter) into responsive emails.

    \b
    Examples:
      newsletter render issues/2017-07-07-trump-putin.md
      newsletter check issues/*.md
      newsletter send-test issues/2017-07-07-trump-putin.md --to me@example.com
      newsletter dispatch
      newsletter status --json

    \b
    Exit codes:
      0  success
      1  an error: the database or the SMTP relay failed; also check's
         findings, rows an import refused, and every error of dispatch
      2  bad input: an issue file, its template, newsletter.toml or the
         environment, an address or list name, a command-line argument
      3  dispatch left deliveries deferred, failed, uncertain or waiting
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.argument("issue", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", default="build", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the .html, .txt and .eml files.")
@click.option("--open", "open_browser", is_flag=True, help="Open the HTML in a web browser afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
def render(ctx: click.Context, issue: str, out_dir: str, open_browser: bool, as_json: bool) -> None:
    """Render ISSUE into OUTPUT/<slug>.html, <slug>.txt and <slug>.eml.

    The .eml is the exact message a subscriber gets (multipart/alternative, text part
    first), personalised for an example recipient. Nothing is written when the issue
    file has an error.

    \b
    Example:
      newsletter render issues/2017-07-07-trump-putin.md -o build --open
    """
    files = render_to_files(issue, out_dir, _settings(ctx))
    if as_json:
        click.echo(json.dumps({
            "html": str(files.html), "text": str(files.text), "eml": str(files.eml),
            "html_bytes": files.html_bytes, "eml_bytes": files.eml_bytes,
        }, indent=2))
    else:
        click.echo(f"wrote {files.html} ({files.html_bytes / 1024:.1f} KB)")
        click.echo(f"wrote {files.text}")
        click.echo(f"wrote {files.eml} ({files.eml_bytes / 1024:.1f} KB)")
    if open_browser:
        webbrowser.open(Path(files.html).resolve().as_uri())


@main.command()
@click.argument("issues", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--clients", default="gmail,outlook-windows,apple-mail,yahoo", show_default=True, metavar="IDS",
              help="Email clients to check compatibility for (caniemail.com ids, comma-separated; "
                   "e.g. outlook-macos, gmail-android, samsung-email).")
@click.option("--browser", is_flag=True, help="Also check dark mode in Chromium (rendered, not just computed).")
@click.option("--screenshots", type=click.Path(file_okay=False), metavar="DIR",
              help="Save light, dark and 375 px screenshots here (implies --browser).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Print info findings too (JSON always has them).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole report as JSON: findings, per-client table, checks run, totals.")
@click.pass_context
def check(ctx: click.Context, issues: tuple[str, ...], clients: str, browser: bool, screenshots: str | None,
          show_all: bool, as_json: bool) -> None:
    """Check ISSUES before sending: the file, the rendered email, client support, accessibility.

    \b
    - the file: schema, subject, preheader, links, images, size against Gmail's clip, text width;
    - languages: a text that reads as another language than the issue declares (language:,
      else [sender] language), and a template that doesn't give the email the issue's
      direction (dir) or language (lang);
    - client compatibility: every CSS property, value, selector, at-rule and HTML element
      or attribute the final HTML uses that a chosen client doesn't support or supports
      partly (caniemail.com data, shipped with the tool), where it is used, and the page
      that explains it; the built-in template's deliberate choices are shown as info;
    - accessibility: lang and dir, layout tables, heading order, alt text, link text,
      text contrast (WCAG AA 4.5:1) in the light and the dark scheme, font sizes, and a
      plain-text part that reads on its own; --browser checks dark mode in Chromium too.

    Exit 0 when clean, 1 when there are findings (warnings or errors; info doesn't
    count), 2 when a file can't be parsed at all.

    \b
    Examples:
      newsletter check issues/2017-07-07-trump-putin.md
      newsletter check --clients gmail,outlook-windows,samsung-email --screenshots build/shots issues/*.md
      newsletter check --json issues/*.md | jq '.findings[] | select(.severity == "error")'
    """
    settings = _settings(ctx)
    try:
        report = check_files(issues, settings, clients=[name.strip() for name in clients.split(",") if name.strip()],
                             browser=browser, screenshots=Path(screenshots) if screenshots else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--clients") from exc
    if as_json:  # the same report as the text below, all of it (README: "check --json")
        click.echo(json.dumps(report.as_json(), indent=2))
        sys.exit(report.exit_code)
    for err in report.errors:
        click.echo(str(err), err=True)
    for finding in report.findings:
        if finding.counts or show_all:
            click.echo(str(finding))
    for checks in report.files:
        click.echo(f"{checks.source}: email-client compatibility (caniemail.com):")
        click.echo(f"  {'client':<18}" + "".join(f"{kind:>12}" for kind in COMPAT_KINDS))
        for client, counts in checks.compat.items():
            click.echo(f"  {client:<18}" + "".join(f"{counts[kind]:>12}" for kind in COMPAT_KINDS))
        click.echo(f"  accessibility: {report.accessibility_findings(checks.source)} finding(s)"
                   f" ({', '.join(checks.accessibility)})")
        if checks.dark_mode_in_browser:
            click.echo(f"  dark mode in Chromium: {report.dark_mode_findings(checks.source)} finding(s)"
                       + (f"; screenshots: {', '.join(checks.screenshots)}" if checks.screenshots else ""))
        else:
            click.echo("  dark mode: contrast computed from the dark-scheme CSS (above);"
                       " --browser renders it in Chromium")
    counted = sum(1 for finding in report.findings if finding.counts)
    hidden = sum(1 for finding in report.findings if not finding.counts)
    if not report.errors:
        click.echo(f"{len(issues)} file(s) checked, {counted} finding(s)"
                   + (f", {hidden} info (-a shows them)" if hidden and not show_all else ""), err=True)
    for note in report.notes:  # about the settings, once (JSON: "notes")
        click.echo(note, err=True)
    sys.exit(report.exit_code)


@main.group()
def subscribers() -> None:
    """Manage subscribers and lists in the database.

    \b
    Examples:
      newsletter subscribers import readers.csv --list default
      newsletter subscribers add ann@example.org --name "Ann Reader"
      newsletter subscribers export --format json > subscribers.json
    """


@subscribers.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False))
@click.option("--list", "list_name", default="default", show_default=True, help="The list to put them on.")
@click.option("--all-or-nothing", is_flag=True, help="Import nothing when any row is bad.")
@click.option("--consent", metavar="HOW", default=None,
              help="How these readers agreed (recorded for each membership the import creates).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and errors as JSON.")
@click.pass_context
def import_command(ctx: click.Context, csv_file: str, list_name: str, all_or_nothing: bool, consent: str | None,
                   as_json: bool) -> None:
    """Import CSV_FILE (columns email, name, any others become merge fields).

    Good rows are added or updated in one transaction; each bad row is reported with
    its line, and the exit status is then 1 (2 with --all-or-nothing, nothing imported).
    Addresses merge case-insensitively, and nobody who unsubscribed or bounced is
    re-activated. --consent "how" records, for each membership the import creates,
    how those readers agreed (see `subscribers show`).

    \b
    Example:
      newsletter subscribers import readers.csv --list morning --consent "paper form, book fair 2026"
    """
    report = import_subscribers(csv_file, list_name, _settings(ctx), all_or_nothing=all_or_nothing,
                                consent=consent)
    counts = report.counts
    if as_json:
        click.echo(json.dumps({
            "added": counts.added if counts else 0, "updated": counts.updated if counts else 0,
            "kept_unsubscribed_or_bounced": counts.kept_out if counts else 0,
            "forgotten_not_readded": counts.forgotten if counts else 0,
            "errors": [str(error) for error in report.errors],
        }, indent=2))
    else:
        for error in report.errors:
            click.echo(str(error), err=True)
        if counts is None:
            click.echo(f"nothing imported: {len(report.errors)} bad row(s)", err=True)
        else:
            forgotten = f", {counts.forgotten} forgotten, not re-added" if counts.forgotten else ""
            click.echo(f"{counts.added} added, {counts.updated} updated "
                       f"({counts.kept_out} stay unsubscribed or bounced){forgotten}, {len(report.errors)} refused "
                       f"-> list '{list_name}'")
    if report.errors:
        sys.exit(EXIT_BAD_INPUT if counts is None else EXIT_FINDINGS)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="Display name.")
@click.option("--list", "list_name", default="default", show_default=True)
@click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help="A merge field (repeatable).")
@click.option("--consent", metavar="HOW", default=None,
              help="How they agreed (recorded when this puts them on the list).")
@click.option("--pending", is_flag=True,
              help="Ask them first: a confirmation email, and issues only once they confirm (double opt-in).")
@click.pass_context
def add_command(ctx: click.Context, email: str, name: str, list_name: str, fields: tuple[str, ...],
                consent: str | None, pending: bool) -> None:
    """Add (or update) one subscriber on a list.

    --consent "how" records how they agreed, when this puts them on the list.
    --pending makes the membership pending and sends a confirmation email at
    once: they get issues only after they confirm. Exit 1 when the relay
    doesn't take it (it stays queued; `newsletter dispatch` sends it later).

    \b
    Examples:
      newsletter subscribers add ann@example.org --name "Ann Reader" --field city=Leeds --consent "asked by phone"
      newsletter subscribers add bob@example.org --list briefing --pending --consent "asked at the fair"
    """
    row = subscriber_row(email, name, dict(_split_field(item) for item in fields))
    claim = None if consent is None else consent_claim("cli", consent)
    if pending:
        if fields:
            raise SubscriberError("--field can't go with --pending: add the fields once they have confirmed")
        check_list_name(list_name)
        result = request_confirmation(_settings(ctx), row.email, list_name=list_name, name=row.name,
                                      source=claim.source if claim else "")
        click.echo(f"{row.email}: {_PENDING_ANSWERS[result.status].format(list=list_name)}")
        return
    keys = split_keys(_settings(ctx).secret_key.reveal())
    with _store(ctx) as store:
        check_list_name(list_name)
        store.check_forget_keys(keys)
        forgotten_at = DataRights(store).was_forgotten(row.email, keys)
        if forgotten_at is not None:
            raise SubscriberError(f"{row.email} was forgotten at their request ({forgotten_at}) and is not added"
                                  " again: only a new double opt-in by them can bring them back"
                                  " (subscribers add --pending asks them)")
        counts = store.upsert_subscribers([row], list_name=list_name, forget_keys=keys, consent=claim)
    state = "added" if counts.added else "updated"
    note = " (stays unsubscribed or bounced)" if counts.kept_out else ""
    click.echo(f"{state} {row.email} on list '{list_name}'{note}")


#: what `subscribers add --pending` says, by what the signup did
_PENDING_ANSWERS = {
    "queued": "pending on list '{list}'; confirmation email sent",
    "joined": "pending on list '{list}'; the confirmation sent to them recently asks for it too (no new email)",
    "nothing": "already on list '{list}', or mail to them is suppressed: nothing sent",
    "limited": "too many signups this hour: nothing stored",
}


def _split_field(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise SubscriberError(f"--field {item!r} must be KEY=VALUE")
    return key, value


@subscribers.command("remove")
@click.argument("email")
@click.option("--list", "list_name", default=None, help="Only from this list (default: from everything).")
@click.pass_context
def remove_command(ctx: click.Context, email: str, list_name: str | None) -> None:
    """Unsubscribe EMAIL (kept in the database, so no import brings them back).

    \b
    Example:
      newsletter subscribers remove ann@example.org --list morning
    """
    with _store(ctx) as store:
        found = store.unsubscribe(email, list_name=list_name)
    if not found:
        click.echo(f"error: {email} is not a subscriber" + (f" of '{list_name}'" if list_name else ""), err=True)
        sys.exit(EXIT_FINDINGS)
    click.echo(f"unsubscribed {email}" + (f" from '{list_name}'" if list_name else " from everything"))


@subscribers.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="JSON: the export of everything held about them.")
@click.pass_context
def show_command(ctx: click.Context, email: str, as_json: bool) -> None:
    """Show everything the tool holds about EMAIL: fields, lists, deliveries, what came back by mail.

    The address matches case-insensitively; one that isn't a subscriber exits 2.
    --json is the export a reader may ask for (their data, machine-readable).

    \b
    Example:
      newsletter subscribers show ann@example.org --json > ann.json
    """
    with _store(ctx) as store:
        record = DataRights(store).person(email)
    if record is None:
        raise SubscriberError(f"{email} is not a subscriber")
    if as_json:
        click.echo(json.dumps(record.as_json(), indent=2, ensure_ascii=False))
    else:
        for line in record.lines():
            click.echo(line)


@subscribers.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@click.pass_context
def forget_command(ctx: click.Context, email: str, yes: bool) -> None:
    """Erase EMAIL's person: address, name and fields, everywhere the database keeps them.

    All that stays is a keyed hash of the address (NEWSLETTER_SECRET_KEY), so that no
    import or `subscribers add` brings them back (only a new double opt-in by them can),
    and a row marked `forgotten` so each issue's counts stay right. Run it again: nothing
    changes. An address that was never a subscriber exits 2.

    \b
    Example:
      newsletter subscribers forget ann@example.org --yes
    """
    keys = split_keys(_settings(ctx).secret_key.reveal())
    if not keys:
        raise ConfigError("forgetting keeps a keyed hash of the address: set NEWSLETTER_SECRET_KEY")
    if not yes:
        click.confirm(f"Erase {email} for good (this can't be undone)?", abort=True)
    with _store(ctx) as store:
        outcome = DataRights(store).forget(email, keys)
    if outcome == "unknown":
        raise SubscriberError(f"{email} is not a subscriber")
    click.echo(f"{email} was forgotten already: nothing changed" if outcome == "already"
               else f"forgot {email}: only a keyed hash of the address is kept")


@subscribers.command("list")
@click.option("--list", "list_name", default=None, help="Only active members of this list.")
@click.option("--status", type=click.Choice(["active", "unsubscribed", "bounced", "complained", "forgotten"]),
              default=None)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, list_name: str | None, status: str | None, as_json: bool) -> None:
    """List subscribers.

    \b
    Example:
      newsletter subscribers list --list default --status active
    """
    out = sys.stdout
    # Each row is written as the database gives it: a million subscribers in flat memory.
    with _store(ctx) as store, store.snapshot():
        people = store.iter_subscribers(list_name=list_name, status=status)
        if as_json:
            write_json(people, out)
            out.write("\n")
        else:
            for person in people:
                out.write(f"{person.email}\t{person.name}\t{person.status}\t{','.join(person.lists)}\n")
    out.flush()


@subscribers.command("count")
@click.option("--list", "list_name", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def count_command(ctx: click.Context, list_name: str | None, as_json: bool) -> None:
    """Count subscribers per status.

    \b
    Example:
      newsletter subscribers count --list default --json
    """
    with _store(ctx) as store:
        counts = store.count(list_name=list_name)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(", ".join(f"{number} {state}" for state, number in counts.items()))


@subscribers.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--list", "list_name", default=None)
@click.pass_context
def export_command(ctx: click.Context, fmt: str, list_name: str | None) -> None:
    """Export subscribers as CSV or JSON to standard output.

    \b
    Example:
      newsletter subscribers export --format csv > backup.csv
    """
    out = sys.stdout
    # One snapshot for the header (every merge field) and the rows, each row written as it is
    # read: a backup of a million subscribers in flat memory, consistent however busy the list.
    with _store(ctx) as store, store.snapshot():
        if fmt == "csv":
            write_csv(store.iter_subscribers(list_name=list_name), out, store.field_names(list_name=list_name))
        else:
            write_json(store.iter_subscribers(list_name=list_name), out)
            out.write("\n")
    out.flush()


def _parse_now(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time like 2024-05-01T06:00:00+00:00",
                                 param_hint="--now") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset, e.g. {value}+00:00", param_hint="--now")
    return moment


@main.command("dispatch")
@click.option("--issue", default=None, metavar="ISSUE",
              help="Only this issue (file or slug); due at once when it has no send_at.")
@click.option("--dry-run", is_flag=True, help="Render and count who would get what; send and write nothing.")
@click.option("--now", "now_text", default=None, metavar="TIME",
              help="Decide what is due as if it were TIME (ISO 8601 with offset).")
@click.option("--resend-uncertain", is_flag=True,
              help="Send again what a crashed run may or may not have sent (they may get it twice).")
@click.option("--allow-changed", is_flag=True, help="Send an issue file that changed after sending began.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only the summary.")
@click.pass_context
def dispatch_command(ctx: click.Context, issue: str | None, dry_run: bool, now_text: str | None,
                     resend_uncertain: bool, allow_changed: bool, as_json: bool, quiet: bool) -> None:
    """Send every due issue (send_at has passed, not yet complete) to its list.

    Each subscriber gets an issue once: a ledger in the database records every
    delivery, so a run can be stopped (Ctrl-C, SIGTERM) or killed and run again.
    Temporary failures (4xx, timeouts) are retried with backoff in this run and
    later ones, for up to [dispatch] give_up_after_hours; permanent ones (5xx) fail,
    and an unknown mailbox marks the subscriber bounced.

    Exit codes: 0 everything due was sent; 3 some deliveries are deferred, failed,
    uncertain or waiting for a later run; 1 an error (bad issue file, config,
    database, or the SMTP server refused our login or sender).

    \b
    Examples:
      newsletter dispatch                       # what cron runs
      newsletter dispatch --dry-run
      newsletter dispatch --issue issues/2017-07-07-trump-putin.md
      newsletter dispatch --now 2024-05-01T06:00:00+00:00 --json
    """
    settings = _settings(ctx)
    sign = None if dry_run else message_signer(settings)
    options = DispatchOptions(issue=issue, dry_run=dry_run, now=_parse_now(now_text),
                              resend_uncertain=resend_uncertain, allow_changed=allow_changed)
    report = dispatch(settings, options, progress=progress_for(sys.stderr, quiet=quiet or as_json), sign=sign)
    for error in report.errors:
        click.echo(error, err=True)
    if as_json:
        click.echo(json.dumps({"issues": [summary.as_dict() for summary in report.issues],
                               "errors": report.errors, "exit_code": report.exit_code,
                               "outbox": report.outbox.as_dict() if report.outbox is not None else None,
                               "purged": dataclasses.asdict(report.purged) if report.purged is not None else None},
                              indent=2))
    else:
        if report.purged is not None and purge_line(report.purged):
            click.echo(purge_line(report.purged), err=True)
        if report.outbox is not None and (report.outbox.handled or report.outbox.notes):
            click.echo(report.outbox.describe(), err=True)
            for note in report.outbox.notes:
                click.echo(f"outbox: {note}", err=True)
        for summary in report.issues:
            if summary.error:
                click.echo(summary.error if summary.error.startswith(summary.source) else
                           f"{summary.slug}: error: {summary.error}", err=True)
            for note in summary.notes:
                click.echo(f"{summary.slug}: {note}", err=True)
            if summary.dry_run:
                click.echo(f"{summary.slug}: dry run, {summary.waiting} to send of {summary.audience}", err=True)
            elif quiet and not summary.error:
                click.echo(describe(summary), err=True)
        if not report.issues and not report.errors:
            click.echo("nothing is due", err=True)
    # Once a run, and only one that sent (or tried, or would): cron runs it every few minutes.
    if settings.sender.bounce_notice and any(summary.dry_run or summary.sent or summary.failed or summary.retries
                                             for summary in report.issues):
        click.echo(settings.sender.bounce_notice, err=True)
    sys.exit(report.exit_code)


@main.command("send-test")
@click.argument("issue", type=click.Path(dir_okay=False))
@click.option("--to", "addresses", multiple=True, required=True, metavar="ADDR",
              help="Where to send it (repeatable).")
@click.pass_context
def send_test_command(ctx: click.Context, issue: str, addresses: tuple[str, ...]) -> None:
    """Send ISSUE to one or more inboxes exactly as subscribers get it, subject "[TEST] …".

    Same headers, same DKIM signature, same links; nothing is recorded in the
    ledger. An address that is a subscriber sees their own name and unsubscribe
    link. Exit 0 when every address accepted it, 1 when one didn't, 2 for a bad
    address or issue file (nothing is sent then).

    \b
    Example:
      newsletter send-test issues/2017-07-07-trump-putin.md --to me@example.com
    """
    results = send_test(issue, addresses, _settings(ctx))
    failed = 0
    for sent in results:
        if sent.result.outcome == "sent":
            click.echo(f"sent to {sent.address} (Message-ID <{sent.message_id}>)")
        else:
            failed += 1
            click.echo(f"error: {sent.address}: {sent.result.outcome}: {sent.result.describe()}", err=True)
    sys.exit(EXIT_ERROR if failed else 0)


#: sysexits.h EX_TEMPFAIL: an MTA piping a message to `inbound -` keeps it and tries again later
EXIT_TEMPFAIL = 75
#: how often a long `inbound` run says how far it got (messages)
_INBOUND_PROGRESS_EVERY = 10_000


@main.command("inbound")
@click.argument("source", required=False, type=click.Choice(["-"]))
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path), help="Read a Maildir folder.")
@click.option("--mbox", type=click.Path(dir_okay=False, path_type=Path), help="Read an mbox file.")
@click.option("--imap", is_flag=True, help="Read the IMAP mailbox of [inbound] (password: NEWSLETTER_IMAP_PASSWORD).")
@click.option("--json", "as_json", is_flag=True, help="JSON: the summary as one object.")
@click.pass_context
def inbound_command(ctx: click.Context, source: str | None, maildir: Path | None, mbox: Path | None,
                    imap: bool, as_json: bool) -> None:
    """Act on what came back by mail: bounces, complaints (ARF) and mail unsubscribes.

    Reads one source: a Maildir (--maildir), an mbox (--mbox), the IMAP mailbox of
    [inbound] (--imap), or one message on standard input (-), as an MTA's pipe alias gives
    it. Each message is filed, never deleted: in .processed (Maildir++ subfolder, the mbox's
    FILE.processed, the IMAP processed folder) when understood, in .unhandled for a human when
    not. A hard bounce marks the address bounced; soft ones do after [bounces] soft_limit;
    a complaint unsubscribes the reader from everything; `unsubscribe <token>` ends that list.

    \b
    Exit status: 0 every message read (the summary says how many were unhandled);
    75 the database or mailbox is unavailable now (nothing lost: run again, or the MTA
    retries); 2 a setting or path to fix; 1 another error.

    \b
    Examples:
      newsletter inbound --maildir /var/mail/bounces
      newsletter inbound --imap --json
      bounces: "|/srv/newsletter/.venv/bin/newsletter inbound -"    (an /etc/aliases line)
    """
    from newsletter.inbound.run import run_inbound  # flufl.bounce and imapclient: only for this command

    piped = source == "-"
    shown = {"count": 0, "started": time.perf_counter()}

    def progress(where: str, verdict: str) -> None:
        shown["count"] += 1
        if shown["count"] % _INBOUND_PROGRESS_EVERY == 0:
            elapsed = time.perf_counter() - shown["started"]
            click.echo(f"inbound: {shown['count']:,} messages read ({shown['count'] / elapsed:,.0f} msg/s)", err=True)

    try:
        settings = _settings(ctx)
        report = run_inbound(settings, maildir=maildir, mbox=mbox, stdin=sys.stdin.buffer if piped else None,
                             imap=imap, progress=progress)
    except (StoreError, InboundError, ConfigError) as exc:
        temporary = isinstance(exc, StoreError) or (isinstance(exc, InboundError) and exc.temporary) or (
            piped and isinstance(exc, ConfigError))  # a pipe's message waits in the MTA's queue for the fix
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TEMPFAIL if temporary else exit_code(exc, "inbound"))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for error in report.mailbox.errors:
        click.echo(f"warning: {error}", err=True)
    box = report.mailbox
    kinds = ", ".join(f"{count:,} {kind.replace('_', ' ')}" for kind, count in sorted(report.tally.kinds.items()))
    changes = ", ".join(f"{count:,} {change}" for change, count in sorted(report.tally.changes.items()))
    click.echo(f"inbound ({report.source}): {box.handled:,} messages: {box.processed:,} processed, "
               f"{box.unhandled:,} unhandled (for a human), {box.retried:,} left to retry"
               f" in {report.elapsed:.1f} s ({report.rate:,.0f} msg/s)")
    if kinds:
        click.echo(f"  kinds: {kinds}")
    click.echo(f"  changes: {changes or 'none'}")
    for note, count in sorted(report.tally.notes.items()):
        click.echo(f"  {count:,} {note}")


@main.command("status")
@click.argument("issue", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON: counts per state and the latest errors.")
@click.option("--errors", "error_count", default=10, show_default=True, help="How many recent errors to show.")
@click.pass_context
def status_command(ctx: click.Context, issue: str | None, as_json: bool, error_count: int) -> None:
    """Show each issue's deliveries per state (or ISSUE's, by file or slug), what came back, and the latest errors.

    What came back by mail (``newsletter inbound``): hard and soft bounces, complaints and
    unsubscribes, each counted once per reader and as a share of the messages sent. A
    warning line when complaints reach 0.1 % of sent (Gmail's and Yahoo's bulk-sender
    rules act at 0.3 %) or hard bounces 2 %.

    \b
    Examples:
      newsletter status
      newsletter status 2017-07-07-trump-putin --json
    """
    rows: list[dict[str, object]] = []
    with _store(ctx) as store:
        ledger = Ledger(store)
        feedback = Feedback(store)
        slugs = [slug_from_path(issue)] if issue else [slug for slug, _ in ledger.issues()]
        for slug in slugs:
            record = ledger.find_issue(slug)
            if record is None:
                click.echo(f"error: no deliveries recorded for '{slug}'", err=True)
                sys.exit(EXIT_FINDINGS)
            per_state = ledger.counts(record.id)
            came_back = feedback.issue_feedback(record.id, sent=per_state["sent"])
            rows.append({"slug": slug, "list": record.list_name, "completed_at": record.completed_at,
                         "counts": per_state, "errors": ledger.latest_errors(record.id, error_count),
                         "feedback": came_back,
                         "rates": {name: round(rate, 6) for name, rate in feedback_rates(came_back).items()},
                         "warnings": feedback_warnings(came_back)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no issue has been dispatched yet", err=True)
    for row in rows:
        counts = row["counts"]
        assert isinstance(counts, dict)
        state = f"complete {row['completed_at']}" if row["completed_at"] else "in progress"
        click.echo(f"{row['slug']} (list '{row['list']}', {state})")
        click.echo("  " + ", ".join(f"{counts[name]} {name}" for name in STATES))
        returned, rates = row["feedback"], row["rates"]
        assert isinstance(returned, dict) and isinstance(rates, dict)
        click.echo(f"  came back of {returned['sent']} sent: " + ", ".join(
            f"{returned[name]} {name.replace('_', ' ')} ({rates[name]:.2%})"
            for name in ("hard_bounces", "soft_bounces", "complaints", "unsubscribes")))
        warnings = row["warnings"]
        assert isinstance(warnings, list)
        for warning in warnings:
            click.echo(f"  warning: {warning}")
        errors = row["errors"]
        assert isinstance(errors, list)
        for error in errors:
            click.echo(f"  {error['at']} {error['email']}: {error['status']} after {error['attempts']} "
                       f"attempt(s): {error['code'] or ''} {error['text']}".rstrip())


@main.command("workers")
@click.option("--json", "as_json", is_flag=True, help="JSON: one object per live worker.")
@click.pass_context
def workers_command(ctx: click.Context, as_json: bool) -> None:
    """List the dispatch processes working on the database now, their claims and rates.

    With PostgreSQL ([database] url) several `newsletter dispatch` processes, on one
    machine or many, share the work; each appears here while it runs (a worker that
    died disappears at once: its lock went with its connection).

    \b
    Example:
      NEWSLETTER_DATABASE_URL=postgresql://news@db/news newsletter workers
    """
    with _store(ctx) as store:
        live = Ledger(store).workers()
    if as_json:
        click.echo(json.dumps([worker.as_dict() for worker in live], indent=2))
        return
    if not live:
        click.echo("no dispatch is running", err=True)
        return
    click.echo(f"{'run':>5}  {'host':<20} {'pid':>7}  {'started (UTC)':<25} {'claimed':>8} {'sending':>8} "
               f"{'sent':>9} {'msg/s':>7}")
    for worker in live:
        click.echo(f"{worker.run_id:>5}  {worker.host[:20]:<20} {worker.pid:>7}  {worker.started_at:<25} "
                   f"{worker.claimed:>8} {worker.sending:>8} {worker.sent:>9} {worker.rate:>7.1f}")


@main.command("outbox")
@click.option("--port", default=8025, show_default=True, help="Port on 127.0.0.1 to listen on.")
@click.option("--maildir", default="outbox", show_default=True, type=click.Path(file_okay=False),
              help="Maildir to store each message in (one file per recipient, in new/).")
def outbox_command(port: int, maildir: str) -> None:
    """Run a local SMTP server that keeps every message it receives in a Maildir.

    For trying things out: point [smtp] at 127.0.0.1:PORT with security = "none"
    (the embedded defaults do), dispatch, then read the messages in MAILDIR/new/
    with any mail client or `less`. Stops on Ctrl-C or SIGTERM.

    \b
    Example:
      newsletter outbox --port 8025 --maildir build/outbox
    """

    from newsletter.devtools.outbox import Outbox, serve_outbox  # aiosmtpd: only this command needs it

    def ready(outbox: Outbox) -> None:
        click.echo(f"outbox listening on {outbox.address}, saving to {outbox.maildir}/new (Ctrl-C stops)", err=True)

    serve_outbox(Path(maildir), port=port, ready=ready)


def _proxy_addresses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--proxy`` values checked: each an IP address or network (never "*": anyone could name any address)."""
    checked = []
    for value in values:
        try:
            checked.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)",
                                     ctx=ctx, param=param) from None
    return tuple(checked)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (put a TLS-terminating proxy in front for the internet).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--proxy", "proxies", multiple=True, metavar="ADDR", callback=_proxy_addresses,
              help="A reverse proxy's address or network whose X-Forwarded-For is believed (repeatable), so that"
                   " signup limits and consent records see readers' networks, not the proxy's.")
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, proxies: tuple[str, ...]) -> None:
    """Run the web side: one-click unsubscribe (RFC 8058) and the archive of sent issues.

    \b
    POST /unsubscribe/TOKEN     one-click unsubscribe (what Gmail and Yahoo send)
    GET  /unsubscribe/TOKEN     a page with one button (link scanners change nothing)
    GET  /issues/               every sent issue; /issues/SLUG/ is its web version
    GET  /subscribe             the signup form ([lists.NAME]); POST from any site
    POST /api/subscribe         the same as JSON, for scripts
    GET  /confirm/TOKEN         double opt-in: a page with one button (POST confirms)

    Reads the same config and database as dispatch, and needs NEWSLETTER_SECRET_KEY
    (it checks the tokens that key signed). Its links are [sender] site_url/...: serve
    this behind a proxy at that address. The access log never shows a token.

    Behind a reverse proxy, name it with --proxy so that signup limits count readers'
    networks, not the proxy's.

    \b
    Example:
      newsletter serve --port 8000
      newsletter serve --port 8000 --proxy 127.0.0.1
    """
    from newsletter.web.app import serve  # starlette and uvicorn: only this command needs them

    settings = _settings(ctx)
    click.echo(f"serving on http://{host}:{port}/ (links in emails point at {settings.sender.site_url}/)", err=True)
    serve(settings, host=host, port=port, proxies=proxies)


@main.group("archive")
def archive_group() -> None:
    """The archive of sent issues as static files (`newsletter serve` shows the same pages).

    \b
    Example:
      newsletter archive build public/
    """


@archive_group.command("build")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
@click.pass_context
def archive_build_command(ctx: click.Context, out_dir: str, as_json: bool) -> None:
    """Write every sent issue's web version, an index and an Atom feed to OUT_DIR/issues/.

    The same pages as `newsletter serve` shows, for any static web server: upload
    OUT_DIR so that OUT_DIR/issues/ is at [sender] site_url/issues/ (the emails'
    "view in browser" links point there).

    \b
    Example:
      newsletter archive build public/ && rsync -a public/ web:/srv/news/
    """
    from newsletter.web.archive import build_static

    written = build_static(Path(out_dir), _settings(ctx))
    if as_json:
        click.echo(json.dumps({"files": [str(path) for path in written]}, indent=2))
    else:
        click.echo(f"wrote {len(written) - 2} issue page(s), the index and feed.xml to {Path(out_dir) / 'issues'}",
                   err=True)


@main.command("preview")
@click.argument("issue", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8001, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the preview in a web browser.")
@click.pass_context
def preview_command(ctx: click.Context, issue: str, host: str, port: int, open_browser: bool) -> None:
    """Preview ISSUE in a browser while you write it: it reloads on every save.

    Shows the email at phone (375 px) and desktop widths side by side, the plain
    text, the headers, the size against Gmail's clip and the `check` findings. An
    error in the file shows on the page, with its line.

    \b
    Example:
      newsletter preview issues/2017-07-07-trump-putin.md --open
    """
    from newsletter.web.preview import serve_preview  # starlette, uvicorn, watchfiles: only here

    settings = _settings(ctx)
    if not Path(issue).is_file():
        raise IssueError(issue, 1, "no such issue file", "check the path")
    serve_preview(Path(issue), settings, host=host, port=port, open_browser=open_browser)


@main.command("dkim-keygen")
@click.argument("key_file", type=click.Path(dir_okay=False))
@click.option("--selector", default="nl", show_default=True, help="The selector the DNS record goes under.")
@click.option("--bits", default=2048, show_default=True, type=click.IntRange(2048, 4096))
@click.pass_context
def dkim_keygen_command(ctx: click.Context, key_file: str, selector: str, bits: int) -> None:
    """Write a new DKIM private key to KEY_FILE (mode 0600) and print the DNS record to publish.

    Keep the key outside the repository; point NEWSLETTER_DKIM_KEY_FILE at it and set
    [dkim] selector in newsletter.toml. An existing file is never overwritten.

    \b
    Example:
      newsletter dkim-keygen /etc/newsletter/dkim.pem --selector nl2026
    """
    from newsletter.compose.dkim import generate_key, txt_strings

    settings = _settings(ctx)
    try:
        record = generate_key(Path(key_file), bits=bits)
    except NewsletterError as exc:
        _fail(exc)
    domain = settings.dkim.domain or settings.sender.domain
    click.echo(f"wrote {key_file}; publish this TXT record:", err=True)
    chunks = " ".join(f'"{string}"' for string in txt_strings(record))
    click.echo(f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )")


def run() -> NoReturn:
    """The ``newsletter`` command: :func:`main`, then leave without the interpreter's clean-up.

    Tearing down the ~600 imported modules takes ~50 ms after the work is done, on every
    command. By then each command has written and closed its files and its database, so
    all that is left is to flush the output and go. (Tests call :func:`main` instead.)
    """
    code: int
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message")
            print(exc.code, file=sys.stderr)
            code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: the output is lost, which the exit code must say
        code = code or 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
