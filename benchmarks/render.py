"""Benchmark rendering one issue, and the per-recipient cost of sending it.

An issue is rendered once and then personalised for every subscriber, so the two
costs scale differently and are measured differently:

* **Once per issue** (median and p95 of ``--runs`` timed runs, after warm-up, each
  stage capped at ``--max-seconds``), on the seed issue ``issues/2017-07-07-trump-putin.md``:

  1. parse: :func:`newsletter.issue.parse.load_issue` (file read + Markdown parse);
  2. Jinja2: ``_render_template(issue, folder, _context(...))``, so it includes building
     the context (the Markdown blocks rendered to HTML fragments);
  3. MJML: ``_compile_mjml`` (mjml-python, Rust);
  4. premailer: ``_inline_css`` (CSS inlining with cssutils and lxml);
  5. plain text: :func:`newsletter.render.plaintext.render_text`;
  6. the whole :func:`newsletter.render.render_issue` (2-5 plus the placeholder prefix);
  7. :func:`newsletter.compose.compile_message` (quoted-printable encoding, once per issue).

  Stages 2-5 get exactly the inputs :func:`~newsletter.render.render_issue` gives them.

* **Once per recipient**: :func:`newsletter.compose.personalise` over ``--recipients``
  distinct recipients (distinct addresses, unsubscribe and preferences URLs and
  Message-IDs made beforehand), timed as a whole batch; the figure is the median over
  ``--repeats`` batches of the per-recipient mean, with the slowest batch beside it. It is run
  once with ASCII names ("Reader 123") and once with non-ASCII names ("Zoë Ünïcode 123"),
  which take the RFC 2047 and quoted-printable paths; and once more with ASCII names and
  each recipient's return path made too (:meth:`newsletter.tokens.ReturnPaths.make`, the
  signed VERP envelope sender dispatch gives every message when ``[sender] bounce_address``
  is set). Then, apart, personalising and DKIM-signing
  (:meth:`newsletter.compose.dkim.DkimSigner.sign`, a fresh 2048-bit key, every signed
  header over-signed) ``DKIM_RECIPIENTS`` recipients a batch, the same way.

Targets: personalisation ≤ 20 µs per recipient (ASCII names, with and without the return
path); the whole render is
noted against a 15 ms goal set for a later issue. Benchmarks only report: they never
fail on time, but exit non-zero if the run itself errors.

The table is printed and written into ``BENCHMARKS.md`` between the markers
``<!-- render:begin -->`` and ``<!-- render:end -->``; the rest of that file is left alone.
"""

from __future__ import annotations

import argparse
import base64
import email
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

from benchmarks.report import command_line, publish
from newsletter.compose.dkim import DkimSigner, generate_key, load_signer
from newsletter.compose.message import MessageTemplate, compile_message, now_header_date, personalise
from newsletter.config import SenderSettings
from newsletter.issue.parse import load_issue
from newsletter.models import Issue, Recipient
from newsletter.render.engine import (
    RECIPIENT_FIELDS,
    _compile_mjml,
    _context,
    _inline_css,
    _render_template,
    default_templates_dir,
    placeholder,
    render_issue,
    view_url,
)
from newsletter.render.plaintext import render_text
from newsletter.tokens import ReturnPaths

