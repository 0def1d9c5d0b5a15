"""One ``newsletter inbound`` run: read a mailbox of returned mail and act on every message.

The sources are :mod:`newsletter.inbound.mailboxes`' (a Maildir, an mbox, IMAP, or one
message on standard input from an MTA's pipe); each message goes through
:func:`~newsletter.inbound.process.handle_message` against one open store. A piped message
is kept too, in the Maildir ``[inbound] pipe_maildir`` (``.processed`` / ``.unhandled``), so
that nothing that came back is ever thrown away.
"""

from __future__ import annotations

import mailbox
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from newsletter.config import Settings
from newsletter.errors import ConfigError, InboundError
from newsletter.inbound.mailboxes import (
    MailboxSummary,
    Verdict,
    process_imap,
    process_maildir,
    process_mbox,
    read_stdin_message,
)
from newsletter.inbound.process import InboundTally, Resolver, handle_message
from newsletter.store.feedback import Feedback
from newsletter.store.subscribers import Store
from newsletter.tokens import ReturnPaths, TokenSigner, split_keys

__all__ = [
    "InboundReport",
    "run_inbound",
]


@dataclass
class InboundReport:
    """What one run read and did: where messages were filed, their kinds, what changed, how fast."""

    source: str
    mailbox: MailboxSummary = field(default_factory=MailboxSummary)
    tally: InboundTally = field(default_factory=InboundTally)
    elapsed: float = 0.0
    #: said once: e.g. that no bounce address is set, so nothing is signed
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages handled per second."""
        return self.mailbox.handled / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """The report as plain JSON values."""
        return {
            "source": self.source,
            "processed": self.mailbox.processed,
            "unhandled": self.mailbox.unhandled,
            "retried": self.mailbox.retried,
            "errors": self.mailbox.errors,
            **self.tally.as_dict(),
            "elapsed": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "notes": self.notes,
        }


def _resolver(settings: Settings, store: Store) -> tuple[Resolver, list[str]]:
    keys = split_keys(settings.secret_key.reveal())
    if not keys:
        raise ConfigError("no secret key to check return paths and unsubscribe tokens: set NEWSLETTER_SECRET_KEY"
                          " (the same one dispatch signs with)")
    notes = []
    bounce_address = settings.sender.bounce_address
    if not bounce_address:
        notes.append("[sender] bounce_address is not set: messages carry no signed return path, so bounces are"
                     " matched by Message-ID and recipient only")
    return_paths = ReturnPaths(bounce_address, keys) if bounce_address else None
    feedback = Feedback(store, soft_limit=settings.bounces.soft_limit,
                        soft_window_days=settings.bounces.soft_window_days)
    return Resolver(store, feedback, return_paths=return_paths, tokens=TokenSigner(keys)), notes


def run_inbound(settings: Settings, *, maildir: Path | None = None, mbox: Path | None = None,
                stdin: BinaryIO | None = None, imap: bool = False,
                progress: Callable[[str, Verdict], None] | None = None, now: float | None = None) -> InboundReport:
    """Read one source (exactly one of ``maildir``, ``mbox``, ``stdin``, ``imap``) and act on every message.

    Raises :class:`~newsletter.errors.StoreError` when the database fails (the message being
    handled stays where it was), :class:`InboundError` when the mailbox can't be read or filed,
    :class:`ConfigError` for settings that can't work.
    """
    chosen = [name for name, given in (("maildir", maildir), ("mbox", mbox), ("stdin", stdin), ("imap", imap))
              if given not in (None, False)]
    if len(chosen) != 1:
        raise ConfigError("give exactly one source: --maildir DIR, --mbox FILE, - (standard input) or --imap")
    report = InboundReport(source=chosen[0])
    started = time.perf_counter()
    with Store.open(settings.database.location) as store:
        resolver, report.notes = _resolver(settings, store)

        def handle(raw: bytes) -> Verdict:
            handled = handle_message(raw, resolver, now=now)
            report.tally.add(handled)
            return handled.verdict

        if maildir is not None:
            if not maildir.is_dir():
                raise ConfigError(f"{maildir}: no such Maildir folder (it needs cur/, new/ and tmp/)")
            report.mailbox = process_maildir(maildir, handle, progress=progress)
        elif mbox is not None:
            if not mbox.is_file():
                raise ConfigError(f"{mbox}: no such mbox file")
            report.mailbox = process_mbox(mbox, handle, progress=progress)
        elif stdin is not None:
            raw = read_stdin_message(stdin)
            verdict = handle(raw)
            _keep(settings.inbound.pipe_maildir, raw, verdict)
            report.mailbox.count(verdict)
        else:
            report.mailbox = process_imap(settings.inbound, settings.inbound.password, handle, progress=progress)
    report.elapsed = time.perf_counter() - started
    return report


def _keep(folder: Path, raw: bytes, verdict: Verdict) -> None:
    """File a piped message in ``folder``'s .processed or .unhandled Maildir (a retry is the MTA's to keep)."""
    if verdict == "retry":
        return
    try:
        box = mailbox.Maildir(folder, create=True)
        name = "processed" if verdict == "processed" else "unhandled"
        sub = box.get_folder(name) if name in box.list_folders() else box.add_folder(name)
        sub.add(raw)
    except OSError as exc:
        raise InboundError(f"{folder}: can't keep the message there: {exc.strerror or exc}", temporary=True) from exc
