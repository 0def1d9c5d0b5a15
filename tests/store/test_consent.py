"""Consent records and pending memberships (issue 16 items 2 and 3, the store side): every test runs on an
SQLite file and on a real PostgreSQL server (tests/harness/pgserver.py), like test_feedback.py; the command
line's ``--consent`` and ``subscribers show`` through click's runner on both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.errors import StoreError, SubscriberError
from newsletter.store.consent import _OF_SUBSCRIBER, SOURCE_LIMIT, Consents, consent_claim, truncate_ip
from newsletter.store.ledger import Ledger
from newsletter.store.rights import DataRights
from newsletter.store.subscribers import IMPORT_CHUNK, Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

KEY = "k" * 32


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    """Three readers (r0..r2@example.org) on 'default'."""
    with Store.open(database) as opened:
        opened.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(3)], list_name="default")
        yield opened


def sid(store: Store, email: str) -> int:
    return int(store.query("SELECT id FROM subscribers WHERE email_key = ?", (email,))[0][0])


def newcomer(store: Store, email: str = "new@example.org", list_name: str = "default") -> tuple[int, int]:
    """A subscriber who signed up for ``list_name`` and hasn't confirmed: (subscriber id, list id)."""
    store.upsert_subscribers([SubscriberRow(email)], list_name="holding")
    subscriber_id, list_id = sid(store, email), store.find_list(list_name)
    assert list_id is not None
    assert Consents(store).add_pending(subscriber_id, list_id)
    return subscriber_id, list_id


def recipients(store: Store, slug: str) -> set[str]:
    issue_id = Ledger(store).open_issue(slug=slug, list_name="default", subject=slug, content_hash="h",
                                        domain="news.example.com").id
    return {str(row[0]) for row in store.query(
        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id WHERE d.issue_id = ?",
        (issue_id,))}


