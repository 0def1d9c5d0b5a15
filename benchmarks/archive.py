"""Archive (issue 13, item 12): archive pages at 3 issues × 1,000,000 deliveries, and a one-click
unsubscribe while 40 archive requests are in flight, against the real ``newsletter serve``.

For each backend (SQLite file; PostgreSQL: ``tests/harness/pgserver.py``'s throwaway server over its
unix socket) the benchmark makes a database with the project's own migrations, then adds
with SQL, in one transaction: N subscribers (``--archive-subscribers``, default 1,000,000;
quick: 20,000) on one list, and 3 issues each with N deliveries ``sent`` (the issue's text
kept in the ledger, as dispatch keeps it). ``first_sent_at`` is then filled by migration 6's
own backfill statement, timed: what upgrading such a database costs once.

It starts ``newsletter serve`` as a user does (``.venv/bin/newsletter --config … serve
--port P``, ``NEWSLETTER_SECRET_KEY`` set) and measures, over HTTP on 127.0.0.1:

* **alone**: ``GET /issues/`` (the index), ``GET /issues/<slug>/`` (a known issue, its
  page rendered once and then cached), ``GET /issues/nope/`` (an unknown slug) and
  ``GET /issues/feed.xml`` (the Atom feed, its summaries parsed once and then cached), each
  ``--archive-requests`` times (default 30) one after another on a keep-alive connection;
  the first render of the known page on its own;
* **under load**: 40 threads each keep one archive request in flight (index, known and
  unknown pages in turn, each on its own keep-alive connection) while 20 one-click
  unsubscribes (``POST /unsubscribe/<token>``, ``List-Unsubscribe=One-Click``, a fresh
  connection each, as a mail provider sends them) go one after another; their latency,
  and how many archive requests were answered meanwhile (and their latency).

Latency is from sending the request to having the whole response (httpx, in this process).
The server is stopped by its PID at the end. Before the change, ``/issues/nope/`` took 2.8 s
at this size and a one-click POST waited 123 s behind 40 archive requests.

Then what comes back by mail (issue 15), on the same database: the first issue gets
feedback rows as ``newsletter inbound`` records them (1 % hard bounces, 0.5 % soft, 0.1 %
complaints) and 0.3 % of the list leaves after it; the benchmark prints the plan
(``EXPLAIN QUERY PLAN`` / ``EXPLAIN``) of every statement of ``delivery_by_message_id``,
``record_feedback`` and ``issue_feedback`` (a plan that reads a whole table of deliveries,
feedback or memberships is a problem), and times them through the store's API: 200
look-ups by Message-ID, 200 ``record_feedback`` calls (each its own transaction), and
``issue_feedback`` of the first issue (what ``newsletter status`` adds per issue).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import report
from benchmarks.delivery import BENCH_SECRET_KEY, environment, scratch
from benchmarks.servers import _stop_process, free_port, newsletter_command, signals_interrupt
from benchmarks.workers import ensure_postgres, machine_ticks, wait_for_quiet

__all__ = ["add_arguments", "run"]

LIST_NAME = "default"
ISSUES = 3
IN_FLIGHT = 40
ONE_CLICKS = 20


@dataclasses.dataclass
class Latencies:
    """Seconds each request took."""

    name: str
    seconds: list[float]
    statuses: list[int]

    def row(self, backend: str) -> list[str]:
        ordered = sorted(self.seconds)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0
        codes = ", ".join(f"{code} × {self.statuses.count(code)}" for code in sorted(set(self.statuses)))
        return [backend, self.name, f"{len(ordered):,}", _ms(statistics.median(ordered) if ordered else 0.0),
                _ms(p95), _ms(ordered[-1] if ordered else 0.0), codes]


@dataclasses.dataclass
class Measured:
    """One backend's figures."""

    name: str
    build_seconds: float
    backfill_seconds: float
    first_render: float
    rows: list[Latencies]
    busy: float
    problems: list[str]
    plans: dict[str, str] = dataclasses.field(default_factory=dict)
    feedback_notes: list[str] = dataclasses.field(default_factory=list)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


