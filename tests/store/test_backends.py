"""The store and the ledger, one contract for both backends: every test here runs on an SQLite
file and on a real PostgreSQL server (Debian's, started by :mod:`tests.harness.pgserver` on a private
port, one fresh database per test)."""

from __future__ import annotations

import json
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
from newsletter.store.ledger import Ledger, Result
from newsletter.store.sqlite import MIGRATIONS
from newsletter.store.subscribers import Store, SubscriberRow
from tests.conftest import ROOT

pytest_plugins = ["tests.harness.pgserver"]


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


def test_many_new_sqlite_files_each_opened_by_four_threads_at_once(tmp_path: Path) -> None:
    """SQLite answered the switch to WAL "database is locked" at once, without waiting, while another
    connection was switching the same new file: about one new database in forty failed to open."""
    errors: list[BaseException] = []

    def open_it(database: Path) -> None:
        try:
            Store.open(database).close()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    for number in range(100):
        database = tmp_path / f"new-{number}.db"
        threads = [threading.Thread(target=open_it, args=(database,)) for _ in range(4)]
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
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store
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


# --- subscribers at scale: the plans of export, list and import, and their output ---------------


def _index_only(store: Store) -> None:
    """On PostgreSQL, turn sequential scans off for this session: with a few rows a scan is cheaper and the
    planner rightly takes it, so a plan shows an index only if one can serve (without one the Seq Scan stays)."""
    if store.dialect.name == "postgresql":
        store.connection.execute("SET enable_seqscan = off")


def _subquery_scans(store: Store, plan: str) -> list[str]:
    """The lines of ``plan`` that read every row of memberships or subscribers inside a correlated subquery."""
    if store.dialect.name == "postgresql":
        inside = plan.split("SubPlan", 1)[1] if "SubPlan" in plan else ""
        return [line for line in plan.splitlines() if "Seq Scan on memberships" in line] + \
            [line for line in inside.splitlines() if "Seq Scan on subscribers" in line]
    lines = plan.splitlines()
    return [line for line in lines if line.strip().startswith(("SCAN m", "SCAN memberships"))] + \
        [line for line in lines if line.startswith("  ") and line.strip().startswith(("SCAN s", "SCAN subscribers"))]


def test_export_and_list_find_each_subscriber_s_lists_by_index(database: str | Path) -> None:
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow(f"r{n}@example.org", fields={"city": "Leeds"}) for n in range(20)],
                                 list_name="default")
        list_id = store.find_list("default")
        _index_only(store)
        statements = {
            "export": store.subscriber_select(),
            "export --list": store.subscriber_select(list_id=list_id),
            "list --status": store.subscriber_select(status="active"),
            "export's merge fields": store.field_names_select(list_id=list_id),
        }
        for name, (sql, params) in statements.items():
            plan = store.explain(sql, params)
            assert _subquery_scans(store, plan) == [], f"{name}:\n{plan}"
        plan = store.explain(*statements["export"])
        # Each subscriber's lists: a search of memberships_subscriber, not a scan per row.
        assert "memberships_subscriber" in plan, plan
        if store.dialect.name == "sqlite":
            assert "SEARCH m USING COVERING INDEX memberships_subscriber (subscriber_id=? AND status=?)" in plan


def test_an_import_s_lookups_are_index_searches(database: str | Path) -> None:
    from newsletter.store.postgres import INDEX_LOOKUPS_ONLY

    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(20)], list_name="default")
        list_id = store.find_list("default")
        if store.dialect.name == "postgresql":  # as the import's transaction has them
            for setting in INDEX_LOOKUPS_ONLY:
                store.connection.execute(f"SET {setting} = off")
        for lookups, key in ((store.dialect.subscribers_by_key(["r1@example.org", "r2@example.org"]), "email_key"),
                             (store.dialect.memberships_on_list(list_id, [1, 2]), "subscriber_id")):
            ((sql, params),) = list(lookups)
            plan = store.explain(sql, params)
            if store.dialect.name == "postgresql":  # one index search per value of the chunk, by the key itself
                assert "Seq Scan" not in plan and "Materialize" not in plan and "Join Filter" not in plan, plan
                assert any(line.strip().startswith("Index Cond:") and f"{key} = k." in line
                           for line in plan.splitlines()), plan
            else:
                assert plan.startswith("SEARCH") and f"{key}=?" in plan and "SCAN" not in plan, plan