def consent_rows(store: Store) -> list[tuple[str, str, str, str]]:
    """(address, list, method, source) of every consent row, sorted."""
    return sorted((str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in store.query(
        "SELECT s.email, l.name, c.method, c.source FROM consents c JOIN subscribers s ON s.id = c.subscriber_id"
        " JOIN lists l ON l.id = c.list_id"))


# --- the network a consent keeps -----------------------------------------------------------------


@pytest.mark.parametrize(("address", "network"), [
    ("203.0.113.77", "203.0.113.0/24"),
    (" 198.51.100.255\n", "198.51.100.0/24"),
    ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::/48"),
    ("2001:DB8:1::", "2001:db8:1::/48"),
    ("::ffff:192.0.2.9", "192.0.2.0/24"),  # a dual-stack socket's view of an IPv4 client
    ("fe80::1%eth0", "fe80::/48"),
    ("::1", "::/48"),
])
def test_truncate_ip_keeps_a_24_or_48_bit_network(address: str, network: str) -> None:
    assert truncate_ip(address) == network


@pytest.mark.parametrize("address", ["", "example.org", "203.0.113", "203.0.113.0/24", "256.1.1.1", "2001:db8:::1"])
def test_truncate_ip_refuses_what_isnt_an_address(address: str) -> None:
    with pytest.raises(ValueError):
        truncate_ip(address)


def test_a_consent_claim_is_one_bounded_line() -> None:
    assert consent_claim("import", "  paper form, book fair  ") .source == "paper form, book fair"
    for method, source, words in (("fax", "x", "consent method 'fax'"), ("cli", " ", "say how"),
                                  ("cli", "x" * (SOURCE_LIMIT + 1), "at most 500"),
                                  ("cli", "a\nb", "one line")):
        with pytest.raises(SubscriberError, match=words):
            consent_claim(method, source)


# --- the schema ---------------------------------------------------------------------------------


def test_migration_9_allows_pending_memberships_and_checks_consents(store: Store) -> None:
    assert store.schema_version == 10
    subscriber_id, list_id = newcomer(store)
    assert store.membership_state(subscriber_id, list_id).status == "pending"  # type: ignore[union-attr]
    with pytest.raises(StoreError):
        with store.transaction() as cursor:
            cursor.execute("UPDATE memberships SET status = 'maybe' WHERE subscriber_id = ?", (subscriber_id,))
    with pytest.raises(StoreError):
        with store.transaction() as cursor:
            cursor.execute("INSERT INTO consents (subscriber_id, list_id, method, requested_at)"
                           " VALUES (?, ?, 'fax', 'now')", (subscriber_id, list_id))
    with pytest.raises(StoreError):
        with store.transaction() as cursor:
            cursor.execute("INSERT INTO consents (subscriber_id, list_id, method, source, requested_at)"
                           " VALUES (?, ?, 'form', ?, 'now')", (subscriber_id, list_id, "x" * (SOURCE_LIMIT + 1)))


def test_the_consents_of_a_subscriber_are_read_by_index(store: Store) -> None:
    if store.dialect.name == "postgresql":
        store.connection.execute("SET enable_seqscan = off")
    plan = store.explain(_OF_SUBSCRIBER, (1,))
    assert "consents_subscriber" in plan, plan


# --- record, confirm, read ------------------------------------------------------------------------


def test_a_consent_keeps_the_network_never_the_address(store: Store) -> None:
    subscriber_id, list_id = newcomer(store)
    consents = Consents(store)
    first = consents.record(subscriber_id, list_id, method="form", source="https://example.org/join",
                            ip="203.0.113.77", at="2026-03-01T10:00:00+00:00")
    second = consents.record(subscriber_id, list_id, method="api", source="y" * 2000,
                             ip="2001:db8:abcd:12::99", at="2026-03-02T10:00:00+00:00")
    records = consents.of_subscriber(subscriber_id)
    assert [(r.id, r.list, r.method, r.ip_prefix, r.requested_at, r.confirmed_at) for r in records] == [
        (first, "default", "form", "203.0.113.0/24", "2026-03-01T10:00:00+00:00", None),
        (second, "default", "api", "2001:db8:abcd::/48", "2026-03-02T10:00:00+00:00", None)]
    assert records[0].source == "https://example.org/join" and records[1].source == "y" * SOURCE_LIMIT
    stored = repr(store.query("SELECT * FROM consents"))
    assert "203.0.113.77" not in stored and "::99" not in stored
    assert consents.of_subscriber(sid(store, "r0@example.org")) == []
    third = consents.record(subscriber_id, list_id, method="form", source="\x1b[2Jhttps://example.org/\u202eoj\tin\n")
    assert consents.of_subscriber(subscriber_id)[-1].id == third
    assert consents.of_subscriber(subscriber_id)[-1].source == "[2Jhttps://example.org/ojin"
    with pytest.raises(ValueError):
        consents.record(subscriber_id, list_id, method="form", ip="somewhere")
    with pytest.raises(ValueError):
        consents.record(subscriber_id, list_id, method="carrier-pigeon")


def test_confirming_is_idempotent_and_makes_the_pending_membership_active(store: Store) -> None:
    subscriber_id, list_id = newcomer(store)
    consents = Consents(store)
    consent_id = consents.record(subscriber_id, list_id, method="form", ip="203.0.113.7")
    assert consents.confirm(consent_id, at="2026-03-01T11:00:00+00:00") == "confirmed"
    assert store.membership_state(subscriber_id, list_id).status == "active"  # type: ignore[union-attr]
    assert consents.confirm(consent_id, at="2026-03-09T11:00:00+00:00") == "already"
    [record] = consents.of_subscriber(subscriber_id)
    assert record.confirmed_at == "2026-03-01T11:00:00+00:00"  # the first confirmation is the one kept
    assert consents.confirm(consent_id + 1000) == "unknown"
    assert not consents.add_pending(subscriber_id, list_id)  # an existing membership keeps its status
    assert store.membership_state(subscriber_id, list_id).status == "active"  # type: ignore[union-attr]


def test_a_confirmation_never_overrides_a_later_unsubscribe(store: Store) -> None:
    subscriber_id, list_id = newcomer(store)
    consents = Consents(store)
    consent_id = consents.record(subscriber_id, list_id, method="form")
    with store.transaction() as cursor:
        cursor.execute("UPDATE memberships SET status = 'unsubscribed' WHERE subscriber_id = ? AND list_id = ?",
                       (subscriber_id, list_id))
    assert consents.confirm(consent_id) == "confirmed"
    assert store.membership_state(subscriber_id, list_id).status == "unsubscribed"  # type: ignore[union-attr]


def test_dispatch_never_sends_to_a_pending_membership(store: Store) -> None:
    subscriber_id, list_id = newcomer(store)
    assert recipients(store, "first") == {"r0@example.org", "r1@example.org", "r2@example.org"}
    assert store.count(list_name="default") == {"active": 3, "unsubscribed": 0, "bounced": 0, "pending": 1}
    assert [s.email for s in store.subscribers(list_name="default")] == [f"r{n}@example.org" for n in range(3)]
    consents = Consents(store)
    assert consents.confirm(consents.record(subscriber_id, list_id, method="form")) == "confirmed"
    assert "new@example.org" in recipients(store, "second")


# --- imports and subscribers add ------------------------------------------------------------------


def test_an_import_with_consent_records_one_row_per_membership_it_creates(store: Store) -> None:
    claim = consent_claim("import", "paper form, book fair 2026")
    # r0 is on 'default' already (no row: that membership isn't new); r0 joins 'other' (a row).
    counts = store.upsert_subscribers([SubscriberRow("r0@example.org"), SubscriberRow("R9@example.org"),
                                       SubscriberRow("r9@EXAMPLE.org")], list_name="default", consent=claim)
    assert counts.added == 1  # the second spelling of r9 merges into the first
    store.upsert_subscribers([SubscriberRow("r0@example.org")], list_name="other", consent=claim)
    assert consent_rows(store) == [("R9@example.org", "default", "import", "paper form, book fair 2026"),
                                   ("r0@example.org", "other", "import", "paper form, book fair 2026")]
    # The same import again creates no membership, so no row; without a claim nothing is recorded.
    store.upsert_subscribers([SubscriberRow("r9@example.org")], list_name="default", consent=claim)
    store.upsert_subscribers([SubscriberRow("r8@example.org")], list_name="default")
    assert len(consent_rows(store)) == 2
    [record] = Consents(store).of_subscriber(sid(store, "r9@example.org"))
    assert record.ip_prefix is None and record.confirmed_at is None
    created = store.query("SELECT m.created_at FROM memberships m WHERE m.subscriber_id = ? AND m.list_id = ?",
                          (sid(store, "r9@example.org"), store.find_list("default")))
    assert record.requested_at == str(created[0][0])


def test_an_import_of_several_chunks_records_each_new_membership_once(store: Store) -> None:
    total = IMPORT_CHUNK + 500
    rows = [SubscriberRow(f"bulk{n}@example.org") for n in range(total)] + [SubscriberRow("r1@example.org")]
    store.upsert_subscribers(rows, list_name="default", consent=consent_claim("import", "old list"))
    found = store.query("SELECT count(*), count(DISTINCT subscriber_id), min(method), max(source) FROM consents")
    assert tuple(found[0]) == (total, total, "import", "old list")


# --- the command line -------------------------------------------------------------------------------


def cli(tmp_path: Path, database: str | Path, *args: str) -> Result:
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "news.db"}"\n', encoding="utf-8")
    env = {"NEWSLETTER_DATABASE_URL": database if isinstance(database, str) else "", "NEWSLETTER_SECRET_KEY": KEY}
    return CliRunner().invoke(main, ["--config", str(config), *args], env=env)


