"""Read returned mail from a Maildir, an mbox file, standard input or an IMAP folder, and file it.

Each ``process_*`` function hands every message to ``handle(raw) -> verdict`` and files it by
the verdict it gets back: ``"processed"`` (the message did what it could: moved to the
*processed* folder), ``"unhandled"`` (nothing understood it: moved to the *unhandled* folder,
for a human) or ``"retry"`` (it couldn't be acted on now, e.g. the database is down: left
where it is, for the next run). Nothing is ever deleted. An exception from ``handle`` stops
the run: what was handled before it is filed, the message it raised on and the rest stay.

What a crash (kill -9, power loss) can do, per source:

- **Maildir**: each message is moved by one ``rename`` within the Maildir (the
  ``.processed`` / ``.unhandled`` Maildir++ subfolders live inside it, so on the same
  filesystem): at every moment it is in exactly one place. A crash after ``handle`` and
  before the rename leaves that one message in place, to be handled again (the store ignores
  a report it has recorded already).
- **mbox**: handled messages are appended to ``<file>.processed`` / ``<file>.unhandled``
  (mbox files), flushed to disk (fsync), and only then removed from the source, which is
  rewritten once at the end (the standard library writes a new file and renames it over the
  old one), all under the mbox locks (fcntl and ``<file>.lock``) that MTAs honour. A crash
  between the two leaves the handled messages in both places, never in none; a crash while
  appending can leave a cut-off last message in the target, while the source still has it whole.
- **IMAP**: messages are fetched in batches (``[inbound] batch_size``), handled, and each
  batch is moved with ``UID MOVE`` (RFC 6851), or ``UID COPY`` + ``UID STORE \\Deleted`` +
  ``UID EXPUNGE`` (RFC 4315) of exactly those UIDs where MOVE isn't offered. A dropped
  connection: the messages already handled are filed over a new connection, the rest stay in
  the folder, and :class:`~newsletter.errors.InboundError` (``temporary``) says so; if even
  the new connection fails, at most one batch is handled again on the next run.

Memory stays flat whatever the mailbox holds: a Maildir is read one directory entry at a time
(the standard library's ``mailbox.Maildir`` first lists every name into a dict), an IMAP folder
one batch at a time, never more than :data:`FETCH_BYTES` of message text at once. A message
over :data:`MAX_MESSAGE_BYTES` is not read at all: it is filed as unhandled, and the summary
says so. The standard library's mbox keeps one offset pair per message (some 150 bytes each).
"""

from __future__ import annotations

import errno
import imaplib
import mailbox
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from newsletter.config import InboundSettings, Secret, is_loopback
from newsletter.errors import InboundError

__all__ = [
    "FETCH_BYTES",
    "Handle",
    "InboundMessage",
    "MAX_MESSAGE_BYTES",
    "MailboxSummary",
    "PROCESSED",
    "Progress",
    "STALE_LOCK_SECONDS",
    "UNHANDLED",
    "Verdict",
    "process_imap",
    "process_maildir",
    "process_mbox",
    "read_stdin_message",
]

Verdict = Literal["processed", "unhandled", "retry"]
#: what is done with each message: its raw bytes in, what to do with it out
Handle = Callable[[bytes], Verdict]
#: told after each message: where it was (see :class:`InboundMessage`) and its verdict
Progress = Callable[[str, Verdict], None]

#: the largest message read: a returned message is a few kB; 50 MB covers any attachment an MTA returns
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
#: IMAP: the most message text fetched in one round trip (at least one message)
FETCH_BYTES = 8 * 1024 * 1024
#: the Maildir++ subfolders (``.processed``, ``.unhandled``) and mbox suffixes
PROCESSED = "processed"
UNHANDLED = "unhandled"
#: an mbox dot-lock older than this was left by a process that died (Postfix's stale_lock_time is 500 s)
STALE_LOCK_SECONDS = 500
_VERDICTS = ("processed", "unhandled", "retry")


