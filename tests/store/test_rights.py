"""Data rights (issue 16 item 6, and ``subscribers show`` of item 3): what the tool holds about one person,
and forgetting them, through the real command line on an SQLite file and on a real PostgreSQL server
(tests/harness/pgserver.py). Afterwards no table holds the address, name or fields in clear, each issue's
counts are as they were, and no import or ``subscribers add`` brings the person back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.config import SignupSettings
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import Ledger
from newsletter.store.rights import _DELIVERIES, _FEEDBACK, _FORGOTTEN, _MEMBERSHIPS, _SUBSCRIBER, forget_hash
from newsletter.store.signups import SignupRequest, Signups
from newsletter.store.subscribers import Store, SubscriberRow

pytest_plugins = ["tests.harness.pgserver"]

KEY = "k" * 32
ANN = "Ann.Reader@Example.org"
#: what must not be left anywhere once Ann is forgotten (compared lower-cased)
ANN_CLEAR = ("ann.reader@example.org", "annabel lovelace", "reykjavik-harbour")
SLUG = "2026-01-01-news"


@pytest.fixture
def ledger(database: str | Path) -> str | Path:
    """Ann (on two lists, a name and a field), Bob and Cleo; one issue sent to them, with an SMTP reply and
    a bounce for Ann whose texts quote her address and name."""
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow(ANN, "Annabel Lovelace", {"city": "Reykjavik-Harbour"}),
                                  SubscriberRow("bob@example.org", "Bob"), SubscriberRow("cleo@example.org")],
                                 list_name="default")
        store.upsert_subscribers([SubscriberRow(ANN)], list_name="other")
        record = Ledger(store).open_issue(slug=SLUG, list_name="default", subject="News", content_hash="h",
                                          domain="news.example.com")
        ann = int(store.query("SELECT id FROM subscribers WHERE email_key = ?", (ANN.lower(),))[0][0])
        with store.transaction() as cursor:
            cursor.execute("UPDATE deliveries SET status = 'sent', sent_at = '2026-01-01T10:00:00+00:00',"
                           " attempts = 1, last_code = 250, last_text = '2.0.0 Ok: queued'")
            cursor.execute("UPDATE deliveries SET last_text = ? WHERE subscriber_id = ?",
                           (f"2.0.0 Ok: queued for <{ANN}> (Annabel Lovelace)", ann))
            cursor.execute("UPDATE issues SET first_sent_at = '2026-01-01T10:00:00+00:00'")
        Feedback(store).record_feedback(
            issue_id=record.id, subscriber_id=ann, kind="soft_bounce", status="4.2.2",
            diagnostic="452 4.2.2 <ANN.READER@EXAMPLE.ORG>: mailbox of Annabel Lovelace is full",
            fingerprint="report-1", at=1_767_261_600.0)
    return database


def cli(tmp_path: Path, database: str | Path, *args: str, key: str = KEY) -> Result:
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "news.db"}"\n', encoding="utf-8")
    env = {"NEWSLETTER_DATABASE_URL": database if isinstance(database, str) else "", "NEWSLETTER_SECRET_KEY": key}
    return CliRunner().invoke(main, ["--config", str(config), *args], env=env)


def every_row(database: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, by table (the whole database as data)."""
    with Store.open(database) as store:
        if store.dialect.name == "sqlite":
            tables = [str(row[0]) for row in store.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        else:
            tables = [str(row[0]) for row in store.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        assert {"subscribers", "deliveries", "feedback", "forgotten", "memberships"} <= set(tables)
        return {table: sorted((tuple(row) for row in store.query(f"SELECT * FROM {table}")), key=repr)
                for table in sorted(tables)}


def clear_text(database: str | Path) -> str:
    """Every value of every column of every table, as one lower-cased text."""
    return "\n".join(repr(row) for rows in every_row(database).values() for row in rows).lower()


# --- show ------------------------------------------------------------------------------------


def test_show_prints_everything_held_about_one_person(tmp_path: Path, ledger: str | Path) -> None:
    result = cli(tmp_path, ledger, "subscribers", "show", "ann.reader@EXAMPLE.org", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    person = record["subscriber"]
    assert (person["email"], person["name"], person["fields"], person["status"]) == (
        ANN, "Annabel Lovelace", {"city": "Reykjavik-Harbour"}, "active")
    assert person["created_at"] and person["updated_at"]
    assert [(m["list"], m["status"]) for m in record["memberships"]] == [("default", "active"), ("other", "active")]
    assert all(m["created_at"] for m in record["memberships"])
    assert record["consent"] == []
    [delivery] = record["deliveries"]
    assert delivery["issue"] == SLUG and delivery["status"] == "sent" and delivery["attempts"] == 1
    assert delivery["last_code"] == 250 and ANN in delivery["last_text"]
    assert delivery["sent_at"] == "2026-01-01T10:00:00+00:00"
    assert delivery["message_id"] == f"{SLUG}.{person['id']}@news.example.com"
    assert delivery["feedback"] == "soft_bounce"
    assert record["feedback"] == [{"issue": SLUG, "kind": "soft_bounce", "status": "4.2.2",
                                   "diagnostic": "452 4.2.2 <ANN.READER@EXAMPLE.ORG>: mailbox of Annabel Lovelace"
                                                 " is full", "at": "2026-01-01T10:00:00+00:00"}]
    text = cli(tmp_path, ledger, "subscribers", "show", ANN)
    assert text.exit_code == 0, text.output
    for expected in (f"address:  {ANN}", "name:     Annabel Lovelace", "  city: Reykjavik-Harbour",
                     "  default\tactive", "  other\tactive", "consent: (none recorded)",
                     f"  {SLUG}\tsent\t1 attempt(s)\tsent 2026-01-01T10:00:00+00:00",
                     "\tsoft_bounce\t4.2.2\t452 4.2.2 <ANN.READER@EXAMPLE.ORG>"):
        assert expected in text.stdout, expected
    # Someone else's data is not in it.
    assert "bob@example.org" not in text.stdout + result.stdout


def test_show_of_an_unknown_address_is_one_line_and_exit_2(tmp_path: Path, ledger: str | Path) -> None:
    result = cli(tmp_path, ledger, "subscribers", "show", "nobody@example.org")
    assert result.exit_code == 2
    assert result.output == "error: nobody@example.org is not a subscriber\n"


# --- forget ----------------------------------------------------------------------------------


def test_forget_leaves_no_address_or_name_in_any_table_and_keeps_the_counts(
        tmp_path: Path, ledger: str | Path) -> None:
    assert all(clear in clear_text(ledger) for clear in ANN_CLEAR)  # the scan sees them before
    before = cli(tmp_path, ledger, "status", "--json")
    assert before.exit_code == 0, before.output
    result = cli(tmp_path, ledger, "subscribers", "forget", "ANN.reader@example.org", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output == "forgot ANN.reader@example.org: only a keyed hash of the address is kept\n"
    text = clear_text(ledger)
    for clear in ANN_CLEAR:
        assert clear not in text, clear
    assert "bob@example.org" in text and "cleo@example.org" in text  # the others are untouched
    after = cli(tmp_path, ledger, "status", "--json")
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)
    tables = every_row(ledger)
    assert len(tables["forgotten"]) == 1
    assert tables["forgotten"][0][0] == forget_hash(ANN, KEY.encode())
    assert cli(tmp_path, ledger, "subscribers", "count", "--json").stdout.strip() == json.dumps(
        {"active": 2, "unsubscribed": 0, "bounced": 0, "forgotten": 1})
    # The row stays, with a placeholder that names nobody, out of every list.
    forgotten = json.loads(cli(tmp_path, ledger, "subscribers", "list", "--status", "forgotten", "--json").stdout)
    assert [(p["name"], p["status"]) for p in forgotten] == [("", "forgotten")]
    assert re.fullmatch(r"forgotten-[0-9]+@forgotten\.invalid", forgotten[0]["email"])
    assert cli(tmp_path, ledger, "subscribers", "show", ANN).exit_code == 2


def test_forget_leaves_nothing_of_a_signup_either(tmp_path: Path, database: str | Path) -> None:
    """Signed up (confirmed, welcomed) and signed up again for one more list: the signup outbox's rows and the
    SMTP replies they kept go, the consent rows stay without their network."""
    with Store.open(database) as store:
        signups = Signups(store, SignupSettings())
        first = signups.request(SignupRequest(ANN, ("default",), "form", name="Annabel Lovelace",
                                              source="https://example.org/join", ip="203.0.113.7"))
        assert first.confirmation_id is not None
        assert signups.confirm(first.confirmation_id, welcome_lists={"default"}).status == "confirmed"
        for mail in signups.claim_mail():
            signups.record_mail(mail, "sent", message_id=f"<{mail.kind}@news.example.com>",
                                detail=f"250 2.0.0 queued for <{ANN}> (Annabel Lovelace)")
        signups.request(SignupRequest(ANN, ("other",), "api", ip="2001:db8:abcd::1"))
        assert [len(store.query(f"SELECT * FROM {table}")) for table in ("confirmations", "welcomes", "consents")] \
            == [2, 1, 2]
    assert all(clear in clear_text(database) for clear in ANN_CLEAR[:2])
    result = cli(tmp_path, database, "subscribers", "forget", ANN, "--yes")
    assert result.exit_code == 0, result.output
    text = clear_text(database)
    for clear in ANN_CLEAR[:2]:
        assert clear not in text, clear
    tables = every_row(database)
    assert tables["confirmations"] == [] and tables["welcomes"] == [] and len(tables["consents"]) == 2
    # The consents keep no network; the hour's signup counters (a network and a count, no person,
    # purged after a day) are no one's.
    assert "203.0.113" not in repr(tables["consents"]) and "2001:db8:abcd" not in repr(tables["consents"])


def test_forget_twice_changes_nothing_the_second_time(tmp_path: Path, ledger: str | Path) -> None:
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    before = every_row(ledger)
    again = cli(tmp_path, ledger, "subscribers", "forget", ANN.upper(), "--yes")
    assert again.exit_code == 0, again.output
    assert again.output == f"{ANN.upper()} was forgotten already: nothing changed\n"
    assert every_row(ledger) == before


def test_forget_of_an_unknown_address_exits_2_and_changes_nothing(tmp_path: Path, ledger: str | Path) -> None:
    before = every_row(ledger)
    result = cli(tmp_path, ledger, "subscribers", "forget", "nobody@example.org", "--yes")
    assert result.exit_code == 2
    assert result.output == "error: nobody@example.org is not a subscriber\n"
    assert every_row(ledger) == before


def test_forget_needs_the_secret_key_and_asks_first(tmp_path: Path, ledger: str | Path) -> None:
    before = every_row(ledger)
    result = cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes", key="")
    assert result.exit_code == 2
    assert "NEWSLETTER_SECRET_KEY" in result.output and len(result.output.splitlines()) == 1
    declined = CliRunner().invoke(main, ["--config", str(tmp_path / "newsletter.toml"), "subscribers", "forget",
                                         ANN], input="n\n",
                                  env={"NEWSLETTER_DATABASE_URL": ledger if isinstance(ledger, str) else "",
                                       "NEWSLETTER_SECRET_KEY": KEY})
    assert declined.exit_code == 1
    assert every_row(ledger) == before


def test_an_import_skips_a_forgotten_address_and_counts_it(tmp_path: Path, ledger: str | Path) -> None:
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    readers = tmp_path / "readers.csv"
    readers.write_text(f"email,name,city\n{ANN.upper()},Annabel Lovelace,Reykjavik-Harbour\n"
                       "dan@example.org,Dan,Leeds\n", encoding="utf-8")
    result = cli(tmp_path, ledger, "subscribers", "import", str(readers), "--list", "default")
    assert result.exit_code == 0, result.output
    assert result.output == ("1 added, 0 updated (0 stay unsubscribed or bounced), 1 forgotten, not re-added,"
                             " 0 refused -> list 'default'\n")
    as_json = cli(tmp_path, ledger, "subscribers", "import", str(readers), "--json")
    assert json.loads(as_json.stdout)["forgotten_not_readded"] == 1
    text = clear_text(ledger)
    assert "dan@example.org" in text
    for clear in ANN_CLEAR:
        assert clear not in text, clear


def test_an_import_without_the_key_refuses_when_someone_was_forgotten(tmp_path: Path, ledger: str | Path) -> None:
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    before = every_row(ledger)
    readers = tmp_path / "readers.csv"
    readers.write_text(f"email\n{ANN}\ndan@example.org\n", encoding="utf-8")
    result = cli(tmp_path, ledger, "subscribers", "import", str(readers), key="")
    assert result.exit_code == 2
    assert "NEWSLETTER_SECRET_KEY" in result.output and len(result.output.splitlines()) == 1
    assert every_row(ledger) == before


def test_add_refuses_a_forgotten_address_and_names_the_way_back(tmp_path: Path, ledger: str | Path) -> None:
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    before = every_row(ledger)
    result = cli(tmp_path, ledger, "subscribers", "add", ANN.lower(), "--name", "Annabel Lovelace")
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1
    assert result.output.startswith(f"error: {ANN.lower()} was forgotten at their request (")
    assert "new double opt-in" in result.output
    assert every_row(ledger) == before
    keyless = cli(tmp_path, ledger, "subscribers", "add", ANN.lower(), key="")
    assert keyless.exit_code == 2 and "NEWSLETTER_SECRET_KEY" in keyless.output
    assert every_row(ledger) == before
    assert cli(tmp_path, ledger, "subscribers", "add", "erin@example.org").exit_code == 0


# --- the statements use indexes --------------------------------------------------------------


def test_the_lookups_use_indexes(database: str | Path) -> None:
    """By the address (email_key), by subscriber (memberships, feedback, each issue's delivery), by hash."""
    with Store.open(database) as store:
        if store.dialect.name == "postgres":
            # A small table is read whole whatever its indexes; what matters is that one can serve.
            store.connection.execute("SET enable_seqscan = off")
        plans = {name: store.explain(sql, params) for name, sql, params in (
            ("subscriber", _SUBSCRIBER, ("a@example.org",)),
            ("memberships", _MEMBERSHIPS, (1,)),
            ("deliveries", _DELIVERIES, (1,)),
            ("feedback", _FEEDBACK, (1,)),
            ("forgotten", _FORGOTTEN.format(marks="?,?"), ("0" * 64, "1" * 64)),
        )}
    if store.dialect.name == "sqlite":
        assert "SEARCH subscribers USING INDEX sqlite_autoindex_subscribers" in plans["subscriber"]
        assert "SEARCH m USING INDEX memberships_subscriber (subscriber_id=?)" in plans["memberships"]
        assert "SEARCH d USING PRIMARY KEY (issue_id=? AND subscriber_id=?)" in plans["deliveries"]
        assert "SEARCH f USING INDEX feedback_subscriber" in plans["feedback"]
        assert "SEARCH forgotten USING PRIMARY KEY (hash=?)" in plans["forgotten"]
        for name in ("subscriber", "memberships", "feedback", "forgotten"):
            assert "SCAN" not in plans[name].replace("SCAN CONSTANT ROW", "").replace("USE TEMP B-TREE", ""), plans
    else:
        for name, index in (("subscriber", "subscribers_email_key_key"), ("memberships", "memberships_subscriber"),
                            ("deliveries", "deliveries_pkey"), ("feedback", "feedback_subscriber"),
                            ("forgotten", "forgotten_pkey")):
            assert index in plans[name], plans[name]


def test_a_report_that_comes_back_after_forgetting_keeps_no_text_and_no_other_status(
        tmp_path: Path, ledger: str | Path) -> None:
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    with Store.open(ledger) as store:
        issue_id, subscriber_id = store.query("SELECT issue_id, subscriber_id FROM deliveries d JOIN subscribers s"
                                              " ON s.id = d.subscriber_id WHERE s.status = 'forgotten'")[0]
        Feedback(store).record_feedback(
            issue_id=int(issue_id), subscriber_id=int(subscriber_id), kind="complaint", status=None,
            diagnostic=f"abuse report from {ANN} (Annabel Lovelace)", fingerprint="report-2")
        assert store.query("SELECT status FROM subscribers WHERE id = ?", (subscriber_id,))[0][0] == "forgotten"
        assert int(store.query("SELECT count(*) FROM feedback WHERE kind = 'complaint'")[0][0]) == 1
    text = clear_text(ledger)
    for clear in ANN_CLEAR:
        assert clear not in text, clear


def test_an_import_of_a_forgotten_rows_placeholder_gives_it_no_name_again(tmp_path: Path, ledger: str | Path) -> None:
    """A backup (export) read back in, say: the row keeps naming nobody."""
    assert cli(tmp_path, ledger, "subscribers", "forget", ANN, "--yes").exit_code == 0
    with Store.open(ledger) as store:
        placeholder = str(store.query("SELECT email FROM subscribers WHERE status = 'forgotten'")[0][0])
        store.upsert_subscribers([SubscriberRow(placeholder, "Annabel Lovelace", {"city": "Reykjavik-Harbour"})],
                                 list_name="default", forget_keys=[KEY.encode()])
    text = clear_text(ledger)
    for clear in ANN_CLEAR:
        assert clear not in text, clear