__all__ = ["add_arguments", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
SEED_ISSUE = ROOT / "issues" / "2017-07-07-trump-putin.md"
BENCHMARKS_FILE = ROOT / "BENCHMARKS.md"

PERSONALISE_TARGET_US = 20.0
#: recipients per personalise-and-sign batch (signing costs ~50 times personalising)
DKIM_RECIPIENTS = 1_000
RENDER_GOAL_MS = 15.0
WARMUP_RUNS = 3
MIN_RUNS = 5


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    name: str
    runs: str
    median: str
    spread: str
    target: str


# --- measuring -------------------------------------------------------------------


def percentile(values: Sequence[int | float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def time_stage(func: Callable[[], object], runs: int, max_seconds: float) -> list[int]:
    """Nanoseconds of each timed call of ``func``, after warm-up.

    Stops after ``runs`` calls, or once ``max_seconds`` have been spent (but never
    before ``MIN_RUNS`` calls).
    """
    for _ in range(WARMUP_RUNS):
        func()
    gc.collect()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(max_seconds * 1e9)
    while len(samples) < runs:
        start = time.perf_counter_ns()
        func()
        samples.append(time.perf_counter_ns() - start)
        if len(samples) >= MIN_RUNS and time.perf_counter_ns() > deadline:
            break
    return samples


def make_recipients(count: int, name_format: str, seed: int) -> list[Recipient]:
    """``count`` distinct recipients; ``name_format`` gets the index (e.g. ``"Reader {}"``)."""
    rng = random.Random(seed)
    recipients: list[Recipient] = []
    for index in range(count):
        # 32 random bytes -> 43 URL-safe characters, like secrets.token_urlsafe(32).
        token = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode("ascii")
        recipients.append(
            Recipient(
                email=f"reader{index}@example.org",
                name=name_format.format(index),
                unsubscribe_url=f"https://news.example.com/unsubscribe/{token}",
                preferences_url=f"https://news.example.com/preferences/{token}",
            )
        )
    return recipients


def time_personalise(
    template: MessageTemplate,
    recipients: Sequence[Recipient],
    message_ids: Sequence[str],
    date: str,
    repeats: int,
    signer: DkimSigner | None = None,
    return_paths: ReturnPaths | None = None,
) -> list[float]:
    """The mean µs per recipient of each of ``repeats`` timed batches over all ``recipients`` (signed by ``signer``).

    With ``return_paths``, each recipient's return path is made too, as dispatch makes it
    (issue 1, subscribers numbered from 1).
    """
    pairs = list(zip(recipients, message_ids, strict=True))
    numbered = [(recipient, message_id, index) for index, (recipient, message_id) in enumerate(pairs, 1)]
    # Warm-up, and a check that the run does what it claims (not a timing assertion).
    for recipient, message_id in pairs[:200]:
        message = personalise(template, recipient, message_id=message_id, date=date)
        # The preferences URL is only in the (quoted-printable) body: read as a client would.
        body = email.message_from_bytes(message, policy=policy.default).get_body(("plain",))
        if (recipient.email.encode("ascii") not in message or recipient.unsubscribe_url.encode("ascii") not in message
                or body is None or recipient.preferences_url not in body.get_content()):
            raise RuntimeError(f"personalise() output lacks the values of {recipient.email}")
    means: list[float] = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter_ns()
        if return_paths is not None:
            make = return_paths.make
            for recipient, message_id, subscriber_id in numbered:
                personalise(template, recipient, message_id=message_id, date=date)
                make(1, subscriber_id)
        elif signer is None:
            for recipient, message_id in pairs:
                personalise(template, recipient, message_id=message_id, date=date)
        else:
            for recipient, message_id in pairs:
                signer.sign(personalise(template, recipient, message_id=message_id, date=date))
        elapsed = time.perf_counter_ns() - start
        means.append(elapsed / len(pairs) / 1e3)
    return means


# --- the benchmark ---------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """Everything one run measured."""

    stages: list[tuple[str, list[int]]]
    ascii_means: list[float]
    verp_means: list[float]
    unicode_means: list[float]
    dkim_means: list[float]
    issue: Path
    recipients: int
    html_bytes: int
    text_bytes: int
    message_bytes: int


def measure(issue_path: Path, runs: int, max_seconds: float, recipients: int, repeats: int) -> Results:
    """Run every measurement on the issue at ``issue_path``."""
    sender = SenderSettings()
    folder = default_templates_dir()
    issue: Issue = load_issue(issue_path)
    # The same inputs render_issue() gives its stages.
    rendered = render_issue(issue, sender=sender, templates_dir=folder)
    prefix = rendered.placeholder_prefix
    recipient_slots = {field: placeholder(prefix, field) for field in RECIPIENT_FIELDS}
    url = view_url(issue, sender)
    # render_issue adds "web" (the email, not the archive's page) to what _context builds.
    context: dict[str, Any] = {**_context(issue, sender, url, recipient_slots), "web": False}
    mjml_source = _render_template(issue, folder, context)
    compiled = _compile_mjml(mjml_source, issue.template)

    stages: list[tuple[str, Callable[[], object]]] = [
        ("1. parse (load_issue)", lambda: load_issue(issue_path)),
        (
            "2. Jinja2 (_context + _render_template)",
            lambda: _render_template(issue, folder, {**_context(issue, sender, url, recipient_slots), "web": False}),
        ),
        ("3. MJML (_compile_mjml)", lambda: _compile_mjml(mjml_source, issue.template)),
        ("4. premailer (_inline_css)", lambda: _inline_css(compiled)),
        (
            "5. plain text (render_text)",
            lambda: render_text(issue, sender=sender, view_url=url, recipient=recipient_slots),
        ),
        ("6. whole render_issue", lambda: render_issue(issue, sender=sender, templates_dir=folder)),
        ("7. compile_message", lambda: compile_message(rendered, sender=sender)),
    ]
    timed: list[tuple[str, list[int]]] = []
    for name, func in stages:
        print(f"  timing {name} ...", file=sys.stderr, flush=True)
        timed.append((name, time_stage(func, runs, max_seconds)))

    template = compile_message(rendered, sender=sender)
    date = now_header_date()
    message_ids = [f"{index}.bench@{sender.domain}" for index in range(recipients)]
    print(f"  timing personalise x {recipients:,} ...", file=sys.stderr, flush=True)
    ascii_means = time_personalise(template, make_recipients(recipients, "Reader {}", 1), message_ids, date, repeats)
    unicode_means = time_personalise(
        template, make_recipients(recipients, "Zoë Ünïcode {}", 2), message_ids, date, repeats
    )
    print(f"  timing personalise + return path x {recipients:,} ...", file=sys.stderr, flush=True)
    paths = ReturnPaths("bounces@" + sender.domain, [b"benchmark return path key 0123456789"])
    verp_means = time_personalise(template, make_recipients(recipients, "Reader {}", 5), message_ids, date, repeats,
                                  return_paths=paths)
    print(f"  timing personalise + DKIM sign x {DKIM_RECIPIENTS:,} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-dkim-") as folder_name:
        key = Path(folder_name) / "dkim.pem"
        generate_key(key)
        signer = load_signer(key, selector="bench", domain=sender.domain)
    count = min(recipients, DKIM_RECIPIENTS)
    dkim_means = time_personalise(template, make_recipients(count, "Reader {}", 4), message_ids[:count], date,
                                  repeats, signer)
    sample = personalise(template, make_recipients(1, "Reader {}", 3)[0], message_id=message_ids[0], date=date)
    return Results(
        stages=timed,
        issue=issue_path,
        ascii_means=ascii_means,
        verp_means=verp_means,
        unicode_means=unicode_means,
        dkim_means=dkim_means,
        recipients=recipients,
        html_bytes=len(rendered.html.encode("utf-8")),
        text_bytes=len(rendered.text.encode("utf-8")),
        message_bytes=len(sample),
    )


# --- reporting -------------------------------------------------------------------


def _ms(nanoseconds: float) -> str:
    return f"{nanoseconds / 1e6:.2f} ms"


def build_rows(results: Results) -> list[Row]:
    """The table rows, with each figure set against its target."""
    rows: list[Row] = []
    for name, samples in results.stages:
        median = statistics.median(samples)
        target = ""
        if name.startswith("6."):
            verdict = "met" if median / 1e6 <= RENDER_GOAL_MS else "goal, not yet met"
            target = f"≤ {RENDER_GOAL_MS:g} ms goal for a later issue: {verdict}"
        rows.append(Row(name, str(len(samples)), _ms(median), _ms(percentile(samples, 0.95)), target))
    batches = f"{len(results.ascii_means)} × {results.recipients:,}"
    ascii_median = statistics.median(results.ascii_means)
    verdict = "met" if ascii_median <= PERSONALISE_TARGET_US else "NOT met"
    rows.append(
        Row(
            "personalise, ASCII names (per recipient)",
            batches,
            f"{ascii_median:.2f} µs",
            f"{max(results.ascii_means):.2f} µs (max)",
            f"≤ {PERSONALISE_TARGET_US:g} µs: {verdict}",
        )
    )
    verp_median = statistics.median(results.verp_means)
    rows.append(
        Row(
            "personalise + return path (VERP), ASCII names (per recipient)",
            batches,
            f"{verp_median:.2f} µs",
            f"{max(results.verp_means):.2f} µs (max)",
            f"≤ {PERSONALISE_TARGET_US:g} µs: {'met' if verp_median <= PERSONALISE_TARGET_US else 'NOT met'}",
        )
    )
    rows.append(
        Row(
            "personalise, non-ASCII names (per recipient)",
            batches,
            f"{statistics.median(results.unicode_means):.2f} µs",
            f"{max(results.unicode_means):.2f} µs (max)",
            "(no target)",
        )
    )
    rows.append(
        Row(
            "personalise + DKIM sign, ASCII names (per recipient)",
            f"{len(results.dkim_means)} × {min(results.recipients, DKIM_RECIPIENTS):,}",
            f"{statistics.median(results.dkim_means):.2f} µs",
            f"{max(results.dkim_means):.2f} µs (max)",
            "(no target)",
        )
    )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table, padded so it also reads well on a terminal."""
    header = Row("Stage", "Runs", "Median", "p95", "Target")
    cells = [[row.name, row.runs, row.median, row.spread, row.target] for row in (header, *rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(5)]
    right = {1, 2, 3}

    def line(values: Sequence[str]) -> str:
        padded = [value.rjust(widths[i]) if i in right else value.ljust(widths[i]) for i, value in enumerate(values)]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (width + 1) + ":" if i in right else "-" * (width + 2) for i, width in enumerate(widths))
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:])])


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def notes(results: Results) -> list[str]:
    """Short derived observations under the table."""
    medians = {name.split(".")[0]: statistics.median(samples) for name, samples in results.stages}
    parts = sum(medians[key] for key in ("2", "3", "4", "5"))
    slowest = max(("2", "3", "4", "5"), key=lambda key: medians[key])
    slowest_name = next(name for name, _ in results.stages if name.startswith(slowest + "."))
    return [
        f"Issue `{_shown(results.issue)}`: HTML {results.html_bytes / 1024:.1f} KiB, "
        f"text {results.text_bytes / 1024:.1f} KiB, one personalised message {results.message_bytes / 1024:.1f} KiB.",
        f"Stages 2-5 add up to {_ms(parts)}; render_issue takes {_ms(medians['6'])}. "
        f"The largest stage is {slowest_name} ({medians[slowest] / parts:.0%} of 2-5).",
        "Render stages: median and nearest-rank p95 of the timed runs, after "
        f"{WARMUP_RUNS} warm-up runs. Personalisation: median of the batch means, and the slowest batch.",
        "Return path: `ReturnPaths.make` for each recipient as well (issue 15's signed VERP envelope sender, made "
        f"once per message by dispatch when `[sender] bounce_address` is set): "
        f"{statistics.median(results.verp_means) - statistics.median(results.ascii_means):+.2f} µs a recipient "
        "against the plain ASCII row (different recipients, so the two rows' noise is in it too).",
        "DKIM: rsa-sha256 with a 2048-bit key, relaxed/relaxed, the 11 signed header names each over-signed "
        "(RFC 6376 §8.15); the signature is computed per recipient, after personalisation.",
    ]


# --- command line ----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark (shared by ``python -m benchmarks``)."""
    parser.add_argument("--issue", type=Path, default=SEED_ISSUE, help="issue file (default: the seed issue)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per render stage (default: 30)")
    parser.add_argument(
        "--max-seconds", type=float, default=10.0, help="time cap per render stage, in seconds (default: 10)"
    )
    parser.add_argument(
        "--recipients", type=int, default=20_000, help="recipients per personalisation batch (default: 20000)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="personalisation batches (default: 7)")
    parser.add_argument(
        "--output", type=Path, default=BENCHMARKS_FILE, help="Markdown file to update (default: BENCHMARKS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave the Markdown file alone")


def run(args: argparse.Namespace, command: str) -> int:
    """Measure, print the table, and update the Markdown file unless told not to."""
    if args.runs < 1 or args.recipients < 1 or args.repeats < 1 or args.max_seconds <= 0:
        print("error: --runs, --recipients, --repeats and --max-seconds must be positive", file=sys.stderr)
        return 2
    issue_path = Path(args.issue)
    print(f"render benchmark on {issue_path} ...", file=sys.stderr)
    results = measure(issue_path, args.runs, args.max_seconds, args.recipients, args.repeats)
    publish(args, "render", "Render and personalise", command, format_table(build_rows(results)), notes(results),
            "benchmarks/render.py")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.render [options]``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.render",
        description="Time rendering an issue (per stage) and personalising it per recipient.",
    )
    add_arguments(parser)
    return run(parser.parse_args(arguments), command_line("benchmarks.render", arguments))


if __name__ == "__main__":
    sys.exit(main())