@dataclass(frozen=True)
class InboundMessage:
    """One message and where it was read: ``maildir:<dir>/new/<name>``, ``mbox:<file>#<n>``,
    ``imap:<folder>/<uid>`` or ``stdin``."""

    raw: bytes
    where: str


@dataclass
class MailboxSummary:
    """How many messages went where in one run, and what went wrong with single messages."""

    processed: int = 0
    unhandled: int = 0
    retried: int = 0
    #: one line per message that couldn't be read as it is (too large, vanished): filed or skipped
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Messages looked at: processed, unhandled and retried."""
        return self.processed + self.unhandled + self.retried

    def count(self, verdict: Verdict) -> None:
        if verdict == "processed":
            self.processed += 1
        elif verdict == "unhandled":
            self.unhandled += 1
        else:
            self.retried += 1


def _check_verdict(verdict: object, where: str) -> Verdict:
    if verdict not in _VERDICTS:
        raise ValueError(f"handle() returned {verdict!r} for {where}; it must return one of {', '.join(_VERDICTS)}")
    return verdict  # type: ignore[return-value]  # checked just above


def _too_large(size: int, where: str) -> str:
    return (f"{where}: {size:,} bytes, more than the {MAX_MESSAGE_BYTES:,} read;"
            " filed as unhandled without reading it")


# --- Maildir -----------------------------------------------------------------------------


def process_maildir(path: Path, handle: Handle, *, progress: Progress | None = None) -> MailboxSummary:
    """Handle every message in the Maildir ``path`` (``new/`` and ``cur/``) and file it.

    Processed messages move to the Maildir++ subfolder ``<path>/.processed`` (into ``cur/``,
    flagged seen), unhandled ones to ``<path>/.unhandled`` (``new/`` stays new, for a human);
    both are created when missing. "retry" leaves a message where it is.
    """
    for sub in ("cur", "new", "tmp"):
        if not (path / sub).is_dir():
            raise InboundError(f"{path}: not a Maildir (it has no {sub}/ folder)")
    try:
        # The standard library makes Maildir++ subfolders as mail clients expect them.
        box = mailbox.Maildir(path, factory=None, create=False)
        for name in (PROCESSED, UNHANDLED):
            box.add_folder(name)  # .name/{cur,new,tmp} and the maildirfolder marker, if missing
        targets = {name: path / f".{name}" for name in (PROCESSED, UNHANDLED)}
    except OSError as exc:
        raise InboundError(f"{path}: can't create the {PROCESSED}/{UNHANDLED} subfolders: {exc.strerror}") from exc
    summary = MailboxSummary()
    for sub in ("new", "cur"):
        for name in _names(path / sub):
            source = path / sub / name
            where = f"maildir:{source}"
            try:
                size = source.stat().st_size
                if size > MAX_MESSAGE_BYTES:
                    summary.errors.append(_too_large(size, where))
                    verdict: Verdict = "unhandled"
                else:
                    verdict = _check_verdict(handle(source.read_bytes()), where)
            except FileNotFoundError:
                continue  # taken by another reader between listing and reading: it's theirs
            except OSError as exc:
                raise InboundError(f"{source}: can't read it: {exc.strerror}") from exc
            if verdict != "retry":
                _move(source, targets[verdict], sub, name, seen=verdict == "processed")
            summary.count(verdict)
            if progress is not None:
                progress(where, verdict)
    return summary


def _names(directory: Path) -> Iterator[str]:
    """The message files of a Maildir's new/ or cur/, one directory entry at a time."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                # dot files are not messages (Maildir); a directory isn't one either
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    yield entry.name
    except OSError as exc:
        raise InboundError(f"{directory}: can't list it: {exc.strerror}") from exc


