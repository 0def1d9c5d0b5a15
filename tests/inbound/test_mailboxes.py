"""newsletter.inbound.mailboxes: returned mail read from a Maildir, an mbox, standard input and IMAP, then filed.

Every source files a message by the verdict of ``handle``: processed and unhandled ones move to
their folders, "retry" leaves it in place, nothing is deleted. A handle that raises, a process
killed with SIGKILL half-way, an IMAP connection dropped by the server (a real Dovecot): nothing
is lost, and a second run finishes the job without handling any message twice (IMAP, Maildir)
or at worst finding one in two places (mbox, documented).
"""

from __future__ import annotations

import io
import mailbox
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.config import InboundSettings, Secret
from newsletter.errors import InboundError
from newsletter.inbound import mailboxes
from newsletter.inbound.mailboxes import (
    MailboxSummary,
    Verdict,
    process_imap,
    process_maildir,
    process_mbox,
    read_stdin_message,
)
from tests.harness.dovecot import PASSWORD, USER, DovecotServer

pytest_plugins = ["tests.harness.dovecot"]

ROOT = Path(__file__).resolve().parents[2]


def message(number: int, verdict: str = "processed", size: int = 0) -> bytes:
    """A small message whose Subject says what the test's handle answers for it."""
    body = b"x" * size + b"\n" if size else b"Hello.\n"
    return (f"From: MAILER-DAEMON@mta.test\nTo: bounces+{number}@bounces.test\nSubject: {verdict} {number}\n"
            f"Message-ID: <n{number}@mta.test>\n\n").encode() + body


def by_subject(raw: bytes) -> Verdict:
    """The verdict the message's Subject names."""
    for line in raw.splitlines():
        if line.startswith(b"Subject: "):
            verdict = line.split()[1].decode()
            assert verdict in ("processed", "unhandled", "retry")
            return verdict  # type: ignore[return-value]
    raise AssertionError(f"no Subject in {raw[:200]!r}")


def number_of(raw: bytes) -> int:
    for line in raw.splitlines():
        if line.startswith(b"Subject: "):
            return int(line.split()[2])
    raise AssertionError(f"no Subject in {raw[:200]!r}")


# --- Maildir -----------------------------------------------------------------------------


def make_maildir(path: Path, messages: dict[str, bytes], *, cur: dict[str, bytes] | None = None) -> Path:
    """A Maildir with ``messages`` in new/ and ``cur`` in cur/ (names given, so the test knows them)."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for name, raw in messages.items():
        (path / "new" / name).write_bytes(raw)
    for name, raw in (cur or {}).items():
        (path / "cur" / name).write_bytes(raw)
    return path


def files(folder: Path) -> dict[str, list[str]]:
    """The file names in a Maildir's new/ and cur/."""
    return {sub: sorted(entry.name for entry in (folder / sub).iterdir()) for sub in ("new", "cur")
            if (folder / sub).is_dir()}


def all_numbers(path: Path) -> Counter[int]:
    """How often each message number is anywhere under the Maildir (the folder and its subfolders)."""
    found: Counter[int] = Counter()
    for folder in (path, path / ".processed", path / ".unhandled"):
        for sub in ("new", "cur"):
            if (folder / sub).is_dir():
                found.update(number_of(entry.read_bytes()) for entry in (folder / sub).iterdir())
    return found


