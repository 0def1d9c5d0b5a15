"""``python -m benchmarks [BENCHMARK] [options]``: run the project's benchmarks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import render

#: benchmark name -> its module; "all" runs each of them in turn
BENCHMARKS = {"render": render}


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
    args = parser.parse_args(arguments)
    chosen = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    command = render.command_line("benchmarks", arguments)  # exactly as typed
    status = 0
    for name in chosen:
        status = BENCHMARKS[name].run(args, command) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