def _move(source: Path, folder: Path, sub: str, name: str, *, seen: bool) -> None:
    """Rename ``source`` into the Maildir ``folder``: one atomic step, the message is never in two places."""
    if seen:
        base, _, flags = name.partition(":2,")
        target = folder / "cur" / f"{base}:2,{''.join(sorted(set(flags) | {'S'}))}"
    else:
        target = folder / sub / name
    # Maildir names are unique; should one be taken all the same, rename would replace it.
    number = 0
    while target.exists():
        number += 1
        base, colon, info = name.partition(":")
        target = target.with_name(f"{base}.{number}{colon}{info}")
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # a subfolder mounted elsewhere: rename can't be atomic, so don't
            raise InboundError(f"{target.parent}: on another filesystem than {source}; a Maildir's"
                               " subfolders must be on its own filesystem") from exc
        raise InboundError(f"{source}: can't move it to {target.parent}: {exc.strerror}") from exc


# --- mbox --------------------------------------------------------------------------------


def process_mbox(path: Path, handle: Handle, *, progress: Progress | None = None) -> MailboxSummary:
    """Handle every message of the mbox file ``path`` and file it.

    Processed and unhandled messages are appended to the mbox files ``<path>.processed`` and
    ``<path>.unhandled`` (created when missing) and, once those are on disk, removed from
    ``path``; "retry" leaves a message in ``path``. The files are locked (fcntl and dot-lock,
    as MTAs delivering into an mbox expect) for the whole run.
    """
    if not path.is_file():
        raise InboundError(f"{path}: no such mbox file")
    source = _open_mbox(path, create=False)
    targets: dict[str, mailbox.mbox] = {}
    summary = MailboxSummary()
    filed: list[str] = []
    try:
        try:
            for number, key in enumerate(source.iterkeys(), 1):
                where = f"mbox:{path}#{number}"
                whole = source.get_bytes(key, from_=True)  # with its "From " line, kept in the target
                body = whole.partition(b"\n")[2] if whole.startswith(b"From ") else whole
                if len(body) > MAX_MESSAGE_BYTES:
                    summary.errors.append(_too_large(len(body), where))
                    verdict: Verdict = "unhandled"
                else:
                    verdict = _check_verdict(handle(body), where)
                if verdict != "retry":
                    if verdict not in targets:
                        targets[verdict] = _open_mbox(path.with_name(f"{path.name}.{verdict}"), create=True)
                    targets[verdict].add(whole)
                    filed.append(key)
                summary.count(verdict)
                if progress is not None:
                    progress(where, verdict)
        finally:
            # Whatever ended the loop (the end, an exception from handle), what was handled is
            # written and synced to its target first, then removed from the source: a crash in
            # between leaves it in both, never in neither.
            for target in targets.values():
                target.flush()
            if filed:
                for key in filed:
                    source.remove(key)
                source.flush()
    except (OSError, mailbox.Error) as exc:
        raise InboundError(f"{path}: {exc}") from exc
    finally:
        for box in (source, *targets.values()):
            box.unlock()
            box.close()
    return summary


def _open_mbox(path: Path, *, create: bool) -> mailbox.mbox:
    try:
        box = mailbox.mbox(path, create=create)
    except OSError as exc:
        raise InboundError(f"{path}: can't open it: {exc.strerror}") from exc
    for attempt in (1, 2):
        try:
            box.lock()
            return box
        except mailbox.ExternalClashError as exc:
            if attempt == 1 and _break_stale_dot_lock(path):
                continue
            box.close()
            raise InboundError(f"{path} is locked by another program (an MTA delivering, or another run; a lock"
                               f" file {path}.lock older than {STALE_LOCK_SECONDS} s is removed); try again later",
                               temporary=True) from exc
        except OSError as exc:
            box.close()
            raise InboundError(f"{path}: can't lock it: {exc.strerror}") from exc
    raise AssertionError("unreachable")


