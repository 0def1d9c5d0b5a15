"""The store and the ledger, one contract for both backends: every test here runs on an SQLite
file and on a real PostgreSQL server (Debian's, started by :mod:`tests.pgserver` on a private
port, one fresh database per test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from newsletter.errors import StoreError
from newsletter.ledger import Ledger, Result
from newsletter.store import MIGRATIONS, Store, SubscriberRow
from tests.conftest import ROOT

pytest_plugins = ["tests.pgserver"]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store goes: an SQLite file, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    return str(request.getfixturevalue("pg_url"))


OpenLedger = Callable[..., tuple[Ledger, int, int]]


@pytest.fixture
def open_ledger() -> Iterator[OpenLedger]:
    """``open_ledger(database, count)``: a ledger over ``count`` subscribers and one issue; closed at the end
    even when the test fails (an open PostgreSQL connection would warn in a later test)."""
    stores: list[Store] = []

    def make(database: str | Path, count: int = 5) -> tuple[Ledger, int, int]:
        store = Store.open(database)
        stores.append(store)
        store.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(count)], list_name="default")
        ledger = Ledger(store)
        record = ledger.open_issue(slug="s", list_name="default", subject="S", content_hash="h", domain="example.com")
        return ledger, record.id, record.list_id

    yield make
    for store in stores:
        store.close()


# --- the store ---------------------------------------------------------------------------


def test_migrations_run_once_and_reopening_changes_nothing(database: str | Path) -> None:
    with Store.open(database) as store:
        assert store.schema_version == len(MIGRATIONS)
    with Store.open(database) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.count() == {"active": 0, "unsubscribed": 0, "bounced": 0}


def test_two_processes_opening_a_new_database_at_once_both_succeed(database: str | Path) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Store.open(database).close()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_upsert_merges_case_insensitively_and_never_reactivates(database: str | Path) -> None:
    with Store.open(database) as store:
        first = store.upsert_subscribers([SubscriberRow("Ada@Example.org", "Ada", {"city": "London"}),
                                          SubscriberRow("grace@example.org", "Grace")], list_name="default")
        assert (first.added, first.updated, first.kept_out) == (2, 0, 0)
        assert store.unsubscribe("grace@example.org", list_name="default")
        again = store.upsert_subscribers([SubscriberRow("ada@example.org", "", {"team": "maths"}),
                                          SubscriberRow("GRACE@example.org", "Grace H.")], list_name="default")
        assert (again.added, again.updated, again.kept_out) == (0, 2, 1)
        people = {person.email: person for person in store.subscribers()}
        assert people["Ada@Example.org"].name == "Ada"  # an empty name keeps the old one
        assert dict(people["Ada@Example.org"].fields) == {"city": "London", "team": "maths"}
        assert store.count(list_name="default") == {"active": 1, "unsubscribed": 1, "bounced": 0}
        assert [person.email for person in store.subscribers(list_name="default")] == ["Ada@Example.org"]
        assert [person.email for person in store.subscribers(emails=["GRACE@EXAMPLE.ORG"])] == ["grace@example.org"]
        assert store.subscribers(emails=[]) == []
        assert store.find_list("default") is not None and store.find_list("nope") is None
        assert store.unsubscribe("nobody@example.org") is False


def test_a_failed_transaction_leaves_nothing(database: str | Path) -> None:
    with Store.open(database) as store:
        with pytest.raises(StoreError), store.transaction() as cursor:
            cursor.execute("INSERT INTO lists (name) VALUES (?)", ("half",))
            cursor.execute("INSERT INTO lists (name) VALUES (?)", ("half",))  # UNIQUE: the whole transaction fails
        assert store.find_list("half") is None
        store.upsert_subscribers([SubscriberRow("a@example.org")], list_name="after")  # the store still works
        assert store.find_list("after") is not None


def test_someone_elses_database_is_refused_and_left_alone(database: str | Path) -> None:
    if isinstance(database, Path):
        import sqlite3

        connection = sqlite3.connect(database)
        connection.execute("CREATE TABLE accounts (id INTEGER)")
        connection.commit()
        connection.close()
    else:
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreError, match="not newsletter's"):
        Store.open(database)


# --- the ledger ----------------------------------------------------------------------------


def test_a_run_does_not_claim_what_it_already_holds(database: str | Path, open_ledger: OpenLedger) -> None:
    ledger, issue_id, _ = open_ledger(database)
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


def test_the_same_row_twice_in_one_group_is_granted_once(database: str | Path, open_ledger: OpenLedger) -> None:
    ledger, issue_id, list_id = open_ledger(database, 2)
    run_id, lock = ledger.start_run()
    first, second = ledger.claim(issue_id, run_id, now=time.time(), limit=2, lease=600)
    assert ledger.record(run_id, list_id, [], [first, second, first], now=time.time()) == [True, True, False]
    assert ledger.record(run_id, list_id, [], [first], now=time.time()) == [False]  # already sending
    done = [Result(issue_id, first.subscriber_id, "sent", 250), Result(issue_id, second.subscriber_id, "sent", 250)]
    assert ledger.record(run_id, list_id, done, [first], now=time.time()) == [False]  # sent: never again
    assert ledger.counts(issue_id)["sent"] == 2
    ledger.finish_run(run_id, lock)


def test_a_deferred_row_comes_back_to_any_run_when_due(database: str | Path, open_ledger: OpenLedger) -> None:
    ledger, issue_id, list_id = open_ledger(database, 1)
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


def test_an_unsubscribed_row_is_skipped_not_granted(database: str | Path, open_ledger: OpenLedger) -> None:
    ledger, issue_id, list_id = open_ledger(database, 2)
    run_id, lock = ledger.start_run()
    first, second = sorted(ledger.claim(issue_id, run_id, now=time.time(), limit=2, lease=600),
                           key=lambda delivery: delivery.email)  # claims come in due order, ties any way
    ledger.store.unsubscribe("r0@example.org")
    assert ledger.record(run_id, list_id, [], [first, second], now=time.time()) == [False, True]
    assert ledger.counts(issue_id)["skipped"] == 1
    ledger.finish_run(run_id, lock)


def test_two_workers_claiming_at_once_get_disjoint_rows(database: str | Path, open_ledger: OpenLedger) -> None:
    ledger, issue_id, _ = open_ledger(database, 40)
    claims: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work() -> None:  # a worker of its own: its own connection, its own run
        try:
            with Store.open(database) as store:
                mine = Ledger(store)
                run_id, lock = mine.start_run()
                start.wait(10)
                rows: list[int] = []
                while batch := mine.claim(issue_id, run_id, now=time.time(), limit=3, lease=600):
                    rows += [delivery.subscriber_id for delivery in batch]
                claims[run_id] = rows
                start.wait(10)  # neither run ends (releasing its claims) before both have claimed all
                mine.finish_run(run_id, lock)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    first, second = claims.values()
    assert not set(first) & set(second)
    assert len(first) + len(second) == len(set(first + second)) == 40


# A run in a child process: starts, marks two rows sending, says so, then waits to be killed.
CHILD = """\
import sys, time
from newsletter.ledger import Ledger
from newsletter.store import Store
ledger = Ledger(Store.open(sys.argv[1]))
issue = ledger.find_issue("s")
run_id, lock = ledger.start_run()
rows = ledger.claim(issue.id, run_id, now=time.time(), limit=2, lease=600)
ledger.record(run_id, issue.list_id, [], rows, now=time.time())
print(run_id, flush=True)
time.sleep(600)
"""


def test_a_killed_worker_is_dead_at_once_and_its_sending_rows_become_uncertain(database: str | Path,
                                                                                open_ledger: OpenLedger) -> None:
    ledger, issue_id, _ = open_ledger(database, 5)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(database)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert child.stdout is not None
        run_id = int(child.stdout.readline())
        assert ledger.run_is_alive(run_id)
        assert [worker.run_id for worker in ledger.workers()] == [run_id]
        assert ledger.recover(issue_id) == 0  # alive: its rows are its own
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        deadline = time.monotonic() + 30
        while ledger.run_is_alive(run_id):  # PostgreSQL notices the closed connection within moments
            assert time.monotonic() < deadline, "the dead run still looks alive"
            time.sleep(0.02)
        assert ledger.workers() == []
        assert ledger.recover(issue_id) == 2
        counts = ledger.counts(issue_id)
        assert (counts["uncertain"], counts["pending"]) == (2, 3)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_sending_slots_are_shared_by_every_process(database: str | Path) -> None:
    with Store.open(database) as first_store, Store.open(database) as second_store:
        first, second = Ledger(first_store), Ledger(second_store)
        interval = 0.01
        windows = sorted([first.reserve_sends(5, interval), second.reserve_sends(5, interval),
                          first.reserve_sends(5, interval)])
    # Three windows of five slots, back to back: never two processes on the same slot. (On
    # PostgreSQL the server's clock is converted to ours on each call: a little jitter.)
    assert windows[1] - windows[0] == pytest.approx(5 * interval, abs=2e-3)
    assert windows[2] - windows[1] == pytest.approx(5 * interval, abs=2e-3)


def test_the_same_address_twice_in_one_import_merges_like_two_imports(database: str | Path) -> None:
    with Store.open(database) as store:
        counts = store.upsert_subscribers([SubscriberRow("Ada@example.org", "Ada", {"a": "1"}),
                                           SubscriberRow("ada@EXAMPLE.org", "Ada L.", {"b": "2"}),
                                           SubscriberRow("bob@example.org", "")], list_name="news")
        assert (counts.added, counts.updated, counts.kept_out) == (2, 1, 0)
        (ada,) = store.subscribers(emails=["ada@example.org"])
        assert (ada.email, ada.name, dict(ada.fields), ada.lists) == ("Ada@example.org", "Ada L.",
                                                                      {"a": "1", "b": "2"}, ("news",))
        assert store.count(list_name="news") == {"active": 2, "unsubscribed": 0, "bounced": 0}


def test_leaving_and_rejoining_one_list_by_ids(database: str | Path) -> None:
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow("ann@example.org", "Ann")], list_name="news")
        store.upsert_subscribers([SubscriberRow("ann@example.org")], list_name="other")
        (ann,) = store.subscribers()
        news = store.find_list("news")
        assert news is not None
        assert store.membership(ann.id, news) == ("ann@example.org", "news", True)
        assert store.leave_list(ann.id, news) and not store.leave_list(ann.id, news)  # once
        assert store.membership(ann.id, news) == ("ann@example.org", "news", False)
        assert store.subscribers(list_name="other")[0].email == "ann@example.org"  # other lists untouched
        store.unsubscribe("ann@example.org")  # from everything, meanwhile
        assert store.rejoin_list(ann.id, news) and not store.rejoin_list(ann.id, news)
        assert store.membership(ann.id, news) == ("ann@example.org", "news", True)
        store.mark_bounced(ann.id)
        store.rejoin_list(ann.id, news)
        assert store.membership(ann.id, news) == ("ann@example.org", "news", False)  # bounced stays bounced
        assert store.membership(ann.id, 999) is None
