"""Signups with double opt-in, the store side (issue 16 items 2 and 4): every test runs on an SQLite file and on
a real PostgreSQL server (tests/harness/pgserver.py). A thousand signups for one victim queue one confirmation;
the limits hold across two separate connections; confirming is idempotent and expires; the outbox claims each
email once (again only after a crashed sender's lease); purge drops what nobody confirmed and nothing else."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.config import SignupSettings
from newsletter.store import signups as signups_module
from newsletter.store.consent import Consents
from newsletter.store.ledger import Ledger
from newsletter.store.rights import DataRights, forget_hash
from newsletter.store.signups import (
    ConfirmationView,
    ConfirmResult,
    OutgoingMail,
    PurgeCounts,
    SignupOutcome,
    SignupRequest,
    Signups,
)
from newsletter.store.subscribers import Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

KEY = b"k" * 32
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
#: no limits: tests of other things don't trip over them
OPEN = SignupSettings(per_network_per_hour=0, per_hour=0)


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    """Old Reader (old@example.org) active on 'default'."""
    with Store.open(database) as opened:
        opened.upsert_subscribers([SubscriberRow("old@example.org", "Old Reader")], list_name="default")
        yield opened


def signup(email: str = "new@example.org", *lists: str, name: str = "", ip: str | None = "203.0.113.7",
           method: str = "form") -> SignupRequest:
    return SignupRequest(email, lists or ("default",), method, name=name, source="https://example.org/join",  # type: ignore[arg-type]
                         ip=ip)


def sid(store: Store, email: str) -> int:
    return int(store.query("SELECT id FROM subscribers WHERE email_key = ?", (email,))[0][0])


def memberships(store: Store, email: str) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in store.query(
        "SELECT l.name, m.status FROM memberships m JOIN lists l ON l.id = m.list_id JOIN subscribers s"
        " ON s.id = m.subscriber_id WHERE s.email_key = ?", (email,))}


def count(store: Store, table: str) -> int:
    return int(store.query(f"SELECT count(*) FROM {table}")[0][0])


def recipients(store: Store, slug: str) -> set[str]:
    issue_id = Ledger(store).open_issue(slug=slug, list_name="default", subject=slug, content_hash="h",
                                        domain="news.example.com").id
    return {str(row[0]) for row in store.query(
        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id WHERE d.issue_id = ?",
        (issue_id,))}


# --- the schema ------------------------------------------------------------------------------


def test_migration_10_adds_the_signup_tables(store: Store) -> None:
    assert store.schema_version == 10
    for table in ("confirmations", "welcomes", "signup_counters"):
        assert count(store, table) == 0
    assert store.query("SELECT confirmation_id FROM consents") == []


# --- signing up ------------------------------------------------------------------------------


def test_a_new_signup_is_pending_with_a_consent_and_a_queued_confirmation(store: Store) -> None:
    outcome = Signups(store, OPEN).request(signup(name="Nia"), now=T0)
    assert outcome.status == "queued" and outcome.confirmation_id is not None
    assert memberships(store, "new@example.org") == {"default": "pending"}
    row = store.query("SELECT s.name, s.status, c.status, c.created_at, c.expires_at, c.confirmed_at"
                      " FROM confirmations c JOIN subscribers s ON s.id = c.subscriber_id WHERE c.id = ?",
                      (outcome.confirmation_id,))[0]
    assert tuple(row) == ("Nia", "active", "queued", "2026-03-01T10:00:00+00:00", "2026-03-08T23:59:59+00:00", None)
    consent = store.query("SELECT method, source, ip_prefix, requested_at, confirmation_id FROM consents")
    assert [tuple(r) for r in consent] == [("form", "https://example.org/join", "203.0.113.0/24",
                                            "2026-03-01T10:00:00+00:00", outcome.confirmation_id)]
    assert "203.0.113.7" not in repr(store.query("SELECT * FROM signup_counters"))
    assert recipients(store, "issue-1") == {"old@example.org"}  # pending is never mailed


def test_a_thousand_signups_for_one_victim_queue_one_confirmation(store: Store) -> None:
    signups = Signups(store, OPEN)
    outcomes = [signups.request(signup("victim@example.org", ip=f"198.51.{n % 200}.{n % 250}"),
                                now=T0 + dt.timedelta(seconds=n)) for n in range(1000)]
    assert outcomes[0].status == "queued"
    assert {o.status for o in outcomes[1:]} == {"joined"}
    assert {o.confirmation_id for o in outcomes} == {outcomes[0].confirmation_id}
    assert count(store, "confirmations") == 1
    assert count(store, "consents") == 1  # one per list, not one per request
    assert len(signups.claim_mail(now=T0 + dt.timedelta(hours=1))) == 1


def test_a_signup_within_the_period_rides_on_the_confirmation_and_after_it_gets_a_new_one(store: Store) -> None:
    signups = Signups(store, OPEN)
    first = signups.request(signup("new@example.org", "default"), now=T0)
    second = signups.request(signup("new@example.org", "other"), now=T0 + dt.timedelta(hours=23))
    assert second == SignupOutcome("joined", first.confirmation_id)
    assert first.confirmation_id is not None
    view = signups.confirmation(first.confirmation_id, now=T0)
    assert view == ConfirmationView("new@example.org", ("default", "other"), confirmed=False, expired=False)
    third = signups.request(signup("new@example.org", "default"), now=T0 + dt.timedelta(hours=24, seconds=1))
    assert third.status == "queued" and third.confirmation_id != first.confirmation_id


def test_someone_active_on_every_list_or_suppressed_gets_nothing(store: Store) -> None:
    signups = Signups(store, OPEN)
    assert signups.request(signup("old@example.org"), now=T0) == SignupOutcome("nothing")
    assert signups.request(signup("OLD@example.org"), now=T0) == SignupOutcome("nothing")
    store.mark_bounced(sid(store, "old@example.org"))
    assert signups.request(signup("old@example.org", "default", "other"), now=T0) == SignupOutcome("nothing")
    assert count(store, "confirmations") == 0 and memberships(store, "old@example.org") == {"default": "active"}
    # Active, asking for one more list: a confirmation for that one only.
    store.upsert_subscribers([SubscriberRow("ann@example.org")], list_name="default")
    outcome = signups.request(signup("ann@example.org", "default", "other"), now=T0)
    assert outcome.status == "queued"
    assert memberships(store, "ann@example.org") == {"default": "active", "other": "pending"}


def test_a_signup_never_renames_anyone(store: Store) -> None:
    Signups(store, OPEN).request(signup("old@example.org", "other", name="Mallory"), now=T0)
    assert store.query("SELECT name FROM subscribers WHERE email_key = 'old@example.org'")[0][0] == "Old Reader"


def test_the_source_loses_control_characters_and_an_ip_that_isnt_one_is_not_kept(store: Store) -> None:
    request = dataclasses.replace(signup(ip="testclient"), source="https://x.example/\x1b[31m" + "y" * 600)
    Signups(store, SignupSettings()).request(request, now=T0)
    source, prefix = store.query("SELECT source, ip_prefix FROM consents")[0]
    assert "\x1b" not in source and len(source) == 500 and prefix is None


def test_bad_requests_are_refused_before_anything_is_stored(store: Store) -> None:
    with pytest.raises(ValueError):
        Signups(store, OPEN).request(SignupRequest("x@example.org", (), "form"))
    with pytest.raises(ValueError):
        Signups(store, OPEN).request(SignupRequest("x@example.org", ("default",), "import"))  # type: ignore[arg-type]
    assert count(store, "confirmations") == 0


# --- limits ------------------------------------------------------------------------------------


def test_limits_hold_across_two_connections(database: str | Path) -> None:
    settings = SignupSettings(per_network_per_hour=3, per_hour=5)
    with Store.open(database) as one, Store.open(database) as two:
        a, b = Signups(one, settings), Signups(two, settings)
        # Three from one network, alternating connections; the fourth is limited.
        results = [(a, b)[n % 2].request(signup(f"r{n}@example.org", ip=f"203.0.113.{n}"), now=T0 + dt.timedelta(
            minutes=n)) for n in range(4)]
        assert [r.status for r in results] == ["queued", "queued", "queued", "limited"]
        # Others' networks until the hour's five, then nobody.
        more = [(b, a)[n % 2].request(signup(f"s{n}@example.org", ip=f"198.51.{n}.1"), now=T0 + dt.timedelta(
            minutes=10 + n)) for n in range(3)]
        assert [r.status for r in more] == ["queued", "queued", "limited"]
        assert a.request(signup("t@example.org", ip="192.0.2.1"), now=T0 + dt.timedelta(minutes=20)).status == "limited"
        # A limited signup stores nothing.
        assert count(one, "subscribers") == 5 and count(two, "confirmations") == 5
        assert not one.query("SELECT 1 FROM subscribers WHERE email_key IN ('r3@example.org', 's2@example.org')")
        # The next hour counts afresh; an operator's signup (cli) is never limited.
        assert b.request(signup("u@example.org", ip="203.0.113.9"), now=T0 + dt.timedelta(hours=1)).status == "queued"
        assert a.request(signup("v@example.org", ip=None, method="cli"), now=T0 + dt.timedelta(minutes=30)).status \
            == "queued"


# --- confirming --------------------------------------------------------------------------------


def test_confirm_is_idempotent_and_queues_each_welcome_once(store: Store) -> None:
    signups = Signups(store, OPEN)
    outcome = signups.request(signup("new@example.org", "default", "other"), now=T0)
    assert outcome.confirmation_id is not None
    at = T0 + dt.timedelta(hours=2)
    result = signups.confirm(outcome.confirmation_id, now=at, welcome_lists={"default"})
    assert result == ConfirmResult("confirmed", "new@example.org", ("default", "other"))
    assert memberships(store, "new@example.org") == {"default": "active", "other": "active"}
    assert {r[0] for r in store.query("SELECT confirmed_at FROM consents")} == {"2026-03-01T12:00:00+00:00"}
    again = signups.confirm(outcome.confirmation_id, now=at + dt.timedelta(hours=1), welcome_lists={"default"})
    assert again == ConfirmResult("already", "new@example.org", ("default", "other"))
    assert {r[0] for r in store.query("SELECT confirmed_at FROM consents")} == {"2026-03-01T12:00:00+00:00"}
    assert [tuple(r) for r in store.query("SELECT l.name, w.status FROM welcomes w JOIN lists l ON l.id = w.list_id")] \
        == [("default", "queued")]
    view = signups.confirmation(outcome.confirmation_id, now=at)
    assert view is not None and view.confirmed and not view.expired
    assert recipients(store, "issue-1") == {"old@example.org", "new@example.org"}


def test_two_connections_confirming_at_once_confirm_once(database: str | Path) -> None:
    with Store.open(database) as one, Store.open(database) as two:
        outcome = Signups(one, OPEN).request(signup(), now=T0)
        assert outcome.confirmation_id is not None
        results = {Signups(s, OPEN).confirm(outcome.confirmation_id, now=T0, welcome_lists={"default"}).status
                   for s in (one, two)}
        assert results == {"confirmed", "already"}
        assert count(one, "welcomes") == 1


def test_a_confirmation_expires_at_the_end_of_its_last_day(store: Store) -> None:
    signups = Signups(store, OPEN)
    outcome = signups.request(signup(), now=T0)
    assert outcome.confirmation_id is not None
    last = dt.datetime(2026, 3, 8, 23, 59, 59, tzinfo=dt.UTC)
    view = signups.confirmation(outcome.confirmation_id, now=last + dt.timedelta(seconds=1))
    assert view is not None and view.expired and not view.confirmed
    assert signups.confirm(outcome.confirmation_id, now=last + dt.timedelta(seconds=1)) == ConfirmResult(
        "expired", "new@example.org")
    assert memberships(store, "new@example.org") == {"default": "pending"}
    assert signups.confirm(outcome.confirmation_id, now=last).status == "confirmed"
    assert signups.confirm(10**9) == ConfirmResult("unknown")
    assert signups.confirmation(10**9) is None


def test_an_unsubscribe_after_the_signup_stays_and_one_before_it_is_undone(store: Store) -> None:
    signups = Signups(store, OPEN)
    # Old Reader left 'default', then signed up for it again: the confirmation brings it back.
    store.unsubscribe("old@example.org")
    outcome = signups.request(signup("old@example.org"), now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    assert outcome.status == "queued" and outcome.confirmation_id is not None
    assert memberships(store, "old@example.org") == {"default": "unsubscribed"}  # a signup changes nothing yet
    assert signups.confirm(outcome.confirmation_id, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).lists \
        == ("default",)
    assert memberships(store, "old@example.org") == {"default": "active"}
    assert store.query("SELECT status FROM subscribers WHERE email_key = 'old@example.org'")[0][0] == "active"
    # A newcomer who signs up, then unsubscribes before confirming, stays unsubscribed.
    later = signups.request(signup("new@example.org"), now=T0)
    assert later.confirmation_id is not None
    store.leave_list(sid(store, "new@example.org"), store.find_list("default") or 0)
    assert memberships(store, "new@example.org") == {"default": "unsubscribed"}
    assert signups.confirm(later.confirmation_id, now=T0 + dt.timedelta(hours=1)).lists == ()
    assert memberships(store, "new@example.org") == {"default": "unsubscribed"}


def test_a_forgotten_address_may_sign_up_again_and_its_hash_goes_when_it_confirms(store: Store) -> None:
    assert DataRights(store).forget("old@example.org", [KEY]) == "forgotten"
    signups = Signups(store, OPEN, forget_keys=[KEY])
    outcome = signups.request(signup("old@example.org"), now=T0)
    assert outcome.status == "queued" and outcome.confirmation_id is not None
    assert store.query("SELECT 1 FROM forgotten WHERE hash = ?", (forget_hash("old@example.org", KEY),))
    assert signups.confirm(outcome.confirmation_id, now=T0).status == "confirmed"
    assert not store.query("SELECT 1 FROM forgotten")
    assert memberships(store, "old@example.org") == {"default": "active"}


# --- the outbox ---------------------------------------------------------------------------------


def test_the_outbox_claims_each_email_once_and_again_after_a_crashed_senders_lease(database: str | Path) -> None:
    with Store.open(database) as one, Store.open(database) as two:
        a, b = Signups(one, OPEN), Signups(two, OPEN)
        first = a.request(signup("new@example.org", "default", "other", name="Nia"), now=T0)
        second = a.request(signup("two@example.org"), now=T0)
        claimed = a.claim_mail(ids=[first.confirmation_id or 0], now=T0)
        assert claimed == [OutgoingMail("confirm", first.confirmation_id or 0, sid(one, "new@example.org"),
                                        "new@example.org", "Nia", ("default", "other"), dt.date(2026, 3, 8), 1, T0)]
        assert [m.id for m in b.claim_mail(now=T0)] == [second.confirmation_id]  # the other connection: the rest
        assert b.claim_mail(now=T0 + dt.timedelta(seconds=599)) == []  # both leased
        # The first sender crashed: after its lease the row is due again, attempt 2.
        retried = b.claim_mail(now=T0 + dt.timedelta(seconds=601), kinds=("confirm",))
        assert [(m.id, m.attempts) for m in retried] == [(first.confirmation_id, 2), (second.confirmation_id, 2)]
        b.record_mail(retried[0], "sent", message_id="<m1@news.example.com>", detail="250 ok")
        b.record_mail(retried[1], "deferred", detail="451 try later", retry_at=T0 + dt.timedelta(hours=1))
        a.record_mail(claimed[0], "failed", detail="too late")  # a slower sender's report: sent stays sent
        rows = {int(r[0]): (str(r[1]), str(r[2])) for r in one.query("SELECT id, status, last_error FROM confirmations")}
        assert rows == {first.confirmation_id: ("sent", "250 ok"), second.confirmation_id: ("queued", "451 try later")}
        assert a.claim_mail(now=T0 + dt.timedelta(minutes=59)) == []
        assert [m.id for m in a.claim_mail(now=T0 + dt.timedelta(hours=1))] == [second.confirmation_id]


def test_emails_that_should_not_go_out_any_more_are_closed_not_claimed(store: Store) -> None:
    signups = Signups(store, OPEN)
    confirmed = signups.request(signup("a@example.org"), now=T0)
    expired = signups.request(signup("b@example.org"), now=T0)
    bounced = signups.request(signup("c@example.org"), now=T0)
    signups.confirm(confirmed.confirmation_id or 0, now=T0, welcome_lists={"default"})
    store.mark_bounced(sid(store, "c@example.org"))
    store.query("SELECT 1")  # nothing else pending
    with store.transaction() as cursor:
        cursor.execute("UPDATE confirmations SET expires_at = '2026-03-01T09:00:00+00:00' WHERE id = ?",
                       (expired.confirmation_id,))
    claimed = signups.claim_mail(now=T0)
    assert [(m.kind, m.email, m.lists) for m in claimed] == [("welcome", "a@example.org", ("default",))]
    closed = {int(r[0]): str(r[1]) for r in store.query("SELECT id, last_error FROM confirmations WHERE status = 'failed'")}
    assert closed == {confirmed.confirmation_id: "not sent: confirmed before it was sent",
                      expired.confirmation_id: "not sent: expired before it was sent",
                      bounced.confirmation_id: "not sent: the address is suppressed"}
    # A welcome to someone who left before it went out is closed too.
    signups.record_mail(claimed[0], "deferred", retry_at=T0)
    store.leave_list(sid(store, "a@example.org"), store.find_list("default") or 0)
    assert signups.claim_mail(now=T0) == []
    assert store.query("SELECT status FROM welcomes")[0][0] == "failed"


# --- purge ---------------------------------------------------------------------------------------


def test_purge_drops_unconfirmed_signups_and_nothing_else(store: Store) -> None:
    signups = Signups(store, OPEN)
    signups.request(signup("gone@example.org"), now=T0)  # never confirms
    kept = signups.request(signup("kept@example.org"), now=T0)
    signups.confirm(kept.confirmation_id or 0, now=T0)
    signups.request(signup("old@example.org", "other"), now=T0)  # active elsewhere: keeps the row
    store.unsubscribe("old@example.org", list_name="default")
    signups.request(signup("old@example.org", "default"), now=T0 + dt.timedelta(days=1))  # an ended membership
    fresh = signups.request(signup("fresh@example.org"), now=T0 + dt.timedelta(days=7))
    Signups(store, SignupSettings()).request(signup("counted@example.org"), now=T0)
    assert count(store, "signup_counters") == 2
    counts = signups.purge(now=T0 + dt.timedelta(days=9))
    assert counts == PurgeCounts(consents=4, memberships=3, subscribers=2, confirmations=4, counters=2)
    emails = {str(r[0]) for r in store.query("SELECT email FROM subscribers")}
    assert emails == {"kept@example.org", "old@example.org", "fresh@example.org"}
    assert memberships(store, "old@example.org") == {"default": "unsubscribed"}
    assert memberships(store, "fresh@example.org") == {"default": "pending"}
    assert signups.confirm(fresh.confirmation_id or 0, now=T0 + dt.timedelta(days=9)).status == "confirmed"
    assert not signups.purge(now=T0 + dt.timedelta(days=9))
    assert [r.confirmed_at is not None for r in Consents(store).of_subscriber(sid(store, "kept@example.org"))] == [True]


# --- query plans ----------------------------------------------------------------------------------


def test_the_hot_queries_use_their_indexes(store: Store) -> None:
    if store.dialect.name == "postgresql":
        # A small table is read whole whatever its indexes; what matters is that one can serve.
        store.connection.execute("SET enable_seqscan = off")
    at = T0.timestamp()
    plans = {name: store.explain(sql, params) for name, sql, params, in (
        ("latest", signups_module._LATEST, (1,)),
        ("lists of", signups_module._LISTS_OF, (1,)),
        ("confirm due", signups_module._CONFIRM_DUE.format(ids="", lock=""), (at, 100)),
        ("welcome due", signups_module._WELCOME_DUE.format(lock=""), (at, 100)),
        ("expired", signups_module._EXPIRED, ("2026-03-01",)),
        ("pending", signups_module._PENDING_OLD, ("2026-03-01",)),
        ("count", signups_module._COUNT, ("all", 0)),
    )}
    indexes = {"latest": "confirmations_subscriber", "lists of": "consents_confirmation",
               "confirm due": "confirmations_due", "welcome due": "welcomes_due",
               "expired": "confirmations_unconfirmed", "pending": "memberships_pending"}
    for name, index in indexes.items():
        assert index in plans[name], (name, plans[name])
    if store.dialect.name == "sqlite":
        for name in indexes:
            scans = [line for line in plans[name].splitlines()
                     if line.strip().startswith("SCAN") and "CONSTANT ROW" not in line]
            assert not scans, (name, plans[name])