def test_maildir_files_each_message_by_its_verdict(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir", {
        "1.a.host": message(1, "processed"),
        "2.a.host": message(2, "unhandled"),
        "3.a.host": message(3, "retry"),
    }, cur={
        "4.a.host:2,F": message(4, "processed"),
        "5.a.host:2,S": message(5, "unhandled"),
        "6.a.host:2,": message(6, "retry"),
    })
    seen: list[tuple[str, Verdict]] = []
    summary = process_maildir(box, by_subject, progress=lambda where, verdict: seen.append((where, verdict)))

    assert summary == MailboxSummary(processed=2, unhandled=2, retried=2, errors=[])
    assert files(box) == {"new": ["3.a.host"], "cur": ["6.a.host:2,"]}
    # processed: seen, in cur/ (flags kept, S added); unhandled: as it was (new stays new, for a human)
    assert files(box / ".processed") == {"new": [], "cur": ["1.a.host:2,S", "4.a.host:2,FS"]}
    assert files(box / ".unhandled") == {"new": ["2.a.host"], "cur": ["5.a.host:2,S"]}
    for folder in (".processed", ".unhandled"):  # Maildir++ subfolders, as mail clients and Dovecot expect
        assert (box / folder / "maildirfolder").is_file() and (box / folder / "tmp").is_dir()
    assert sorted(seen) == sorted([
        (f"maildir:{box}/new/1.a.host", "processed"), (f"maildir:{box}/new/2.a.host", "unhandled"),
        (f"maildir:{box}/new/3.a.host", "retry"), (f"maildir:{box}/cur/4.a.host:2,F", "processed"),
        (f"maildir:{box}/cur/5.a.host:2,S", "unhandled"), (f"maildir:{box}/cur/6.a.host:2,", "retry"),
    ])
    assert (box / ".processed" / "cur" / "1.a.host:2,S").read_bytes() == message(1, "processed")

    # A second run sees only what was left: the two retried messages.
    again = process_maildir(box, lambda raw: "processed")
    assert (again.processed, again.unhandled, again.retried) == (2, 0, 0)
    assert files(box) == {"new": [], "cur": []}
    assert all_numbers(box) == Counter(range(1, 7))


def test_maildir_handle_that_raises_leaves_that_message_and_the_rest_untouched(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir", {f"{n}.x.host": message(n) for n in range(1, 11)})
    calls: list[int] = []

    def handle(raw: bytes) -> Verdict:
        calls.append(number_of(raw))
        if len(calls) == 5:
            raise RuntimeError("database gone")
        return "processed"

    with pytest.raises(RuntimeError, match="database gone"):
        process_maildir(box, handle)
    filed = {number_of((box / ".processed" / "cur" / name).read_bytes())
             for name in files(box / ".processed")["cur"]}
    assert filed == set(calls[:4])  # the four before it are filed
    assert all_numbers(box) == Counter(range(1, 11))  # nothing lost, nothing in two places

    process_maildir(box, lambda raw: "processed")
    assert files(box)["new"] == []
    assert all_numbers(box) == Counter(range(1, 11))
    assert len(files(box / ".processed")["cur"]) == 10


def _run_killed(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process that kills itself with SIGKILL from inside handle."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_maildir_survives_sigkill_half_way(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir", {f"{n}.x.host": message(n) for n in range(1, 51)})
    done = _run_killed("""
        import os, signal, sys
        from pathlib import Path
        from newsletter.inbound.mailboxes import process_maildir
        calls = 0
        def handle(raw):
            global calls
            calls += 1
            if calls == 20:
                os.kill(os.getpid(), signal.SIGKILL)
            return "processed"
        process_maildir(Path(sys.argv[1]), handle)
    """, str(box))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(files(box / ".processed")["cur"]) == 19
    assert all_numbers(box) == Counter(range(1, 51))  # each message in exactly one place
    process_maildir(box, lambda raw: "processed")
    assert all_numbers(box) == Counter(range(1, 51))
    assert len(files(box / ".processed")["cur"]) == 50


def test_maildir_message_too_large_is_filed_unhandled_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailboxes, "MAX_MESSAGE_BYTES", 10_000)
    box = make_maildir(tmp_path / "Maildir", {"big.x.host": message(1, size=20_000), "small.x.host": message(2)})
    handled: list[int] = []
    summary = process_maildir(box, lambda raw: handled.append(number_of(raw)) or "processed")
    assert handled == [2]
    assert (summary.processed, summary.unhandled) == (1, 1)
    assert len(summary.errors) == 1 and "big.x.host" in summary.errors[0] and "unhandled" in summary.errors[0]
    assert files(box / ".unhandled")["new"] == ["big.x.host"]


def test_maildir_errors(tmp_path: Path) -> None:
    with pytest.raises(InboundError, match=r"not a Maildir \(it has no cur/ folder\)"):
        process_maildir(tmp_path, lambda raw: "processed")
    box = make_maildir(tmp_path / "Maildir", {"1.x.host": message(1)})
    with pytest.raises(ValueError, match="handle\\(\\) returned 'done' .* one of processed, unhandled, retry"):
        process_maildir(box, lambda raw: "done")  # type: ignore[arg-type,return-value]
    assert files(box)["new"] == ["1.x.host"]


