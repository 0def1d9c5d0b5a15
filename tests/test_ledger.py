"""The ledger on its own: claims, the sending mark, and what a group commit may grant."""

from __future__ import annotations

import time
from pathlib import Path

from newsletter.ledger import Ledger, Result
from newsletter.store import Store, SubscriberRow


def open_ledger(tmp_path: Path, count: int = 5) -> tuple[Ledger, int, int]:
    store = Store.open(tmp_path / "ledger.db")
    store.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(count)], list_name="default")
    ledger = Ledger(store)
    record = ledger.open_issue(slug="s", list_name="default", subject="S", content_hash="h", domain="example.com")
    return ledger, record.id, record.list_id


def test_a_run_does_not_claim_what_it_already_holds(tmp_path: Path) -> None:
    ledger, issue_id, _ = open_ledger(tmp_path)
    run_id, lock = ledger.start_run()
    now = time.time()
    assert len(ledger.claim(issue_id, run_id, now=now, limit=3, lease=600)) == 3
    assert len(ledger.claim(issue_id, run_id, now=now, limit=10, lease=600)) == 2  # only the other two
    assert ledger.claim(issue_id, run_id, now=now, limit=10, lease=600) == []
    other, other_lock = ledger.start_run()
    assert ledger.claim(issue_id, other, now=now, limit=10, lease=600) == []  # all held by a live run
    ledger.finish_run(run_id, lock)
    assert len(ledger.claim(issue_id, other, now=now, limit=10, lease=600)) == 5  # released at its end
    ledger.finish_run(other, other_lock)


def test_the_same_row_twice_in_one_group_is_granted_once(tmp_path: Path) -> None:
    ledger, issue_id, list_id = open_ledger(tmp_path, 2)
    run_id, lock = ledger.start_run()
    first, second = ledger.claim(issue_id, run_id, now=time.time(), limit=2, lease=600)
    assert ledger.record(run_id, list_id, [], [first, second, first], now=time.time()) == [True, True, False]
    assert ledger.record(run_id, list_id, [], [first], now=time.time()) == [False]  # already sending
    done = [Result(issue_id, first.subscriber_id, "sent", 250), Result(issue_id, second.subscriber_id, "sent", 250)]
    assert ledger.record(run_id, list_id, done, [first], now=time.time()) == [False]  # sent: never again
    assert ledger.counts(issue_id)["sent"] == 2
    ledger.finish_run(run_id, lock)


def test_a_deferred_row_comes_back_to_any_run_when_due(tmp_path: Path) -> None:
    ledger, issue_id, list_id = open_ledger(tmp_path, 1)
    run_id, lock = ledger.start_run()
    now = time.time()
    (delivery,) = ledger.claim(issue_id, run_id, now=now, limit=1, lease=600)
    assert ledger.record(run_id, list_id, [], [delivery], now=now) == [True]
    deferred = Result(issue_id, delivery.subscriber_id, "deferred", 451, "greylisted", next_attempt_at=now + 5)
    ledger.record(run_id, list_id, [deferred], [], now=now)
    assert ledger.claim(issue_id, run_id, now=now, limit=1, lease=600) == []  # not due yet
    (again,) = ledger.claim(issue_id, run_id, now=now + 6, limit=1, lease=600)
    assert again.attempts == 1 and again.first_attempt_at is not None
    ledger.finish_run(run_id, lock)


def test_an_unsubscribed_row_is_skipped_not_granted(tmp_path: Path) -> None:
    ledger, issue_id, list_id = open_ledger(tmp_path, 2)
    run_id, lock = ledger.start_run()
    first, second = ledger.claim(issue_id, run_id, now=time.time(), limit=2, lease=600)
    ledger.store.unsubscribe("r0@example.org")
    assert ledger.record(run_id, list_id, [], [first, second], now=time.time()) == [False, True]
    assert ledger.counts(issue_id)["skipped"] == 1
    ledger.finish_run(run_id, lock)
