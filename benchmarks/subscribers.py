"""Subscribers (issue 13, item 9): import, export and list of 1,000,000 subscribers, on SQLite and PostgreSQL.

Each step is the real command line in a child process, as a user runs it::

    .venv/bin/newsletter --config <tmp>/newsletter.toml subscribers import readers.csv --list default
    .venv/bin/newsletter --config <tmp>/newsletter.toml subscribers export --format csv > backup.csv

(PostgreSQL: the same, with ``NEWSLETTER_DATABASE_URL`` naming a fresh database of a
throwaway server, ``tests/harness/pgserver.py``'s ``PgServer``, reached over its unix socket).
The CSV has N rows (``--subscriber-count``, default 1,000,000; quick: 20,000):
``reader<i>@<one of 2,000 domains>``, a name, and a ``city`` merge field on every other
row. The steps, in order, on one database per backend:

* **import** into the empty database (every row added);
* **import again**, the same file (every row an update: the other half of the merge);
* **export --format csv** and **--format json**, **list** and **list --json** (standard
  output to a file in the scratch folder, then its lines counted as a check).

Wall time runs from just before the command starts to its exit; peak RSS is the
command's own (``os.wait4``, under :mod:`benchmarks.servers`' launcher): PostgreSQL's
server processes are not in it. Targets: import ≤ 60 s and ≤ 200 MB; export and list
≤ 30 s and ≤ 150 MB.

Then the plans: the benchmark opens the database itself and prints ``EXPLAIN QUERY PLAN``
(SQLite) or ``EXPLAIN`` (PostgreSQL, its statistics as the import left them) of every
statement those commands run over the subscribers: export's and list's (all, one list,
one status), the export's merge-field names, and the import's lookups of a chunk of 2,000
keys (on PostgreSQL with the planner settings its transaction uses). A plan that reads
every row of memberships or subscribers inside a correlated subquery is reported as a
problem. Then it fills the signup tables (:mod:`benchmarks.signup_tables`: one issue's
deliveries, confirmed and pending signups, consents, welcomes, counter windows), explains
every statement of the signup side, consent, data rights and ``subscribers count`` (a
full scan of a big table is a problem), and times one ``Signups.purge``.

The machine is shared: before each backend the benchmark waits (``--quiet-wait``, up to
120 s; quick: 10 s) for other processes to leave the cores under 10 % busy, and reports
how busy the machine was during each step.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import report, signup_tables
from benchmarks.delivery import environment, scratch
from benchmarks.servers import Finished, newsletter_command, run_measured, signals_interrupt
from benchmarks.workers import ensure_postgres, machine_ticks, wait_for_quiet

if TYPE_CHECKING:
    from newsletter.store.subscribers import Store

__all__ = ["add_arguments", "plan_problems", "run"]

LIST_NAME = "default"
DOMAINS = 2_000
IMPORT_TARGET = (60.0, 200.0)  # seconds, MB
READ_TARGET = (30.0, 150.0)
MB = 1_000_000
#: plan lines are cut to this many characters when printed (PostgreSQL shows array parameters whole)
PLAN_WIDTH = 150


@dataclass
class Step:
    """One command of the benchmark and what it took."""

    name: str
    finished: Finished
    rows: int  # what the check counted (lines of output, or rows the summary reported)
    expected: int
    busy: float  # the machine's busy fraction of all cores during the step
    target: tuple[float, float]

    @property
    def ok(self) -> bool:
        return self.finished.returncode == 0 and self.rows == self.expected

    @property
    def rss_mb(self) -> float:
        return self.finished.max_rss_kib * 1024 / MB

    def verdict(self) -> str:
        seconds, megabytes = self.target
        if not self.ok:
            return "failed"
        met = self.finished.wall <= seconds and self.rss_mb <= megabytes
        return f"≤ {seconds:g} s, ≤ {megabytes:g} MB: {'met' if met else 'MISSED'}"


@dataclass
class Backend:
    """Everything measured on one backend."""

    name: str
    steps: list[Step] = field(default_factory=list)
    plans: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: what filling the signup tables did, one line a step
    filled: list[str] = field(default_factory=list)
    waited: tuple[float, float] = (0.0, 0.0)  # (busy fraction before the first step, seconds waited)


# --- the input ---------------------------------------------------------------------------


def write_csv(path: Path, count: int) -> None:
    """``count`` rows: email, name, city (on every other row)."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "city"])
        for number in range(count):
            writer.writerow([f"reader{number}@mail{number % DOMAINS}.example.org", f"Reader {number}",
                             "Leeds" if number % 2 else ""])


