"""A relay that goes silent is noticed within the command timeout, one silent connection doesn't hold up
the others, SIGTERM ends a run within seconds whatever its connections are doing, and a run that
outlives another (killed) run finishes its work instead of calling the issue done.

Real parts: the aiosmtpd server of :mod:`tests.harness.smtpserver`, told to go silent on purpose, dispatch
in child processes (:mod:`tests.harness.runs`) on a real SQLite file. Each wait has a
ceiling far below the timeout that a broken run would sit out (600 s), so a broken run fails
the test instead of passing slowly; nothing is asserted about speed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from newsletter.config import SmtpSettings
from newsletter.deliver.dispatch import EXIT_INCOMPLETE
from newsletter.deliver.transport import SendResult, SmtpConnection
from tests.harness import runs
from tests.harness.runs import WAIT, dispatch_child, finish, make_newsletter, recorder_of, wait_until_received
from tests.harness.smtpserver import SmtpServer, running_server

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything

server = runs.server  # the fixture: aiosmtpd with the crash tests' controls

MESSAGE = b"From: a@example.com\r\nTo: r@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
FINAL_REPLY_TIMEOUT = 600.0  # RFC 5321's ten minutes for the reply to a final dot: what a broken run sits out


def _set_config(config: Path, **values: object) -> None:
    """Change keys of the [smtp] table of a test config file."""
    lines = config.read_text(encoding="utf-8").splitlines()
    for key, value in values.items():
        lines = [line for line in lines if not line.startswith(f"{key} =")]
        lines.insert(lines.index("[smtp]") + 1, f"{key} = {value}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("advertised", [True, False])
def test_a_relay_silent_after_a_slow_final_reply_times_out_at_the_command_timeout(advertised: bool) -> None:
    """The final reply may take ``final_reply_timeout``; the next command's reply only ``timeout``.

    Once a long final-reply wait armed the session's watchdog, a later, shorter deadline must
    still be kept (it was not: the next command waited for the 600 s timer).
    """
    async def scenario(port: int) -> tuple[SendResult, SendResult, float]:
        connection = SmtpConnection(SmtpSettings(port=port, timeout=0.5, final_reply_timeout=FINAL_REPLY_TIMEOUT))
        try:
            slow = await connection.send("a@example.com", "slow@example.org", MESSAGE,
                                         then=("a@example.com", "next@example.org", len(MESSAGE)))
            started = time.monotonic()
            silent = await asyncio.wait_for(connection.send("a@example.com", "next@example.org", MESSAGE), WAIT)
            return slow, silent, time.monotonic() - started
        finally:
            connection.abort()

    for smtp in running_server():
        smtp.recorder.pipelining = advertised
        smtp.recorder.late_then_silent("slow@example.org", 1.5)  # longer than timeout, well within the final's
        slow, silent, detected = asyncio.run(scenario(smtp.port))
        print(f"\nsilent relay noticed after {detected:.2f} s (timeout 0.5 s, final reply timeout 600 s)")
        assert slow.outcome == "sent"  # a final reply later than `timeout` is still waited for
        assert silent.outcome == "deferred" and "timed out" in silent.text, silent  # before the dot: safe to retry
        assert smtp.recorder.stalls == 1
        assert [m.rcpt for m in smtp.recorder.received()] == ["slow@example.org"]


def test_a_dispatch_through_a_relay_that_goes_silent_finishes(tmp_path: Path, server: SmtpServer) -> None:
    """The issue's case: timeout = 2, a relay answers one final dot 3 s late, then says nothing more on
    that connection. The run notices within the command timeout, sends the rest on other
    connections, and ends with everyone served once."""
    newsletter = make_newsletter(tmp_path, server.port, 50)
    _set_config(newsletter.config, timeout=2, final_reply_timeout=FINAL_REPLY_TIMEOUT)
    server.recorder.late_then_silent("reader7@example.org", 3.0)
    with dispatch_child(newsletter) as process:
        started = time.monotonic()
        code, report, stderr = finish(process)
        elapsed = time.monotonic() - started
    print(f"\ndispatch of 50 with one connection gone silent: exit {code} after {elapsed:.1f} s")
    assert report is not None, stderr
    assert code == 0, report
    assert server.recorder.stalls == 1
    assert server.recorder.by_recipient() == {email: 1 for email in newsletter.emails}
    assert newsletter.statuses() == {"sent": 50}


def test_one_silent_connection_does_not_hold_up_the_others(tmp_path: Path, server: SmtpServer) -> None:
    """One connection stuck (RCPT never answered, timeout 600 s): every other subscriber is served while it is."""
    newsletter = make_newsletter(tmp_path, server.port, 200)
    _set_config(newsletter.config, connections=2, timeout=FINAL_REPLY_TIMEOUT)
    server.recorder.stall_at_rcpt("reader3@example.org")
    with dispatch_child(newsletter) as process:
        # Every other reader, while the stuck connection waits out its 600 s.
        wait_until_received(server, process, 199)
        assert server.recorder.stalls == 1
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)  # the child we started, nothing else
        code, report, stderr = finish(process)
        stopped = time.monotonic() - signalled
    print(f"\nSIGTERM with a connection stuck in RCPT: exit {code} {stopped:.1f} s later")
    assert report is not None, stderr
    assert code == EXIT_INCOMPLETE
    ledger = newsletter.ledger()
    # The stuck row never reached its final dot: deferred, to go in a later run; all the others sent.
    assert ledger.pop("reader3@example.org")[0] == "deferred"
    assert {status for status, _ in ledger.values()} == {"sent"}
    assert stopped < WAIT / 2  # a few seconds' grace, then the connections are dropped (not 600 s)


def test_sigterm_while_a_final_reply_is_awaited_ends_the_run_and_leaves_it_uncertain(
        tmp_path: Path, server: SmtpServer) -> None:
    """The message is out and the relay takes its time (final reply timeout 600 s): SIGTERM ends the run
    within seconds; the row is ``uncertain`` (the relay may have it), never resent on its own."""
    newsletter = make_newsletter(tmp_path, server.port, 40)
    _set_config(newsletter.config, connections=2, timeout=5, final_reply_timeout=FINAL_REPLY_TIMEOUT)
    recorder_of(server).hold_from = 10  # from the 10th message on, each is kept and never answered
    with dispatch_child(newsletter) as process:
        wait_until_received(server, process, 11)  # both connections are waiting for a final reply
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)  # the child we started, nothing else
        code, report, stderr = finish(process)
        stopped = time.monotonic() - signalled
    print(f"\nSIGTERM with final replies outstanding: exit {code} {stopped:.1f} s later")
    assert report is not None, stderr
    assert code == EXIT_INCOMPLETE
    summary = report["issues"][0]
    held = {message.rcpt.lower() for message in server.recorder.received()[9:]}
    ledger = newsletter.ledger()
    assert {email for email, (status, _) in ledger.items() if status == "uncertain"} == held
    assert summary["uncertain"] == len(held) == 2
    assert stopped < WAIT / 2


def test_a_run_that_outlives_a_killed_one_sends_what_it_left(tmp_path: Path, server: SmtpServer) -> None:
    """Two runs at once, one SIGKILLed: the survivor takes over the dead run's claimed rows (its rows in
    flight become uncertain) and calls the issue done only when it is; exit 0 only then, else 3."""
    newsletter = make_newsletter(tmp_path, server.port, 400)
    recorder = recorder_of(server)
    recorder.data_delay = 0.005
    recorder.gate.clear()  # nothing accepted until both runs are connected (and hold rows)
    with dispatch_child(newsletter) as victim, dispatch_child(newsletter) as survivor:
        deadline = time.monotonic() + WAIT
        while recorder.connection_count() < 2 * runs.CONNECTIONS and time.monotonic() < deadline:
            assert victim.poll() is None and survivor.poll() is None
            time.sleep(0.01)
        recorder.gate.set()
        wait_until_received(server, victim, 100)
        os.kill(victim.pid, signal.SIGKILL)  # the child we started, nothing else
        victim.wait(WAIT)
        code, report, stderr = finish(survivor)
    assert report is not None, stderr
    summary = report["issues"][0]
    statuses = newsletter.statuses()
    print(f"\nsurvivor: exit {code}, {summary['sent']} sent, notes {summary['notes']}; ledger {statuses}")
    # Nothing left pending, sending or deferred: the dead run's claims were taken over.
    assert set(statuses) <= {"sent", "uncertain"}, (statuses, newsletter.unsent())
    uncertain = statuses.get("uncertain", 0)
    assert uncertain <= runs.CONNECTIONS  # only what the dead run had in flight
    assert summary["complete"] and summary["waiting"] == 0
    assert code == report["exit_code"] == (EXIT_INCOMPLETE if uncertain else 0)
    if uncertain:
        assert f"{uncertain} left uncertain by a run that died" in summary["notes"]
    received = server.recorder.by_recipient()
    assert max(received.values()) == 1  # nobody twice
    ledger = newsletter.ledger()
    assert set(newsletter.emails) - set(received) <= {e for e, (status, _) in ledger.items() if status == "uncertain"}
