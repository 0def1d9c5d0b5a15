"""Dispatch runs in child processes against a controlled SMTP server: the crash and stall tests' harness.

A :class:`Newsletter` is set up in a temporary folder (config file, SQLite database,
subscribers, the seed issue); :func:`dispatch_child` runs one dispatch of it in a child
process (``python -c``) that prints its report as JSON; the ``server`` fixture is the
aiosmtpd server of :mod:`tests.harness.smtpserver` with the controls these tests need
(:class:`ControlledRecorder`). Nothing here asserts timing: waits have generous ceilings.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.config import Settings, load_settings
from newsletter.deliver.dispatch import DispatchOptions, DispatchReport, dispatch
from newsletter.store.subscribers import Store, SubscriberRow
from tests.conftest import ROOT, SEED_ISSUE
from tests.harness.smtpserver import Recorder, SmtpServer

KEY = "crash-test-key-0123456789abcdef"
CONNECTIONS = 4
WAIT = 60.0  # seconds: a ceiling for CI, never a timing assertion

# The child: one dispatch of one issue, its report as JSON on stdout, its exit code as status.
CHILD = """\
import json, sys
from newsletter.config import load_settings
from newsletter.deliver.dispatch import dispatch, DispatchOptions
report = dispatch(load_settings(sys.argv[1]), DispatchOptions(issue=sys.argv[2]))
print(json.dumps({"exit_code": report.exit_code, "errors": report.errors,
                  "issues": [summary.as_dict() for summary in report.issues]}), flush=True)
sys.exit(report.exit_code)
"""


class ControlledRecorder(Recorder):
    """The test server's recorder, plus two controls the crash tests need.

    - ``gate``: while clear, every DATA waits before it is accepted (to make two runs overlap);
    - ``hold_from``: once this many messages were accepted, each newly accepted one is kept
      but its 250 is never sent, so the sender can't know it arrived (until it dies or the server stops).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.hold_from: int | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        reply = await super().handle_DATA(server, session, envelope)
        if self.hold_from is not None and reply.startswith("250"):
            with self.lock:
                hold = len(self.messages) >= self.hold_from
            if hold:
                await asyncio.Event().wait()  # cancelled when the client goes away or the server stops
        return reply

    def connection_count(self) -> int:
        with self.lock:
            return self.connections


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    smtp = SmtpServer()
    recorder = ControlledRecorder()
    smtp.recorder = smtp.controller.handler = recorder  # before start: every session gets this one
    smtp.start()
    try:
        yield smtp
    finally:
        recorder.gate.set()
        smtp.stop()


def recorder_of(server: SmtpServer) -> ControlledRecorder:
    recorder = server.recorder
    assert isinstance(recorder, ControlledRecorder)
    return recorder


@dataclass
class Newsletter:
    """A newsletter set up in a temporary folder: its config file, settings and issue file."""

    config: Path
    settings: Settings
    issue: Path
    emails: list[str]

    def run(self, **options: Any) -> DispatchReport:
        """Dispatch in this process."""
        return dispatch(self.settings, DispatchOptions(issue=str(self.issue), **options))

    def ledger(self) -> dict[str, tuple[str, str]]:
        """Every delivery row of the issue as email → (status, message id)."""
        with Store.open(self.settings.database.path) as store:
            rows = store.connection.execute(
                "SELECT s.email_key, d.status, d.message_id FROM deliveries d"
                " JOIN subscribers s ON s.id = d.subscriber_id"
                " JOIN issues i ON i.id = d.issue_id WHERE i.slug = ?",
                (SEED_ISSUE.stem,),
            ).fetchall()
        return {str(row[0]): (str(row[1]), str(row[2])) for row in rows}

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status, _ in self.ledger().values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def unsent(self) -> list[tuple[str, str, int | None, float]]:
        """The rows not sent, as (email, status, run id, seconds left of its claim): to explain a failure."""
        with Store.open(self.settings.database.path) as store:
            rows = store.connection.execute(
                "SELECT s.email_key, d.status, d.run_id, d.claim_until FROM deliveries d"
                " JOIN subscribers s ON s.id = d.subscriber_id WHERE d.status <> 'sent' ORDER BY d.subscriber_id"
            ).fetchall()
        return [(str(row[0]), str(row[1]), row[2], round(float(row[3]) - time.time())) for row in rows]

    def runs(self) -> list[tuple[int, str | None]]:
        with Store.open(self.settings.database.path) as store:
            rows = store.connection.execute("SELECT pid, finished_at FROM runs ORDER BY id").fetchall()
        return [(int(row[0]), row[1]) for row in rows]


def make_newsletter(tmp_path: Path, port: int, subscribers: int) -> Newsletter:
    issues = tmp_path / "issues"
    issues.mkdir()
    issue = issues / SEED_ISSUE.name
    shutil.copy(SEED_ISSUE, issue)
    config = tmp_path / "newsletter.toml"
    config.write_text(
        f"""\
[sender]
from = "The Briefing <briefing@news.example.com>"

[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
connections = {CONNECTIONS}
timeout = {WAIT}

[database]
path = "news.db"

[issues]
dir = "issues"

[dispatch]
retry_initial = 0.01
retry_max = 0.05
wait_for_retries = 5
""",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={"NEWSLETTER_SECRET_KEY": KEY})
    assert settings.database.path == tmp_path / "news.db"
    emails = [f"reader{number}@example.org" for number in range(subscribers)]
    with Store.open(settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow(email, f"Reader {n}") for n, email in enumerate(emails)],
                                 list_name="default")
    return Newsletter(config, settings, issue, emails)


def _child_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("NEWSLETTER_CONFIG", "NEWSLETTER_SMTP_PASSWORD", "NEWSLETTER_DKIM_KEY_FILE")}
    env["NEWSLETTER_SECRET_KEY"] = KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@contextmanager
def dispatch_child(newsletter: Newsletter) -> Iterator[subprocess.Popen[str]]:
    """A dispatch in a child process; killed (that PID only) and reaped on the way out, whatever happens."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(newsletter.config), str(newsletter.issue)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(), cwd=ROOT,
    )
    with process:  # closes the pipes and waits
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=WAIT)


def finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any] | None, str]:
    """Wait for ``process`` to end: (exit code, its JSON report or None, its stderr)."""
    stdout, stderr = process.communicate(timeout=2 * WAIT)
    report = json.loads(stdout) if stdout.strip() else None
    return process.returncode, report, stderr


def wait_until_received(server: SmtpServer, process: subprocess.Popen[str], count: int) -> None:
    if not server.recorder.wait_for(count, timeout=WAIT):
        process.kill()
        _, stderr = process.communicate(timeout=WAIT)
        pytest.fail(f"the server got {len(server.recorder.received())} of {count} messages; child said:\n{stderr}")
    assert process.poll() is None, "the child finished before the test could act; pace it more"