# --- plans ---------------------------------------------------------------------------------


def plan_problems(postgres: bool, plan: str) -> list[str]:
    """The lines of ``plan`` that read every row of memberships or subscribers inside a correlated subquery."""
    lines = plan.splitlines()
    if postgres:
        inside = False
        found = []
        for line in lines:
            inside = inside or "SubPlan" in line
            if "Seq Scan on memberships" in line or (inside and "Seq Scan on subscribers" in line):
                found.append(line.strip())
        return found
    return [line.strip() for line in lines
            if line.strip().startswith(("SCAN m ", "SCAN memberships"))
            or line.strip() in ("SCAN m", "SCAN memberships")
            or (line.startswith("  ") and line.strip().startswith(("SCAN s", "SCAN subscribers")))]


def statements(store: Store, count: int, now: dt.datetime) -> dict[str, tuple[str, Sequence[object]]]:
    """Every statement the measured commands run over the subscribers, with realistic parameters; then
    every statement of signups, consent, data rights and count (:mod:`benchmarks.signup_tables`)."""
    list_id = store.find_list(LIST_NAME)
    keys = [f"reader{number}@mail{number % DOMAINS}.example.org" for number in range(0, count, max(1, count // 2000))]
    ids = [int(row[0]) for row in store.query("SELECT id FROM subscribers ORDER BY id LIMIT 2000")]
    found = {
        "export / list": store.subscriber_select(),
        "export --list default": store.subscriber_select(list_id=list_id),
        "list --status active": store.subscriber_select(status="active"),
        "export's merge fields (CSV header)": store.field_names_select(),
        "import: the chunk's subscribers": next(iter(store.dialect.subscribers_by_key(keys[:2000]))),
        "import: their membership": next(iter(store.dialect.memberships_on_list(list_id, ids))),
    }
    if store.dialect.name == "postgresql":
        from newsletter.store.postgres import UPDATE_SUBSCRIBERS

        found["import: update the chunk's subscribers"] = (
            UPDATE_SUBSCRIBERS, ("now", ids, ["x"] * len(ids), ["{}"] * len(ids)))
    found.update(signup_tables.statements(store, now))
    return found


def explain_all(location: str | Path, count: int) -> tuple[dict[str, str], list[str], list[str]]:
    """Fill the signup tables, then the plan of each statement (cut to :data:`PLAN_WIDTH`), the
    problems found in them, and what filling took.

    The import's and export's statements keep the older rule (:func:`plan_problems`: the export
    reads every subscriber once, by design); the signup side's may not read any big table whole
    (:func:`benchmarks.signup_tables.full_scans`), but for counting everyone.
    """
    from newsletter.store.postgres import INDEX_LOOKUPS_ONLY
    from newsletter.store.subscribers import Store

    plans: dict[str, str] = {}
    problems: list[str] = []
    now = dt.datetime.now(dt.UTC)
    with Store.open(location) as store:
        postgres = store.dialect.name == "postgresql"
        filled = signup_tables.populate(store, count, now)
        partial = signup_tables.partial_indexes(store)
        strict = set(signup_tables.statements(store, now)) - signup_tables.WHOLE_TABLE  # counts: shown only
        for name, (sql, params) in statements(store, count, now).items():
            if postgres and name.startswith("import"):  # as the import's transaction has them
                for setting in INDEX_LOOKUPS_ONLY:
                    store.connection.execute(f"SET {setting} = off")
            plan = store.explain(sql, params)
            if postgres:
                for setting in INDEX_LOOKUPS_ONLY:
                    store.connection.execute(f"RESET {setting}")
            plans[name] = "\n".join(line if len(line) <= PLAN_WIDTH else line[:PLAN_WIDTH] + " …"
                                    for line in plan.splitlines())
            found = (signup_tables.full_scans(postgres, sql, plan, partial) if name in strict
                     else [] if name in signup_tables.WHOLE_TABLE else plan_problems(postgres, plan))
            problems += [f"{name}: {line}" for line in found]
        filled.append(signup_tables.purge(store, now))
    return plans, problems, filled


# --- one backend ---------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[tuple[str | Path, dict[str, str]]]:
    """Where the backend's database is (a file or a URL) and the environment the commands get."""
    env = environment()
    if backend == "sqlite":
        yield folder / "newsletter.db", env
        return
    from tests.harness.pgserver import PgServer

    with PgServer() as pg:
        url = pg.socket_url_for(pg.create_database("subscribers").rsplit("/", 1)[1])
        print(f"  PostgreSQL {pg.version} on {pg.socket_dir} (unix socket)", file=sys.stderr, flush=True)
        yield url, {**env, "NEWSLETTER_DATABASE_URL": url}


def measure(backend: str, folder: Path, csv_path: Path, count: int, *, timeout: float,
            quiet_wait: float) -> Backend:
    """Every step on a fresh database of ``backend``."""
    result = Backend(backend)
    work = folder / backend
    work.mkdir()
    config = work / "newsletter.toml"
    config.write_text(f'[database]\npath = "{work / "newsletter.db"}"\n', encoding="utf-8")
    base = [str(newsletter_command()), "--config", str(config), "subscribers"]
    with database(backend, work) as (location, env):
        result.waited = wait_for_quiet(quiet_wait)
        plan: list[tuple[str, list[str], str, int, tuple[float, float]]] = [
            ("import", ["import", str(csv_path), "--list", LIST_NAME], "added", count, IMPORT_TARGET),
            ("import again (all updates)", ["import", str(csv_path), "--list", LIST_NAME], "updated", count,
             IMPORT_TARGET),
            ("export --format csv", ["export", "--format", "csv"], "lines", count + 1, READ_TARGET),
            ("export --format json", ["export", "--format", "json"], "json", count, READ_TARGET),
            ("list", ["list"], "lines", count, READ_TARGET),
            ("list --json", ["list", "--json"], "json", count, READ_TARGET),
        ]
        for name, arguments, check, expected, target in plan:
            print(f"  {backend}: subscribers {' '.join(arguments)} …", file=sys.stderr, flush=True)
            busy_before, total_before, _ = machine_ticks()
            finished = run_measured([*base, *arguments], env=env, cwd=work, timeout=timeout, folder=work / "runs")
            busy_after, total_after, _ = machine_ticks()
            rows = _count(finished, check)
            finished = dataclasses.replace(finished, stdout="")  # a million rows: not kept
            step = Step(name, finished, rows, expected, (busy_after - busy_before) / max(1, total_after - total_before),
                        target)
            result.steps.append(step)
            print(f"  {backend}: {name}: {finished.wall:.1f} s, peak RSS {step.rss_mb:.0f} MB, {rows:,} rows "
                  f"(machine {step.busy:.0%} busy)", file=sys.stderr, flush=True)
            if not step.ok:
                result.problems.append(f"{name}: {finished.describe_failure()} ({rows:,} rows, {expected:,} expected)")
        result.plans, problems, result.filled = explain_all(location, count)
        result.problems += problems
    return result


def _count(finished: Finished, check: str) -> int:
    """What the step produced, counted from its standard output."""
    text = finished.stdout
    if check == "lines":
        return text.count("\n")
    if check == "json":
        return text.count('\n  {\n    "email": ')
    # "N added, M updated (…)"
    words = text.split()
    for number, word in zip(words, words[1:], strict=False):
        if word.rstrip(",") == check and number.isdigit():
            return int(number)
    return -1


# --- report ----------------------------------------------------------------------------------


def table(results: Sequence[Backend], count: int) -> str:
    rows = []
    for backend in results:
        for step in backend.steps:
            rows.append([backend.name, step.name, f"{count:,}", f"{step.finished.wall:.1f} s",
                         f"{step.rss_mb:.0f} MB", f"{step.finished.cpu:.1f} s", f"{step.busy:.0%}", step.verdict()])
    return report.format_table(
        ["Backend", "Command (newsletter subscribers …)", "Subscribers", "Wall", "Peak RSS", "CPU", "Machine busy",
         "Target"], rows, right=(2, 3, 4, 5, 6))


def notes(results: Sequence[Backend], count: int) -> list[str]:
    lines = [
        f"Input: {count:,} rows (`reader<i>@mail<i mod {DOMAINS:,}>.example.org`, a name, a `city` on every other "
        "row); the import builds its unique rows in a temporary file first, then merges 2,000 rows a statement in "
        "one transaction.",
        "Peak RSS is the command's own (os.wait4); PostgreSQL's server processes are not in it. "
        "\"Machine busy\" is all cores over the step, this command included: 50 % is one core.",
    ]
    for backend in results:
        busy, waited = backend.waited
        lines.append(f"{backend.name}: the cores were {busy:.0%} busy before the first step (waited {waited:.0f} s "
                     "for them to calm down).")
        if backend.filled:
            lines.append(f"{backend.name}, the signup tables filled for the plans: " + "; ".join(backend.filled) + ".")
        for problem in backend.problems:
            lines.append(f"PROBLEM, {backend.name}: {problem}")
    return lines


def plan_text(results: Sequence[Backend]) -> list[str]:
    """The plans, as Markdown: one fenced block per statement."""
    lines = ["### Plans", "",
             "No statement reads every row of memberships or subscribers inside a correlated subquery: each "
             "subscriber's lists are an index search (`memberships_subscriber`), the list filter a primary-key "
             "search; the one pass over subscribers is the export itself.",
             "",
             "The signup side (issue 16: `store/signups.py`, `store/consent.py`, `store/rights.py`, and "
             "`Store.count`) is explained after the signup tables are filled as the notes say; none of its "
             "statements reads a whole big table (subscribers, memberships, deliveries, consents, confirmations, "
             "welcomes, signup_counters) or the whole of such a table's index, except a scan of a partial index "
             "(it holds only the rows the statement wants) and the two counts, which read every subscriber or every "
             "membership of the list (shown, not checked). SQLite shows the "
             "foreign-key checks a DELETE makes as the plan's last lines; PostgreSQL's EXPLAIN doesn't show its "
             "foreign-key triggers (they search the same indexes)."]
    for backend in results:
        label = "EXPLAIN QUERY PLAN" if backend.name == "sqlite" else "EXPLAIN"
        for name, plan in backend.plans.items():
            lines += ["", f"{backend.name}, {name} ({label}):", "", "```", plan, "```"]
    return lines


def run(args: argparse.Namespace, command: str) -> int:
    """Import, export and list of N subscribers on each backend; plans of their statements."""
    count: int = args.subscriber_count or (20_000 if args.quick else 1_000_000)
    quiet_wait: float = args.quiet_wait if args.quiet_wait is not None else (10.0 if args.quick else 120.0)
    backends = ["sqlite"]
    if args.subscriber_backends != "sqlite" and ensure_postgres():
        backends.append("postgres")
    if args.subscriber_backends == "postgres":
        backends.remove("sqlite")
    timeout = args.timeout or 600.0 + count / 1000
    print(f"subscribers benchmark: {count:,} rows on {', '.join(backends)}", file=sys.stderr, flush=True)
    results: list[Backend] = []
    with signals_interrupt(), scratch(args.workdir, "nl-subscribers-", args.keep) as folder:
        csv_path = folder / "readers.csv"
        started = time.perf_counter()
        write_csv(csv_path, count)
        print(f"  {csv_path.stat().st_size / MB:.0f} MB of CSV in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
        for backend in backends:
            results.append(measure(backend, folder, csv_path, count, timeout=timeout, quiet_wait=quiet_wait))
    for measured in results:
        for name, plan in measured.plans.items():
            print(f"\n{measured.name}: {name}\n{plan}")
    print()
    body = [table(results, count), "", *(f"- {note}" for note in notes(results, count)), "", *plan_text(results)]
    print(f"Machine: {report.machine_line()}")
    print(body[0])
    for note in notes(results, count):
        print(f"- {note}")
    if not args.no_write:
        text = report.section("subscribers", "Subscribers: import, export and list at a million", command, body,
                              "benchmarks/subscribers.py")
        report.write_section(Path(args.output), "subscribers", text)
        print(f"updated {args.output}", file=sys.stderr)
    return 0 if all(not backend.problems for backend in results) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the subscribers benchmark (it also uses --quick, --timeout, --workdir, --keep, --quiet-wait)."""
    group = parser.add_argument_group("subscribers benchmark")
    group.add_argument("--subscriber-count", type=int, default=None,
                       help="rows imported, then exported and listed (default: 1000000; quick: 20000)")
    group.add_argument("--subscriber-backends", choices=["both", "sqlite", "postgres"], default="both",
                       help="where (default: both; PostgreSQL needs its server binaries: bootstrap.sh --postgres)")


if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", "subscribers", *sys.argv[1:]])