#: what export and list printed before they streamed (made by the code of a41ad17 from the data below)
_OUTPUT = json.loads((ROOT / "tests" / "fixtures" / "subscribers-output.json").read_text(encoding="utf-8"))


def _people(store: Store) -> None:
    store.upsert_subscribers([SubscriberRow("Ann@Example.org", "Ann, Reader", {"city": "Leeds"}),
                              SubscriberRow("bob@example.org", "=cmd", {"team": "+maths", "city": "Zoë"}),
                              SubscriberRow("dan@example.org", "Dan", {"note": "-1"}),
                              SubscriberRow("eve@example.org", "")], list_name="default")
    store.upsert_subscribers([SubscriberRow("bob@example.org"), SubscriberRow("carol@example.org", 'Carol "C"'),
                              SubscriberRow("eve@example.org")], list_name="morning")
    store.unsubscribe("carol@example.org", list_name="morning")
    store.unsubscribe("eve@example.org", list_name="default")
    (dan,) = store.subscribers(emails=["dan@example.org"])
    store.mark_bounced(dan.id)


def _cli(database: str | Path, folder: Path, *args: str) -> tuple[int, str, str]:
    """``newsletter ARGS`` on ``database``: exit code, standard output exactly as written, standard error."""
    from click.testing import CliRunner

    from newsletter.cli.commands import main

    config = folder / "newsletter.toml"
    if isinstance(database, Path):
        config.write_text(f'[database]\npath = "{database}"\n', encoding="utf-8")
        env = {"NEWSLETTER_DATABASE_URL": ""}
    else:
        config.write_text("", encoding="utf-8")
        env = {"NEWSLETTER_DATABASE_URL": database}
    result = CliRunner(env=env).invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout_bytes.decode("utf-8"), result.stderr


@pytest.mark.parametrize("command", sorted(_OUTPUT))
def test_export_and_list_print_what_they_printed_before_they_streamed(database: str | Path, command: str,
                                                                    tmp_path: Path) -> None:
    with Store.open(database) as store:
        _people(store)
    code, out, err = _cli(database, tmp_path, "subscribers", *command.split())
    assert (code, err) == (0, "")
    assert out == _OUTPUT[command]


