"""The delivery commands through the CLI (click's runner, no subprocess), against a real SMTP server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.compose.dkim import generate_key
from newsletter.config import load_settings
from newsletter.errors import ConfigError
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import ReturnPaths, SignedDelivery, split_keys
from tests.conftest import SEED_ISSUE, write_issue
from tests.harness.smtpserver import SmtpServer, running_server

KEY = "cli-test-key-0123456789"


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    yield from running_server()


@pytest.fixture
def workdir(tmp_path: Path, server: SmtpServer) -> Path:
    (tmp_path / "issues").mkdir()
    shutil.copy(SEED_ISSUE, tmp_path / "issues" / SEED_ISSUE.name)
    (tmp_path / "newsletter.toml").write_text(
        '[sender]\nfrom = "The Briefing <briefing@news.example.com>"\nreply_to = "editors@news.example.com"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\nconnections = 2\n'
        '[database]\npath = "news.db"\n[issues]\ndir = "issues"\n'
        "[dispatch]\nretry_initial = 0.01\nretry_max = 0.02\nwait_for_retries = 5\n",
        encoding="utf-8",
    )
    return tmp_path


def cli(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    environment = {"NEWSLETTER_SECRET_KEY": KEY, "NEWSLETTER_DKIM_KEY_FILE": "", **(env or {})}
    return CliRunner().invoke(main, ["--config", str(workdir / "newsletter.toml"), *args], env=environment)


def subscribe(workdir: Path, *rows: SubscriberRow) -> None:
    with Store.open(workdir / "news.db") as store:
        store.upsert_subscribers(list(rows), list_name="default")


def test_send_test_delivers_what_a_subscriber_gets_with_test_subject(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org", "Ann Reader"))
    result = cli(workdir, "send-test", str(workdir / "issues" / SEED_ISSUE.name),
                 "--to", "ann@example.org", "--to", "me@example.com")
    assert result.exit_code == 0, result.output
    received = {message.rcpt: message.parsed() for message in server.recorder.received()}
    assert set(received) == {"ann@example.org", "me@example.com"}
    for message in received.values():
        assert str(message["Subject"]).startswith("[TEST] A big, beautiful handshake")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["ann@example.org"]["To"].addresses[0].display_name == "Ann Reader"
    assert "/unsubscribe/1-1-" in str(received["ann@example.org"]["List-Unsubscribe"])
    assert "/unsubscribe/test" in str(received["me@example.com"]["List-Unsubscribe"])
    # The same List-Unsubscribe a subscriber gets: the one-click URL and the mailto, same token.
    ann = str(received["ann@example.org"]["List-Unsubscribe"])
    token = ann.split("/unsubscribe/", 1)[1].split(">", 1)[0]
    assert f"<mailto:editors@news.example.com?subject=unsubscribe%20{token}>" in ann
    assert "mailto:editors@news.example.com?subject=unsubscribe%20test" in str(received["me@example.com"]["List-Unsubscribe"])
    # The footer's "Manage your subscription" link: the subscriber's own (same token), the stranger's a test one.
    for address, expected in (("ann@example.org", token), ("me@example.com", "test")):
        text = received[address].get_body(("plain",)).get_content()
        html = received[address].get_body(("html",)).get_content()
        assert f"/preferences/{expected}\r\n" in text and f'/preferences/{expected}"' in html
    with Store.open(workdir / "news.db") as store:  # a test is not a delivery
        assert Ledger(store).find_issue(SEED_ISSUE.stem) is None


def test_send_test_bad_address_sends_nothing(workdir: Path, server: SmtpServer) -> None:
    result = cli(workdir, "send-test", str(workdir / "issues" / SEED_ISSUE.name),
                 "--to", "me@example.com", "--to", "not an address")
    assert result.exit_code == 2
    assert "not an address" in result.output and "Traceback" not in result.output
    assert server.recorder.received() == []


def test_send_test_refused_address_exits_1(workdir: Path, server: SmtpServer) -> None:
    server.recorder.fail_rcpt("me@example.com", "550 5.1.1 no such user")
    result = cli(workdir, "send-test", str(workdir / "issues" / SEED_ISSUE.name), "--to", "me@example.com")
    assert result.exit_code == 1
    assert "550 5.1.1 no such user" in result.output


def test_send_test_signs_with_dkim(workdir: Path, server: SmtpServer) -> None:
    key = workdir / "dkim.pem"
    record = generate_key(key)
    with (workdir / "newsletter.toml").open("a", encoding="utf-8") as config:
        config.write('[dkim]\nselector = "nl2026"\n')
    result = cli(workdir, "send-test", str(workdir / "issues" / SEED_ISSUE.name), "--to", "me@example.com",
                 env={"NEWSLETTER_DKIM_KEY_FILE": str(key)})
    assert result.exit_code == 0, result.output
    data = server.recorder.received()[0].data

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"nl2026._domainkey.news.example.com."
        return record.encode("ascii")

    assert data.startswith(b"DKIM-Signature:")
    assert dkim.verify(data, dnsfunc=dns)
    signature = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n", 1)[0]
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = head.split("\r\nFrom:", 1)[0].replace("\r\n", "").replace(" ", "").replace("\t", "")
    tags = dict(part.split("=", 1) for part in unfolded.split(":", 1)[1].split(";") if "=" in part)
    signed = [name.lower() for name in tags["h"].split(":")]
    for name in ("from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"):
        assert name in signed
    assert signature.startswith(b"DKIM-Signature:")


def test_half_configured_dkim_is_an_error(workdir: Path, server: SmtpServer) -> None:
    with (workdir / "newsletter.toml").open("a", encoding="utf-8") as config:
        config.write('[dkim]\nselector = "nl2026"\n')
    result = cli(workdir, "dispatch", "--issue", str(workdir / "issues" / SEED_ISSUE.name))
    assert result.exit_code == 1
    assert "NEWSLETTER_DKIM_KEY_FILE" in result.output
    assert server.recorder.received() == []


def test_dispatch_json_and_status(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org", "Ann"), SubscriberRow("bob@example.org", "Bob"),
              SubscriberRow("gone@example.org", "Gone"))
    server.recorder.fail_rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: user unknown")
    result = cli(workdir, "dispatch", "--issue", SEED_ISSUE.stem, "--json")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)["issues"][0]
    assert (summary["sent"], summary["failed"], summary["complete"]) == (2, 1, True)
    status = cli(workdir, "status", "--json")
    assert status.exit_code == 0
    rows = json.loads(status.stdout)
    assert rows[0]["counts"]["sent"] == 2 and rows[0]["counts"]["failed"] == 1
    assert rows[0]["errors"][0]["email"] == "gone@example.org" and rows[0]["errors"][0]["code"] == 550
    text = cli(workdir, "status")
    assert "2 sent" in text.output and "gone@example.org: failed" in text.output
    listing = cli(workdir, "subscribers", "list", "--status", "bounced", "--json")
    assert [row["email"] for row in json.loads(listing.stdout)] == ["gone@example.org"]


def test_dispatch_without_secret_key_is_an_error(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org"))
    result = cli(workdir, "dispatch", "--issue", SEED_ISSUE.stem, env={"NEWSLETTER_SECRET_KEY": ""})
    assert result.exit_code == 1
    assert "NEWSLETTER_SECRET_KEY" in result.output
    assert server.recorder.received() == []


def test_dispatch_bad_issue_file_is_one_line_exit_1(workdir: Path, server: SmtpServer) -> None:
    write_issue(workdir / "issues", "Body", front="subject: x\ndate: 2024-13-40\nsend_at: 2024-01-01T00:00:00Z\n",
                name="2024-01-01-bad.md")
    subscribe(workdir, SubscriberRow("ann@example.org"))
    result = cli(workdir, "dispatch")
    assert result.exit_code == 1
    assert "2024-01-01-bad.md:3:" in result.output
    assert "Traceback" not in result.output


def test_dispatch_dry_run_and_nothing_due(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org"))
    assert "nothing is due" in cli(workdir, "dispatch").output
    result = cli(workdir, "dispatch", "--issue", SEED_ISSUE.stem, "--dry-run")
    assert result.exit_code == 0
    assert "dry run, 1 to send" in result.output
    assert server.recorder.received() == []


def test_dispatch_bad_now_is_a_usage_error(workdir: Path) -> None:
    result = cli(workdir, "dispatch", "--now", "yesterday")
    assert result.exit_code == 2 and "--now" in result.output


def test_a_line_break_in_a_subscriber_name_cannot_add_a_header(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("eve@example.org", "Eve\r\nBcc: victim@example.org\r\nX-Evil: 1"))
    result = cli(workdir, "dispatch", "--issue", SEED_ISSUE.stem)
    assert result.exit_code == 0, result.output
    message = server.recorder.received()[0]
    head = message.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\r\nX-Evil:" not in head
    parsed = message.parsed()
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["To"].addresses[0].addr_spec == "eve@example.org"
    assert [message.rcpt for message in server.recorder.received()] == ["eve@example.org"]


def test_a_line_break_in_the_subject_is_refused_before_sending(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org"))
    issue = write_issue(workdir / "issues", "# Hi\n\nText.\n",
                        front='subject: "Hello\\r\\nBcc: victim@example.org"\ndate: 2024-01-02\n',
                        name="2024-01-02-inject.md")
    result = cli(workdir, "dispatch", "--issue", str(issue))
    assert result.exit_code == 1
    assert "2024-01-02-inject.md:2: subject must be one line" in result.output
    assert server.recorder.received() == []


def test_password_in_clear_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[smtp]\nhost = "smtp.example.com"\nport = 25\nsecurity = "none"\nusername = "u"\n')
    with pytest.raises(ConfigError, match="unencrypted|in clear"):
        load_settings(config, {"NEWSLETTER_SMTP_PASSWORD": "s3cret"})
    settings = load_settings(config, {"NEWSLETTER_SMTP_PASSWORD": ""})
    assert settings.smtp.host == "smtp.example.com"
    assert "s3cret" not in repr(load_settings(None, {"NEWSLETTER_SMTP_PASSWORD": "s3cret"}))


# --- [sender] bounce_address: said once when it is unset ---------------------------------------

NOTICE = ("note: [sender] bounce_address is not set, so bounces (to briefing@news.example.com) and unsubscribe"
          " requests by mail (to editors@news.example.com) can't be processed; set it to a mailbox that"
          " `newsletter inbound` reads\n")


def set_bounce_address(workdir: Path) -> None:
    config = workdir / "newsletter.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[sender]\n", '[sender]\nbounce_address = "bounces@news.example.com"\n'),
                      encoding="utf-8")


def test_dispatch_says_once_that_bounces_cant_be_processed(workdir: Path, server: SmtpServer) -> None:
    subscribe(workdir, SubscriberRow("ann@example.org"), SubscriberRow("bob@example.org"))
    write_issue(workdir / "issues", "Body", front="subject: Second\ndate: 2024-01-02\nsend_at: 2024-01-02T00:00:00Z\n",
                name="2024-01-02-second.md")
    (workdir / "issues" / SEED_ISSUE.name).unlink()
    shutil.copy(SEED_ISSUE, workdir / "issues" / "2024-01-01-first.md")
    first = workdir / "issues" / "2024-01-01-first.md"
    first.write_text(first.read_text(encoding="utf-8").replace("\n---", "\nsend_at: 2024-01-01T00:00:00Z\n---", 1),
                     encoding="utf-8")
    rehearsal = cli(workdir, "dispatch", "--dry-run", "--json")
    assert len(json.loads(rehearsal.stdout)["issues"]) == 2 and rehearsal.stderr == NOTICE  # stdout stays JSON
    result = cli(workdir, "dispatch", "-q")  # two issues due: still one line
    assert result.exit_code == 0, result.output
    assert {m.mail_from for m in server.recorder.received()} == {"briefing@news.example.com"}
    assert len(server.recorder.received()) == 4
    assert result.stderr.count(NOTICE) == 1 and result.stdout == "", result.stderr
    # cron, every few minutes: no line about it when nothing went out
    assert "bounce_address" not in cli(workdir, "dispatch").stderr  # both already complete
    (workdir / "issues" / "2024-01-01-first.md").unlink()
    (workdir / "issues" / "2024-01-02-second.md").unlink()
    assert cli(workdir, "dispatch").stderr == "nothing is due\n"


def test_dispatch_with_a_bounce_address_says_nothing_and_sends_from_return_paths(workdir: Path,
                                                                                 server: SmtpServer) -> None:
    set_bounce_address(workdir)
    subscribe(workdir, SubscriberRow("ann@example.org"), SubscriberRow("bob@example.org"))
    result = cli(workdir, "dispatch", "--issue", SEED_ISSUE.stem, "-q")
    assert result.exit_code == 0, result.output
    assert "bounce_address" not in result.output
    paths = ReturnPaths("bounces@news.example.com", split_keys(KEY))
    found = {message.rcpt: paths.read(message.mail_from) for message in server.recorder.received()}
    with Store.open(workdir / "news.db") as store:
        ids = {person.email: person.id for person in store.subscribers()}
        issue = Ledger(store).find_issue(SEED_ISSUE.stem)
    assert issue is not None
    assert found == {email: SignedDelivery(issue.id, ids[email]) for email in ("ann@example.org", "bob@example.org")}


def test_check_says_once_that_bounces_cant_be_processed(workdir: Path) -> None:
    issue = str(workdir / "issues" / SEED_ISSUE.name)
    result = cli(workdir, "check", issue, issue)
    assert result.stderr.count(NOTICE) == 1 and result.stderr.endswith(NOTICE), result.stderr
    assert "bounce_address" not in result.stdout  # a note about the settings, not a finding of the file
    document = json.loads(cli(workdir, "check", "--json", issue).stdout)
    assert document["notes"] == [NOTICE.rstrip("\n")]
    assert document["summary"]["findings"] == 0 and document["summary"]["exit_code"] == result.exit_code == 0
    set_bounce_address(workdir)
    quiet = cli(workdir, "check", issue)
    assert "bounce_address" not in quiet.output and quiet.exit_code == 0
    assert json.loads(cli(workdir, "check", "--json", issue).stdout)["notes"] == []
