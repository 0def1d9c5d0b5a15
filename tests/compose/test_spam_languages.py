"""Deliverability of a German and an Arabic briefing: delivered and judged exactly as the seed is (test_spam.py).

A right-to-left issue carries marks and ``dir`` attributes the seed doesn't, and its text
is mostly in another script: none of that may cost it points with SpamAssassin, nor
break its DKIM signature.
"""

from __future__ import annotations

from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest

from tests.compose.test_spam import MAX_SCORE, deliver, dns_for
from tests.harness.spamassassin import judge, spamassassin_command

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"


@pytest.mark.parametrize("language", ["de", "ar"])
def test_a_briefing_in_another_language_passes_spamassassin_and_dkim(
        language: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spamassassin_command()  # first, so that a missing SpamAssassin is the failure reported
    delivered = deliver(FIXTURES / f"2017-07-07-trump-putin-{language}.md", tmp_path / "work")
    assert f"\r\nContent-Language: {language}\r\n".encode() in delivered.data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(delivered.data, dnsfunc=dns_for(delivered.record))
    verdict = judge(delivered.data, tmp_path / "sa-home")
    with capsys.disabled():  # in the CI log even when the test passes
        print("\n" + verdict.describe(f"the {language} briefing as delivered") + "\n")
    assert "HTML_MESSAGE" in verdict.rules, "SpamAssassin did not read the HTML part"
    assert "HTML_FONT_LOW_CONTRAST" not in verdict.rules, verdict.report
    assert verdict.score <= MAX_SCORE and verdict.positive <= MAX_SCORE, verdict.report
    assert not verdict.is_spam
