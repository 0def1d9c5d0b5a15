"""The SMTP fault storm: a relay that fails ~10 % of commands at random (421 and a dropped
connection, 451/452, stalls past the timeout, disconnects mid-DATA). After dispatch and its
retries every subscriber has exactly one copy, and the ledger agrees with what the server kept."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.config import DatabaseSettings, DispatchSettings, Secret, Settings, SmtpSettings
from newsletter.deliver.dispatch import DispatchOptions, dispatch
from newsletter.store.subscribers import Store, SubscriberRow
from tests.conftest import SEED_ISSUE
from tests.harness.stormserver import StormServer

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything

RECIPIENTS = 600
CONNECTIONS = 8
TIMEOUT = 0.4  # the client's reply timeout; the server stalls for longer


@pytest.fixture(params=["pipelined", "lock-step"])
def storm(request: pytest.FixtureRequest) -> Iterator[StormServer]:
    server = StormServer(fault_rate=0.10, stall_seconds=TIMEOUT * 2.5, seed=20261125,
                         pipelining=request.param == "pipelined").start()
    try:
        yield server
    finally:
        server.stop()


def _settings(tmp_path: Path, port: int) -> Settings:
    issues = tmp_path / "issues"
    issues.mkdir(exist_ok=True)
    shutil.copy(SEED_ISSUE, issues / SEED_ISSUE.name)
    return Settings(
        smtp=SmtpSettings(port=port, connections=CONNECTIONS, timeout=TIMEOUT, final_reply_timeout=TIMEOUT),
        database=DatabaseSettings(tmp_path / "news.db"),
        dispatch=DispatchSettings(retry_initial=0.01, retry_max=0.1, wait_for_retries=60),
        issues_dir=issues,
        secret_key=Secret("storm-test-key-0123456789abcdef"),
    )


def _rows(database: Path) -> dict[str, str]:
    connection = sqlite3.connect(database)
    try:
        return dict(connection.execute(
            "SELECT s.email, d.status FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
        ).fetchall())
    finally:
        connection.close()


def test_fault_storm_every_subscriber_exactly_once_and_the_ledger_agrees(
        tmp_path: Path, storm: StormServer, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, storm.port)
    emails = [f"reader{number}@example.org" for number in range(RECIPIENTS)]
    with Store.open(settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow(email, f"Reader {n}") for n, email in enumerate(emails)],
                                 list_name="default")
    options = DispatchOptions(issue=str(settings.issues_dir / SEED_ISSUE.name))
    runs = []
    # A run stops after many connection failures in a row (the relay looks down): the next
    # run, as cron would start it, carries on from the ledger.
    for _ in range(10):
        report = dispatch(settings, options)
        runs.append(report)
        if report.issues and report.issues[0].complete:
            break
    summary = runs[-1].issues[0]
    assert summary.complete, runs
    received = storm.by_recipient()
    rows = _rows(settings.database.path)
    sent = {email for email, status in rows.items() if status == "sent"}
    uncertain = {email for email, status in rows.items() if status == "uncertain"}
    with capsys.disabled():
        print(f"\nfault storm ({'pipelined' if storm.pipelining else 'lock-step'}): {RECIPIENTS} recipients, {CONNECTIONS} connections, {len(runs)} run(s), "
              f"{storm.connections} connections opened; faults: "
              + ", ".join(f"{name} {count}" for name, count in sorted(storm.faults.items()))
              + f"; ledger: {len(sent)} sent, {len(uncertain)} uncertain; server kept {sum(received.values())}")
    assert sum(storm.faults.values()) >= RECIPIENTS // 5  # it was a storm
    assert {"421", "451", "452", "stall", "drop in data", "stall after data"} <= set(storm.faults)
    # Exactly one copy each, no one missed, no one twice.
    assert received == {email: 1 for email in emails}
    # The ledger agrees: every row is sent or uncertain, and uncertain is exactly the stalls after
    # a whole message (the server kept the message, then never said so).
    assert sent | uncertain == set(emails) and not sent & uncertain
    assert len(uncertain) == storm.faults["stall after data"]
    # And it says so: the run's exit code and summary count them.
    assert summary.uncertain == len(uncertain)
    assert runs[-1].exit_code == (3 if uncertain else 0)
