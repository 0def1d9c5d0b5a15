"""Subscribers: a real SQLite file, CSV import by line, merging, never re-activating, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from newsletter.cli.commands import main
from newsletter.errors import StoreError
from newsletter.store.sqlite import MIGRATIONS
from newsletter.store.subscriber_files import parse_csv, subscriber_row
from newsletter.store.subscribers import Store, Subscriber


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text('[database]\npath = "data/news.db"\n', encoding="utf-8")
    return path


def run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


CSV = (
    "email,name,city\n"
    "ann@example.org,Ann Reader,Leeds\n"
    "not-an-address,Bad Row,X\n"
    "ANN@Example.org,Ann R.,York\n"
    "bob@example.org,\"Bob\r\nBcc: evil@example.org\",\n"
    "carol@localhost,Carol,\n"
    "dan@example.org,Dan,Paris\n"
)


def test_schema_migrates_once_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with Store.open(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Store.open(path) as store:  # a second open applies nothing again
        assert store.schema_version == len(MIGRATIONS)
        tables = {row[0] for row in store.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"subscribers", "lists", "memberships", "issues", "deliveries"} <= tables


def test_csv_rows_by_line() -> None:
    result = parse_csv(CSV, source="readers.csv")
    assert [str(e).split(":")[:2] for e in result.errors] == [["readers.csv", "3"], ["readers.csv", "7"]]  # bob spans lines 5-6
    assert "not-an-address" in str(result.errors[0])
    emails = [row.email for row in result.rows]
    assert emails == ["ANN@example.org", "bob@example.org", "dan@example.org"]  # Ann merged, later row wins
    assert result.rows[0].fields == {"city": "York"}
    assert result.rows[1].name == "Bob Bcc: evil@example.org"  # CR/LF gone: can't reach a header


def test_import_merges_and_never_reactivates(tmp_path: Path, config: Path) -> None:
    csv_path = tmp_path / "readers.csv"
    csv_path.write_text(CSV, encoding="utf-8")
    code, out, err = run(config, "subscribers", "import", str(csv_path), "--list", "morning")
    assert code == 1  # rows were refused
    assert "readers.csv:3:" in err and "readers.csv:7:" in err
    assert "3 added" in out
    assert run(config, "subscribers", "remove", "ann@example.org")[0] == 0
    assert run(config, "subscribers", "remove", "dan@example.org", "--list", "morning")[0] == 0
    with Store.open(tmp_path / "data" / "news.db") as store:
        (bob,) = [p for p in store.subscribers() if p.email == "bob@example.org"]
        store.mark_bounced(bob.id)
    code, out, _ = run(config, "subscribers", "import", str(csv_path), "--list", "morning")
    assert "0 added, 3 updated (3 stay unsubscribed or bounced)" in out
    code, out, _ = run(config, "subscribers", "count", "--list", "morning", "--json")
    assert json.loads(out) == {"active": 0, "unsubscribed": 2, "bounced": 1}
    code, out, _ = run(config, "subscribers", "list", "--json")
    people = {p["email"]: p for p in json.loads(out)}
    assert people["ANN@example.org"]["status"] == "unsubscribed"
    assert people["bob@example.org"]["status"] == "bounced"
    assert people["dan@example.org"]["lists"] == []


def test_all_or_nothing_writes_nothing(tmp_path: Path, config: Path) -> None:
    csv_path = tmp_path / "readers.csv"
    csv_path.write_text(CSV, encoding="utf-8")
    code, _, err = run(config, "subscribers", "import", str(csv_path), "--all-or-nothing")
    assert code == 2 and "nothing imported" in err
    assert not (tmp_path / "data" / "news.db").exists()


def test_missing_email_column(tmp_path: Path, config: Path) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("mail,name\na@example.org,A\n", encoding="utf-8")
    code, _, err = run(config, "subscribers", "import", str(csv_path))
    assert code == 2 and "r.csv:1: no 'email' column" in err


def test_export_defuses_formulas(config: Path) -> None:
    assert run(config, "subscribers", "add", "eve@example.org", "--name", "=HYPERLINK(\"x\")",
               "--field", "note=+1")[0] == 0
    code, out, _ = run(config, "subscribers", "export", "--format", "csv")
    assert code == 0
    assert out.splitlines()[0] == "email,name,status,lists,note"
    assert "'=HYPERLINK" in out and "'+1" in out


def test_add_refuses_bad_address(config: Path) -> None:
    code, _, err = run(config, "subscribers", "add", "bad@@example.org")
    assert code == 2 and "invalid address" in err


def test_smtputf8_addresses_are_refused_and_idn_domains_encoded() -> None:
    assert subscriber_row("x@münchen.de").email == "x@xn--mnchen-3ya.de"
    with pytest.raises(Exception, match="invalid address"):
        subscriber_row("üser@example.de")


def test_damaged_database_is_a_clear_error(tmp_path: Path, config: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "news.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="damaged or not a database"):
        Store.open(tmp_path / "data" / "news.db")
    code, _, err = run(config, "subscribers", "count")
    assert code == 1 and err.startswith("error: ") and "damaged" in err


def test_import_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with Store.open(path) as store:
        rows = [subscriber_row(f"r{n}@example.org") for n in range(50)]
        blocker = sqlite3.connect(path, timeout=0.1)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        store.connection.execute("PRAGMA busy_timeout = 100")
        with pytest.raises(StoreError, match="locked"):
            store.upsert_subscribers(rows, list_name="default")
        blocker.rollback()
        blocker.close()
        assert store.count() == {"active": 0, "unsubscribed": 0, "bounced": 0}
        store.upsert_subscribers(rows, list_name="default")
        assert store.count()["active"] == 50


# --- the streaming parts hold to what they replace --------------------------------------------

_FUZZ = hypothesis_settings(hypothesis_settings.get_profile("fuzz"), max_examples=300)
_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_LONG = ".".join(["d" * 63] * 3) + "." + "e" * 45 + ".org"  # 241 characters: a valid domain, little room left
_DOMAINS = ["example.org", "Example.COM", "mail.example.co.uk", "münchen.de", "xn--mnchen-3ya.de", "a-b.example",
            "example.org.", "localhost", "x.test", "a..b.org", "-a.org", "[127.0.0.1]", "1.2.3.4",
            ".".join(["d" * 60] * 3) + ".org", ".".join(["e" * 63] * 4) + ".org", _LONG]


def _validator(address: str) -> str | None:
    """What email-validator itself says, with the options normalise_address uses."""
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(address.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return str(result.ascii_email or result.normalized)


@_FUZZ
@given(local=st.one_of(st.text(_ATEXT + ".", min_size=0, max_size=70),
                       st.sampled_from(["Postmaster", "INFO", "abuse", "ann", "a" * 64, "a" * 65, '"q"', "é"])),
       domain=st.sampled_from(_DOMAINS), space=st.sampled_from(["", " "]))
@example(local="a" * 12, domain=_LONG, space="")  # 254 characters: the longest address there is
@example(local="a" * 13, domain=_LONG, space="")  # one too many
def test_a_remembered_domain_gives_email_validator_s_own_answer(local: str, domain: str, space: str) -> None:
    from newsletter.errors import SubscriberError
    from newsletter.store.subscriber_files import normalise_address

    def ours(address: str) -> str | None:
        try:
            return normalise_address(address)
        except SubscriberError:
            return None

    assert ours(f"warm@{domain}") == _validator(f"warm@{domain}")  # the domain is remembered now, if valid
    address = f"{space}{local}@{domain}{space}"
    assert ours(address) == _validator(address)


@_FUZZ
@given(data=st.lists(st.sampled_from([b"a", b",", b'"', b"\r", b"\n", b"\r\n", b"\xc3\xa9", b"\xe9", b"\xef\xbb\xbf",
                                      b"\xff\xfe", b"\x00"]), max_size=16).map(b"".join))
def test_csv_lines_are_the_lines_of_the_decoded_file(data: bytes) -> None:
    import io

    from newsletter.errors import SubscriberError
    from newsletter.store.subscriber_files import csv_lines, decode_csv

    try:
        expected: list[str] | str = [line for line in io.StringIO(decode_csv(data, source="r.csv"), newline="")]
    except SubscriberError as error:
        expected = str(error)
    try:
        got: list[str] | str = list(csv_lines(io.BytesIO(data), source="r.csv"))
    except SubscriberError as error:
        got = str(error)
    assert got == expected


@_FUZZ
@given(people=st.lists(st.builds(
    Subscriber, id=st.just(1), email=st.text(max_size=5), name=st.text(max_size=5),
    fields=st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3), status=st.text(max_size=3),
    lists=st.lists(st.text(max_size=3), max_size=3).map(tuple)), max_size=4))
def test_the_json_export_is_json_dumps_text(people: list[Subscriber]) -> None:
    from newsletter.store.subscriber_files import export_json

    assert export_json(people) == json.dumps(
        [{"email": p.email, "name": p.name, "status": p.status, "lists": list(p.lists), "fields": dict(p.fields)}
         for p in people], indent=2, ensure_ascii=False)
