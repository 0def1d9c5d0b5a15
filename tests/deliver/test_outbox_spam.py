"""Deliverability of the confirmation email: SpamAssassin's verdict and dkimpy's, on the bytes a reader's
mail system gets (``subscribers add --pending`` through the capture SMTP server into a Maildir), as
tests/compose/test_spam.py does for the seed issue."""

from __future__ import annotations

from pathlib import Path

import dkim  # type: ignore[import-untyped]
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.compose.dkim import generate_key
from newsletter.devtools.outbox import Outbox
from tests.compose.test_spam import CONFIG, DOMAIN, MAX_SCORE, SELECTOR
from tests.harness.spamassassin import judge, spamassassin_command

LISTS = """
[lists.briefing]
title = "The Daily Briefing"
description = "The day's news in five minutes, every weekday morning."
"""


def test_the_confirmation_email_scores_low_and_its_signature_verifies(tmp_path: Path) -> None:
    command = spamassassin_command()  # first: a missing SpamAssassin is the failure reported
    assert command
    key = tmp_path / "dkim.pem"
    record = generate_key(key)
    (tmp_path / "issues").mkdir()
    with Outbox(tmp_path / "maildir", port=0) as outbox:
        config = tmp_path / "newsletter.toml"
        config.write_text(CONFIG.format(port=outbox.port) + LISTS, encoding="utf-8")
        result = CliRunner().invoke(
            main, ["--config", str(config), "subscribers", "add", "ann@example.org", "--list", "briefing", "--pending"],
            env={"NEWSLETTER_SECRET_KEY": "spam-test-key-0123456789abcdef", "NEWSLETTER_DKIM_KEY_FILE": str(key)},
        )
        assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "maildir" / "new").iterdir()
    data = path.read_bytes()
    assert b"\r\nAuto-Submitted: auto-generated\r\n" in data
    name = f"{SELECTOR}._domainkey.{DOMAIN}.".encode("ascii")
    assert dkim.verify(data, dnsfunc=lambda qname, timeout=5: record.encode("ascii") if qname == name else None)
    verdict = judge(data, tmp_path / "sa-home")
    print(verdict.describe("confirmation email"))
    assert verdict.score <= MAX_SCORE, verdict.describe("confirmation email")
