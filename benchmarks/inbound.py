"""Inbound (issue 15): ``newsletter inbound --maildir`` over a Maildir of returned mail.

* A database of N subscribers (``reader<i>@example.org``) and one issue sent to all of them,
  made as the delivery benchmarks make theirs (the project's migrations, then bulk SQL).
* A Maildir of N messages, each about a different reader, in a fixed mix written from this
  repository's fixtures (tests/fixtures/inbound) with real signed return paths, Message-IDs
  and tokens: 40 % hard bounces (Postfix RFC 3464 DSN, 5.1.1), 15 % soft (4.2.2), 10 % delay
  notices, 10 % non-standard bounces (Exim, read by flufl.bounce), 10 % auto-replies, 5 %
  complaints (ARF), 5 % mail unsubscribes, 5 % spam nobody can classify.
* ``newsletter --config <tmp>/newsletter.toml inbound --maildir <tmp>/returned --json`` run
  to its end: messages per second (the command's own ``elapsed``, and the whole command's
  wall time), peak RSS, and at a tenth of N to show memory stays flat. Target: >= 2,000 msg/s.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.delivery import BENCH_SECRET_KEY, build_database, environment, make_workspace, scratch
from benchmarks.servers import Finished, run_measured, signals_interrupt

__all__ = ["add_arguments", "run"]

TARGET_RATE = 2_000.0
FIXTURES = report.ROOT / "tests" / "fixtures" / "inbound"
SLUG = "2026-12-briefing"
DOMAIN = "news.example.com"
#: (share of the mix in 1/20, fixture, its return path, its recipient, its Message-ID's subscriber id, its token)
MIX = [
    (8, "postfix-dsn-5.1.1.eml", "bounces+c-2n9c-pivjai472sf2f@news.example.com", "nobody@example.org", "123456",
     "123456-3-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"),
    (3, "postfix-dsn-4.2.2.eml", "bounces+c-2n9d-q3kx7hz2mwd4e@news.example.com", "full@example.com", None, None),
    (2, "postfix-delay.eml", None, None, None, None),
    (2, "exim-failed.eml", "bounces+c-2n9f-ab3kq7zw2mx5y@news.example.com", "gone@example.net", None, None),
    (2, "autoreply-auto-submitted.eml", None, None, None, None),
    (1, "arf-abuse.eml", "bounces+c-2n9n-m2kq7wz5xa4bf@news.example.com", "annoyed@example.com", "123467",
     "123467-3-Zy8xW7vU6tS5rQ4pO3nM2lK1jI"),
    (1, "unsubscribe.eml", None, None, None, "123456-3-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"),
    (1, "spam.eml", None, None, None, None),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inbound benchmark")
    group.add_argument("--inbound-messages", type=int, default=None,
                       help="messages in the Maildir (default: 100,000; quick: 2,000)")


def _open_issue(database: Path) -> tuple[int, int]:
    """The issue sent to every reader, with the project's own Message-IDs; (issue id, list id)."""
    from newsletter.store.ledger import Ledger
    from newsletter.store.subscribers import Store

    with Store.open(database) as store:
        record = Ledger(store).open_issue(slug=SLUG, list_name="default", subject="News", content_hash="h",
                                          domain=DOMAIN)
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("UPDATE deliveries SET status = 'sent', sent_at = '2026-12-01T09:00:00+00:00'")
    finally:
        connection.close()
    return record.id, record.list_id


def write_maildir(folder: Path, count: int, issue_id: int, list_id: int) -> dict[str, int]:
    """``count`` returned messages in ``folder`` (a Maildir), reader i the subject of message i; counts per fixture."""
    from newsletter.tokens import ReturnPaths, TokenSigner, split_keys

    keys = split_keys(BENCH_SECRET_KEY)
    paths, tokens = ReturnPaths(f"bounces@{DOMAIN}", keys), TokenSigner(keys)
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    templates = [(share, name, (FIXTURES / name).read_text(encoding="utf-8"), path, recipient, message, token)
                 for share, name, path, recipient, message, token in MIX]
    wheel = [entry for entry in templates for _ in range(entry[0])]
    written: dict[str, int] = {}
    for index in range(count):
        subscriber_id = index + 1
        _, name, text, path, recipient, message, token = wheel[index % len(wheel)]
        if path:
            text = text.replace(path, paths.make(issue_id, subscriber_id))
        if recipient:
            address = f"reader{subscriber_id}@example.org"
            text = text.replace(recipient, address).replace(recipient.capitalize(), address)
        if message:
            text = text.replace(f"{SLUG}.{message}@", f"{SLUG}.{subscriber_id}@")
        if token:
            text = text.replace(token, tokens.make(subscriber_id, list_id))
        # Each message its own Message-ID, as a real mailbox's are (fingerprints are per message).
        text = text.replace("Message-ID: <", f"Message-ID: <b{index}.", 1).replace(
            "Message-Id: <", f"Message-Id: <b{index}.", 1)
        (folder / "new" / f"{1_700_000_000 + index}.M{index}P1.bench").write_text(text, encoding="utf-8")
        written[name] = written.get(name, 0) + 1
    return written