def test_import_and_add_with_consent_and_show_lists_it(tmp_path: Path, database: str | Path) -> None:
    readers = tmp_path / "readers.csv"
    readers.write_text("email,name\nann@example.org,Ann\nbob@example.org,Bob\n", encoding="utf-8")
    imported = cli(tmp_path, database, "subscribers", "import", str(readers), "--list", "morning",
                   "--consent", "signed up on paper at the fair")
    assert imported.exit_code == 0, imported.output
    added = cli(tmp_path, database, "subscribers", "add", "ann@example.org", "--list", "evening",
                "--consent", "asked by phone")
    assert added.exit_code == 0, added.output
    plain = cli(tmp_path, database, "subscribers", "add", "cleo@example.org", "--list", "evening")
    assert plain.exit_code == 0, plain.output
    shown = cli(tmp_path, database, "subscribers", "show", "ann@example.org", "--json")
    assert shown.exit_code == 0, shown.output
    consent = json.loads(shown.stdout)["consent"]
    assert [(c["list"], c["method"], c["source"], c["ip_prefix"], c["confirmed_at"]) for c in consent] == [
        ("morning", "import", "signed up on paper at the fair", None, None),
        ("evening", "cli", "asked by phone", None, None)]
    assert all(c["requested_at"] and isinstance(c["id"], int) for c in consent)
    text = cli(tmp_path, database, "subscribers", "show", "ann@example.org")
    assert text.exit_code == 0, text.output
    assert "\n  morning\timport\trequested " in text.stdout
    assert "\tnot confirmed\tsigned up on paper at the fair\n" in text.stdout
    assert "\tnot confirmed\tasked by phone\n" in text.stdout
    cleo = json.loads(cli(tmp_path, database, "subscribers", "show", "cleo@example.org", "--json").stdout)
    assert cleo["consent"] == []
    assert "consent: (none recorded)" in cli(tmp_path, database, "subscribers", "show", "cleo@example.org").stdout


