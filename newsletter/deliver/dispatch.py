"""Dispatch: send each due issue to its list through a pool of SMTP connections.

For one issue: render once, encode once (:func:`~newsletter.compose.compile_message`),
open the issue in the ledger (creating one row per active list member the first time),
then run ``connections`` workers. Each worker takes a claimed row, has the ledger mark it
``sending`` (the same transaction records its previous result), waits for the rate
limiter, builds the message bytes and sends them. A feeder claims rows in batches and,
when none are due, waits for retries that come due soon.

Each message's envelope sender (``MAIL FROM``, where bounces go) is its own signed return
path at ``[sender] bounce_address`` (:class:`~newsletter.tokens.ReturnPaths`, VERP), so that a
bounce names its delivery; without one it is the From address.

Before the issues, a run that isn't a dry run purges the signups that were never confirmed
and sends what waits in the outbox (confirmation emails and welcome issues that ``serve``
couldn't send: :func:`~newsletter.deliver.outbox.catch_up`).

Results map to the ledger as: 250 → sent; 4xx, timeout, dropped connection → deferred
with exponential backoff and jitter (failed once older than the maximum age); 5xx →
failed, and the subscriber is marked bounced when the server says the mailbox doesn't
exist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from email.utils import format_datetime
from pathlib import Path
from typing import Protocol

from newsletter.compose.message import MessageTemplate, compile_message, personalise
from newsletter.config import Settings
from newsletter.deliver.outbox import OutboxSummary, catch_up
from newsletter.deliver.ratelimit import RateLimiter, SharedRateLimiter
from newsletter.deliver.retry import retry_delay
from newsletter.deliver.transport import NextMessage, SendResult, SmtpConnection
from newsletter.errors import ComposeError, DeliveryError, IssueError, NewsletterError, StoreError
from newsletter.issue.parse import load_issue
from newsletter.models import Issue, Recipient
from newsletter.render.engine import render_issue
from newsletter.store.engine import Database
from newsletter.store.ledger import Delivery, IssueRecord, Ledger, Result
from newsletter.store.signups import PurgeCounts
from newsletter.tokens import ReturnPaths, TokenSigner, reader_links, split_keys

__all__ = [
    "DispatchOptions",
    "DispatchReport",
    "EXIT_INCOMPLETE",
    "IssueSummary",
    "Progress",
    "dispatch",
    "dispatch_async",
    "due_issues",
    "retry_delay",
]

#: ``scripts/dispatch`` exit status when something is still deferred, failed or uncertain
EXIT_INCOMPLETE = 3
_CLAIM_LEASE = 600.0  # seconds other runs leave a claimed row alone
_CONNECT_FAILURES_TO_STOP = 3  # per connection, in a row, with nothing sent in between
#: seconds the messages in flight get to finish after SIGTERM/SIGINT, before the connections are dropped
STOP_GRACE = 3.0
#: seconds between looks at the ledger while other live runs hold the only rows left
_OTHERS_POLL = 0.5
#: a delivery taken to send: the row, its envelope sender (MAIL FROM) and its message (or why it can't be built)
_Taken = tuple[Delivery, str, bytes | ComposeError]


@dataclass(frozen=True)
class DispatchOptions:
    """What to dispatch and how."""

    #: an issue file (or slug) to dispatch alone; None means every due issue in the issues folder
    issue: str | None = None
    #: count what would be sent, write nothing, connect to nothing
    dry_run: bool = False
    #: the time to consider "now" when deciding what is due (default: the clock)
    now: dt.datetime | None = None
    #: send again to rows left ``uncertain`` by a crashed run (they may get it twice)
    resend_uncertain: bool = False
    #: accept an issue file that changed since its first recipients got it
    allow_changed: bool = False


@dataclass
class IssueSummary:
    """What one issue's dispatch did in this run, and where its ledger stands."""

    slug: str
    source: str
    sent: int = 0
    #: rows left deferred at the end of the run (they are retried by later runs)
    deferred: int = 0
    #: temporary failures met in this run (retried, so some may have been sent since)
    retries: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    #: rows still waiting (a later retry, the hourly cap, or another run holds them)
    waiting: int = 0
    #: of those, rows another live run holds (claimed or sending) when this run ended
    elsewhere: int = 0
    audience: int = 0
    elapsed: float = 0.0
    complete: bool = False
    dry_run: bool = False
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages sent per second in this run."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """The summary as plain JSON-ready data."""
        return {
            "slug": self.slug, "source": self.source, "sent": self.sent, "deferred": self.deferred,
            "retries": self.retries, "failed": self.failed, "skipped": self.skipped, "uncertain": self.uncertain,
            "waiting": self.waiting, "elsewhere": self.elsewhere, "audience": self.audience,
            "elapsed": round(self.elapsed, 3), "rate": round(self.rate, 1), "complete": self.complete,
            "dry_run": self.dry_run, "error": self.error, "notes": self.notes,
        }


@dataclass
class DispatchReport:
    """Everything a dispatch run did."""

    issues: list[IssueSummary] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: the expired signups purged before the issues (None: a dry run, or the purge failed)
    purged: PurgeCounts | None = None
    #: the confirmation emails and welcome issues sent before the issues (None: a dry run, or it failed)
    outbox: OutboxSummary | None = None

    @property
    def exit_code(self) -> int:
        """0: every due issue complete, all sent; 3: something left (deferred, failed, uncertain, waiting); 1: error.

        A mail of the outbox left deferred counts as something left; one that failed (a
        signup's mistyped address, most often) doesn't: nothing a later run can do for it.
        """
        if self.errors or any(summary.error for summary in self.issues):
            return 1
        if any(not s.complete or s.deferred or s.failed or s.uncertain or s.waiting
               for s in self.issues if not s.dry_run):
            return EXIT_INCOMPLETE
        if self.outbox is not None and self.outbox.deferred:
            return EXIT_INCOMPLETE
        return 0


class Progress(Protocol):
    """Where a run reports progress (a progress bar, log lines, or nothing)."""

    def start(self, slug: str, total: int) -> None:
        """An issue starts: ``total`` rows are due or waiting."""

    def update(self, summary: IssueSummary) -> None:
        """Counts changed (called after each ledger commit)."""

    def finish(self, summary: IssueSummary) -> None:
        """The issue is done for this run."""


class _Silent:
    def start(self, slug: str, total: int) -> None:
        pass

    def update(self, summary: IssueSummary) -> None:
        pass

    def finish(self, summary: IssueSummary) -> None:
        pass


def due_issues(settings: Settings, now: dt.datetime, *, only: str | None = None
               ) -> tuple[list[tuple[Path, Issue]], list[IssueError]]:
    """The issue files whose ``send_at`` has passed (or ``only``, which is due when it has none).

    Returns (due issues, files that couldn't be parsed); a bad file doesn't stop the others.
    """
    if only is not None:
        path = Path(only)
        if not path.exists() and not only.endswith(".md"):
            path = settings.issues_dir / f"{only}.md"
        issue = load_issue(path)
        if issue.send_at is not None and issue.send_at > now:
            return [], []
        return [(path, issue)], []
    due: list[tuple[Path, Issue]] = []
    errors: list[IssueError] = []
    # A list's welcome issue goes to each new reader once, from the outbox: never to a whole list.
    welcomes = {item.welcome.resolve() for item in settings.lists if item.welcome is not None}
    for path in sorted(settings.issues_dir.glob("*.md")):
        if welcomes and path.resolve() in welcomes:
            continue
        try:
            issue = load_issue(path)
        except IssueError as exc:
            errors.append(exc)
            continue
        if issue.send_at is not None and issue.send_at <= now:
            due.append((path, issue))
    due.sort(key=lambda item: (item[1].send_at or now, item[1].slug))
    return due, errors


def dispatch(settings: Settings, options: DispatchOptions | None = None, *, progress: Progress | None = None,
             sign: Callable[[bytes], bytes] | None = None) -> DispatchReport:
    """Dispatch every due issue (see :func:`dispatch_async`), from synchronous code."""
    return asyncio.run(dispatch_async(settings, options or DispatchOptions(), progress=progress, sign=sign))


async def dispatch_async(settings: Settings, options: DispatchOptions, *, progress: Progress | None = None,
                         sign: Callable[[bytes], bytes] | None = None) -> DispatchReport:
    """Dispatch every due issue, one after another; ``sign`` adds a DKIM signature to each message."""
    report = DispatchReport()
    now = options.now or dt.datetime.now(dt.UTC)
    if not options.dry_run:
        # What serve couldn't send (the relay was away) goes first, whether or not an issue is due.
        # Not at --now: that decides what is due, and must not make pending signups look expired.
        try:
            report.purged, report.outbox = await catch_up(settings)
        except NewsletterError as exc:
            # A database error names the database already; anything else says it was the outbox's.
            report.errors.append(str(exc) if isinstance(exc, StoreError) else f"outbox: {exc}")
    try:
        due, bad = due_issues(settings, now, only=options.issue)
    except IssueError as exc:
        report.errors.append(str(exc))
        return report
    report.errors.extend(str(error) for error in bad)
    if not due:
        return report
    signer: TokenSigner | None = None
    return_paths: ReturnPaths | None = None
    if not options.dry_run:
        keys = split_keys(settings.secret_key.reveal())
        signer = TokenSigner(keys)
        if settings.sender.bounce_address:
            return_paths = ReturnPaths(settings.sender.bounce_address, keys)
    with Database.open(settings.database.location) as store:
        ledger = Ledger(store)
        stop = _StopSignal()
        stop.install()
        try:
            for path, issue in due:
                if stop.requested:
                    break
                summary = IssueSummary(issue.slug, str(path), dry_run=options.dry_run)
                report.issues.append(summary)
                try:
                    if options.dry_run:
                        _dry_run(ledger, settings, issue, summary)
                    else:
                        assert signer is not None
                        run = _IssueRun(ledger, settings, options, path, issue, summary, signer, return_paths,
                                        sign, progress or _Silent(), stop)
                        await run.execute()
                except NewsletterError as exc:
                    if isinstance(exc, DeliveryError) and not exc.fatal:
                        summary.notes.append(str(exc))  # the relay is away: a note, the rows wait
                    else:
                        summary.error = str(exc)
        finally:
            stop.uninstall()
    return report


def _dry_run(ledger: Ledger, settings: Settings, issue: Issue, summary: IssueSummary) -> None:
    # Render anyway: a dry run must fail the way the real run would.
    render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
    record = ledger.find_issue(issue.slug)
    if record is None:
        summary.audience = ledger.audience(issue.list_name)
        summary.waiting = summary.audience
        summary.notes.append(f"would create {summary.audience} deliveries for list '{issue.list_name}'")
        return
    counts = ledger.counts(record.id)
    summary.audience = sum(counts.values())
    summary.waiting = counts["pending"] + counts["deferred"]
    summary.complete = record.completed_at is not None
    summary.notes.append(
        f"already started: {counts['sent']} sent, {summary.waiting} to send, {counts['uncertain']} uncertain"
    )


class _StopSignal:
    """SIGINT/SIGTERM ask the run to stop after the messages in flight (a second one is not caught)."""

    def __init__(self) -> None:
        self.requested = False
        self.event = asyncio.Event()
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(signum, self.request)
                self._installed.append(signum)

    def request(self) -> None:
        self.requested = True
        self.event.set()
        self.uninstall()  # a second signal takes the default way out

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()


class _Committer:
    """Group commit: every worker's (previous result, next mark) pair goes into one shared transaction."""

    def __init__(self, ledger: Ledger, run_id: int, list_id: int, on_commit: Callable[[], None]) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.list_id = list_id
        self.on_commit = on_commit
        self._waiting: list[tuple[Result | None, Delivery | None, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, result: Result | None, mark: Delivery | None) -> bool:
        """Record ``result`` and mark ``mark`` sending; True when this run may send ``mark``."""
        return await self.submit_nowait(result, mark)

    def submit_nowait(self, result: Result | None, mark: Delivery | None) -> asyncio.Future[bool]:
        """Like :meth:`submit`, but returns the future at once (the commit overlaps other work)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((result, mark, future))
        self._wake.set()
        return future

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            # Two more turns of the loop before committing: the workers woken by the same burst
            # of replies join this transaction (measured: ~10 % more messages a second than one).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            results = [result for result, _, _ in batch if result is not None]
            marks = [mark for _, mark, _ in batch if mark is not None]
            try:
                granted = iter(self.ledger.record(self.run_id, self.list_id, results, marks, now=time.time()))
            except NewsletterError as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, mark, future in batch:
                if not future.done():
                    future.set_result(next(granted) if mark is not None else False)
            self.on_commit()
            await asyncio.sleep(0)  # let the workers queue up the next round


class _IssueRun:
    """One issue's dispatch in this run."""

    def __init__(self, ledger: Ledger, settings: Settings, options: DispatchOptions, path: Path, issue: Issue,
                 summary: IssueSummary, tokens: TokenSigner, return_paths: ReturnPaths | None,
                 sign: Callable[[bytes], bytes] | None, progress: Progress, stop: _StopSignal) -> None:
        self.ledger = ledger
        self.settings = settings
        self.options = options
        self.path = path
        self.issue = issue
        self.summary = summary
        self.tokens = tokens
        #: each message's envelope sender names its delivery (VERP); None: the From address, as before
        self.return_paths = return_paths
        #: the return paths of claimed rows not yet taken, by subscriber (made a batch at a time)
        self.senders: dict[int, str] = {}
        self.sign = sign
        self.progress = progress
        self.stop = stop
        self.queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self.outstanding = 0
        self.progressed = asyncio.Event()
        self.fatal: DeliveryError | None = None
        self.connect_failures = 0
        self.hourly_left: int | None = None
        self.halted = False
        self.list_id = 0
        self.site_url = settings.sender.site_url
        self.from_email = settings.sender.from_email
        self.unsubscribe_address = settings.sender.unsubscribe_address
        self._date_second = -1
        self._date = ""

    async def execute(self) -> None:
        settings, issue, summary = self.settings, self.issue, self.summary
        started = time.monotonic()
        rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
        template = compile_message(rendered, sender=settings.sender, list_id=issue.list_name)
        data = self.path.read_bytes()
        content_hash = hashlib.sha256(data).hexdigest()
        source_text = data.decode("utf-8", "replace")  # it parsed, so it is UTF-8: kept for the web archive
        if self.ledger.find_issue(issue.slug) is None and not self.ledger.audience(issue.list_name):
            # Recording it now would mark it complete with nobody on it, for good.
            raise IssueError(str(self.path), issue.line_of("list"),
                             f"list '{issue.list_name}' has no active subscribers; nothing was sent",
                             f"add some first: newsletter subscribers import FILE.csv --list {issue.list_name}")
        record = self.ledger.open_issue(slug=issue.slug, list_name=issue.list_name, subject=issue.subject,
                                        source_text=source_text,
                                        content_hash=content_hash, domain=settings.sender.domain)
        if record.completed_at is not None and self.options.resend_uncertain \
                and self.ledger.counts(record.id)["uncertain"]:
            # Complete means nothing is left to try on its own; uncertain rows wait for this flag.
            self.ledger.reopen(record.id)
            record = replace(record, completed_at=None)
        if record.completed_at is not None:
            summary.complete = True
            summary.audience = sum(self.ledger.counts(record.id).values())
            summary.notes.append(f"already complete ({record.completed_at})")
            return
        if record.content_hash != content_hash:
            if not self.options.allow_changed:
                raise IssueError(str(self.path), 1, "the file changed after sending began",
                                 "the rest would get a different issue; pass --allow-changed to send it anyway")
            self.ledger.update_content_hash(record.id, content_hash, source_text)
        run_id, lock = self.ledger.start_run()
        try:
            await self._run(record, run_id, template)
        finally:
            summary.elapsed = time.monotonic() - started
            in_flight = sys.exc_info()[1]
            closing: StoreError | None = None
            try:
                elsewhere = self.ledger.held_elsewhere(record.id, run_id)
            except StoreError as exc:
                elsewhere, closing = 0, exc
            try:
                self.ledger.finish_run(run_id, lock)  # releases the run's lock even when its write fails
            except StoreError as exc:
                closing = closing or exc
            # The summary still gets printed when the database fails now (reads work while it is
            # locked or full): what was sent is on record, and the user should see it.
            with suppress(StoreError):
                counts = self.ledger.counts(record.id)
                summary.audience = sum(counts.values())
                summary.deferred = counts["deferred"]
                # Rows another live run holds are still to be sent: this run waited for that run while
                # it could, so they are left only when this one was stopped (or halted) first.
                summary.waiting = counts["pending"] + counts["sending"]
                summary.elsewhere = elsewhere
                if elsewhere:
                    summary.notes.append(f"{elsewhere} still held by another run that is going on")
                summary.uncertain = counts["uncertain"]
                summary.skipped = counts["skipped"]
                if closing is None:
                    summary.complete = self.ledger.complete_if_done(record.id)
            self.progress.finish(summary)
            if closing is not None and in_flight is None:
                raise closing
        if self.fatal is not None:
            raise self.fatal

    async def _run(self, record: IssueRecord, run_id: int, template: MessageTemplate) -> None:
        ledger, settings, summary = self.ledger, self.settings, self.summary
        self.list_id = record.list_id
        uncertain = ledger.recover(record.id)
        if uncertain:
            summary.notes.append(f"{uncertain} left uncertain by a run that died")
        if self.options.resend_uncertain:
            released = ledger.release_uncertain(record.id)
            if released:
                summary.notes.append(f"{released} uncertain deliveries will be sent again")
        max_age = settings.dispatch.give_up_after_hours * 3600
        summary.failed += ledger.give_up_expired(record.id, before=time.time() - max_age)
        if settings.smtp.max_per_hour:
            self.hourly_left = max(0, settings.smtp.max_per_hour - ledger.sent_since(time.time() - 3600))
        counts = ledger.counts(record.id)
        self.progress.start(self.issue.slug, counts["pending"] + counts["deferred"])
        committer = _Committer(ledger, run_id, record.list_id, lambda: self.progress.update(summary))
        committer.start()
        limiter = (SharedRateLimiter(settings.smtp.rate, self.ledger.reserve_sends, sleep=self._nap)
                   if settings.smtp.rate else RateLimiter(0))
        connections = [SmtpConnection(settings.smtp) for _ in range(settings.smtp.connections)]
        workers = [asyncio.create_task(self._worker(connection, committer, limiter, template))
                   for connection in connections]
        feeder = asyncio.create_task(self._feed(record, run_id))
        stopper = asyncio.create_task(self._end_when_stopped(connections, workers))
        try:
            # A worker that fails (the database refused a commit, say) must not leave the
            # feeder waiting for progress that will never come: the first failure ends the run.
            done, _ = await asyncio.wait([feeder, *workers], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in (stopper, feeder, *workers):
                task.cancel()
            await asyncio.gather(stopper, feeder, *workers, return_exceptions=True)
            await committer.stop()

    async def _end_when_stopped(self, connections: list[SmtpConnection], workers: list[asyncio.Task[None]]) -> None:
        """After a stop signal, give the messages in flight :data:`STOP_GRACE` seconds, then drop the connections.

        A relay that doesn't answer (a 600 s wait for a final reply, a stalled command) must not
        keep a stopped run alive: the row whose message went out whole becomes ``uncertain``,
        any other ``deferred``, as a timeout would make them. A worker still not done a second
        later (opening a connection, say) is cancelled; a row it was sending stays ``sending``
        and the next run calls it uncertain.
        """
        await self.stop.event.wait()
        await asyncio.sleep(STOP_GRACE)
        for connection in connections:
            connection.interrupt()
        await asyncio.sleep(1.0)
        for worker in workers:
            worker.cancel()

    async def _feed(self, record: IssueRecord, run_id: int) -> None:
        connections = self.settings.smtp.connections
        batch = max(32, connections * 16)
        wait_limit = self.settings.dispatch.wait_for_retries
        try:
            while not self._stopping():
                if self.hourly_left is not None and self.hourly_left <= 0:
                    self.summary.notes.append("stopped at max_per_hour; the rest go in a later run")
                    break
                now = time.time()
                claimed = self.ledger.claim(record.id, run_id, now=now, limit=batch, lease=_CLAIM_LEASE)
                if claimed:
                    if self.return_paths is not None:
                        # Made for the whole batch in one go: ~1.6 µs each, where one at a time, between
                        # messages that push the hash code and state out of the CPU's caches, took ~4.8.
                        make = self.return_paths.make
                        self.senders.update({delivery.subscriber_id: make(delivery.issue_id, delivery.subscriber_id)
                                             for delivery in claimed})
                    for delivery in claimed:
                        self.outstanding += 1
                        self.queue.put_nowait(delivery)
                    # Claim the next batch once this one's queue is nearly through. The rows the
                    # workers hold don't count: a connection stuck on a silent server holds its
                    # rows until its timeout, and the others must not wait for it.
                    while self.queue.qsize() > connections and not self._stopping():
                        await self._wait_progress(None)
                    continue
                if self.outstanding:
                    await self._wait_progress(None)  # results in flight may bring retries
                    continue
                due = self.ledger.next_due(record.id)
                if due is not None and due <= now or self.ledger.held_elsewhere(record.id, run_id):
                    # Rows due that this run can't claim, or being sent: another run holds them.
                    # The issue isn't done until they are, so wait while that run lives (it may
                    # also give rows back); if it died, its claims are free again and its rows
                    # in flight become uncertain, and this run sends the rest.
                    uncertain = self.ledger.recover(record.id)
                    if uncertain:
                        self.summary.notes.append(f"{uncertain} left uncertain by a run that died")
                    await self._wait_progress(_OTHERS_POLL)
                    continue
                if due is None or due - now > wait_limit:
                    break
                await self._wait_progress(due - now)
        finally:
            for _ in range(connections):
                self.queue.put_nowait(None)

    async def _wait_progress(self, timeout: float | None) -> None:
        self.progressed.clear()
        waits = [asyncio.ensure_future(self.progressed.wait()), asyncio.ensure_future(self.stop.event.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, but not past a stop signal (the rate limiter's sleep)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stop.event.wait(), seconds)

    def _stopping(self) -> bool:
        return self.stop.requested or self.halted

    async def _worker(self, connection: SmtpConnection, committer: _Committer, limiter: RateLimiter,
                      template: MessageTemplate) -> None:
        # A result rides along with the next mark (one transaction for both) while there is
        # more to send; when the queue runs dry it is written at once, so the feeder sees it.
        previous: Result | None = None
        # The next delivery, taken as this message's final dot goes out so that its envelope
        # rides with it (pipelined connections only; not under a rate limit, where the next
        # message waits for its own slot).
        held: _Taken | None = None
        ahead: list[_Taken] = []

        def take_ahead() -> tuple[str, str, int] | None:
            if self._stopping():
                return None
            taken = self._take_now(template)
            if taken is None:
                return None
            ahead.append(taken)
            delivery, sender, message = taken
            # Its own envelope sender: with VERP every message has a return path of its own.
            return None if isinstance(message, ComposeError) else (sender, delivery.email, len(message))

        ride = None if limiter.interval else take_ahead
        try:
            while True:
                if held is not None and self._stopping():
                    held = None
                    self._done_one()  # taken but never marked; its envelope dies with the connection
                if held is not None:
                    (delivery, sender, message), held = held, None
                else:
                    if previous is not None and self.queue.empty():
                        await committer.submit(previous, None)
                        previous = None
                        self._done_one()
                    taken = await self._take(limiter, template)
                    if taken is None:
                        break
                    delivery, sender, message = taken
                # The mark commits while the envelope travels; the message itself waits for it
                # (the transport's gate), so a row is always `sending` before its DATA.
                mark = committer.submit_nowait(previous, delivery)
                had_previous, previous = previous is not None, None
                try:
                    result = await self._send_one(connection, delivery, sender, message, gate=mark, then=ride)
                finally:
                    if ahead:
                        held = ahead.pop()
                    granted = await mark
                    if had_previous:
                        self._done_one()
                if not granted:  # another run has it, or the subscriber left: nothing was sent
                    self._done_one()
                    continue
                self._tally(result)
                previous = result
        finally:
            if held is not None:
                self._done_one()  # taken but never marked: the run's end frees the claim
            if previous is not None:
                with suppress(NewsletterError):
                    await committer.submit(previous, None)
                self._done_one()
            await connection.close()

    async def _take(self, limiter: RateLimiter, template: MessageTemplate) -> _Taken | None:
        """The next delivery to send and its message (or why it can't be built); None when the work is over."""
        while True:
            delivery = await self.queue.get()
            if delivery is None:
                return None
            if not self._may_send():
                self._done_one()  # claimed but never marked: the run's end frees the claim
                continue
            await limiter.wait()
            if self._stopping():  # the stop came while it waited for its slot
                self._done_one()
                continue
            return delivery, self._sender(delivery), self._compose(delivery, template)

    def _take_now(self, template: MessageTemplate) -> _Taken | None:
        """Like :meth:`_take`, but only what is queued already, and without a rate limit."""
        if self.queue.empty():
            return None
        delivery = self.queue.get_nowait()
        if delivery is None:
            self.queue.put_nowait(None)  # the end-of-work marker stays for the loop to find
            return None
        if not self._may_send():
            self._done_one()
            return None
        return delivery, self._sender(delivery), self._compose(delivery, template)

    def _may_send(self) -> bool:
        """Whether a delivery taken from the queue may go now (it counts against the hourly cap)."""
        if self._stopping():
            return False
        if self.hourly_left is not None:
            if self.hourly_left <= 0:
                return False
            self.hourly_left -= 1
        return True

    def _sender(self, delivery: Delivery) -> str:
        """The envelope sender (MAIL FROM) of ``delivery``'s message: its signed return path, else the From address."""
        if self.return_paths is None:
            return self.from_email
        sender = self.senders.pop(delivery.subscriber_id, None)
        return sender or self.return_paths.make(delivery.issue_id, delivery.subscriber_id)

    def _compose(self, delivery: Delivery, template: MessageTemplate) -> bytes | ComposeError:
        try:
            return self._message(delivery, template)
        except ComposeError as exc:
            return exc

    def _done_one(self) -> None:
        """A claimed delivery is finished with: its result (if any) is in the ledger."""
        self.outstanding -= 1
        self.progressed.set()

    def _tally(self, result: Result) -> None:
        if result.status == "sent":
            self.summary.sent += 1
        elif result.status == "failed":
            self.summary.failed += 1
        elif result.status == "deferred":
            self.summary.retries += 1

    async def _send_one(self, connection: SmtpConnection, delivery: Delivery, sender: str,
                        message: bytes | ComposeError, *, gate: Awaitable[bool], then: NextMessage | None) -> Result:
        key = (delivery.issue_id, delivery.subscriber_id)
        if isinstance(message, ComposeError):
            return Result(*key, "failed", None, str(message))
        try:
            # personalise() never starts a line with a dot (quoted-printable encodes it as =2E).
            outcome = await connection.send(sender, delivery.email, message, gate=gate, dot_safe=True, then=then)
        except DeliveryError as exc:
            if exc.fatal:
                self.fatal = exc
                self.halted = True
                return Result(*key, "release")
            # No connection: this row waits like any deferral; several in a row stop the run.
            self.connect_failures += 1
            if self.connect_failures >= _CONNECT_FAILURES_TO_STOP * self.settings.smtp.connections:
                if not self.halted:
                    self.summary.notes.append(f"stopped: {exc}")
                self.halted = True
            outcome = SendResult("deferred", None, str(exc))
        else:
            if outcome.outcome == "sent":
                self.connect_failures = 0
        return self._result(delivery, outcome)

    def _result(self, delivery: Delivery, outcome: SendResult) -> Result:
        key = (delivery.issue_id, delivery.subscriber_id)
        text = outcome.text
        if outcome.outcome == "sent":
            return Result(*key, "sent", outcome.code, "")
        if outcome.outcome == "failed":
            return Result(*key, "failed", outcome.code, text, bounced=outcome.bounced)
        if outcome.outcome == "uncertain":
            return Result(*key, "uncertain", outcome.code, text)
        dispatch = self.settings.dispatch
        now = time.time()
        first = delivery.first_attempt_at or now
        if now - first >= dispatch.give_up_after_hours * 3600:
            return Result(*key, "failed", outcome.code, f"gave up after {dispatch.give_up_after_hours:g} h: {text}")
        delay = retry_delay(delivery.attempts + 1, dispatch)
        return Result(*key, "deferred", outcome.code, text, next_attempt_at=now + delay)

    def _message(self, delivery: Delivery, template: MessageTemplate) -> bytes:
        token = self.tokens.make(delivery.subscriber_id, self.list_id)
        recipient = Recipient(email=delivery.email, name=delivery.name, fields=delivery.fields,
                              **reader_links(self.site_url, self.unsubscribe_address, token))
        message = personalise(template, recipient, message_id=delivery.message_id, date=self._header_date())
        return self.sign(message) if self.sign is not None else message

    def _header_date(self) -> str:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))
        return self._date

