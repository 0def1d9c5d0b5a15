"""Dispatch end to end: a real SQLite file, a real SMTP server on 127.0.0.1 that fails on purpose."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from newsletter.config import DatabaseSettings, DispatchSettings, Secret, Settings, SmtpSettings
from newsletter.deliver.dispatch import DispatchOptions, dispatch, retry_delay
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import TokenSigner, split_keys
from tests.conftest import SEED_ISSUE
from tests.harness.smtpserver import SmtpServer, running_server

KEY = "test-key-0123456789abcdef"
SLUG = SEED_ISSUE.stem


@pytest.fixture(params=["pipelined", "lock-step"])
def server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """The fault-injecting server, once offering PIPELINING (our own protocol) and once not (aiosmtplib)."""
    for running in running_server():
        running.recorder.pipelining = request.param == "pipelined"
        yield running


def make_settings(tmp_path: Path, port: int, **smtp: object) -> Settings:
    issues = tmp_path / "issues"
    issues.mkdir(exist_ok=True)
    shutil.copy(SEED_ISSUE, issues / SEED_ISSUE.name)
    return Settings(
        smtp=replace(SmtpSettings(port=port, connections=4, timeout=10), **smtp),  # type: ignore[arg-type]
        database=DatabaseSettings(tmp_path / "news.db"),
        dispatch=DispatchSettings(retry_initial=0.01, retry_max=0.05, wait_for_retries=10),
        issues_dir=issues,
        secret_key=Secret(KEY),
    )


def add_subscribers(settings: Settings, count: int, *, list_name: str = "default") -> list[str]:
    emails = [f"reader{number}@example.org" for number in range(count)]
    with Store.open(settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow(email, f"Reader {n}") for n, email in enumerate(emails)],
                                 list_name=list_name)
    return emails


def run(settings: Settings, **options: object) -> object:
    return dispatch(settings, DispatchOptions(issue=str(settings.issues_dir / SEED_ISSUE.name), **options))  # type: ignore[arg-type]


def ledger_counts(settings: Settings) -> dict[str, int]:
    with Store.open(settings.database.path) as store:
        ledger = Ledger(store)
        record = ledger.find_issue(SLUG)
        assert record is not None
        return ledger.counts(record.id)


def test_every_subscriber_gets_their_own_message_once(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    emails = add_subscribers(settings, 1000)
    report = run(settings)
    assert report.exit_code == 0, report  # type: ignore[attr-defined]
    received = server.recorder.received()
    assert sorted(message.rcpt for message in received) == sorted(emails)
    signer = TokenSigner(split_keys(KEY))
    message_ids = set()
    for message in received:
        parsed = message.parsed()
        assert parsed["To"].addresses[0].addr_spec == message.rcpt
        links = str(parsed["List-Unsubscribe"])
        url = links.split("<", 1)[1].split(">", 1)[0]
        token = url.rsplit("/", 1)[1]
        verified = signer.verify(token)
        assert verified is not None
        assert "mailto:" in links and token in links
        # The same token appears in the body's unsubscribe link of that recipient only.
        html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert url in html and message.rcpt in html
        message_ids.add(str(parsed["Message-ID"]))
    assert len(message_ids) == 1000
    counts = ledger_counts(settings)
    assert counts["sent"] == 1000 and sum(counts.values()) == 1000


def test_temporary_failures_are_retried_until_delivered(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    emails = add_subscribers(settings, 20)
    server.recorder.fail_rcpt(emails[0], "451 4.7.1 greylisted, try again", "451 4.7.1 still greylisted")
    server.recorder.fail_rcpt(emails[1], "421 4.3.2 closing, too busy")
    server.recorder.fail_data(emails[2], "452 4.3.1 insufficient storage")
    report = run(settings)
    assert report.exit_code == 0, report  # type: ignore[attr-defined]
    counts = server.recorder.by_recipient()
    assert counts == {email: 1 for email in emails}
    assert ledger_counts(settings)["sent"] == 20


def test_permanent_failure_bounces_unknown_users_only(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    emails = add_subscribers(settings, 6)
    server.recorder.fail_rcpt(emails[0], "550 5.1.1 <reader0@example.org>: Recipient address rejected: User unknown")
    server.recorder.fail_data(emails[1], "554 5.7.1 message rejected as spam")
    report = run(settings)
    assert report.exit_code == 3  # type: ignore[attr-defined]
    counts = ledger_counts(settings)
    assert counts["failed"] == 2 and counts["sent"] == 4
    with Store.open(settings.database.path) as store:
        status = {person.email: person.status for person in store.subscribers()}
    assert status[emails[0]] == "bounced"
    assert status[emails[1]] == "active"  # a content refusal says nothing about the address
    # A later issue never goes to the bounced address.
    assert emails[0] not in server.recorder.by_recipient()


def test_dropped_connection_in_data_reconnects_and_carries_on(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port, connections=1)
    emails = add_subscribers(settings, 10)
    server.recorder.drop_in_data(emails[3])
    server.recorder.drop_in_data(emails[7], times=2)
    report = run(settings)
    assert report.exit_code == 0, report  # type: ignore[attr-defined]
    assert server.recorder.by_recipient() == {email: 1 for email in emails}
    assert server.recorder.connections >= 4  # one to start, one after each drop


def test_unsubscribed_and_bounced_are_never_mailed(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    emails = add_subscribers(settings, 5)
    with Store.open(settings.database.path) as store:
        store.unsubscribe(emails[0])
        store.unsubscribe(emails[1], list_name="default")
        store.mark_bounced(store.subscribers()[2].id)
    run(settings)
    assert set(server.recorder.by_recipient()) == set(emails[3:])


def test_unsubscribe_after_the_ledger_was_made_is_honoured(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port, max_per_hour=2)
    emails = add_subscribers(settings, 5)
    first = run(settings)
    assert first.exit_code == 3  # type: ignore[attr-defined]  # the hourly cap held three back
    sent_first = set(server.recorder.by_recipient())
    assert len(sent_first) == 2
    later = [email for email in emails if email not in sent_first]
    with Store.open(settings.database.path) as store:
        store.unsubscribe(later[0])
    run(replace(settings, smtp=replace(settings.smtp, max_per_hour=0)))
    assert later[0] not in server.recorder.by_recipient()
    assert set(server.recorder.by_recipient()) == set(emails) - {later[0]}
    assert ledger_counts(settings)["skipped"] == 1
    # Pipelined, the envelope goes out while the ledger decides; the message itself is withheld
    # (connection dropped after 354). Lock-step asks the ledger first and sends nothing at all.
    assert (later[0] in server.recorder.rcpts_accepted) == server.recorder.pipelining


def test_a_completed_issue_is_not_sent_again(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    add_subscribers(settings, 3)
    run(settings)
    again = run(settings)
    assert again.exit_code == 0  # type: ignore[attr-defined]
    assert len(server.recorder.received()) == 3
    add_subscribers(settings, 5)  # people who join later don't get old issues
    run(settings)
    assert len(server.recorder.received()) == 3


def test_dry_run_writes_and_sends_nothing(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    add_subscribers(settings, 3)
    report = run(settings, dry_run=True)
    assert report.issues[0].waiting == 3  # type: ignore[attr-defined]
    assert server.recorder.received() == []
    with Store.open(settings.database.path) as store:
        assert Ledger(store).find_issue(SLUG) is None


def test_not_due_yet_is_left_alone(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    add_subscribers(settings, 2)
    path = settings.issues_dir / SEED_ISSUE.name
    text = path.read_text(encoding="utf-8").replace("date: 2017-07-07", "date: 2017-07-07\nsend_at: 2030-01-01T06:00:00Z")
    path.write_text(text, encoding="utf-8")
    assert dispatch(settings).issues == []
    report = dispatch(settings, DispatchOptions(now=dt.datetime(2030, 1, 1, 7, tzinfo=dt.UTC)))
    assert [summary.sent for summary in report.issues] == [2]


def test_changed_issue_file_is_refused_midway(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port, max_per_hour=1)
    add_subscribers(settings, 3)
    run(settings)
    path = settings.issues_dir / SEED_ISSUE.name
    path.write_text(path.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")
    unlimited = replace(settings, smtp=replace(settings.smtp, max_per_hour=0))
    report = run(unlimited)
    assert report.exit_code == 1  # type: ignore[attr-defined]
    assert "changed after sending began" in report.issues[0].error  # type: ignore[attr-defined]
    assert len(server.recorder.received()) == 1
    assert run(unlimited, allow_changed=True).exit_code == 0  # type: ignore[attr-defined]
    assert len(server.recorder.received()) == 3


def test_server_down_defers_everything(tmp_path: Path) -> None:
    from tests.harness.smtpserver import free_port

    settings = make_settings(tmp_path, free_port(), connections=2)
    add_subscribers(settings, 4)
    settings = replace(settings, dispatch=replace(settings.dispatch, wait_for_retries=0))
    report = run(settings)
    assert report.exit_code == 3  # type: ignore[attr-defined]
    counts = ledger_counts(settings)
    assert counts["sent"] == 0 and counts["deferred"] + counts["pending"] == 4


def test_retry_delay_grows_and_is_capped() -> None:
    settings = DispatchSettings(retry_initial=60, retry_max=3600)
    assert 48 <= retry_delay(1, settings) <= 72
    assert 96 <= retry_delay(2, settings) <= 144
    assert 2880 <= retry_delay(30, settings) <= 4320


@pytest.mark.slow
def test_one_thousand_through_postfix_smtp_sink_exactly_once(tmp_path: Path) -> None:
    from tests.harness.smtpsink import SmtpSink

    sink = SmtpSink(tmp_path / "sink")
    try:
        settings = make_settings(tmp_path, sink.port, connections=8)
        emails = add_subscribers(settings, 1000)
        report = run(settings)
        assert report.exit_code == 0, report  # type: ignore[attr-defined]
        dumps = sink.dumps()
    finally:
        sink.stop()
    assert sorted(rcpt for dump in dumps for rcpt in dump.rcpts) == sorted(emails)
    signer = TokenSigner(split_keys(KEY))
    seen_tokens = set()
    for dump in dumps:
        (rcpt,) = dump.rcpts
        assert dump.mail_from == "briefing@news.example.com"
        assert dump.message["To"].addresses[0].addr_spec == rcpt
        token = str(dump.message["List-Unsubscribe"]).split("/unsubscribe/", 1)[1].split(">", 1)[0]
        verified = signer.verify(token)
        assert verified is not None
        seen_tokens.add(verified.subscriber_id)
    assert len(seen_tokens) == 1000


def test_deferred_too_long_is_given_up_as_failed(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    settings = replace(settings, dispatch=replace(settings.dispatch, give_up_after_hours=0.5 / 3600))
    emails = add_subscribers(settings, 3)
    server.recorder.fail_rcpt(emails[0], *["451 4.7.1 try again later"] * 10_000)
    report = run(settings)
    assert report.exit_code == 3  # type: ignore[attr-defined]
    counts = ledger_counts(settings)
    assert counts["sent"] == 2 and counts["failed"] == 1 and counts["deferred"] == 0
    with Store.open(settings.database.path) as store:
        row = store.connection.execute("SELECT attempts, last_text FROM deliveries WHERE status = 'failed'").fetchone()
    assert row["attempts"] > 1 and row["last_text"].startswith("gave up after")
    with Store.open(settings.database.path) as store:  # a temporary failure never bounces anyone
        assert {person.status for person in store.subscribers()} == {"active"}


def test_rate_limiter_spaces_sends_evenly() -> None:
    import asyncio

    from newsletter.deliver.ratelimit import RateLimiter

    waits: list[float] = []

    async def record(delay: float) -> None:  # the clock stands still: each wait is what the limiter asks for
        waits.append(delay)

    limiter = RateLimiter(4.0, clock=lambda: 100.0, sleep=record)

    async def take(count: int) -> None:
        for _ in range(count):
            await limiter.wait()

    asyncio.run(take(5))
    assert waits == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the first goes at once, then one every 1/rate s
    assert RateLimiter(0).interval == 0


@pytest.mark.slow
def test_scheduled_script_exit_codes(tmp_path: Path, server: SmtpServer) -> None:
    import os
    import subprocess

    from tests.conftest import ROOT

    settings = make_settings(tmp_path, server.port)
    emails = add_subscribers(settings, 3)
    config = tmp_path / "newsletter.toml"

    def configure(wait_for_retries: float) -> None:
        # The retry comes due 1.6-2.4 s after the greylisting: after the first run's other sends
        # (a 0.01 s retry came due before them under load, and that run sent it), and within the
        # second run's wait.
        config.write_text(
            f'[smtp]\nport = {server.port}\n[database]\npath = "news.db"\n[issues]\ndir = "issues"\n'
            f"[dispatch]\nretry_initial = 2\nretry_max = 2\nwait_for_retries = {wait_for_retries}\n",
            encoding="utf-8",
        )

    configure(wait_for_retries=0)
    path = settings.issues_dir / SEED_ISSUE.name
    path.write_text(path.read_text(encoding="utf-8").replace(
        "date: 2017-07-07", "date: 2017-07-07\nsend_at: 2017-07-07T06:00:00-04:00"), encoding="utf-8")
    env = {**os.environ, "NEWSLETTER_CONFIG": str(config), "NEWSLETTER_SECRET_KEY": KEY}
    server.recorder.fail_rcpt(emails[0], "451 4.7.1 greylisted")

    def dispatch_script() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts" / "dispatch")], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    first = dispatch_script()
    assert first.returncode == 3, first.stderr  # one deferred, not retried within this run
    assert "sent 2, deferred 1" in first.stderr
    configure(wait_for_retries=30)
    again = dispatch_script()
    assert again.returncode == 0, again.stderr
    assert server.recorder.by_recipient() == {email: 1 for email in emails}
    (tmp_path / "issues" / "2024-01-01-broken.md").write_text("---\nsubject: [\n---\n", encoding="utf-8")
    broken = dispatch_script()
    assert broken.returncode == 1
    assert "2024-01-01-broken.md:" in broken.stderr and "Traceback" not in broken.stderr


def test_an_empty_list_is_an_error_and_records_nothing(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port)
    add_subscribers(settings, 2, list_name="other")
    report = run(settings)
    assert report.exit_code == 1  # type: ignore[attr-defined]
    assert "list 'default' has no active subscribers" in report.issues[0].error  # type: ignore[attr-defined]
    with Store.open(settings.database.path) as store:
        assert Ledger(store).find_issue(SLUG) is None
    add_subscribers(settings, 2)
    assert run(settings).exit_code == 0  # type: ignore[attr-defined]


def test_rate_limited_dispatch_delivers_everyone_once(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port, rate=400.0)
    emails = add_subscribers(settings, 30)
    report = run(settings)
    assert report.exit_code == 0, report  # type: ignore[attr-defined]
    assert server.recorder.by_recipient() == {email: 1 for email in emails}


def test_a_database_failure_mid_run_ends_the_run_with_an_error(tmp_path: Path, server: SmtpServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that fails (disk full, say: a fault no real server makes) stops the run; it never hangs."""
    import threading

    from newsletter.errors import StoreError

    settings = make_settings(tmp_path, server.port)
    add_subscribers(settings, 200)
    original = Ledger.record
    calls = {"count": 0}

    def failing(self: Ledger, *args: object, **kwargs: object) -> list[bool]:
        calls["count"] += 1
        if calls["count"] > 5:
            raise StoreError(f"{self.store.label}: the disk is full; nothing was written")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "record", failing)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(run(settings)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the run hung after a failed commit"
    report = outcome[0]
    assert report.exit_code == 1  # type: ignore[attr-defined]
    assert "disk is full" in report.issues[0].error  # type: ignore[attr-defined]
    # Nothing was delivered twice, and whatever was sent beyond the ledger is at most in flight.
    assert all(count == 1 for count in server.recorder.by_recipient().values())
