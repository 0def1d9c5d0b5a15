"""``newsletter status`` shows what came back by mail (issue 15, item 4): per issue sent, hard and soft
bounces, complaints and unsubscribes with their rates, and a warning at 0.1 % complaints or 2 % hard
bounces; on an SQLite file and on a real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import STATES, Ledger
from newsletter.store.subscribers import Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

SENT = 1000


def cli(tmp_path: Path, database: str | Path, *args: str) -> Result:
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "news.db"}"\n', encoding="utf-8")
    env = {"NEWSLETTER_DATABASE_URL": database if isinstance(database, str) else ""}
    return CliRunner().invoke(main, ["--config", str(config), *args], env=env)


def status(tmp_path: Path, database: str | Path, *args: str) -> Result:
    return cli(tmp_path, database, "status", *args)


def one_issue(database: str | Path, *, hard: int, soft: int, complaints: int, unsubscribes: int) -> None:
    """An issue sent to :data:`SENT` readers, and that much come back for it."""
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(SENT)], list_name="default")
        ledger = Ledger(store)
        record = ledger.open_issue(slug="2026-01-01-news", list_name="default", subject="News", content_hash="h",
                                   domain="news.example.com")
        with store.transaction() as cursor:
            cursor.execute("UPDATE deliveries SET status = 'sent', sent_at = '2026-01-01T10:00:00+00:00'")
            cursor.execute("UPDATE issues SET first_sent_at = '2026-01-01T10:00:00+00:00'")
        ids = [int(row[0]) for row in store.query("SELECT id FROM subscribers ORDER BY id")]
        feedback = Feedback(store)
        kinds = ["hard_bounce"] * hard + ["soft_bounce"] * soft + ["complaint"] * complaints
        for subscriber_id, kind in zip(ids, kinds, strict=False):
            feedback.record_feedback(issue_id=record.id, subscriber_id=subscriber_id, kind=kind, status=None,
                                     diagnostic="", fingerprint=f"{kind}-{subscriber_id}")
        for subscriber_id in ids[len(kinds):len(kinds) + unsubscribes]:
            assert store.leave_list(subscriber_id, record.list_id)  # the web's unsubscribe


def test_status_shows_what_came_back_with_rates_and_no_warning_below_the_thresholds(
        tmp_path: Path, database: str | Path) -> None:
    one_issue(database, hard=19, soft=4, complaints=0, unsubscribes=3)
    result = status(tmp_path, database, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    # What was there before stays as it was.
    assert row["slug"] == "2026-01-01-news" and row["list"] == "default"
    assert row["counts"] == {**dict.fromkeys(STATES, 0), "sent": SENT}
    assert row["errors"] == []
    assert row["feedback"] == {"sent": SENT, "hard_bounces": 19, "soft_bounces": 4, "complaints": 0,
                               "unsubscribes": 3}
    assert row["rates"] == {"hard_bounces": 0.019, "soft_bounces": 0.004, "complaints": 0.0, "unsubscribes": 0.003}
    assert row["warnings"] == []
    text = status(tmp_path, database, "2026-01-01-news")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [
        "2026-01-01-news (list 'default', in progress)",
        "  0 pending, 0 sending, 1000 sent, 0 deferred, 0 failed, 0 uncertain, 0 skipped",
        "  came back of 1000 sent: 19 hard bounces (1.90%), 4 soft bounces (0.40%), 0 complaints (0.00%),"
        " 3 unsubscribes (0.30%)",
    ]


def test_status_warns_at_one_complaint_in_a_thousand_and_two_hard_bounces_in_a_hundred(
        tmp_path: Path, database: str | Path) -> None:
    one_issue(database, hard=20, soft=0, complaints=1, unsubscribes=0)
    row = json.loads(status(tmp_path, database, "--json").stdout)[0]
    assert row["feedback"]["complaints"] == 1 and row["feedback"]["hard_bounces"] == 20
    assert len(row["warnings"]) == 2
    text = status(tmp_path, database).stdout.splitlines()
    warnings = [line for line in text if line.startswith("  warning: ")]
    assert len(warnings) == 2
    assert warnings[0].startswith("  warning: complaints are 0.10% of sent, at or over 0.1 %: Gmail's and Yahoo's")
    assert warnings[1].startswith("  warning: hard bounces are 2.00% of sent, at or over 2 %")


def test_subscribers_list_shows_who_complained(tmp_path: Path, database: str | Path) -> None:
    one_issue(database, hard=1, soft=0, complaints=2, unsubscribes=0)
    result = cli(tmp_path, database, "subscribers", "list", "--status", "complained")
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["r1@example.org", "r2@example.org"]
    assert all(line.split("\t")[2] == "complained" for line in result.stdout.splitlines())
