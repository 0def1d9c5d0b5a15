"""Start-up (B5): how long ``newsletter send-test`` takes from launch to exit, and which imports cost the most.

* ``newsletter --config <tmp>/newsletter.toml send-test <seed> --to x@example.com``
  against ``smtp-sink`` on 127.0.0.1 (a database of 1,000 subscribers already there, as
  a user would have): wall time from just before the fork to the exit, median of
  ``--startup-runs`` runs after one warm-up run (which also compiles the bytecode).
  Target: < 1 s. For scale, the same for ``python -c pass`` (the interpreter alone) and
  ``newsletter --version`` (the command-line module and everything it imports).
* ``python -X importtime -c "import newsletter.cli.commands"`` (median of 3 runs per module):
  the 10 largest cumulative import times, and the modules from outside the package
  (third-party and stdlib) that its own modules import directly, largest first: the
  candidates to import lazily.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.delivery import build_database, environment, make_workspace, scratch
from benchmarks.servers import Finished, SmtpSink, newsletter_command, run_measured, signals_interrupt, venv_python

__all__ = ["add_arguments", "import_times", "run"]

STARTUP_TARGET_S = 1.0
IMPORTTIME_RUNS = 3


@dataclass(frozen=True)
class Timed:
    label: str
    runs: list[Finished]

    @property
    def walls(self) -> list[float]:
        return [run.wall for run in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


@dataclass(frozen=True)
class ImportLine:
    module: str
    depth: int
    self_us: int
    cumulative_us: int
    importer: str  # the module whose import brought it in ("" at the top)


def parse_importtime(text: str) -> list[ImportLine]:
    """The lines of ``-X importtime`` output, each with the module that imported it."""
    raw: list[tuple[str, int, int, int]] = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        name_part = parts[2].rstrip()
        stripped = name_part.lstrip(" ")
        depth = (len(name_part) - len(stripped) - 1) // 2
        raw.append((stripped, depth, int(parts[0]), int(parts[1])))
    found: list[ImportLine] = []
    for index, (module, depth, self_us, cumulative_us) in enumerate(raw):
        # Children are printed before their parent: the parent is the next line one level up.
        importer = next((later[0] for later in raw[index + 1:] if later[1] < depth), "")
        found.append(ImportLine(module, depth, self_us, cumulative_us, importer))
    return found


def import_times(python: Path, runs: int = IMPORTTIME_RUNS) -> list[ImportLine]:
    """``python -X importtime -c "import newsletter.cli.commands"``, median per module over ``runs`` runs."""
    samples: dict[str, list[ImportLine]] = defaultdict(list)
    for _ in range(runs):
        completed = subprocess.run([str(python), "-X", "importtime", "-c", "import newsletter.cli.commands"],
                                   capture_output=True, text=True, check=True, env=environment())
        for line in parse_importtime(completed.stderr):
            samples[line.module].append(line)
    merged = []
    for lines in samples.values():
        first = lines[0]
        merged.append(ImportLine(first.module, first.depth, int(statistics.median(x.self_us for x in lines)),
                                 int(statistics.median(x.cumulative_us for x in lines)), first.importer))
    return merged


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1e3:.1f} ms"


def import_tables(lines: list[ImportLine]) -> tuple[str, str]:
    top = sorted(lines, key=lambda line: line.cumulative_us, reverse=True)[:10]
    cumulative = report.format_table(
        ["Module", "Cumulative", "Self", "Imported by"],
        [[line.module, _ms(line.cumulative_us), _ms(line.self_us), line.importer or "-"] for line in top],
        right=(1, 2),
    )
    own = {line.module for line in lines if line.module.split(".")[0] == "newsletter"}
    outside = sorted(
        (line for line in lines if line.importer in own and line.module.split(".")[0] != "newsletter"),
        key=lambda line: line.cumulative_us, reverse=True,
    )[:10]
    direct = report.format_table(
        ["Import", "Kind", "Cumulative", "Imported by"],
        [
            [
                line.module,
                "stdlib" if line.module.split(".")[0] in sys.stdlib_module_names else "third-party",
                _ms(line.cumulative_us),
                line.importer,
            ]
            for line in outside
        ],
        right=(2,),
    )
    return cumulative, direct


def time_command(label: str, command: list[str], runs: int, folder: Path, cwd: Path) -> Timed:
    run_measured(command, env=environment(), cwd=cwd, folder=folder, timeout=60)  # warm-up
    results = [run_measured(command, env=environment(), cwd=cwd, folder=folder, timeout=60) for _ in range(runs)]
    for result in results:
        if result.returncode != 0:
            print(f"warning: {label}: {result.describe_failure()}", file=sys.stderr)
            break
    return Timed(label, results)


def run(args: argparse.Namespace, command: str) -> int:
    """B5: send-test wall time, and the import-time tables."""
    runs: int = args.startup_runs if args.startup_runs is not None else (3 if args.quick else 7)
    issue = Path(args.issue)
    print(f"startup benchmark: {runs} runs each (after a warm-up run)", file=sys.stderr, flush=True)
    python = venv_python()
    with signals_interrupt(), scratch(args.workdir, "nl-startup-", args.keep) as folder:
        with SmtpSink(folder / "sink") as sink:
            workspace = make_workspace(folder / "ws", issue=issue, host="127.0.0.1", port=sink.port, connections=1)
            build_database(workspace, 1_000)
            logs = folder / "logs"
            timed = [
                time_command("python -c pass", [str(python), "-c", "pass"], runs, logs, workspace.folder),
                time_command("newsletter --version", [str(newsletter_command()), "--version"], runs, logs,
                             workspace.folder),
                time_command("newsletter send-test <seed> --to x@example.com",
                             workspace.command("send-test", str(workspace.issue), "--to", "x@example.com"),
                             runs, logs, workspace.folder),
            ]
            received = sink.messages()
        lines = import_times(python, 1 if args.quick else IMPORTTIME_RUNS)
    rows = []
    for entry in timed:
        target = ""
        if entry.label.startswith("newsletter send-test"):
            target = f"< {STARTUP_TARGET_S:g} s: " + ("met" if entry.median < STARTUP_TARGET_S else "NOT met")
        rows.append([
            entry.label, str(len(entry.runs)), f"{entry.median * 1e3:.0f} ms",
            f"{min(entry.walls) * 1e3:.0f}-{max(entry.walls) * 1e3:.0f} ms",
            f"{statistics.median(run.cpu for run in entry.runs) * 1e3:.0f} ms",
            f"{statistics.median(run.max_rss_kib for run in entry.runs) * 1024 / 1e6:.0f} MB", target,
        ])
    table = report.format_table(["Command", "Runs", "Median", "Range", "CPU", "Peak RSS", "Target"], rows,
                                right=(1, 2, 3, 4, 5))
    cumulative, direct = import_tables(lines)
    whole = next((line for line in lines if line.module == "newsletter.cli.commands"), None)
    notes = [
        "Wall time from just before the fork to the exit (`os.wait4`), after one warm-up run (which leaves the "
        "package's bytecode cached, as a user's first run does: PYTHONDONTWRITEBYTECODE is dropped); "
        "CPU = user + system; "
        "send-test talks to `smtp-sink` on 127.0.0.1 (it counted "
        f"{'?' if received is None else received} messages, of {runs + 1} sends with the warm-up), "
        "database of 1,000 subscribers, no DKIM.",
        f"`import newsletter.cli.commands` takes {_ms(whole.cumulative_us) if whole else '?'} "
        f"(`-X importtime`, median of {1 if args.quick else IMPORTTIME_RUNS} run(s) per module; "
        "importtime itself adds some overhead).",
    ]
    body = [
        table, "", *(f"- {note}" for note in notes), "",
        "Largest cumulative import times (`python -X importtime -c \"import newsletter.cli.commands\"`):", "",
        cumulative, "",
        "Modules from outside the package that its own modules import directly, largest first "
        "(the candidates to import lazily):", "",
        direct,
    ]
    print(f"Machine: {report.machine_line()}")
    print("\n".join(body))
    if not args.no_write:
        text = report.section("startup", "Start-up (B5): send-test from launch to exit", command, body,
                              "benchmarks/startup.py")
        report.write_section(Path(args.output), "startup", text)
        print(f"updated {args.output}", file=sys.stderr)
    failed = any(run.returncode != 0 for entry in timed for run in entry.runs)
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("startup benchmark")
    group.add_argument("--startup-runs", type=int, default=None, help="timed runs per command (default: 7; quick: 3)")
