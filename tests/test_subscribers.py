"""Subscribers: a real SQLite file, CSV import by line, merging, never re-activating, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.errors import StoreError
from newsletter.store import MIGRATIONS, Store
from newsletter.subscribers import parse_csv, subscriber_row


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
