"""Bounces, complaints and mail unsubscribes as the store keeps them (issue 15, the policy of item 4): every
test runs on an SQLite file and on a real PostgreSQL server (tests/harness/pgserver.py), like the backend
contract suite in test_backends.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.store.feedback import Feedback, feedback_rates, feedback_warnings
from newsletter.store.ledger import Ledger
from newsletter.store.postgres import PostgresDialect
from newsletter.store.sqlite import SQLiteDialect
from newsletter.store.subscribers import Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

DAY = 86_400.0
#: noon UTC of some day, so that whole days added stay inside their day
T0 = 20_000 * DAY + 43_200


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    """Five readers (r0..r4@example.org) on 'default', r0 and r1 also on 'other'."""
    with Store.open(database) as opened:
        opened.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(5)], list_name="default")
        opened.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(2)], list_name="other")
        yield opened


def issue(store: Store, slug: str, list_name: str = "default") -> int:
    """An issue opened in the ledger: a pending delivery per active member."""
    return Ledger(store).open_issue(slug=slug, list_name=list_name, subject=slug, content_hash="h",
                                    domain="news.example.com").id


def mark_sent(store: Store, issue_id: int, stamp: str) -> None:
    """Every delivery of the issue sent at ``stamp``, the issue first sent then (as dispatch records it)."""
    with store.transaction() as cursor:
        cursor.execute("UPDATE deliveries SET status = 'sent', sent_at = ? WHERE issue_id = ?", (stamp, issue_id))
        cursor.execute("UPDATE issues SET first_sent_at = ? WHERE id = ?", (stamp, issue_id))


def sid(store: Store, email: str) -> int:
    return int(store.query("SELECT id FROM subscribers WHERE email_key = ?", (email,))[0][0])


def person(store: Store, email: str) -> tuple[str, dict[str, str]]:
    """(subscriber status, {list: membership status})."""
    rows = store.query("SELECT s.status, l.name, m.status FROM subscribers s JOIN memberships m"
                       " ON m.subscriber_id = s.id JOIN lists l ON l.id = m.list_id WHERE s.email_key = ?", (email,))
    return str(rows[0][0]), {str(row[1]): str(row[2]) for row in rows}


def events(store: Store) -> int:
    return int(store.query("SELECT count(*) FROM feedback")[0][0])


def record(feedback: Feedback, issue_id: int, subscriber_id: int, kind: str, fingerprint: str, *,
           at: float = T0, status: str | None = None, diagnostic: str = "") -> str:
    return feedback.record_feedback(issue_id=issue_id, subscriber_id=subscriber_id, kind=kind, status=status,
                                    diagnostic=diagnostic, fingerprint=fingerprint, at=at)


# --- the schema ----------------------------------------------------------------------------


def test_a_database_of_the_previous_schema_migrates_and_keeps_its_data(
        database: str | Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(SQLiteDialect, "migrations", SQLiteDialect.migrations[:6])
        patch.setattr(PostgresDialect, "migrations", PostgresDialect.migrations[:6])
        with Store.open(database) as old:
            assert old.schema_version == 6
            old.upsert_subscribers([SubscriberRow("a@example.org"), SubscriberRow("b@example.org")],
                                   list_name="default")
            old.mark_bounced(sid(old, "b@example.org"))
            issue_id = issue(old, "old-issue")
    with Store.open(database) as store:
        assert store.schema_version == 10
        assert person(store, "a@example.org") == ("active", {"default": "active"})
        assert person(store, "b@example.org")[0] == "bounced"
        assert store.count() == {"active": 1, "unsubscribed": 0, "bounced": 1}
        # The new state is allowed, and the constraint still refuses what isn't a state.
        assert record(Feedback(store), issue_id, sid(store, "a@example.org"), "complaint", "f1") == "complained"
        assert person(store, "a@example.org") == ("complained", {"default": "unsubscribed"})
        with pytest.raises(Exception, match="(?i)check"), store.transaction() as cursor:
            cursor.execute("UPDATE subscribers SET status = 'gone' WHERE email_key = 'a@example.org'")
        row = store.query("SELECT feedback, feedback_at FROM deliveries WHERE issue_id = ? AND subscriber_id = ?",
                          (issue_id, sid(store, "a@example.org")))
        assert (row[0][0], row[0][1]) == ("complaint", 20_000 * DAY + 43_200)


# --- finding the delivery --------------------------------------------------------------------


def test_delivery_by_message_id_finds_exactly_the_delivery_the_ledger_named(store: Store) -> None:
    issue_id = issue(store, "2024-05-01-spring")
    feedback = Feedback(store)
    r2 = sid(store, "r2@example.org")
    message_id = store.query("SELECT message_id FROM deliveries WHERE issue_id = ? AND subscriber_id = ?",
                             (issue_id, r2))[0][0]
    assert message_id == f"2024-05-01-spring.{r2}@news.example.com"
    expected = (issue_id, r2, "r2@example.org")
    assert feedback.delivery_by_message_id(message_id) == expected
    assert feedback.delivery_by_message_id(f" <{message_id}> ") == expected
    for other in (f"2024-05-01-spring.{r2}@other.example.com",  # the slug and id, another domain
                  f"2024-05-01-spring.{r2 + 1000}@news.example.com",  # nobody
                  f"2024-05-02-summer.{r2}@news.example.com",  # no such issue
                  "2024-05-01-spring@news.example.com", "no-at-sign", "", "<>",
                  f"2024-05-01-spring.{'9' * 40}@news.example.com",  # would overflow an integer
                  f"2024-05-01-spring.{r2}x@news.example.com", "2024-05-01-spring.٣@news.example.com"):
        assert feedback.delivery_by_message_id(other) is None, other


# --- the policy ----------------------------------------------------------------------------------


def test_a_hard_bounce_marks_the_subscriber_bounced_at_once_and_records_it_on_the_delivery(store: Store) -> None:
    issue_id = issue(store, "one")
    feedback = Feedback(store)
    r0 = sid(store, "r0@example.org")
    assert record(feedback, issue_id, r0, "hard_bounce", "dsn-1/r0", status="5.1.1",
                  diagnostic="smtp; 550 5.1.1 no such user") == "bounced"
    # As a permanent failure during dispatch: no more mail, the memberships kept as they were.
    assert person(store, "r0@example.org") == ("bounced", {"default": "active", "other": "active"})
    assert person(store, "r1@example.org")[0] == "active"
    row = store.query("SELECT feedback, feedback_status, feedback_text, feedback_at FROM deliveries"
                      " WHERE issue_id = ? AND subscriber_id = ?", (issue_id, r0))[0]
    assert tuple(row) == ("hard_bounce", "5.1.1", "smtp; 550 5.1.1 no such user", T0)
    # Another report of it: recorded, nothing more to change.
    assert record(feedback, issue_id, r0, "hard_bounce", "dsn-2/r0") == "unchanged"
    assert events(store) == 2
    # A later soft bounce doesn't hide the hard one on the delivery row.
    assert record(feedback, issue_id, r0, "soft_bounce", "dsn-3/r0", status="4.2.2") == "unchanged"
    assert store.query("SELECT feedback FROM deliveries WHERE issue_id = ? AND subscriber_id = ?",
                       (issue_id, r0))[0][0] == "hard_bounce"
    # The next issue doesn't go to them.
    with store.transaction() as cursor:
        cursor.execute("UPDATE issues SET completed_at = 'x'")
    assert r0 not in {int(row[0]) for row in store.query(
        "SELECT subscriber_id FROM deliveries WHERE issue_id = ?", (issue(store, "two"),))}


def test_the_same_report_twice_changes_nothing(store: Store) -> None:
    issues = [issue(store, f"i{n}") for n in range(3)]
    feedback = Feedback(store)
    r0, r1 = sid(store, "r0@example.org"), sid(store, "r1@example.org")
    # Soft bounces on distinct days and issues, each report processed twice: it counts once.
    assert record(feedback, issues[0], r0, "soft_bounce", "a", at=T0) == "soft"
    assert record(feedback, issues[0], r0, "soft_bounce", "a", at=T0) == "duplicate"
    assert record(feedback, issues[1], r0, "soft_bounce", "b", at=T0 + DAY) == "soft"
    assert record(feedback, issues[1], r0, "soft_bounce", "b", at=T0 + DAY) == "duplicate"
    assert person(store, "r0@example.org")[0] == "active"
    assert record(feedback, issues[2], r0, "soft_bounce", "c", at=T0 + 2 * DAY) == "bounced"
    assert record(feedback, issues[2], r0, "soft_bounce", "c", at=T0 + 2 * DAY) == "duplicate"
    # A complaint processed twice; and a fingerprint is one report, whatever it says the second time.
    assert record(feedback, issues[0], r1, "complaint", "arf-1") == "complained"
    assert record(feedback, issues[0], r1, "complaint", "arf-1") == "duplicate"
    assert record(feedback, issues[1], r1, "unsubscribe", "arf-1") == "duplicate"
    assert events(store) == 4


def test_soft_bounces_reach_the_limit_on_distinct_days_within_the_window(store: Store) -> None:
    issues = [issue(store, f"i{n}") for n in range(8)]
    feedback = Feedback(store)  # the defaults: 3 within 30 days
    r0, r1, r2, r3 = (sid(store, f"r{n}@example.org") for n in range(4))
    # At the limit: days 1, 2 and 30 are within one window of 30 days (1..30).
    assert record(feedback, issues[0], r0, "soft_bounce", "r0-a", at=T0 + 1 * DAY) == "soft"
    assert record(feedback, issues[1], r0, "soft_bounce", "r0-b", at=T0 + 2 * DAY) == "soft"
    assert person(store, "r0@example.org")[0] == "active"
    assert record(feedback, issues[2], r0, "soft_bounce", "r0-c", at=T0 + 30 * DAY - 3600) == "bounced"
    assert person(store, "r0@example.org")[0] == "bounced"
    # Outside it: days 1, 2 and 31; the first has left the window (2..31).
    assert record(feedback, issues[0], r1, "soft_bounce", "r1-a", at=T0 + 1 * DAY) == "soft"
    assert record(feedback, issues[1], r1, "soft_bounce", "r1-b", at=T0 + 2 * DAY) == "soft"
    assert record(feedback, issues[2], r1, "soft_bounce", "r1-c", at=T0 + 31 * DAY) == "soft"
    assert person(store, "r1@example.org")[0] == "active"
    # Day 32: days 31 and 32 in its window (3..32), still two; a report of day 20 (processed late)
    # has days 1, 2 and 20 in its window (1..20): the limit.
    assert record(feedback, issues[3], r1, "soft_bounce", "r1-d", at=T0 + 32 * DAY) == "soft"
    assert record(feedback, issues[4], r1, "soft_bounce", "r1-e", at=T0 + 20 * DAY) == "bounced"
    # A burst of reports on one day, for three issues, is one soft bounce.
    for number in range(3):
        assert record(feedback, issues[number], r2, "soft_bounce", f"r2-{number}", at=T0 + number * 60) == "soft"
    assert person(store, "r2@example.org")[0] == "active"
    # One issue reported on three days is one soft bounce too.
    for number in range(3):
        assert record(feedback, issues[4], r3, "soft_bounce", f"r3-{number}", at=T0 + number * DAY) == "soft"
    assert record(feedback, issues[5], r3, "soft_bounce", "r3-x", at=T0 + 3 * DAY) == "soft"
    assert record(feedback, issues[6], r3, "soft_bounce", "r3-y", at=T0 + 4 * DAY) == "bounced"
    # The day is UTC's: 23:59 and 00:01 are two days.
    midnight = T0 + 40 * DAY - 43_200
    r4 = sid(store, "r4@example.org")
    assert record(feedback, issues[0], r4, "soft_bounce", "r4-a", at=midnight - 60) == "soft"
    assert record(feedback, issues[1], r4, "soft_bounce", "r4-b", at=midnight + 60) == "soft"
    assert record(feedback, issues[2], r4, "soft_bounce", "r4-c", at=midnight + 120) == "soft"


def test_the_soft_limit_and_window_are_settings(store: Store) -> None:
    issues = [issue(store, f"i{n}") for n in range(3)]
    feedback = Feedback(store, soft_limit=2, soft_window_days=7)
    r0, r1 = sid(store, "r0@example.org"), sid(store, "r1@example.org")
    assert record(feedback, issues[0], r0, "soft_bounce", "a", at=T0) == "soft"
    assert record(feedback, issues[1], r0, "soft_bounce", "b", at=T0 + 6 * DAY) == "bounced"
    assert record(feedback, issues[0], r1, "soft_bounce", "c", at=T0) == "soft"
    assert record(feedback, issues[1], r1, "soft_bounce", "d", at=T0 + 7 * DAY) == "soft"
    with pytest.raises(ValueError):
        Feedback(store, soft_limit=0)


def test_a_complaint_ends_every_membership_and_no_import_brings_them_back(store: Store) -> None:
    issue_id = issue(store, "one")
    feedback = Feedback(store)
    r0 = sid(store, "r0@example.org")
    assert record(feedback, issue_id, r0, "complaint", "arf-1") == "complained"
    assert person(store, "r0@example.org") == ("complained", {"default": "unsubscribed", "other": "unsubscribed"})
    assert person(store, "r1@example.org") == ("active", {"default": "active", "other": "active"})
    assert record(feedback, issue_id, r0, "complaint", "arf-2") == "unchanged"
    # An import of the address (on its lists and a new one) re-activates nothing.
    counts = store.upsert_subscribers([SubscriberRow("R0@example.org", "Ann")], list_name="default")
    assert (counts.added, counts.updated, counts.kept_out) == (0, 1, 1)
    store.upsert_subscribers([SubscriberRow("r0@example.org")], list_name="third")
    assert person(store, "r0@example.org") == (
        "complained", {"default": "unsubscribed", "other": "unsubscribed", "third": "unsubscribed"})
    assert [p.email for p in store.subscribers(status="complained")] == ["r0@example.org"]
    assert "r0@example.org" not in {p.email for p in store.subscribers(list_name="default")}
    # Their own "subscribe again" can't either: only an operator undoes a complaint.
    assert store.rejoin(r0, int(store.find_list("default") or 0)) == "suppressed"
    assert store.count() == {"active": 4, "unsubscribed": 0, "bounced": 0, "complained": 1}
    # A bounced address that complains is complained; a complaint stays one when a bounce comes.
    r1 = sid(store, "r1@example.org")
    assert record(feedback, issue_id, r1, "hard_bounce", "dsn-1") == "bounced"
    assert record(feedback, issue_id, r1, "complaint", "arf-3") == "complained"
    assert record(feedback, issue_id, r0, "hard_bounce", "dsn-2") == "unchanged"
    assert person(store, "r0@example.org")[0] == "complained"


def test_an_unsubscribe_by_mail_ends_that_issues_list_only(store: Store) -> None:
    issue_id = issue(store, "one", list_name="other")
    feedback = Feedback(store)
    r0 = sid(store, "r0@example.org")
    assert record(feedback, issue_id, r0, "unsubscribe", "mail-1") == "unsubscribed"
    assert person(store, "r0@example.org") == ("active", {"default": "active", "other": "unsubscribed"})
    # The web's path afterwards changes nothing more; neither does the same request again.
    assert not store.leave_list(r0, int(store.find_list("other") or 0))
    assert record(feedback, issue_id, r0, "unsubscribe", "mail-1") == "duplicate"
    assert store.query("SELECT feedback FROM deliveries WHERE issue_id = ? AND subscriber_id = ?",
                       (issue_id, r0))[0][0] is None  # only bounces and complaints mark the delivery


def test_a_report_for_a_delivery_the_ledger_never_made_records_nothing(store: Store) -> None:
    issue_id = issue(store, "one", list_name="other")  # r0 and r1 only
    feedback = Feedback(store)
    r3 = sid(store, "r3@example.org")
    assert record(feedback, issue_id, r3, "hard_bounce", "x") == "unknown"
    assert record(feedback, issue_id + 100, r3, "complaint", "y") == "unknown"
    assert events(store) == 0
    assert person(store, "r3@example.org")[0] == "active"
    with pytest.raises(ValueError, match="kind"):
        record(feedback, issue_id, r3, "auto_reply", "z")


def test_soft_bounces_recorded_side_by_side_still_reach_the_limit(pg_url: str) -> None:
    """Two processes recording one subscriber's soft bounces at once: PostgreSQL runs their transactions side
    by side, and each counting before the other's commit would never see the limit. The server is made to
    pause after each insert (a trigger), so that both are in that gap at once unless they take turns."""
    with Store.open(pg_url) as store:
        store.upsert_subscribers([SubscriberRow("r0@example.org")], list_name="default")
        issues = [issue(store, f"i{n}") for n in range(2)]
        r0 = sid(store, "r0@example.org")
        with store.transaction() as cursor:
            cursor.execute("CREATE FUNCTION pause() RETURNS trigger LANGUAGE plpgsql AS"
                           " 'BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END'")
            cursor.execute("CREATE TRIGGER pause AFTER INSERT ON feedback FOR EACH ROW EXECUTE FUNCTION pause()")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def worker(number: int) -> None:
        with Store.open(pg_url) as mine:
            feedback = Feedback(mine, soft_limit=2, soft_window_days=30)
            barrier.wait(30)
            outcomes.append(record(feedback, issues[number], r0, "soft_bounce", f"s{number}", at=T0 + number * DAY))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["bounced", "soft"]
    with Store.open(pg_url) as store:
        assert person(store, "r0@example.org")[0] == "bounced"


# --- counting ------------------------------------------------------------------------------------


def test_issue_feedback_counts_each_reader_once_and_attributes_unsubscribes_to_the_last_issue(store: Store) -> None:
    feedback = Feedback(store)
    first, second = issue(store, "first"), None
    mark_sent(store, first, "2026-01-01T10:00:00+00:00")
    ids = {n: sid(store, f"r{n}@example.org") for n in range(5)}
    record(feedback, first, ids[0], "hard_bounce", "h1")
    record(feedback, first, ids[0], "hard_bounce", "h2")  # the same reader twice: one
    record(feedback, first, ids[1], "soft_bounce", "s1")
    record(feedback, first, ids[2], "complaint", "c1")  # ends their memberships: a complaint, not an unsubscribe
    default = int(store.find_list("default") or 0)
    assert store.leave_list(ids[3], default)  # the web's unsubscribe, after the first issue
    with store.transaction() as cursor:
        cursor.execute("UPDATE memberships SET updated_at = '2026-01-02T00:00:00+00:00'"
                       " WHERE status = 'unsubscribed'")
    counts = feedback.issue_feedback(first)
    assert counts == {"sent": 5, "hard_bounces": 1, "soft_bounces": 1, "complaints": 1, "unsubscribes": 1}
    # The next issue on the list: who leaves after it reached them counts for it, not the first.
    with store.transaction() as cursor:
        cursor.execute("UPDATE issues SET completed_at = 'x'")
    second = issue(store, "second")
    mark_sent(store, second, "2026-01-08T10:00:00+00:00")
    assert store.leave_list(ids[4], default)
    with store.transaction() as cursor:
        cursor.execute("UPDATE memberships SET updated_at = '2026-01-09T00:00:00+00:00'"
                       " WHERE subscriber_id = ?", (ids[4],))
    assert feedback.issue_feedback(first)["unsubscribes"] == 1
    assert feedback.issue_feedback(second) == {"sent": 2, "hard_bounces": 0, "soft_bounces": 0, "complaints": 0,
                                               "unsubscribes": 1}
    # A mail unsubscribe recorded for the first issue counts there, once with the membership it ended.
    record(feedback, first, ids[1], "unsubscribe", "u1")
    assert feedback.issue_feedback(first)["unsubscribes"] == 2
    # A web unsubscribe from another list doesn't count for this one.
    assert feedback.issue_feedback(first)["sent"] == 5


def test_rates_and_warnings_at_the_thresholds() -> None:
    base = {"sent": 1000, "hard_bounces": 19, "soft_bounces": 5, "complaints": 0, "unsubscribes": 3}
    assert feedback_rates(base) == {"hard_bounces": 0.019, "soft_bounces": 0.005, "complaints": 0.0,
                                    "unsubscribes": 0.003}
    assert feedback_warnings(base) == []
    complaints = feedback_warnings({**base, "complaints": 1})  # 0.1 %: Gmail's and Yahoo's line
    assert len(complaints) == 1 and complaints[0].startswith("complaints are 0.10% of sent")
    assert "Gmail" in complaints[0] and "0.3 %" in complaints[0]
    hard = feedback_warnings({**base, "hard_bounces": 20})  # 2 %
    assert len(hard) == 1 and hard[0].startswith("hard bounces are 2.00% of sent")
    assert len(feedback_warnings({**base, "hard_bounces": 20, "complaints": 1})) == 2
    assert feedback_warnings({"sent": 0, "hard_bounces": 0, "soft_bounces": 0, "complaints": 0,
                              "unsubscribes": 0}) == []
    assert feedback_rates({"sent": 0})["complaints"] == 0.0
