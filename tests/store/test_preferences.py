"""A reader's preferences, the store side (issue 16 item 5): every test runs on an SQLite file and on a
real PostgreSQL server (tests/harness/pgserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.store.consent import Consents
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import Ledger
from newsletter.store.preferences import _JOIN, _LEAVE, _MEMBERSHIPS, PREFERENCES_SOURCE, Preferences
from newsletter.store.rights import DataRights
from newsletter.store.subscribers import Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

KEY = b"k" * 32
AT = "2024-05-01T10:00:00+00:00"


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    """Ada on 'default' and 'offers', Bob on 'default'."""
    with Store.open(database) as opened:
        opened.upsert_subscribers([SubscriberRow("ada@example.org", "Ada"), SubscriberRow("bob@example.org")],
                                  list_name="default")
        opened.upsert_subscribers([SubscriberRow("ada@example.org")], list_name="offers")
        yield opened


def ids(store: Store, email: str, list_name: str = "default") -> tuple[int, int]:
    subscriber_id = int(store.query("SELECT id FROM subscribers WHERE email_key = ?", (email,))[0][0])
    list_id = store.find_list(list_name)
    assert list_id is not None
    return subscriber_id, list_id


def lists_of(store: Store, email: str) -> dict[str, str]:
    return {str(row[0]): str(row[1]) for row in store.query(
        "SELECT l.name, m.status FROM memberships m JOIN lists l ON l.id = m.list_id"
        " JOIN subscribers s ON s.id = m.subscriber_id WHERE s.email_key = ?", (email,))}


def test_the_view_shows_the_reader_and_every_list_they_are_on(store: Store) -> None:
    view = Preferences(store).view(*ids(store, "ada@example.org"))
    assert view is not None
    assert (view.email, view.name, view.person) == ("ada@example.org", "Ada", "active")
    assert view.memberships == (("default", "active"), ("offers", "active"))
    assert view.receives("offers") and not view.receives("nowhere") and view.status("nowhere") is None
    assert not view.suppressed and not view.forgotten


def test_a_token_for_a_membership_that_isnt_there_names_nobody(store: Store) -> None:
    bob, _ = ids(store, "bob@example.org")
    _, offers = ids(store, "ada@example.org", "offers")
    assert Preferences(store).view(bob, offers) is None  # Bob is not on 'offers'
    assert Preferences(store).view(999_999, offers) is None


def test_save_joins_leaves_and_renames_in_one_go_and_records_the_consent(store: Store) -> None:
    ada, _ = ids(store, "ada@example.org")
    result = Preferences(store).save(ada, lists={"default": True, "offers": False, "weekly": True},
                                     name="Ada Lovelace", ip="203.0.113.77", now=AT)
    assert (result.outcome, result.joined, result.left, result.renamed) == ("saved", ("weekly",), ("offers",), True)
    assert lists_of(store, "ada@example.org") == {"default": "active", "offers": "unsubscribed", "weekly": "active"}
    (person,) = store.subscribers(emails=["ada@example.org"])
    assert person.name == "Ada Lovelace" and person.lists == ("default", "weekly")
    (consent,) = Consents(store).of_subscriber(ada)
    assert (consent.list, consent.method, consent.source, consent.ip_prefix, consent.requested_at,
            consent.confirmed_at) == ("weekly", "form", PREFERENCES_SOURCE, "203.0.113.0/24", AT, AT)
    # The same save again changes nothing and records nothing.
    again = Preferences(store).save(ada, lists={"default": True, "offers": False, "weekly": True}, name="Ada Lovelace")
    assert again.outcome == "unchanged" and len(Consents(store).of_subscriber(ada)) == 1


def test_a_list_left_comes_back_and_a_pending_signup_becomes_active(store: Store) -> None:
    bob, _ = ids(store, "bob@example.org")
    _, offers = ids(store, "ada@example.org", "offers")
    assert Consents(store).add_pending(bob, offers)
    assert store.leave_list(bob, ids(store, "bob@example.org")[1])
    result = Preferences(store).save(bob, lists={"default": True, "offers": True})
    assert result.joined == ("default", "offers")
    assert lists_of(store, "bob@example.org") == {"default": "active", "offers": "active"}
    assert {consent.list for consent in Consents(store).of_subscriber(bob)} == {"default", "offers"}


def test_a_pending_signup_left_unticked_stays_pending(store: Store) -> None:
    """Unticked means "not now": the confirmation email already sent still works until it expires."""
    bob, _ = ids(store, "bob@example.org")
    _, offers = ids(store, "ada@example.org", "offers")
    assert Consents(store).add_pending(bob, offers)
    result = Preferences(store).save(bob, lists={"default": True, "offers": False}, name="Bob")
    assert (result.outcome, result.joined, result.left) == ("saved", (), ())
    assert lists_of(store, "bob@example.org") == {"default": "active", "offers": "pending"}


def test_lists_not_named_are_left_alone(store: Store) -> None:
    ada, _ = ids(store, "ada@example.org")
    Preferences(store).save(ada, lists={"default": False})
    assert lists_of(store, "ada@example.org") == {"default": "unsubscribed", "offers": "active"}


def test_someone_removed_from_everything_comes_back_with_only_the_lists_ticked(store: Store) -> None:
    assert store.unsubscribe("ada@example.org")
    ada, default = ids(store, "ada@example.org")
    view = Preferences(store).view(ada, default)
    assert view is not None and not view.receives("default") and not view.receives("offers")
    Preferences(store).save(ada, lists={"default": False, "offers": True})
    (person,) = store.subscribers(emails=["ada@example.org"])
    assert person.status == "active" and person.lists == ("offers",)


@pytest.mark.parametrize("kind", ["bounced", "complained"])
def test_a_suppressed_address_joins_nothing_and_nothing_of_the_save_happens(store: Store, kind: str) -> None:
    bob, _ = ids(store, "bob@example.org")
    if kind == "bounced":
        store.mark_bounced(bob)
    else:
        issue_id = Ledger(store).open_issue(slug="s", list_name="default", subject="S", content_hash="h",
                                            domain="example.com").id
        Feedback(store).record_feedback(issue_id=issue_id, subscriber_id=bob, kind="complaint", status=None,
                                        diagnostic="", fingerprint="arf")
    before = lists_of(store, "bob@example.org")
    result = Preferences(store).save(bob, lists={"default": True, "offers": True}, name="Bob")
    assert result.outcome == "suppressed"
    assert tuple(store.query("SELECT name, status FROM subscribers WHERE id = ?", (bob,))[0]) == ("", kind)
    assert lists_of(store, "bob@example.org") == before and "offers" not in before
    assert Consents(store).of_subscriber(bob) == []
    # Renaming alone (no join) is fine.
    assert Preferences(store).save(bob, lists={}, name="Bob").outcome == "saved"


def test_a_forgotten_person_can_not_be_changed(store: Store) -> None:
    ada, default = ids(store, "ada@example.org")
    assert DataRights(store).forget("ada@example.org", [KEY]) == "forgotten"
    view = Preferences(store).view(ada, default)
    assert view is not None and view.forgotten
    result = Preferences(store).save(ada, lists={"default": True, "weekly": True}, name="Ada")
    assert result.outcome == "forgotten"
    assert tuple(store.query("SELECT name, status FROM subscribers WHERE id = ?", (ada,))[0]) == ("", "forgotten")
    assert store.find_list("weekly") is None


def test_a_full_ip_address_is_never_stored(store: Store) -> None:
    ada, _ = ids(store, "ada@example.org")
    Preferences(store).save(ada, lists={"weekly": True}, ip="2001:db8:1:2:3:4:5:6")
    assert [str(row[0]) for row in store.query("SELECT ip_prefix FROM consents")] == ["2001:db8:1::/48"]


def test_the_lookups_search_indexes(store: Store) -> None:
    """One subscriber's lists by memberships_subscriber, a list left by the primary key: never every membership."""
    if store.dialect.name == "postgresql":
        store.connection.execute("SET enable_seqscan = off")
    plan = store.explain(_MEMBERSHIPS, (1,))
    assert "memberships_subscriber" in plan, plan
    for statement, params in ((_LEAVE, ("x", 1, 1)), (_JOIN, (1, 1, "x", "x"))):
        plan = store.explain(statement, params)
        assert "SCAN memberships" not in plan and "Seq Scan" not in plan, plan