def test_maildir_name_taken_in_the_target_is_not_overwritten(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir", {"1.x.host": message(1, "unhandled")})
    (box / ".unhandled" / "new").mkdir(parents=True)
    (box / ".unhandled" / "new" / "1.x.host").write_bytes(b"an older message\n")
    process_maildir(box, by_subject)
    assert files(box / ".unhandled")["new"] == ["1.x.host", "1.x.host.1"]
    assert (box / ".unhandled" / "new" / "1.x.host").read_bytes() == b"an older message\n"


# --- mbox --------------------------------------------------------------------------------


def make_mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    box.lock()
    for raw in messages:
        box.add(raw)
    box.flush()
    box.unlock()
    box.close()
    return path


def mbox_numbers(path: Path) -> list[int]:
    if not path.exists():
        return []
    box = mailbox.mbox(path, create=False)
    try:
        return [number_of(box.get_bytes(key)) for key in box.iterkeys()]
    finally:
        box.close()


def test_mbox_files_each_message_by_its_verdict(tmp_path: Path) -> None:
    source = make_mbox(tmp_path / "bounces", [message(1, "processed"), message(2, "unhandled"), message(3, "retry"),
                                              message(4, "processed")])
    seen: list[tuple[str, Verdict]] = []
    summary = process_mbox(source, by_subject, progress=lambda where, verdict: seen.append((where, verdict)))
    assert summary == MailboxSummary(processed=2, unhandled=1, retried=1, errors=[])
    assert mbox_numbers(source) == [3]
    assert mbox_numbers(tmp_path / "bounces.processed") == [1, 4]
    assert mbox_numbers(tmp_path / "bounces.unhandled") == [2]
    assert seen == [(f"mbox:{source}#1", "processed"), (f"mbox:{source}#2", "unhandled"),
                    (f"mbox:{source}#3", "retry"), (f"mbox:{source}#4", "processed")]
    assert not (tmp_path / "bounces.lock").exists()  # the dot-lock is released
    # The envelope line is kept with the message in its new mbox.
    assert (tmp_path / "bounces.unhandled").read_bytes().startswith(b"From MAILER-DAEMON ")

    again = process_mbox(source, lambda raw: "processed")  # appends to the existing .processed
    assert again.processed == 1
    assert mbox_numbers(source) == []
    assert mbox_numbers(tmp_path / "bounces.processed") == [1, 4, 3]


def test_mbox_handle_that_raises_leaves_that_message_and_the_rest(tmp_path: Path) -> None:
    source = make_mbox(tmp_path / "bounces", [message(n) for n in range(1, 11)])
    calls: list[int] = []

    def handle(raw: bytes) -> Verdict:
        calls.append(number_of(raw))
        if len(calls) == 5:
            raise RuntimeError("database gone")
        return "processed"

    with pytest.raises(RuntimeError, match="database gone"):
        process_mbox(source, handle)
    assert mbox_numbers(tmp_path / "bounces.processed") == [1, 2, 3, 4]
    assert mbox_numbers(source) == [5, 6, 7, 8, 9, 10]
    process_mbox(source, lambda raw: "processed")
    assert mbox_numbers(tmp_path / "bounces.processed") == list(range(1, 11))
    assert mbox_numbers(source) == []


def test_mbox_sigkill_half_way_loses_nothing(tmp_path: Path) -> None:
    source = make_mbox(tmp_path / "bounces", [message(n) for n in range(1, 31)])
    done = _run_killed("""
        import os, signal, sys
        from pathlib import Path
        from newsletter.inbound.mailboxes import process_mbox
        calls = 0
        def handle(raw):
            global calls
            calls += 1
            if calls == 12:
                os.kill(os.getpid(), signal.SIGKILL)
            return "processed"
        process_mbox(Path(sys.argv[1]), handle)
    """, str(source))
    assert done.returncode == -signal.SIGKILL, done.stderr
    # Killed before the source was rewritten: every message is still in it (at worst in two places).
    assert mbox_numbers(source) == list(range(1, 31))
    assert set(mbox_numbers(tmp_path / "bounces.processed")) <= set(range(1, 12))
    # The dead process's dot-locks stay behind: fresh, they make a run wait; stale, they are broken.
    with pytest.raises(InboundError, match="locked by another program"):
        process_mbox(source, lambda raw: "processed")
    long_ago = time.time() - mailboxes.STALE_LOCK_SECONDS - 10
    for lock in tmp_path.glob("*.lock"):
        os.utime(lock, (long_ago, long_ago))
    process_mbox(source, lambda raw: "processed")
    assert mbox_numbers(source) == []
    assert set(mbox_numbers(tmp_path / "bounces.processed")) == set(range(1, 31))


def test_mbox_locked_by_another_program_is_a_temporary_error(tmp_path: Path) -> None:
    source = make_mbox(tmp_path / "bounces", [message(1)])
    (tmp_path / "bounces.lock").write_bytes(b"")  # an MTA's dot-lock
    with pytest.raises(InboundError, match="locked by another program") as caught:
        process_mbox(source, lambda raw: "processed")
    assert caught.value.temporary
    assert mbox_numbers(source) == [1]
    with pytest.raises(InboundError, match="no such mbox file"):
        process_mbox(tmp_path / "missing", lambda raw: "processed")


# --- standard input ----------------------------------------------------------------------


class _Endless(io.RawIOBase):
    """A pipe that would go on for ``size`` bytes; counts what was read from it."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = b"x" * count
        self.left -= count
        self.read_bytes += count
        return count


def test_stdin_message_is_bounded() -> None:
    raw = message(1)
    assert read_stdin_message(io.BytesIO(raw)) == raw
    assert read_stdin_message(io.BytesIO(b"From bounces@x Thu Jan  1 00:00:00 2026\n" + raw)) == raw
    assert read_stdin_message(io.BytesIO(raw), limit=len(raw)) == raw
    with pytest.raises(InboundError, match="standard input holds more than 100 bytes"):
        read_stdin_message(io.BytesIO(b"x" * 101), limit=100)
    pipe = _Endless(1 << 30)
    with pytest.raises(InboundError, match="more than 52,428,800 bytes \\(50 MB\\)"):
        read_stdin_message(io.BufferedReader(pipe))
    assert pipe.read_bytes <= mailboxes.MAX_MESSAGE_BYTES + (2 << 20)  # it stopped reading at the bound
    with pytest.raises(InboundError, match="standard input is empty"):
        read_stdin_message(io.BytesIO(b""))


# --- IMAP (a real Dovecot) ---------------------------------------------------------------


def imap_settings(server: DovecotServer, **changes: object) -> InboundSettings:
    values: dict[str, object] = {"host": server.host, "port": server.port, "security": server.security,
                                 "username": USER, "ca_file": server.ca_file, "batch_size": 3}
    values.update(changes)
    return InboundSettings(**values)  # type: ignore[arg-type]


def folder_numbers(server: DovecotServer, folder: str) -> list[int]:
    return sorted(number_of(raw) for raw in server.folder_messages(folder))


def test_imap_files_each_message_into_folders_it_creates(dovecot: DovecotServer) -> None:
    verdicts = ["processed", "unhandled", "retry", "processed", "processed", "unhandled", "retry", "processed"]
    dovecot.append("INBOX", *(message(n, verdict) for n, verdict in enumerate(verdicts, 1)))
    assert not dovecot.folder_exists("processed")
    seen: list[tuple[str, Verdict]] = []
    summary = process_imap(imap_settings(dovecot), Secret(PASSWORD), by_subject,
                           progress=lambda where, verdict: seen.append((where, verdict)))
    assert summary == MailboxSummary(processed=4, unhandled=2, retried=2, errors=[])
    assert folder_numbers(dovecot, "processed") == [1, 4, 5, 8]
    assert folder_numbers(dovecot, "unhandled") == [2, 6]
    assert folder_numbers(dovecot, "INBOX") == [3, 7]
    assert [where for where, _ in seen] == [f"imap:INBOX/{uid}" for uid in range(1, 9)]

    calls: list[int] = []
    again = process_imap(imap_settings(dovecot), Secret(PASSWORD), lambda raw: calls.append(number_of(raw)) or "processed")
    assert (again.processed, calls) == (2, [3, 7])
    assert folder_numbers(dovecot, "INBOX") == []
    assert folder_numbers(dovecot, "processed") == [1, 3, 4, 5, 7, 8]


def test_imap_fetches_bounded_runs_and_files_a_message_too_large_unread(dovecot: DovecotServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailboxes, "MAX_MESSAGE_BYTES", 20_000)
    monkeypatch.setattr(mailboxes, "FETCH_BYTES", 5_000)  # two 3 kB messages never in one FETCH
    dovecot.append("INBOX", message(1, size=3000), message(2, size=30_000), message(3, size=3000), message(4))
    sizes: list[int] = []
    summary = process_imap(imap_settings(dovecot, batch_size=10), Secret(PASSWORD),
                           lambda raw: sizes.append(len(raw)) or "processed")
    assert (summary.processed, summary.unhandled) == (3, 1)
    assert len(sizes) == 3 and max(sizes) < 20_000  # the large one was never handed over
    assert len(summary.errors) == 1
    assert re.fullmatch(r"imap:INBOX/2: 30,\d\d\d bytes, more than the 20,000 read; filed as unhandled without"
                        r" reading it", summary.errors[0])
    assert folder_numbers(dovecot, "unhandled") == [2]
    assert folder_numbers(dovecot, "processed") == [1, 3, 4]


def test_imap_without_move_copies_and_expunges_only_those_messages() -> None:
    with DovecotServer(security="none", without_move=True) as server:
        server.append("INBOX", *(message(n, "retry" if n == 2 else "processed") for n in range(1, 6)))
        # another client's message, flagged \Deleted and not yet expunged: neither handled nor expunged by us
        client = server.client()
        client.append("INBOX", message(99, "processed"), flags=[b"\\Deleted"])
        client.logout()
        calls: list[int] = []

        def handle(raw: bytes) -> Verdict:
            calls.append(number_of(raw))
            return by_subject(raw)

        summary = process_imap(imap_settings(server, batch_size=2), Secret(PASSWORD), handle)
        assert (summary.processed, summary.retried) == (4, 1)
        assert calls == [1, 2, 3, 4, 5]
        assert folder_numbers(server, "processed") == [1, 3, 4, 5]
        assert folder_numbers(server, "INBOX") == [2, 99]  # 99 is still there: UID EXPUNGE of ours only


def test_imap_connection_dropped_mid_way_loses_nothing_and_handles_nothing_twice(dovecot: DovecotServer) -> None:
    dovecot.append("INBOX", *(message(n) for n in range(1, 21)))
    calls: list[int] = []

    def handle(raw: bytes) -> Verdict:
        calls.append(number_of(raw))
        if len(calls) == 8:
            assert dovecot.kill_sessions() == 1  # the server's imap process dies: the connection drops
        return "processed"

    # The batch of 6..10 was fetched before the drop: it is handled to its end, then its MOVE fails.
    with pytest.raises(InboundError, match="broke .* after 10 message\\(s\\); they are filed, the rest stay in INBOX") as caught:
        process_imap(imap_settings(dovecot, batch_size=5), Secret(PASSWORD), handle)
    assert caught.value.temporary
    assert folder_numbers(dovecot, "processed") == list(range(1, 11))  # filed over a new connection
    assert folder_numbers(dovecot, "INBOX") == list(range(11, 21))

    summary = process_imap(imap_settings(dovecot, batch_size=5), Secret(PASSWORD), handle)
    assert summary.processed == 10
    assert sorted(calls) == list(range(1, 21))  # each handled once
    assert folder_numbers(dovecot, "processed") == list(range(1, 21))
    assert folder_numbers(dovecot, "INBOX") == []


def test_imap_handle_that_raises_files_what_came_before(dovecot: DovecotServer) -> None:
    dovecot.append("INBOX", *(message(n) for n in range(1, 8)))
    calls: list[int] = []

    def handle(raw: bytes) -> Verdict:
        calls.append(number_of(raw))
        if len(calls) == 5:
            raise OSError("disk full")  # an OSError from handle is handle's, not a dropped connection
        return "processed"

    with pytest.raises(OSError, match="disk full"):
        process_imap(imap_settings(dovecot), Secret(PASSWORD), handle)
    assert folder_numbers(dovecot, "processed") == [1, 2, 3, 4]
    assert folder_numbers(dovecot, "INBOX") == [5, 6, 7]


def test_imap_refusals_are_clear_and_never_show_the_password(dovecot: DovecotServer) -> None:
    dovecot.append("INBOX", message(1))
    handle: Callable[[bytes], Verdict] = lambda raw: "processed"  # noqa: E731
    with pytest.raises(InboundError, match="certificate is not trusted .* set \\[inbound\\] ca_file"):
        process_imap(imap_settings(dovecot, ca_file=None), Secret(PASSWORD), handle)
    with pytest.raises(InboundError, match="refused: .*Mailbox doesn't exist"):
        process_imap(imap_settings(dovecot, folder="Nowhere"), Secret(PASSWORD), handle)
    # last: after a refused login Dovecot makes the next one from this address wait a few seconds
    with pytest.raises(InboundError, match=f"refused the login of '{USER}'") as caught:
        process_imap(imap_settings(dovecot), Secret("wrong-secret"), handle)
    assert not caught.value.temporary and "wrong-secret" not in str(caught.value)
    assert folder_numbers(dovecot, "INBOX") == [1]


def test_imap_errors_before_any_connection() -> None:
    handle: Callable[[bytes], Verdict] = lambda raw: "processed"  # noqa: E731
    with pytest.raises(InboundError, match="no IMAP mailbox is configured"):
        process_imap(InboundSettings(), Secret(PASSWORD), handle)
    with pytest.raises(InboundError, match="refusing to send the IMAP password unencrypted to imap.example.com"):
        process_imap(InboundSettings(host="imap.example.com", security="none"), Secret(PASSWORD), handle)
    not_a_ca = Path(__file__)
    with pytest.raises(InboundError, match=f"ca_file {not_a_ca}: can't use it as a CA bundle"):
        process_imap(InboundSettings(host="127.0.0.1", ca_file=not_a_ca), Secret(PASSWORD), handle)
    with DovecotServer(security="none") as server:
        port = server.port
    with pytest.raises(InboundError, match=f"can't connect to the IMAP server 127.0.0.1:{port}") as caught:
        process_imap(InboundSettings(host="127.0.0.1", port=port, security="none"), Secret(PASSWORD), handle)
    assert caught.value.temporary


def test_imap_starttls(tmp_path: Path) -> None:
    with DovecotServer(security="starttls") as server:
        server.append("INBOX", message(1))
        summary = process_imap(imap_settings(server), Secret(PASSWORD), lambda raw: "processed")
        assert summary.processed == 1 and folder_numbers(server, "processed") == [1]


# --- memory over a large Maildir ---------------------------------------------------------

_LARGE_MAILDIR = """
    import resource, sys, time
    from pathlib import Path
    from newsletter.inbound.mailboxes import process_maildir
    root, count = Path(sys.argv[1]), int(sys.argv[2])
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    body = b"From: MAILER-DAEMON@mta.test\\nSubject: processed 1\\n\\n" + b"x" * 3000 + b"\\n"
    for number in range(count):
        (root / "new" / f"{number}.M{number}P1.mta.test").write_bytes(body)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    summary = process_maildir(root, lambda raw: "processed" if len(raw) % 2 else "unhandled")
    seconds = time.perf_counter() - began
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(summary.processed + summary.unhandled, grown, f"{count / seconds:.0f}")
"""


@pytest.mark.slow  # ~15 s: 100,000 files written, read and moved
def test_maildir_of_100k_messages_is_filed_with_flat_memory(tmp_path: Path) -> None:
    # Peak RSS (ru_maxrss, kB) of a process of its own before and after the run: listing the names
    # first would add ~8 MB at 100k messages, the standard library's Maildir index ~20 MB.
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_LARGE_MAILDIR), str(tmp_path / "Maildir"),
                           "100000"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    filed, grown_kb, rate = (int(value) for value in done.stdout.split())
    print(f"100,000 messages filed at {rate:,} msg/s (handle doing nothing), peak RSS grew {grown_kb} kB")
    assert filed == 100_000
    assert grown_kb < 4096
    assert sum(1 for _ in (tmp_path / "Maildir" / "new").iterdir()) == 0
