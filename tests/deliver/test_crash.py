"""Dispatch survives real process deaths: SIGKILL mid-run, SIGTERM, and two runs at once.

Every test runs dispatch in child processes (``python -c``) against a real SQLite file and
the real SMTP server of :mod:`tests.harness.smtpserver` running in this process. The server's
``data_delay`` only paces a run so that it is still going when the test acts; nothing is
asserted about timing. Waits are on the server's own counters, with generous timeouts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from newsletter.deliver.dispatch import EXIT_INCOMPLETE, DispatchReport
from tests.harness import runs
from tests.harness.runs import (
    CONNECTIONS,
    WAIT,
    Newsletter,
    dispatch_child,
    finish,
    make_newsletter,
    recorder_of,
    wait_until_received,
)
from tests.harness.smtpserver import SmtpServer

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything

server = runs.server  # the fixture: aiosmtpd with the controls these tests need

def received_message_ids(server: SmtpServer) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for message in server.recorder.received():
        ids.setdefault(message.rcpt.lower(), []).append(str(message.parsed()["Message-ID"]))
    return ids


def kill_mid_run(newsletter: Newsletter, server: SmtpServer, after: int) -> None:
    """Start a dispatch child, SIGKILL it once the server has accepted ``after`` messages."""
    with dispatch_child(newsletter) as process:
        wait_until_received(server, process, after)
        os.kill(process.pid, signal.SIGKILL)  # the child we started, nothing else
        code, report, stderr = finish(process)
    assert code == -signal.SIGKILL, stderr
    assert report is None
    # The dead run left its row in ``runs`` unfinished; its lock died with it.
    assert [finished for pid, finished in newsletter.runs() if pid == process.pid] == [None]


def rerun_after_crash(newsletter: Newsletter, server: SmtpServer) -> tuple[DispatchReport, set[str]]:
    """An ordinary run after a crash, and the checks that hold then; returns its report and the uncertain addresses."""
    server.recorder.data_delay = 0
    before = len(server.recorder.received())
    second = newsletter.run()
    received = server.recorder.by_recipient()
    assert all(copies == 1 for copies in received.values()), {e: n for e, n in received.items() if n != 1}
    ledger = newsletter.ledger()
    assert set(ledger) == set(newsletter.emails)
    uncertain = {email for email, (status, _) in ledger.items() if status == "uncertain"}
    assert len(uncertain) <= CONNECTIONS, uncertain  # at most one row in flight per connection
    for email, (status, _) in ledger.items():
        if status == "uncertain":
            assert received[email] <= 1
        else:
            assert status == "sent" and received[email] == 1, (email, status, received[email])
    summary = second.issues[0]
    assert summary.uncertain == len(uncertain)
    assert summary.sent == len(server.recorder.received()) - before
    assert summary.deferred == summary.failed == summary.waiting == 0
    assert second.exit_code == (EXIT_INCOMPLETE if uncertain else 0)
    if uncertain:
        assert f"{len(uncertain)} left uncertain by a run that died" in summary.notes
    # The second run closed the books of the dead one.
    assert all(finished is not None for _, finished in newsletter.runs())
    return second, uncertain


def check_resend(newsletter: Newsletter, server: SmtpServer, uncertain: set[str], before: dict[str, int]) -> None:
    """A run with ``resend_uncertain`` reaches every uncertain address, and duplicates no one else."""
    third = newsletter.run(resend_uncertain=True)
    assert third.exit_code == 0, (third.issues[0].as_dict(), newsletter.unsent(), newsletter.runs())
    assert third.issues[0].sent == len(uncertain)
    received = server.recorder.by_recipient()
    assert all(received[email] >= 1 for email in newsletter.emails)
    twice = {email for email, copies in received.items() if copies > 1}
    assert twice <= uncertain
    assert twice == {email for email in uncertain if before.get(email, 0) == 1}
    assert all(copies <= 2 for copies in received.values())
    ledger = newsletter.ledger()
    assert {status for status, _ in ledger.values()} == {"sent"}
    # The resent copy is the same message: same Message-ID, fixed per (issue, subscriber).
    ids = received_message_ids(server)
    for email in twice:
        assert len(set(ids[email])) == 1, ids[email]
    for email, copies in ids.items():
        assert copies[0] == f"<{ledger[email][1]}>"


def test_sigkill_mid_run_never_sends_twice(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    server.recorder.data_delay = 0.01
    kill_mid_run(newsletter, server, after=100)
    counts = newsletter.statuses()
    assert counts.get("sending", 0) <= CONNECTIONS, counts  # what the dead run had in flight
    assert counts.get("sent", 0) <= len(server.recorder.received())
    rerun_after_crash(newsletter, server)


def test_sigkill_mid_run_then_resend_uncertain(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    server.recorder.data_delay = 0.01
    kill_mid_run(newsletter, server, after=100)
    _, uncertain = rerun_after_crash(newsletter, server)
    check_resend(newsletter, server, uncertain, dict(server.recorder.by_recipient()))


def test_sigkill_after_the_server_accepted_leaves_exactly_those_uncertain(tmp_path: Path, server: SmtpServer) -> None:
    # Deterministic worst case: from the 100th message on, the server keeps each message but never
    # answers, so when the run dies every connection has a message delivered but not confirmed.
    newsletter = make_newsletter(tmp_path, server.port, 300)
    recorder = recorder_of(server)
    recorder.hold_from = 100
    kill_mid_run(newsletter, server, after=100 + CONNECTIONS - 1)
    assert newsletter.statuses()["sending"] == CONNECTIONS
    held = {message.rcpt.lower() for message in recorder.received()[99:]}
    assert len(held) == CONNECTIONS

    recorder.hold_from = None
    second, uncertain = rerun_after_crash(newsletter, server)
    assert uncertain == held  # exactly the unconfirmed ones, each already delivered once
    assert second.issues[0].sent == 300 - len(held) - 99


def test_resend_uncertain_duplicates_only_the_uncertain_with_the_same_message_id(
        tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    recorder = recorder_of(server)
    recorder.hold_from = 100
    kill_mid_run(newsletter, server, after=100 + CONNECTIONS - 1)
    recorder.hold_from = None
    _, uncertain = rerun_after_crash(newsletter, server)
    assert len(uncertain) == CONNECTIONS
    check_resend(newsletter, server, uncertain, dict(server.recorder.by_recipient()))


def test_resend_uncertain_as_the_first_run_after_a_crash(tmp_path: Path, server: SmtpServer) -> None:
    # Straight after the crash, before any run could mark the issue complete.
    newsletter = make_newsletter(tmp_path, server.port, 300)
    recorder = recorder_of(server)
    recorder.hold_from = 100
    kill_mid_run(newsletter, server, after=100 + CONNECTIONS - 1)
    held = {message.rcpt.lower() for message in recorder.received()[99:]}
    recorder.hold_from = None
    report = newsletter.run(resend_uncertain=True)
    summary = report.issues[0]
    assert f"{CONNECTIONS} left uncertain by a run that died" in summary.notes
    assert f"{CONNECTIONS} uncertain deliveries will be sent again" in summary.notes
    assert newsletter.statuses() == {"sent": 300}, (summary.as_dict(), newsletter.unsent(), newsletter.runs())
    assert report.exit_code == 0, summary
    assert summary.sent == 300 - 99
    received = server.recorder.by_recipient()
    assert received == {email: 2 if email in held else 1 for email in newsletter.emails}


def test_two_runs_at_once_never_send_the_same_delivery_twice(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 400)
    recorder = recorder_of(server)
    recorder.data_delay = 0.005
    # Nothing is accepted until both runs have all their connections open (and so each has
    # rows marked sending): the two runs are sure to overlap however the processes start.
    recorder.gate.clear()
    with dispatch_child(newsletter) as first, dispatch_child(newsletter) as second:
        deadline = time.monotonic() + WAIT
        while recorder.connection_count() < 2 * CONNECTIONS and time.monotonic() < deadline:
            if first.poll() is not None or second.poll() is not None:
                break
            time.sleep(0.01)
        assert recorder.connection_count() >= 2 * CONNECTIONS, "both runs should have connected"
        recorder.gate.set()
        results = [finish(first), finish(second)]
    for _, report, stderr in results:
        assert report is not None, stderr
        assert report["errors"] == [] and report["issues"][0]["error"] == "", report

    assert server.recorder.by_recipient() == {email: 1 for email in newsletter.emails}
    assert newsletter.statuses() == {"sent": 400}
    sent = [report["issues"][0]["sent"] for _, report, _ in results if report is not None]
    assert sum(sent) == 400
    assert all(count > 0 for count in sent), sent  # both really sent: the runs shared the work
    # Rows the other live run still holds are its business: neither run reports them as left undone.
    assert [code for code, _, _ in results] == [0, 0], results
    for _, report, _ in results:
        assert report is not None
        summary = report["issues"][0]
        assert summary["deferred"] == summary["failed"] == summary["uncertain"] == summary["waiting"] == 0
    assert all(finished is not None and "died" not in finished for _, finished in newsletter.runs())


def test_sigterm_stops_gracefully_and_the_next_run_finishes(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    server.recorder.data_delay = 0.01
    with dispatch_child(newsletter) as process:
        wait_until_received(server, process, 100)
        process.send_signal(signal.SIGTERM)  # the child we started, nothing else
        code, report, stderr = finish(process)
    assert code == EXIT_INCOMPLETE, stderr
    assert report is not None and report["exit_code"] == EXIT_INCOMPLETE
    summary = report["issues"][0]
    assert summary["error"] == "" and not summary["complete"]

    # The messages in flight were finished and recorded; nothing is left sending or uncertain.
    got = set(server.recorder.by_recipient())
    ledger = newsletter.ledger()
    assert {email for email, (status, _) in ledger.items() if status == "sent"} == got
    assert {status for status, _ in ledger.values()} == {"sent", "pending"}
    assert summary["sent"] == len(got) < 300
    assert summary["waiting"] == 300 - len(got)
    assert all(finished is not None and "died" not in finished for _, finished in newsletter.runs())

    server.recorder.data_delay = 0
    second = newsletter.run()
    assert second.exit_code == 0, second
    assert second.issues[0].sent == 300 - len(got)
    assert not any("uncertain" in note for note in second.issues[0].notes)
    assert server.recorder.by_recipient() == {email: 1 for email in newsletter.emails}
    assert newsletter.statuses() == {"sent": 300}
