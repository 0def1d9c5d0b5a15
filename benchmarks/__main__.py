"""``python -m benchmarks [BENCHMARK] [options]``: run the project's benchmarks.

``all`` (the default) runs render, throughput, latency, workers, startup, memory,
subscribers, archive and inbound in that order;
``--quick`` makes it a fast smoke run of every path (small sizes, figures written
to ``build/BENCHMARKS.quick.md`` instead of ``BENCHMARKS.md`` unless ``--output`` is given).
The delivery benchmarks need Postfix's smtp-sink and smtp-source and the project's
virtualenv: missing ones are installed first with ``bash scripts/bootstrap.sh --smtp-sink``
(``workers`` also needs PostgreSQL's server binaries: ``--postgres``, run when missing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import archive, delivery, inbound, netns, render, startup, subscribers, workers
from benchmarks.report import ROOT, command_line
from benchmarks.servers import ensure_ready

#: benchmark name -> what runs it; "all" runs each of them in turn, in this order
BENCHMARKS: dict[str, Callable[[argparse.Namespace, str], int]] = {
    "render": render.run,
    "throughput": delivery.run_throughput,
    "latency": netns.run,
    "workers": workers.run,
    "startup": startup.run,
    "memory": delivery.run_memory,
    "subscribers": subscribers.run,
    "archive": archive.run,
    "inbound": inbound.run,
}
#: the ones that run `newsletter` against smtp-sink
NEED_SMTP_TOOLS = {"throughput", "latency", "workers", "startup", "memory"}
QUICK_OUTPUT = ROOT / "build" / "BENCHMARKS.quick.md"


def _given(arguments: Sequence[str], option: str) -> bool:
    return any(item == option or item.startswith(option + "=") for item in arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmark (default: all of them)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks; each prints its figures and updates its section of BENCHMARKS.md.",
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        default="all",
        choices=["all", *BENCHMARKS],
        help="which benchmark to run (default: all)",
    )
    render.add_arguments(parser)
    delivery.add_arguments(parser)
    netns.add_arguments(parser)
    workers.add_arguments(parser)
    startup.add_arguments(parser)
    subscribers.add_arguments(parser)
    archive.add_arguments(parser)
    inbound.add_arguments(parser)
    args = parser.parse_args(arguments)
    if args.quick:
        # Smoke-run sizes for the render benchmark too (the others read args.quick themselves).
        for option, value in (("--runs", 5), ("--max-seconds", 1.0), ("--recipients", 2_000), ("--repeats", 2)):
            if not _given(arguments, option):
                setattr(args, option[2:].replace("-", "_"), value)
        if not _given(arguments, "--output"):
            args.output = QUICK_OUTPUT  # a smoke run doesn't replace the real figures
    chosen = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    if NEED_SMTP_TOOLS.intersection(chosen):
        ensure_ready()
    command = command_line("benchmarks", arguments)  # exactly as typed
    status = 0
    for name in chosen:
        try:
            status = BENCHMARKS[name](args, command) or status
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted", file=sys.stderr)
            return 130
    if Path(args.output) == QUICK_OUTPUT and not args.no_write:
        print(f"quick run: figures in {QUICK_OUTPUT.relative_to(ROOT)}, BENCHMARKS.md left alone", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