def _measure(folder: Path, count: int) -> tuple[Finished, dict[str, object], float]:
    workspace = make_workspace(folder, issue=report.ROOT / "issues" / "2017-07-07-trump-putin.md",
                               host="127.0.0.1", port=25, connections=1)
    assert f'bounce_address = "bounces@{DOMAIN}"' in workspace.config.read_text(encoding="utf-8")
    build_database(workspace, count)
    issue_id, list_id = _open_issue(workspace.database)
    started = time.perf_counter()
    write_maildir(folder / "returned", count, issue_id, list_id)
    built = time.perf_counter() - started
    finished = run_measured(workspace.command("inbound", "--maildir", str(folder / "returned"), "--json"),
                            env=environment(), cwd=folder, folder=folder / "logs", timeout=3600)
    if finished.returncode != 0:
        raise SystemExit(f"inbound failed: {finished.describe_failure()}")
    return finished, json.loads(finished.stdout), built


def run(args: argparse.Namespace, command: str) -> int:
    """The inbound benchmark: print the figures, and write its section of BENCHMARKS.md."""
    count: int = args.inbound_messages or (2_000 if args.quick else 100_000)
    sizes = [max(1, count // 10), count]
    rows, notes = [], []
    with signals_interrupt(), scratch(args.workdir, "nl-inbound-", args.keep) as base:
        for size in sizes:
            print(f"inbound benchmark: {size:,} messages", file=sys.stderr, flush=True)
            finished, summary, built = _measure(base / f"n{size}", size)
            handled = int(summary["processed"]) + int(summary["unhandled"]) + int(summary["retried"])  # type: ignore[call-overload]
            elapsed = float(summary["elapsed"])  # type: ignore[arg-type]
            rate = handled / elapsed if elapsed else 0.0
            met = "met" if rate >= TARGET_RATE else "NOT met"
            rows.append([f"{size:,}", f"{handled:,}", f"{summary['processed']:,}", f"{summary['unhandled']:,}",
                         f"{finished.wall:.1f} s", f"{elapsed:.1f} s", f"{rate:,.0f}",
                         f"{handled / finished.wall:,.0f}",
                         f"{finished.max_rss_kib * 1024 / 1e6:.0f} MB",
                         f"{finished.cpu / max(handled, 1) * 1e6:.0f} µs", f"≥ {TARGET_RATE:,.0f}: {met}"])
            notes.append(f"{size:,} messages: Maildir written in {built:.1f} s; kinds {summary['kinds']};"
                         f" changes {summary['changes']}")
    table = report.format_table(
        ["Messages", "Handled", "Processed", "Unhandled", "Wall", "Elapsed", "msg/s", "msg/s (wall)", "Peak RSS",
         "CPU/msg", "Target"], rows, right=range(10))
    notes = [
        "Mix per 20 messages: 8 Postfix DSNs 5.1.1, 3 DSNs 4.2.2, 2 delay DSNs, 2 Exim bounces (flufl.bounce),"
        " 2 auto-replies, 1 ARF complaint, 1 mail unsubscribe, 1 spam; each about a different reader, with a real"
        " signed return path, Message-ID and token (fixtures from tests/fixtures/inbound).",
        "msg/s = handled / the `elapsed` the command reports (store open to last message filed); msg/s (wall) the"
        " whole command, Python start-up included. Each message is read, classified, acted on in its own"
        " transaction, and renamed into .processed or .unhandled.",
        *notes,
    ]
    report.publish(args, "inbound", "Inbound: returned mail from a Maildir", command, table, notes,
                   "benchmarks/inbound.py")
    return 0
