"""``newsletter inbound`` end to end (issue 15, items 2 and 5), each part real:

* a dispatch through a private Postfix (tests/harness/postfix.py) to a relay that refuses some
  readers with 550 5.1.1 and one with 452 4.2.2: Postfix writes its own DSNs into the bounce
  Maildir, ``inbound --maildir`` reads them, and exactly those readers change;
* the IMAP mailbox of a private Dovecot (tests/harness/dovecot.py) over TLS;
* standard input, as an MTA's pipe alias gives it, with the exit status an MTA understands.

Every command runs as a process, as cron or an MTA runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import ReturnPaths, split_keys
from tests.conftest import ROOT, SEED_ISSUE
from tests.harness.dovecot import PASSWORD, USER, DovecotServer
from tests.harness.postfix import BOUNCE_DOMAIN, PostfixServer
from tests.harness.smtpserver import SmtpServer, free_port

pytest_plugins = ["tests.harness.postfix", "tests.harness.dovecot"]

KEY = "end-to-end-inbound-key-0123456789abcdef"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inbound"
READERS = ["ok1@example.com", "gone1@example.com", "ok2@example.com", "full1@example.com", "gone2@example.com",
           "ok3@example.com"]


def workspace(folder: Path, *, smtp_port: int = 8025, extra: str = "") -> Path:
    """A newsletter.toml with a bounce mailbox at the Postfix harness's bounce domain, the seed, a database."""
    shutil.copytree(SEED_ISSUE.parent, folder / "issues", dirs_exist_ok=True)
    (folder / "newsletter.toml").write_text(
        "[sender]\n"
        'from = "The Briefing <briefing@news.example.com>"\n'
        f'bounce_address = "bounces@{BOUNCE_DOMAIN}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nconnections = 2\ntimeout = 20\n'
        '[database]\npath = "news.db"\n'
        "[dispatch]\nwait_for_retries = 0\n" + extra, encoding="utf-8")
    return folder


def newsletter(folder: Path, *args: str, stdin: bytes | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("NEWSLETTER_")}
    environment.update({"NEWSLETTER_SECRET_KEY": KEY, **(env or {})})
    environment["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "newsletter", *args], cwd=folder, env=environment, input=stdin,
                          capture_output=True, check=False, timeout=120)