def test_an_import_in_many_chunks_is_the_import_in_one(database: str | Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same address in different chunks (and scratch batches): the later row wins in the earlier's place."""
    from newsletter.store import subscribers as store_module
    from newsletter.store.subscriber_files import UniqueRows

    rows = "".join(f"r{n % 7}@example.org,Reader {n},{'x' * (n % 3)}\n" for n in range(30))
    csv_path = tmp_path / "readers.csv"
    csv_path.write_text("email,name,note\nkept@example.org,Kept,\n" + rows + "gone@example.org,Gone,\n",
                        encoding="utf-8")

    def imported(chunk: int) -> tuple[str, str]:
        with Store.open(database) as store:
            store.connection.execute("DELETE FROM memberships")
            store.connection.execute("DELETE FROM subscribers")
            store.upsert_subscribers([SubscriberRow("gone@example.org", "Gone", {"city": "Leeds"})], list_name="x")
            store.unsubscribe("gone@example.org")
        monkeypatch.setattr(store_module, "IMPORT_CHUNK", chunk)
        monkeypatch.setattr(UniqueRows, "BATCH", chunk)
        code, out, _ = _cli(database, tmp_path, "subscribers", "import", str(csv_path), "--list", "news")
        assert code == 0
        return out, _cli(database, tmp_path, "subscribers", "export", "--format", "json")[1]

    one = imported(1000)
    assert one[0].startswith("8 added, 1 updated (1 stay unsubscribed or bounced)")
    assert imported(2) == imported(3) == one
    people = json.loads(one[1])
    assert [person["email"] for person in people][1:] == ["kept@example.org"] + [f"r{n}@example.org" for n in range(7)]
    assert people[2]["name"] == "Reader 28"  # r0's last row, in r0's first place
    assert people[0]["lists"] == [] and people[0]["fields"] == {"city": "Leeds", "note": ""}  # gone: kept out


# --- removals, re-subscribing, and what the archive reads ---------------------------------------


def _lists(store: Store, email: str) -> tuple[str, ...]:
    (person,) = store.subscribers(emails=[email])
    return person.lists


def test_a_removal_from_everything_ends_every_list_and_resubscribing_brings_back_one(database: str | Path) -> None:
    with Store.open(database) as store:
        for name in ("news", "offers", "events"):
            store.upsert_subscribers([SubscriberRow("ann@example.org", "Ann")], list_name=name)
        (ann,) = store.subscribers()
        news, offers = store.find_list("news"), store.find_list("offers")
        assert news is not None and offers is not None
        assert store.unsubscribe("ann@example.org")  # `subscribers remove ann@example.org`
        assert _lists(store, "ann@example.org") == ()
        assert store.count(list_name="offers") == {"active": 0, "unsubscribed": 1, "bounced": 0}
        # An import onto a list she was never on doesn't put her there either, now or later.
        assert store.upsert_subscribers([SubscriberRow("ann@example.org")], list_name="later").kept_out == 1
        assert store.rejoin_list(ann.id, news)  # her own "subscribe again" on the news page
        assert _lists(store, "ann@example.org") == ("news",)  # that list, and only that one
        assert store.membership(ann.id, offers) == ("ann@example.org", "offers", False)
        assert [person.email for person in store.subscribers(list_name="later")] == []
        assert store.rejoin(ann.id, news) == "unchanged"
        assert store.rejoin(ann.id, 999) == "unknown"


def test_a_bounced_address_is_not_revived_by_resubscribing(database: str | Path) -> None:
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow("bob@example.org")], list_name="news")
        (bob,) = store.subscribers()
        news = store.find_list("news")
        assert news is not None
        assert store.leave_list(bob.id, news)
        store.mark_bounced(bob.id)
        assert not store.rejoin_list(bob.id, news)
        assert _lists(store, "bob@example.org") == ()  # nothing changed: not even the membership
        state = store.membership_state(bob.id, news)
        assert state is not None and state.suppressed and not state.receives and state.status == "unsubscribed"
        assert store.rejoin(bob.id, news) == "suppressed"


def _at_version_4(database: str | Path) -> None:
    """The database as newsletter made it before migration 5 (its first four migrations, as they shipped)."""
    from newsletter.store.engine import _statements
    from newsletter.store.postgres import MIGRATIONS as PG_MIGRATIONS

    if isinstance(database, Path):
        import sqlite3

        connection = sqlite3.connect(database, isolation_level=None)
        for migration in MIGRATIONS[:4]:
            for statement in _statements(migration):
                connection.execute(statement)
        connection.execute("PRAGMA user_version = 4")
        connection.close()
        return
    with psycopg.connect(database, autocommit=True) as pg:
        for migration in PG_MIGRATIONS[:4]:
            for statement in _statements(migration):
                pg.execute(statement.encode())
        pg.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        pg.execute("INSERT INTO schema_version (version) VALUES (4)")


