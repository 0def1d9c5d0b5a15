"""How a dispatch shows its progress: a rich progress bar on a terminal, plain lines elsewhere.

Both implement :class:`newsletter.deliver.dispatch.Progress`. Lines go to standard error, so
``--json`` output on standard output stays clean.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from newsletter.deliver.dispatch import IssueSummary

if TYPE_CHECKING:  # rich is imported only when a bar is shown: ~20 ms of start-up for cron runs
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "BarProgress",
    "LineProgress",
    "describe",
    "progress_for",
]


def describe(summary: IssueSummary) -> str:
    """The one-line summary of an issue's run: sent, deferred, failed, skipped, elapsed, rate."""
    text = (
        f"{summary.slug}: sent {summary.sent}, deferred {summary.deferred}, failed {summary.failed}, "
        f"skipped {summary.skipped}, uncertain {summary.uncertain}, waiting {summary.waiting} "
        f"in {summary.elapsed:.1f} s ({summary.rate:.0f} msg/s)"
    )
    if summary.retries:
        text += f"; {summary.retries} temporary failure(s) retried"
    if summary.complete:
        text += "; complete"
    return text


class LineProgress:
    """A plain line every ``interval`` seconds (for CI logs, cron mail and systemd's journal)."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._total = 0
        self._last = 0.0
        self._started = 0.0

    def start(self, slug: str, total: int) -> None:
        """An issue starts."""
        self._total = total
        self._started = self._last = time.monotonic()
        print(f"{slug}: {total} to send", file=self.stream, flush=True)

    def update(self, summary: IssueSummary) -> None:
        """Print a line when ``interval`` has passed since the last one."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        done = summary.sent + summary.failed + summary.skipped
        rate = summary.sent / (now - self._started) if now > self._started else 0.0
        print(f"{summary.slug}: {done}/{self._total} done, sent {summary.sent}, failed {summary.failed}, "
              f"{summary.retries} retried, {rate:.0f} msg/s", file=self.stream, flush=True)

    def finish(self, summary: IssueSummary) -> None:
        """Print the summary line."""
        print(describe(summary), file=self.stream, flush=True)


class BarProgress:
    """A rich progress bar with sent / failed / retried counts, rate and time left."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = 0.0

    def start(self, slug: str, total: int) -> None:
        """Show a new bar for the issue."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._bar.start()
        self._started = time.monotonic()
        self._task = self._bar.add_task(slug, total=max(total, 1), counts="")

    def update(self, summary: IssueSummary) -> None:
        """Move the bar."""
        if self._bar is None or self._task is None:
            return
        elapsed = time.monotonic() - self._started
        rate = summary.sent / elapsed if elapsed > 0 else 0.0
        counts = (f"[green]{summary.sent} sent[/] [red]{summary.failed} failed[/] "
                  f"[yellow]{summary.retries} retried[/] {summary.skipped} skipped {rate:.0f}/s")
        self._bar.update(self._task, completed=summary.sent + summary.failed + summary.skipped, counts=counts)

    def finish(self, summary: IssueSummary) -> None:
        """Close the bar and print the summary."""
        if self._bar is not None:
            self.update(summary)
            self._bar.stop()
            self._bar = None
        self.console.print(describe(summary), highlight=False, markup=False)


def progress_for(stream: TextIO, *, quiet: bool = False) -> LineProgress | BarProgress | None:
    """A bar when ``stream`` is a terminal, lines otherwise, nothing when ``quiet``."""
    if quiet:
        return None
    if stream.isatty():
        from rich.console import Console

        return BarProgress(Console(file=stream))
    return LineProgress(stream)