# --- the database ------------------------------------------------------------------------------


def issue_text(number: int) -> str:
    """The seed issue, as issue ``number`` (its own subject and date)."""
    text = report.SEED_ISSUE.read_text(encoding="utf-8")
    return text.replace("date: 2017-07-07", f"date: 2024-01-0{number}", 1).replace(
        "subject: \"", f"subject: \"Issue {number}: ", 1)


def build(location: str | Path, count: int) -> tuple[float, float, list[str]]:
    """Subscribers, 3 issues and their deliveries; (build seconds, backfill seconds, the slugs)."""
    from newsletter.store.engine import Database

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = now.isoformat()
    slugs = [f"2024-01-0{number}-issue-{number}" for number in range(1, ISSUES + 1)]
    with Database.open(location) as store:
        postgres = store.dialect.name == "postgresql"
        numbers = ("SELECT i FROM generate_series(1, ?) AS g(i)" if postgres else
                   "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?) SELECT i FROM g")
        with store.transaction() as cursor:
            cursor.execute("INSERT INTO lists (name) VALUES (?)", (LIST_NAME,))
            list_id = int(cursor.execute("SELECT id FROM lists WHERE name = ?", (LIST_NAME,)).fetchone()[0])
            cursor.execute(
                "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
                f" SELECT 'reader' || i || '@example.org', 'reader' || i || '@example.org', 'Reader ' || i, '{{}}',"
                f" ?, ? FROM ({numbers}) AS n", (stamp, stamp, count))
            cursor.execute("INSERT INTO memberships (list_id, subscriber_id, created_at, updated_at)"
                           " SELECT ?, id, ?, ? FROM subscribers", (list_id, stamp, stamp))
            for number, slug in enumerate(slugs, 1):
                issue_id = int(cursor.execute(
                    "INSERT INTO issues (slug, list_name, list_id, subject, content_hash, created_at, source_text)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (slug, LIST_NAME, list_id, f"Issue {number}", "h", stamp, issue_text(number))).fetchone()[0])
                sent = (now + dt.timedelta(days=number)).isoformat()
                cursor.execute(
                    "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts, message_id, created_at,"
                    " updated_at, sent_at) SELECT ?, id, 'sent', 1, ? || '.' || id || '@example.org', ?, ?, ?"
                    " FROM subscribers", (issue_id, slug, stamp, stamp, sent))
            # As if they were sent before migration 6: its backfill fills first_sent_at (timed below).
            cursor.execute("UPDATE issues SET first_sent_at = NULL")
        if postgres:
            store.connection.execute("ANALYZE")
        built = time.perf_counter() - started
        started = time.perf_counter()
        with store.transaction() as cursor:
            cursor.execute("UPDATE issues SET first_sent_at = (SELECT min(d.sent_at) FROM deliveries d"
                           " WHERE d.issue_id = issues.id AND d.status = 'sent')")
        backfill = time.perf_counter() - started
    return built, backfill, slugs


# --- what comes back by mail ------------------------------------------------------------------


#: plan lines that read a whole table the feedback statements must only search
_WHOLE_TABLE = ("SCAN d", "SCAN deliveries", "SCAN f", "SCAN feedback", "SCAN m", "SCAN memberships",
                "SCAN s", "SCAN subscribers")


def feedback_problems(postgres: bool, plan: str) -> list[str]:
    """The lines of ``plan`` that read every row of a table instead of searching an index."""
    if postgres:  # issues: a row an issue, which PostgreSQL rightly reads whole
        return [line.strip() for line in plan.splitlines() if "Seq Scan" in line and "Seq Scan on issues" not in line]
    return [line.strip() for line in plan.splitlines()
            if any(line.strip() == scan or line.strip().startswith(scan + " ") for scan in _WHOLE_TABLE)]


def add_feedback(location: str | Path, slugs: Sequence[str]) -> tuple[float, int]:
    """Feedback on the first issue as ``newsletter inbound`` leaves it; (seconds, rows)."""
    from newsletter.store.engine import Database

    started = time.perf_counter()
    with Database.open(location) as store:
        issue_id = int(store.query("SELECT id FROM issues WHERE slug = ?", (slugs[0],))[0][0])
        sent = str(store.query("SELECT first_sent_at FROM issues WHERE id = ?", (issue_id,))[0][0])
        left = (dt.datetime.fromisoformat(sent) + dt.timedelta(hours=5)).isoformat()
        moment = dt.datetime.fromisoformat(sent).timestamp() + 3600
        with store.transaction() as cursor:
            for kind, modulo, remainder in (("hard_bounce", 100, 1), ("soft_bounce", 200, 2), ("complaint", 1000, 3)):
                cursor.execute(
                    "INSERT INTO feedback (issue_id, subscriber_id, kind, status, diagnostic, at, day, fingerprint)"
                    " SELECT issue_id, subscriber_id, ?, ?, 'benchmark', ?, ?, ? || '/' || subscriber_id"
                    " FROM deliveries WHERE issue_id = ? AND subscriber_id % ? = ?",
                    (kind, "5.1.1" if kind == "hard_bounce" else "4.2.2", moment, int(moment // 86_400),
                     f"{kind}-{issue_id}", issue_id, modulo, remainder))
            cursor.execute("UPDATE subscribers SET status = 'bounced' WHERE id % 100 = 1")
            cursor.execute("UPDATE subscribers SET status = 'complained' WHERE id % 1000 = 3")
            cursor.execute("UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                           " WHERE subscriber_id % 1000 = 3 OR subscriber_id % 300 = 150", (left,))
        if store.dialect.name == "postgresql":
            store.connection.execute("ANALYZE")
        rows = int(store.query("SELECT count(*) FROM feedback")[0][0])
    return time.perf_counter() - started, rows


def feedback_figures(location: str | Path, slugs: Sequence[str], count: int) -> tuple[dict[str, str], list[str],
                                                                                     list[str]]:
    """The plans of the feedback statements, their problems, and what they took (notes)."""
    from newsletter.store.feedback import Feedback
    from newsletter.store.subscribers import Store

    plans: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    with Store.open(location) as store:
        postgres = store.dialect.name == "postgresql"
        feedback = Feedback(store)
        issue_id = int(store.query("SELECT id FROM issues WHERE slug = ?", (slugs[0],))[0][0])
        last_id = int(store.query("SELECT id FROM issues WHERE slug = ?", (slugs[-1],))[0][0])
        middle = count // 2 + 7
        message_id = str(store.query("SELECT message_id FROM deliveries WHERE issue_id = ? AND subscriber_id = ?",
                                     (last_id, middle))[0][0])
        statements = dict(feedback.record_statements(last_id, middle, message_id))
        statements.update({f"issue_feedback: {name}": statement
                           for name, statement in feedback.issue_statements(issue_id).items()})
        for name, (sql, params) in statements.items():
            plan = store.explain(sql, params)
            plans[name] = "\n".join(line if len(line) <= 150 else line[:150] + " …" for line in plan.splitlines())
            if name != "issue_feedback: sent":  # the issue's own rows, as status's counts per state read them
                problems += [f"{name}: {line}" for line in feedback_problems(postgres, plan)]
        # Timed through the API, as `newsletter inbound` and `newsletter status` call it.
        ids = [str(row[0]) for row in store.query(
            "SELECT message_id FROM deliveries WHERE issue_id = ? AND subscriber_id % ? = 5 LIMIT 200",
            (last_id, max(1, count // 200)))]
        started = time.perf_counter()
        found = sum(feedback.delivery_by_message_id(value) is not None for value in ids)
        lookups = (time.perf_counter() - started) / max(1, len(ids))
        if found != len(ids):
            problems.append(f"delivery_by_message_id found {found} of {len(ids)}")
        subscribers = [int(row[0]) for row in store.query(
            "SELECT subscriber_id FROM deliveries WHERE issue_id = ? AND subscriber_id % ? = 6 LIMIT 200",
            (last_id, max(1, count // 200)))]
        outcomes: dict[str, int] = {}
        started = time.perf_counter()
        for number, subscriber_id in enumerate(subscribers):
            kind = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe")[number % 4]
            outcome = feedback.record_feedback(issue_id=last_id, subscriber_id=subscriber_id, kind=kind,
                                               status=None, diagnostic="", fingerprint=f"timed/{subscriber_id}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        records = (time.perf_counter() - started) / max(1, len(subscribers))
        started = time.perf_counter()
        counts = feedback.issue_feedback(issue_id)
        counting = time.perf_counter() - started
    expected = {"sent": count, "hard_bounces": count // 100 + (count % 100 >= 1), "complaints": count // 1000
                + (count % 1000 >= 3)}
    if any(counts[name] != value for name, value in expected.items()):
        problems.append(f"issue_feedback {counts}, expected {expected}")
    notes.append(f"delivery_by_message_id {lookups * 1e3:.2f} ms a look-up ({len(ids)}, all found); "
                 f"record_feedback {records * 1e3:.2f} ms a call, its own transaction ({len(subscribers)}: "
                 + ", ".join(f"{number} {name}" for name, number in sorted(outcomes.items()))
                 + f"); issue_feedback of the first issue {counting * 1e3:.0f} ms: {counts}.")
    return plans, problems, notes


def feedback_plan_text(results: Sequence[Measured]) -> list[str]:
    """The plans, as Markdown: one fenced block per statement."""
    lines = ["### Plans: what comes back by mail", "",
             "Every statement of `delivery_by_message_id`, `record_feedback` and `issue_feedback` searches an "
             "index: a delivery by the issue's slug and the primary key, a subscriber's soft bounces by "
             "`feedback_subscriber`, an issue's findings by `feedback_issue`, the memberships that ended by the "
             "partial index `memberships_ended` (PostgreSQL reads `issues` whole: a row an issue). The one read "
             "of many rows is `sent`: the issue's own deliveries, "
             "what `status` reads already for its counts per state (and passes on, so `status` doesn't run this "
             "one); PostgreSQL reads the table in parallel rather than the index when the issue is a third of it, "
             "as here."]
    for result in results:
        label = "EXPLAIN QUERY PLAN" if result.name == "sqlite" else "EXPLAIN"
        for name, plan in result.plans.items():
            lines += ["", f"{result.name}, {name} ({label}):", "", "```", plan, "```"]
    return lines


# --- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def server(folder: Path, location: str | Path) -> Iterator[str]:
    """``newsletter serve`` on a free port; its base URL."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = folder / "newsletter.toml"
    path = location if isinstance(location, Path) else folder / "unused.db"
    config.write_text(f'[sender]\nsite_url = "{base}"\n[database]\npath = "{path}"\n[issues]\ndir = "{folder}"\n',
                      encoding="utf-8")
    env = environment()
    if not isinstance(location, Path):
        env["NEWSLETTER_DATABASE_URL"] = location
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen([str(newsletter_command()), "--config", str(config), "serve", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"newsletter serve exited: {(folder / 'serve.log').read_text()[-500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/unsubscribe/", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("newsletter serve did not answer within 60 s")
            time.sleep(0.1)
        yield base
    finally:
        _stop_process(process)
        log.close()


def sequential(base: str, name: str, path: str, count: int) -> Latencies:
    """``count`` GETs of ``path`` one after another on one keep-alive connection."""
    import httpx

    seconds: list[float] = []
    statuses: list[int] = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - started)
            statuses.append(response.status_code)
    return Latencies(name, seconds, statuses)


def under_load(base: str, paths: Sequence[str], tokens: Sequence[str]) -> tuple[Latencies, Latencies]:
    """One-click POSTs, one after another, while :data:`IN_FLIGHT` archive requests are kept in flight."""
    import httpx

    stop = threading.Event()
    lock = threading.Lock()
    archive = Latencies(f"archive pages, {IN_FLIGHT} in flight (during the one-clicks)", [], [])
    started_all = threading.Barrier(IN_FLIGHT + 1)

    def hammer(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as client:
            started_all.wait(60)
            turn = offset
            while not stop.is_set():
                path = paths[turn % len(paths)]
                turn += 1
                began = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    if not stop.is_set():
                        archive.seconds.append(time.perf_counter() - began)
                        archive.statuses.append(status)

    threads = [threading.Thread(target=hammer, args=(number,), daemon=True) for number in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    started_all.wait(60)
    time.sleep(1.0)  # let the archive requests fill the server
    with lock:
        archive.seconds.clear()
        archive.statuses.clear()
    clicks = Latencies(f"one-click POST, {IN_FLIGHT} archive requests in flight", [], [])
    for token in tokens:
        began = time.perf_counter()
        try:
            status = httpx.post(f"{base}/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"},
                                timeout=600).status_code
        except httpx.HTTPError:
            status = 0
        clicks.seconds.append(time.perf_counter() - began)
        clicks.statuses.append(status)
    stop.set()
    for thread in threads:
        thread.join(600)
    return clicks, archive


# --- one backend ------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[str | Path]:
    if backend == "sqlite":
        yield folder / "newsletter.db"
        return
    from tests.harness.pgserver import PgServer

    with PgServer() as pg:
        name = pg.create_database("archive").rsplit("/", 1)[1]
        print(f"  PostgreSQL {pg.version} on {pg.socket_dir} (unix socket)", file=sys.stderr, flush=True)
        yield pg.socket_url_for(name)


def measure(backend: str, folder: Path, count: int, requests: int, quiet_wait: float) -> Measured:
    from newsletter.tokens import TokenSigner, split_keys

    work = folder / backend
    work.mkdir()
    problems: list[str] = []
    with database(backend, work) as location:
        print(f"  {backend}: {count:,} subscribers, {ISSUES} issues × {count:,} deliveries …", file=sys.stderr,
              flush=True)
        built, backfill, slugs = build(location, count)
        print(f"  {backend}: built in {built:.0f} s; migration 6's backfill {backfill:.2f} s", file=sys.stderr,
              flush=True)
        wait_for_quiet(quiet_wait)
        busy_before, total_before, _ = machine_ticks()
        with server(work, location) as base:
            known = f"/issues/{slugs[0]}/"
            first = sequential(base, "first render", known, 1)
            rows = [sequential(base, "GET /issues/ (index)", "/issues/", requests),
                    sequential(base, f"GET {known} (known, cached)", known, requests),
                    sequential(base, "GET /issues/nope/ (unknown slug)", "/issues/nope/", requests),
                    sequential(base, "GET /issues/feed.xml (Atom feed)", "/issues/feed.xml", requests)]
            signer = TokenSigner(split_keys(BENCH_SECRET_KEY))
            tokens = [signer.make(subscriber, 1) for subscriber in range(1, ONE_CLICKS + 1)]
            clicks, archive = under_load(base, ["/issues/", known, "/issues/nope/"], tokens)
            rows += [clicks, archive]
        busy_after, total_after, _ = machine_ticks()
        print(f"  {backend}: what comes back by mail …", file=sys.stderr, flush=True)
        seconds, events = add_feedback(location, slugs)
        plans, feedback_problems_found, feedback_notes = feedback_figures(location, slugs, count)
        problems += feedback_problems_found
        feedback_notes.insert(0, f"{events:,} feedback rows and {count // 300 + count // 1000:,} ended "
                                 f"memberships added in {seconds:.1f} s.")
    for row, expected in zip(rows, (200, 200, 404, 200, 200), strict=False):
        if set(row.statuses) != {expected}:
            problems.append(f"{row.name}: statuses {sorted(set(row.statuses))}, expected {expected}")
    if first.statuses != [200]:
        problems.append(f"first render: status {first.statuses}")
    return Measured(backend, built, backfill, first.seconds[0], rows,
                    (busy_after - busy_before) / max(1, total_after - total_before), problems, plans,
                    feedback_notes)


def run(args: argparse.Namespace, command: str) -> int:
    """Archive latency alone and under load, and one-click latency with 40 archive requests in flight."""
    count: int = args.archive_subscribers or (20_000 if args.quick else 1_000_000)
    requests: int = args.archive_requests or (10 if args.quick else 30)
    quiet_wait: float = args.quiet_wait if args.quiet_wait is not None else (10.0 if args.quick else 120.0)
    backends = ["sqlite"] + (["postgres"] if args.archive_backends != "sqlite" and ensure_postgres() else [])
    if args.archive_backends == "postgres":
        backends.remove("sqlite")
    results: list[Measured] = []
    with signals_interrupt(), scratch(args.workdir, "nl-archive-", args.keep) as folder:
        for backend in backends:
            results.append(measure(backend, folder, count, requests, quiet_wait))
    rows = [row.row(result.name) for result in results for row in result.rows]
    table = report.format_table(["Backend", "Request", "Requests", "Median", "p95", "Max", "Statuses"], rows,
                                right=(2, 3, 4, 5))
    notes = [f"{count:,} subscribers, {ISSUES} issues × {count:,} deliveries sent ({ISSUES * count:,} rows)."]
    for result in results:
        notes.append(f"{result.name}: database built in {result.build_seconds:.0f} s; migration 6's backfill of "
                     f"first_sent_at took {result.backfill_seconds:.2f} s once; the known page's first render "
                     f"{_ms(result.first_render)}; machine {result.busy:.0%} busy over the measurements.")
        notes += [f"{result.name}, what comes back by mail: {note}" for note in result.feedback_notes]
        notes += [f"PROBLEM, {result.name}: {problem}" for problem in result.problems]
    notes.append(f"Under load: {IN_FLIGHT} threads each keep one archive request in flight (index, known, unknown "
                 f"in turn) while {ONE_CLICKS} one-click POSTs go one after another, each on a new connection. The "
                 "40 client threads run in this process, on the same 2 cores as the server (and PostgreSQL): what "
                 "a one-click waits for then is mostly a core, not the archive's work, which has threads of its "
                 "own. Before the change: /issues/nope/ 2.8 s, a one-click POST 123 s behind 40 archive requests.")
    for result in results:
        for name, plan in result.plans.items():
            print(f"\n{result.name}: {name}\n{plan}")
    report.publish(args, "archive", "Archive: pages at 3 issues × a million deliveries, unsubscribes under load",
                   command, table, notes, "benchmarks/archive.py", feedback_plan_text(results))
    return 0 if all(not result.problems for result in results) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the archive benchmark (it also uses --quick, --workdir, --keep, --quiet-wait)."""
    group = parser.add_argument_group("archive benchmark")
    group.add_argument("--archive-subscribers", type=int, default=None,
                       help="subscribers, and deliveries per issue (default: 1000000; quick: 20000)")
    group.add_argument("--archive-requests", type=int, default=None,
                       help="requests per page measured alone (default: 30; quick: 10)")
    group.add_argument("--archive-backends", choices=["both", "sqlite", "postgres"], default="both",
                       help="where (default: both)")


if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", "archive", *sys.argv[1:]])