def test_migrations_5_and_6_bring_old_removals_and_sent_issues_up_to_date(database: str | Path) -> None:
    _at_version_4(database)
    rows = [
        "INSERT INTO lists (id, name) VALUES (1, 'news'), (2, 'offers')",
        "INSERT INTO subscribers (id, email, email_key, status, created_at, updated_at) VALUES"
        " (1, 'ann@example.org', 'ann@example.org', 'unsubscribed', 't', 't'),"
        " (2, 'bob@example.org', 'bob@example.org', 'active', 't', 't')",
        "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at) VALUES"
        " (1, 1, 'active', 't', 't'), (2, 1, 'active', 't', 't'), (1, 2, 'active', 't', 't')",
        "INSERT INTO issues (id, slug, list_name, subject, content_hash, created_at) VALUES"
        " (1, 'sent', 'news', 'S', 'h', 't'), (2, 'unsent', 'news', 'U', 'h', 't')",
        "INSERT INTO deliveries (issue_id, subscriber_id, status, message_id, created_at, updated_at, sent_at) VALUES"
        " (1, 1, 'sent', 'a', 't', 't', '2024-01-02T06:00:05+00:00'),"
        " (1, 2, 'sent', 'b', 't', 't', '2024-01-02T06:00:03+00:00'),"
        " (2, 2, 'failed', 'c', 't', 't', NULL)",
    ]
    if isinstance(database, Path):
        import sqlite3

        connection = sqlite3.connect(database, isolation_level=None)
        for statement in rows:
            connection.execute(statement)
        connection.close()
    else:
        with psycopg.connect(database, autocommit=True) as pg:
            for statement in rows:
                pg.execute(statement.encode())
    with Store.open(database) as store:
        assert store.schema_version == len(MIGRATIONS) == 10
        # Ann, removed from everything before removals ended memberships: now on no list.
        assert _lists(store, "ann@example.org") == () and _lists(store, "bob@example.org") == ("news",)
        assert [tuple(row) for row in store.query("SELECT slug, first_sent_at FROM issues ORDER BY id")] == [
            ("sent", "2024-01-02T06:00:03+00:00"), ("unsent", None)]


def test_the_ledger_keeps_when_an_issue_first_went_out(database: str | Path, open_ledger: OpenLedger) -> None:
    from newsletter.web import archive

    ledger, issue_id, list_id = open_ledger(database, 3)
    assert archive.sent_issues(database) == [] and archive.sent_issue(database, "s") is None
    run_id, lock = ledger.start_run()
    first, second, third = ledger.claim(issue_id, run_id, now=time.time(), limit=3, lease=600)
    assert ledger.record(run_id, list_id, [], [first, second, third], now=1_700_000_100) == [True] * 3
    ledger.record(run_id, list_id, [Result(issue_id, first.subscriber_id, "deferred", 451, "busy")], [],
                  now=1_700_000_050)
    assert archive.sent_issue(database, "s") is None  # nothing went out yet
    ledger.record(run_id, list_id, [Result(issue_id, second.subscriber_id, "sent", 250)], [], now=1_700_000_200)
    with Store.open(database) as store:  # another process, whose clock said earlier
        Ledger(store).record(run_id, list_id, [Result(issue_id, third.subscriber_id, "sent", 250)], [],
                             now=1_700_000_150)
    ledger.record(run_id, list_id, [], [], now=1_700_000_300)
    entry = archive.sent_issue(database, "s")
    assert entry is not None and entry.first_sent == "2023-11-14T22:15:50+00:00"  # the earliest, 1_700_000_150
    assert archive.sent_issues(database) == [entry]
    assert archive.sent_issue(database, "nope") is None
    ledger.finish_run(run_id, lock)


def test_the_archive_reads_one_row_per_issue_and_finds_a_slug_by_index(database: str | Path,
                                                                       open_ledger: OpenLedger) -> None:
    from newsletter.web import archive

    ledger, _, _ = open_ledger(database, 2)
    store = ledger.store
    _index_only(store)
    index = store.explain(archive.INDEX_SQL)
    assert "deliveries" not in index, index  # no page reads the deliveries
    slug = store.explain(archive.SLUG_SQL, ("nope",))
    if store.dialect.name == "postgresql":
        assert "Index Scan using issues_slug_key on issues" in slug and "Seq Scan" not in slug, slug
    else:
        assert slug == "SEARCH issues USING INDEX sqlite_autoindex_issues_1 (slug=?)", slug


def test_the_feed_reads_the_issues_alone(database: str | Path, open_ledger: OpenLedger) -> None:
    """The Atom feed's one query reads one row per issue, as the archive index does: never the deliveries,
    so a million of them cost it nothing."""
    from newsletter.web import feed

    ledger, _, _ = open_ledger(database, 2)
    store = ledger.store
    _index_only(store)
    plan = store.explain(feed.FEED_SQL)
    assert "deliveries" not in plan, plan
    assert "issues" in plan, plan