def test_a_bad_consent_text_is_one_line_exit_2_and_imports_nothing(tmp_path: Path, database: str | Path) -> None:
    readers = tmp_path / "readers.csv"
    readers.write_text("email\nann@example.org\n", encoding="utf-8")
    for command in (["import", str(readers)], ["add", "ann@example.org"]):
        result = cli(tmp_path, database, "subscribers", *command, "--consent", "x" * (SOURCE_LIMIT + 1))
        assert result.exit_code == 2, result.output
        assert result.output == f"error: --consent: {SOURCE_LIMIT + 1} characters; at most {SOURCE_LIMIT}\n"
    with Store.open(database) as store:
        assert store.query("SELECT count(*) FROM subscribers")[0][0] == 0


def test_show_lists_a_confirmed_signup_and_forget_drops_its_network(tmp_path: Path, database: str | Path) -> None:
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow("r0@example.org")], list_name="default")
        subscriber_id, list_id = newcomer(store, "dora@example.org")
        consents = Consents(store)
        consents.confirm(consents.record(subscriber_id, list_id, method="form",
                                         source="https://example.org/join?ref=dora@example.org",
                                         ip="203.0.113.77", at="2026-03-01T10:00:00+00:00"),
                         at="2026-03-01T10:05:00+00:00")
    text = cli(tmp_path, database, "subscribers", "show", "dora@example.org").stdout
    assert ("  default\tform\trequested 2026-03-01T10:00:00+00:00\tconfirmed 2026-03-01T10:05:00+00:00"
            "\tfrom 203.0.113.0/24\thttps://example.org/join?ref=dora@example.org\n") in text
    assert cli(tmp_path, database, "subscribers", "forget", "dora@example.org", "--yes").exit_code == 0
    with Store.open(database) as store:
        rows = store.query("SELECT method, source, ip_prefix, requested_at, confirmed_at FROM consents")
        assert [tuple(row) for row in rows] == [
            ("form", f"https://example.org/join?ref=forgotten-{subscriber_id}@forgotten.invalid", None,
             "2026-03-01T10:00:00+00:00", "2026-03-01T10:05:00+00:00")]
        assert DataRights(store).person("dora@example.org") is None


def test_a_consent_is_about_a_membership_that_exists(store: Store) -> None:
    subscriber_id, list_id = sid(store, "r0@example.org"), store.find_list("default")
    assert list_id is not None
    with pytest.raises(StoreError):
        Consents(store).record(subscriber_id, list_id + 1, method="cli")
    with pytest.raises(StoreError):
        Consents(store).record(subscriber_id + 1000, list_id, method="cli")
    assert store.query("SELECT count(*) FROM consents")[0][0] == 0
