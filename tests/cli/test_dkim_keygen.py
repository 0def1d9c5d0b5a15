"""`newsletter dkim-keygen` through click's runner: the key file, and a zone line whose record verifies."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.compose.dkim import load_signer

UNSIGNED = (
    b"From: The Briefing <briefing@news.example.com>\r\nTo: ann@example.org\r\nSubject: Hello\r\n"
    b"Date: Fri, 07 Jul 2017 10:00:00 +0000\r\nMessage-ID: <m1@news.example.com>\r\n\r\nHello, Ann.\r\n"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text('[sender]\nfrom = "The Briefing <briefing@news.example.com>"\n', encoding="utf-8")
    return path


def keygen(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), "dkim-keygen", *args],
                              env={"NEWSLETTER_DKIM_KEY_FILE": ""})


def test_keygen_writes_a_0600_key_and_a_zone_line_whose_record_verifies(config: Path, tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    result = keygen(config, str(key), "--selector", "nl2026")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {key}; publish this TXT record:\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dkim.pem", "newsletter.toml"]
    match = re.fullmatch(r'nl2026\._domainkey\.news\.example\.com\. IN TXT \( ((?:"[^"]*" ?)+) \)\n', result.stdout)
    assert match, result.stdout
    strings = re.findall(r'"([^"]*)"', match.group(1))
    assert len(strings) == 2 and all(len(string.encode("ascii")) <= 255 for string in strings)
    record = "".join(strings)  # what a resolver hands dkimpy: the strings joined, nothing between
    assert record.startswith("v=DKIM1; k=rsa; p=")

    signed = load_signer(key, selector="nl2026", domain="news.example.com").sign(UNSIGNED)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode("ascii") if name == b"nl2026._domainkey.news.example.com." else None

    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Hello, Ann.", b"Hello, Eve."), dnsfunc=dns)


def test_keygen_never_overwrites_a_key(config: Path, tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    key.write_bytes(b"the key published in DNS\n")
    result = keygen(config, str(key))
    assert result.exit_code == 2
    assert result.stderr == f"error: DKIM key file {key}: already exists (not overwritten: its key may be published in DNS)\n"
    assert result.stdout == ""
    assert key.read_bytes() == b"the key published in DNS\n"


def test_keygen_refuses_a_small_key(config: Path, tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    result = keygen(config, str(key), "--bits", "1024")
    assert result.exit_code == 2
    assert "1024 is not in the range 2048<=x<=4096" in result.stderr
    assert not key.exists()
