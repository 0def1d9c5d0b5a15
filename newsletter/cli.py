"""The ``newsletter`` command: parses arguments, calls :mod:`newsletter.jobs`, prints.

Exit codes: 0 success; 1 ``check`` found problems; 2 bad input (issue file, config).
"""

from __future__ import annotations

import json
import sys
import webbrowser
from pathlib import Path
from typing import NoReturn

import click

from newsletter.config import Settings, load_settings
from newsletter.errors import IssueError, NewsletterError
from newsletter.jobs import check_files, render_to_files

__all__ = [
    "main",
]

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2


def _fail(error: NewsletterError) -> NoReturn:
    # An IssueError already reads "file:line: what is wrong (fix)".
    click.echo(str(error) if isinstance(error, IssueError) else f"error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"))
    except NewsletterError as exc:
        _fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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

    Exit codes: 0 success, 1 check findings, 2 bad input.
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
    settings = _settings(ctx)
    try:
        files = render_to_files(issue, out_dir, settings)
    except NewsletterError as exc:
        _fail(exc)
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
@click.option("--json", "as_json", is_flag=True, help="Print the findings as a JSON list.")
@click.pass_context
def check(ctx: click.Context, issues: tuple[str, ...], as_json: bool) -> None:
    """Check ISSUES before sending: schema, subject, preheader, links, images, size, text width.

    Exit 0 when clean, 1 when there are findings (warnings or errors; info doesn't
    count), 2 when a file can't be parsed at all.

    \b
    Examples:
      newsletter check issues/2017-07-07-trump-putin.md
      newsletter check --json issues/*.md | jq '.[] | select(.severity == "error")'
    """
    settings = _settings(ctx)
    report = check_files(issues, settings)
    if as_json:
        rows = [
            {"source": err.source, "line": err.line, "severity": "error", "code": "invalid",
             "message": err.message + (f" ({err.hint})" if err.hint else "")}
            for err in report.errors
        ] + [finding.as_dict() for finding in report.findings]
        click.echo(json.dumps(rows, indent=2))
    else:
        for err in report.errors:
            click.echo(str(err), err=True)
        for finding in report.findings:
            click.echo(str(finding))
        counted = sum(1 for finding in report.findings if finding.counts)
        if not report.errors:
            click.echo(f"{len(issues)} file(s) checked, {counted} finding(s)", err=True)
    sys.exit(report.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