def statuses(folder: Path) -> dict[str, str]:
    done = newsletter(folder, "subscribers", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {row["email"]: row["status"] for row in json.loads(done.stdout)}


def summary(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stdout)
    assert isinstance(found, dict)
    return found


def test_postfix_dsns_from_a_real_dispatch_bounce_exactly_those_readers(tmp_path: Path, relay: SmtpServer,
                                                                        postfix: PostfixServer) -> None:
    relay.recorder.fail_rcpt("gone1@example.com", "550 5.1.1 <gone1@example.com>: Recipient address rejected")
    relay.recorder.fail_rcpt("gone2@example.com", "550 5.1.1 <gone2@example.com>: no such user")
    relay.recorder.fail_rcpt("full1@example.com", "452 4.2.2 <full1@example.com>: mailbox full")
    folder = workspace(tmp_path, smtp_port=postfix.port)
    (folder / "readers.csv").write_text("email\n" + "\n".join(READERS) + "\n", encoding="utf-8")
    assert newsletter(folder, "subscribers", "import", "readers.csv").returncode == 0
    sent = newsletter(folder, "dispatch", "--issue", f"issues/{SEED_ISSUE.name}", "--json")
    assert sent.returncode == 0, sent.stderr.decode()  # Postfix takes every message: refusals come by mail

    postfix.wait_for_mail(3)
    assert sorted(relay.recorder.by_recipient()) == ["ok1@example.com", "ok2@example.com", "ok3@example.com"]
    first = summary(newsletter(folder, "inbound", "--maildir", str(postfix.maildir), "--json"))
    assert (first["processed"], first["unhandled"], first["retried"]) == (3, 0, 0)
    assert first["kinds"] == {"hard_bounce": 2, "soft_bounce": 1}
    assert first["changes"] == {"bounced": 2, "soft": 1}
    assert statuses(folder) == {"ok1@example.com": "active", "gone1@example.com": "bounced",
                                "ok2@example.com": "active", "full1@example.com": "active",
                                "gone2@example.com": "bounced", "ok3@example.com": "active"}
    # Filed, not deleted: the reports are in .processed, and a second run finds nothing to do.
    assert len(list((postfix.maildir / ".processed" / "cur").iterdir())) == 3
    assert summary(newsletter(folder, "inbound", "--maildir", str(postfix.maildir), "--json"))["messages"] == 0
    # The same reports read again (put back by hand) change nothing.
    for report in (postfix.maildir / ".processed" / "cur").iterdir():
        shutil.copy(report, postfix.maildir / "new" / report.name.partition(":")[0])
    again = summary(newsletter(folder, "inbound", "--maildir", str(postfix.maildir), "--json"))
    assert again["changes"] == {"duplicate": 3}
    status = json.loads(newsletter(folder, "status", "--json").stdout)[0]
    assert (status["feedback"]["hard_bounces"], status["feedback"]["soft_bounces"]) == (2, 1)


def _delivery_dsn(folder: Path, email: str) -> bytes:
    """The Postfix 5.1.1 fixture about ``email``'s delivery of the one issue in ``folder``'s database."""
    with Store.open(folder / "news.db") as store:
        row = store.query("SELECT d.issue_id, d.subscriber_id, d.message_id FROM deliveries d JOIN subscribers s"
                          " ON s.id = d.subscriber_id WHERE s.email_key = ?", (email,))[0]
    verp = ReturnPaths(f"bounces@{BOUNCE_DOMAIN}", split_keys(KEY)).make(int(row[0]), int(row[1]))
    text = (FIXTURES / "postfix-dsn-5.1.1.eml").read_text(encoding="utf-8")
    text = text.replace("bounces+c-2n9c-pivjai472sf2f@news.example.com", verp)
    text = text.replace("Nobody@example.org", email).replace("nobody@example.org", email)
    return text.replace("2026-12-briefing.123456@news.example.com", str(row[2])).encode()


def _sent_issue(folder: Path, emails: list[str]) -> None:
    with Store.open(folder / "news.db") as store:
        store.upsert_subscribers([SubscriberRow(email) for email in emails], list_name="default")
        Ledger(store).open_issue(slug="2026-12-briefing", list_name="default", subject="News", content_hash="h",
                                 domain="news.example.com")
        with store.transaction() as cursor:
            cursor.execute("UPDATE deliveries SET status = 'sent', sent_at = '2026-12-01T09:00:00+00:00'")


def test_the_imap_mailbox_of_a_real_dovecot_is_read_and_filed(tmp_path: Path, dovecot: DovecotServer) -> None:
    folder = workspace(tmp_path, extra=(
        f'[inbound]\nhost = "127.0.0.1"\nport = {dovecot.port}\nusername = "{USER}"\n'
        f'ca_file = "{dovecot.ca_file}"\n'))
    _sent_issue(folder, ["a@example.com", "b@example.com"])
    dovecot.append("INBOX", _delivery_dsn(folder, "a@example.com"),
                   (FIXTURES / "autoreply-auto-submitted.eml").read_bytes(), (FIXTURES / "spam.eml").read_bytes())
    done = newsletter(folder, "inbound", "--imap", "--json", env={"NEWSLETTER_IMAP_PASSWORD": PASSWORD})
    found = summary(done)
    assert (found["processed"], found["unhandled"], found["changes"]) == (2, 1, {"bounced": 1})
    assert PASSWORD.encode() not in done.stdout + done.stderr
    assert len(dovecot.folder_messages("processed")) == 2
    assert dovecot.folder_messages("unhandled") == [(FIXTURES / "spam.eml").read_bytes().replace(b"\r\n", b"\n")] \
        or len(dovecot.folder_messages("unhandled")) == 1
    assert dovecot.folder_messages("INBOX") == []
    assert statuses(folder) == {"a@example.com": "bounced", "b@example.com": "active"}


def test_a_piped_message_is_acted_on_and_kept(tmp_path: Path) -> None:
    folder = workspace(tmp_path)
    _sent_issue(folder, ["a@example.com", "b@example.com"])
    done = newsletter(folder, "inbound", "-", stdin=_delivery_dsn(folder, "b@example.com"))
    assert done.returncode == 0, done.stderr
    assert b"1 processed" in done.stdout
    assert statuses(folder) == {"a@example.com": "active", "b@example.com": "bounced"}
    assert len(list((folder / "returned-mail" / ".processed" / "new").iterdir())) == 1
    spam = newsletter(folder, "inbound", "-", stdin=(FIXTURES / "spam.eml").read_bytes())
    assert spam.returncode == 0 and b"1 unhandled" in spam.stdout
    assert len(list((folder / "returned-mail" / ".unhandled" / "new").iterdir())) == 1


def test_a_piped_message_while_the_database_is_unreachable_exits_75_for_the_mta_to_retry(tmp_path: Path) -> None:
    folder = workspace(tmp_path)
    unreachable = f"postgresql://news@127.0.0.1:{free_port()}/news"  # nothing listens there
    done = newsletter(folder, "inbound", "-", stdin=(FIXTURES / "postfix-dsn-5.1.1.eml").read_bytes(),
                      env={"NEWSLETTER_DATABASE_URL": unreachable})
    assert done.returncode == 75, done.stderr
    assert done.stderr.decode().count("\n") == 1 and done.stderr.startswith(b"error: ")
    assert not (folder / "returned-mail").exists()  # the MTA keeps it; nothing half-filed here


def test_a_piped_message_too_large_is_refused_with_one_line(tmp_path: Path) -> None:
    folder = workspace(tmp_path)
    _sent_issue(folder, ["a@example.com"])
    huge = b"Subject: x\r\n\r\n" + b"x" * (51 * 1024 * 1024)
    done = newsletter(folder, "inbound", "-", stdin=huge)
    assert done.returncode not in (0, 75)
    assert done.stderr.decode().count("\n") == 1


def test_a_maildir_or_mbox_that_isnt_there_is_named_with_exit_2(tmp_path: Path) -> None:
    folder = workspace(tmp_path)
    for option, path in (("--maildir", "no-such-dir"), ("--mbox", "no-such-file")):
        done = newsletter(folder, "inbound", option, path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.decode().splitlines() == [f"error: {path}: no such " + (
            "Maildir folder (it needs cur/, new/ and tmp/)" if option == "--maildir" else "mbox file")]
