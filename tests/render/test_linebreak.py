"""Text parts in Chinese, Japanese and Korean: wrapped between characters, by columns, keeping kinsoku."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from newsletter.config import ListSettings, SenderSettings
from newsletter.issue.parse import parse_issue
from newsletter.preflight.content import check_rendered
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import render_issue
from newsletter.render.linebreak import columns, wrap_wide
from newsletter.render.plaintext import WIDTH

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"
#: characters a Japanese line may not start with (closing brackets, small kana, 、。), nor end with (opening brackets)
NO_START = "、。，．）」』】〕・ー！？ぁぃぅぇぉっゃゅょァィゥェォッャュョ"
NO_END = "（「『【〔"
SENTENCE = ("トランプ米大統領は、ドイツ・ハンブルクで行われたロシアのプーチン大統領との初めての会談で、"
            "2016年の大統領選挙へのロシアの介入について繰り返し問いただした。")


def japanese_text() -> str:
    source = (FIXTURES / "ja.md").read_text(encoding="utf-8").replace("\ndate:", "\nlanguage: ja\ndate:", 1)
    return render_issue(parse_issue(source, source="ja.md"), sender=SenderSettings()).text


def test_a_japanese_paragraph_is_wrapped_between_characters_by_columns() -> None:
    lines = wrap_wide(SENTENCE, WIDTH, "* ", "  ")
    assert len(lines) == 3
    assert all(columns(line) <= WIDTH for line in lines)
    assert columns(lines[0]) >= WIDTH - 2  # filled, not cut early
    assert "".join(line[2:] for line in lines) == SENTENCE  # nothing lost, nothing added but the breaks
    assert not any(line[2] in NO_START or line[-1] in NO_END for line in lines)


def test_latin_words_and_urls_inside_are_never_cut() -> None:
    text = SENTENCE + " [Washington Post / Abby Phillip] https://www.example.com/2017/07/07/a-very-long-path-with-hyphens"
    lines = wrap_wide(text, WIDTH)
    assert "https://www.example.com/2017/07/07/a-very-long-path-with-hyphens" in lines
    assert any("Washington" in line for line in lines)
    assert all(columns(line) <= WIDTH or line.startswith("https://") for line in lines)


def test_a_japanese_issue_s_text_part_fits_and_check_is_quiet_about_it() -> None:
    text = japanese_text()
    body = text.split("\n-- \n", 1)[0].splitlines()
    assert all(columns(line) <= WIDTH for line in body if not line.startswith("http"))
    assert max(columns(line) for line in body) >= WIDTH - 4  # the paragraphs fill their lines
    heading, underline = body[2], body[3]
    assert set(underline) == {"="} and len(underline) == columns(heading)  # two columns per character
    assert [finding for finding in check_rendered("ja.md", "<html></html>", text) if finding.code == "text-width"] == []


def test_check_counts_columns_not_characters() -> None:
    forty = "会" * 40  # 40 characters, 80 columns
    [finding] = [f for f in check_rendered("x.md", "<html></html>", forty + "\n") if f.code == "text-width"]
    assert "80 columns" in finding.message
    assert [f for f in check_rendered("x.md", "<html></html>", "\u200fword " * 15 + "\n") if f.code == "text-width"] == []


def test_a_confirmation_email_in_japanese_is_wrapped_too() -> None:
    title = "毎朝のブリーフィング" * 6
    sender = dataclasses.replace(SenderSettings(), language="ja")
    notice = render_confirmation(email="a@example.org", lists=[ListSettings(name="b", title=title)],
                                 confirm_url="https://news.example.com/confirm/t", expires=dt.date(2017, 7, 7),
                                 sender=sender)
    lines = notice.text.splitlines()
    assert all(columns(line) <= WIDTH for line in lines if not line.startswith("http"))
    assert "".join(line[2:] for line in lines if title[:5] in line or line.startswith("  毎")).startswith(title[:30])


def test_the_language_libraries_are_imported_only_when_used() -> None:
    """Every command imports the CLI; Babel, uniseg and wcwidth cost ~25 ms that only a render needs."""
    import subprocess
    import sys

    script = ("import sys, newsletter.cli.commands\n"
              "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('babel', 'uniseg', 'wcwidth'))\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