def _break_stale_dot_lock(path: Path) -> bool:
    """Remove ``<path>.lock`` if it is older than :data:`STALE_LOCK_SECONDS` (its holder died); True if removed.

    A process killed while holding it can't remove it, and nothing else would: Postfix's
    local delivery agent, procmail and mutt break such a lock after a few minutes too.
    """
    lock = path.with_name(f"{path.name}.lock")
    try:
        if time.time() - lock.stat().st_mtime < STALE_LOCK_SECONDS:
            return False
        lock.unlink()
    except FileNotFoundError:
        return True  # gone meanwhile: try again
    except OSError:
        return False
    return True


# --- standard input ----------------------------------------------------------------------


def read_stdin_message(stream: BinaryIO, *, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """One message from ``stream`` (an MTA's pipe), at most ``limit`` bytes, without an mbox ``From `` line.

    More than ``limit`` bytes, or nothing at all, is an :class:`InboundError`.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise InboundError(f"standard input holds more than {limit:,} bytes ({limit / 2**20:.0f} MB), more than"
                               " any returned message should; it was not read")
    raw = b"".join(chunks)
    # Some MTAs (Postfix's local with the F flag, procmail, Exim's pipe with use_from_line)
    # start with the mbox envelope line; "From " with a space is never a header.
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    if not raw.strip():
        raise InboundError("standard input is empty: no message to read")
    return raw


# --- IMAP --------------------------------------------------------------------------------

#: the exceptions of a connection that broke (as opposed to a server that answered NO or BAD)
_DROPPED = (imaplib.IMAP4.abort, OSError)


def process_imap(settings: InboundSettings, password: Secret, handle: Handle, *,
                 progress: Progress | None = None, ssl_context: ssl.SSLContext | None = None) -> MailboxSummary:
    """Handle every message in the IMAP folder ``settings.folder`` and move it to its folder.

    Processed messages move to ``settings.processed_folder``, unhandled ones to
    ``settings.unhandled_folder`` (both created when missing); "retry" leaves a message in
    place. ``ssl_context``: the TLS context to use instead of one that trusts the system's
    CAs (or ``settings.ca_file``). A refused login, a missing folder, or a connection that
    can't be made or drops raises :class:`InboundError` (``temporary`` when a later run may
    succeed); what was handled before it is filed.
    """
    if not settings.host:
        raise InboundError("no IMAP mailbox is configured: set [inbound] host and username in newsletter.toml,"
                           " and NEWSLETTER_IMAP_PASSWORD")
    if password and settings.security == "none" and not is_loopback(settings.host):
        raise InboundError(f"refusing to send the IMAP password unencrypted to {settings.host}")
    if ssl_context is None and settings.security != "none":
        try:
            ssl_context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise InboundError(f"[inbound] ca_file {settings.ca_file}: can't use it as a CA bundle:"
                               f" {_reason(exc)}") from exc
    run = _ImapRun(settings, password, handle, progress, ssl_context)
    return run.run()


class _ImapRun:
    """One pass over an IMAP folder: batches of UIDs, handled, then moved."""

    def __init__(self, settings: InboundSettings, password: Secret, handle: Handle, progress: Progress | None,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self.password = password
        self.handle = handle
        self.progress = progress
        self.ssl_context = ssl_context
        self.summary = MailboxSummary()
        self.client: Any = None
        self.uidvalidity: int | None = None
        self.exists = 0
        self.can_move = False
        self.can_expunge_uids = False
        #: handled and not yet filed: uid -> folder
        self.pending: dict[int, str] = {}
        self.in_handle = False

    @property
    def server(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    def run(self) -> MailboxSummary:
        try:
            self._connect()
            self._create_folders()
            self._pass()
        except _DROPPED as exc:
            if self.in_handle:
                self._file_quietly()
                raise
            filed = self._file_after_drop()
            done = self.summary.processed + self.summary.unhandled
            raise InboundError(
                f"the connection to the IMAP server {self.server} broke ({_reason(exc)}) after {done} message(s);"
                + (" they are filed" if filed else f" the last {len(self.pending)} of them will be handled again")
                + f", the rest stay in {self.settings.folder} for the next run", temporary=True) from exc
        except IMAPClientError as exc:
            self._file_quietly()
            raise InboundError(f"the IMAP server {self.server} refused: {_reason(exc)}") from exc
        except BaseException:
            self._file_quietly()  # an exception from handle: file what was handled before it
            raise
        finally:
            self._close()
        return self.summary

    # --- the connection ---------------------------------------------------------------

    def _connect(self) -> None:
        settings = self.settings
        try:
            client = IMAPClient(settings.host, settings.effective_port, ssl=settings.security == "tls",
                                ssl_context=self.ssl_context, timeout=settings.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise InboundError(f"the IMAP server {self.server}'s certificate is not trusted ({exc.verify_message});"
                               " set [inbound] ca_file to its CA") from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            raise InboundError(f"can't connect to the IMAP server {self.server}: {_reason(exc)}",
                               temporary=True) from exc
        self.client = client
        try:
            if settings.security == "starttls":
                client.starttls(self.ssl_context)
            client.login(settings.username, self.password.reveal())
        except LoginError as exc:
            raise InboundError(f"the IMAP server {self.server} refused the login of {settings.username!r}"
                               " (check [inbound] username and NEWSLETTER_IMAP_PASSWORD)") from exc
        except ssl.SSLCertVerificationError as exc:
            raise InboundError(f"the IMAP server {self.server}'s certificate is not trusted ({exc.verify_message});"
                               " set [inbound] ca_file to its CA") from exc
        except IMAPClientError as exc:
            if settings.security == "starttls" and not client.has_capability("STARTTLS"):
                raise InboundError(f"the IMAP server {self.server} doesn't offer STARTTLS") from exc
            raise
        status = client.select_folder(settings.folder)
        uidvalidity = int(status[b"UIDVALIDITY"])
        if self.uidvalidity is not None and uidvalidity != self.uidvalidity:
            # The UIDs we hold name other messages now: file nothing by them.
            self.pending.clear()
            raise InboundError(f"the IMAP folder {settings.folder} on {self.server} was recreated (UIDVALIDITY"
                               " changed) during the run; run again", temporary=True)
        self.uidvalidity = uidvalidity
        self.exists = int(status[b"EXISTS"])
        self.can_move = client.has_capability("MOVE")
        self.can_expunge_uids = client.has_capability("UIDPLUS")

    def _create_folders(self) -> None:
        for folder in (self.settings.processed_folder, self.settings.unhandled_folder):
            if not self.client.folder_exists(folder):
                try:
                    self.client.create_folder(folder)
                except IMAPClientError:
                    if not self.client.folder_exists(folder):  # another run made it meanwhile: fine
                        raise

    def _close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.logout()
        except (*_DROPPED, IMAPClientError):
            try:
                client.shutdown()
            except OSError:
                pass

    # --- the pass over the folder -----------------------------------------------------

    def _pass(self) -> None:
        """Batch after batch of the messages at the front of the folder, until none is new."""
        batch = self.settings.batch_size
        position = 1  # sequence number of the first message not known to stay (retried ones do)
        last_uid = 0
        # The messages there when the run began: mail arriving meanwhile waits for the next run
        # (a folder that keeps filling can't keep a run going), and no sequence number beyond
        # the folder's end is sent (RFC 3501 lets a server answer BAD to that).
        exists = self.exists
        while position <= exists:
            # In UID SEARCH a bare sequence set means message numbers: the UIDs of the next
            # ``batch`` messages, without listing the whole folder.
            found = self.client.search([f"{position}:{min(position + batch - 1, exists)}"])
            if not found:
                return
            # A UID at or below the last one seen was handled already and stays (retry): never twice.
            uids = sorted(uid for uid in found if uid > last_uid)
            moved = 0
            if uids:
                self._handle_batch(uids)
                moved = self._file_pending()
                last_uid = uids[-1]
            position += len(found) - moved  # what stays in this window is skipped next time
            exists -= moved

    def _handle_batch(self, uids: list[int]) -> None:
        """Handle the messages ``uids``, adding what is to be moved to ``pending``."""
        info = self.client.fetch(uids, ["RFC822.SIZE", "FLAGS"])
        wanted: list[int] = []
        for uid in uids:
            if uid not in info or b"\\Deleted" in info[uid].get(b"FLAGS", ()):
                continue  # gone meanwhile, or deleted by someone else and waiting for EXPUNGE
            size = int(info[uid].get(b"RFC822.SIZE", 0))
            if size > MAX_MESSAGE_BYTES:
                self.summary.errors.append(_too_large(size, self._where(uid)))
                self._done(uid, "unhandled")
            else:
                wanted.append(uid)
        for chunk in _chunks(wanted, {uid: int(info[uid].get(b"RFC822.SIZE", 0)) for uid in wanted}):
            bodies = self.client.fetch(chunk, ["BODY.PEEK[]"])  # PEEK: \Seen is left as it was
            for uid in chunk:
                raw = bodies.get(uid, {}).get(b"BODY[]")
                if raw is None:
                    continue  # expunged by someone else between SEARCH and FETCH
                self.in_handle = True  # an OSError from handle is not a broken connection
                verdict = self.handle(bytes(raw))
                self.in_handle = False
                self._done(uid, _check_verdict(verdict, self._where(uid)))

    def _where(self, uid: int) -> str:
        return f"imap:{self.settings.folder}/{uid}"

    def _done(self, uid: int, verdict: Verdict) -> None:
        if verdict != "retry":
            folder = self.settings.processed_folder if verdict == "processed" else self.settings.unhandled_folder
            self.pending[uid] = folder
        self.summary.count(verdict)
        if self.progress is not None:
            self.progress(self._where(uid), verdict)

    def _file_pending(self) -> int:
        """Move every pending message to its folder; how many left the folder."""
        moved = 0
        for folder in (self.settings.processed_folder, self.settings.unhandled_folder):
            uids = sorted(uid for uid, target in self.pending.items() if target == folder)
            if not uids:
                continue
            if self.can_move:
                self.client.move(uids, folder)
                moved += len(uids)
            else:
                self.client.copy(uids, folder)
                self.client.add_flags(uids, [b"\\Deleted"], silent=True)
                if self.can_expunge_uids:
                    self.client.uid_expunge(uids)  # exactly these: never another client's \Deleted mail
                    moved += len(uids)
                # Without UIDPLUS they stay, flagged \Deleted (skipped by the next run) until a
                # client expunges the folder: a plain EXPUNGE would remove others' messages too.
            for uid in uids:
                del self.pending[uid]
        return moved

    def _file_after_drop(self) -> bool:
        """After a broken connection, file what was handled over a new one; False if that failed too."""
        self._close()
        if not self.pending:
            return True
        try:
            self._connect()
            self._file_pending()
            return True
        except (*_DROPPED, IMAPClientError, InboundError):
            return False
        finally:
            self._close()

    def _file_quietly(self) -> None:
        if not self.pending or self.client is None:
            return
        try:
            self._file_pending()
        except (*_DROPPED, IMAPClientError):
            self._file_after_drop()


def _chunks(uids: list[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """``uids`` in runs of at most :data:`FETCH_BYTES` of message text (a larger message alone)."""
    chunk: list[int] = []
    total = 0
    for uid in uids:
        if chunk and total + sizes[uid] > FETCH_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(uid)
        total += sizes[uid]
    if chunk:
        yield chunk


def _reason(exc: BaseException) -> str:
    """One line for an exception of the IMAP library or the socket, without any secret in it."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
