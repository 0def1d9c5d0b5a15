"""The CLI through click's runner: render, check, exit codes, help, and nothing written on error."""

from __future__ import annotations

import email
import json
import re
import subprocess
import sys
from email import policy
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.preflight.content import GMAIL_CLIP_BYTES
from tests.conftest import ROOT, SEED_ISSUE, write_issue


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_render_writes_html_text_and_eml(tmp_path: Path) -> None:
    code, out, _ = run("render", str(SEED_ISSUE), "-o", str(tmp_path))
    assert code == 0, out
    slug = "2017-07-07-trump-putin"
    html = (tmp_path / f"{slug}.html").read_text(encoding="utf-8")
    text = (tmp_path / f"{slug}.txt").read_text(encoding="utf-8")
    eml = (tmp_path / f"{slug}.eml").read_bytes()
    assert html.startswith("<!doctype html>")
    assert len(html.encode()) < GMAIL_CLIP_BYTES
    assert "Face to face" in text
    msg = email.message_from_bytes(eml, policy=policy.default)
    assert msg["To"] == "Example Reader <reader@example.com>"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]  # type: ignore[attr-defined]
    assert "fonts.googleapis" not in html and "@import" not in html


def test_render_json(tmp_path: Path) -> None:
    code, out, _ = run("render", str(SEED_ISSUE), "-o", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert Path(data["eml"]).exists() and data["html_bytes"] > 1000


@pytest.mark.parametrize(
    ("front", "body", "expected"),
    [
        ("subject: x\ndate: 2024-13-01\n", "Hi\n", ":3: date '2024-13-01' does not exist"),
        ("subject: x\ndate: 2024-01-01\ntemplate: nope\n", "Hi\n", ":4: unknown template 'nope' (available: briefing)"),
        ("subject: x\ndate: 2024-01-01\ncolour: red\n", "Hi\n", ":4: unknown key 'colour'"),
        ("subject: x\n", "Hi\n", ":1: missing required key 'date'"),
    ],
)
def test_bad_issue_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, front: str, body: str, expected: str) -> None:
    issue = write_issue(tmp_path, body, front=front)
    out_dir = tmp_path / "out"
    code, out, err = run("render", str(issue), "-o", str(out_dir))
    assert code == 2
    assert err.strip() == err.strip().splitlines()[0], "one line"
    assert err.startswith(f"{issue}{expected}")
    assert out == ""
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_bad_render_keeps_earlier_output(tmp_path: Path) -> None:
    good = write_issue(tmp_path, "Good\n")
    assert run("render", str(good), "-o", str(tmp_path / "out"))[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    good.write_text("---\nsubject: x\ndate: 2024-02-31\n---\nBad\n", encoding="utf-8")
    assert run("render", str(good), "-o", str(tmp_path / "out"))[0] == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_missing_file(tmp_path: Path) -> None:
    code, _, err = run("render", str(tmp_path / "nope.md"))
    assert code == 2 and "can't read the file" in err


def test_check_seed_is_clean() -> None:
    code, out, _ = run("check", str(SEED_ISSUE))
    assert code == 0, out


def test_check_findings_exit_1_and_json(tmp_path: Path) -> None:
    issue = write_issue(
        tmp_path,
        "[relative](/about) and ![pic](images/a.png)\n\n```\n" + "x" * 100 + "\n```\n",
        front="subject: " + "S" * 90 + "\ndate: 2024-01-02\n",
    )
    code, out, _ = run("check", "--json", str(issue))
    assert code == 1
    codes = {row["code"] for row in json.loads(out)["findings"]}
    assert {"subject-length", "no-preheader", "relative-link", "text-width"} <= codes
    rows = {row["code"]: row for row in json.loads(out)["findings"]}
    assert rows["relative-link"]["line"] == 5


def test_check_invalid_file_exit_2(tmp_path: Path) -> None:
    issue = write_issue(tmp_path, "Hi\n", front="subject: x\n")
    code, _, err = run("check", str(issue))
    assert code == 2 and "missing required key 'date'" in err


def test_check_gmail_clip(tmp_path: Path) -> None:
    paragraphs = "\n\n".join(f"Paragraph {n} " + "words " * 60 for n in range(400))
    issue = write_issue(tmp_path, paragraphs + "\n")
    code, out, _ = run("check", "--json", str(issue))
    assert code == 1
    assert "gmail-clip" in {row["code"] for row in json.loads(out)["findings"]}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*path, name)))
    return found


@pytest.mark.parametrize(("path", "command"), _commands(main), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help_with_an_example(path: tuple[str, ...], command: click.Command) -> None:
    assert command.help and "Example" in command.help, f"{' '.join(path)} needs a docstring with an example"
    code, out, _ = run(*path, "--help")
    assert code == 0 and "Usage:" in out


def test_the_installed_command_flushes_its_output_and_keeps_exit_codes(tmp_path: Path) -> None:
    """``run`` skips the interpreter's clean-up: piped output must still arrive, codes must still mean things."""
    command = [sys.executable, "-m", "newsletter"]
    rendered = subprocess.run([*command, "render", str(SEED_ISSUE), "-o", str(tmp_path), "--json"],
                              capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    written = json.loads(rendered.stdout)  # a block-buffered pipe, flushed before the fast exit
    assert Path(written["eml"]).stat().st_size == written["eml_bytes"]
    broken = write_issue(tmp_path, "Body\n", front="subject: [unclosed\n")
    checked = subprocess.run([*command, "check", str(broken)], capture_output=True, text=True, check=False)
    assert checked.returncode == 2
    assert str(broken) in checked.stderr


def test_check_prints_the_client_table_and_accessibility_and_exits_0_on_the_seed() -> None:
    code, out, err = run("check", str(SEED_ISSUE))
    assert code == 0, out + err
    lines = out.splitlines()
    header = next(line for line in lines if line.strip().startswith("client"))
    assert header.split() == ["client", "unsupported", "partial", "untested", "accepted", "unknown"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ") and line.split()[0] in (
        "gmail", "outlook-windows", "apple-mail", "yahoo")}
    assert set(rows) == {"gmail", "outlook-windows", "apple-mail", "yahoo"}
    assert all(row[0] == "0" for row in rows.values())  # nothing unsupported that isn't a deliberate choice
    assert int(rows["outlook-windows"][3]) > 0  # @media and friends: accepted, and said so
    assert "accessibility: 0 finding(s)" in out
    assert "info (-a shows them)" in err


def test_check_json_has_the_caniemail_pages_and_other_clients_can_be_chosen() -> None:
    code, out, _ = run("check", "--json", "--clients", "outlook-macos,samsung-email", str(SEED_ISSUE))
    rows = json.loads(out)["findings"]
    compat = [row for row in rows if row["code"].startswith("compat-")]
    assert compat and any("https://www.caniemail.com/features/" in row["message"] for row in compat)
    assert all("Gmail" not in row["message"] for row in compat)  # only the clients asked for
    code, _, _ = run("check", "--clients", "no-such-client", str(SEED_ISSUE))
    assert code == 2


@pytest.mark.slow
@pytest.mark.browser
def test_check_screenshots_in_chromium(tmp_path: Path) -> None:
    code, out, err = run("check", "--screenshots", str(tmp_path), str(SEED_ISSUE))
    assert code == 0, out + err
    assert "dark mode in Chromium: 0 finding(s)" in out
    shots = sorted(path.name for path in tmp_path.glob("*.png"))
    assert shots == [f"{SEED_ISSUE.stem}-{kind}.png" for kind in ("375", "dark", "light")]
    assert all(path.stat().st_size > 10_000 for path in tmp_path.glob("*.png"))


def test_a_list_name_no_issue_could_address_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text('[database]\npath = "n.db"\n', encoding="utf-8")
    code, _, err = run("--config", str(config), "subscribers", "add", "ann@example.org", "--list", "Morning News")
    assert code == 2 and "list name 'Morning News'" in err
    people = tmp_path / "p.csv"
    people.write_text("email\nann@example.org\n", encoding="utf-8")
    code, _, err = run("--config", str(config), "subscribers", "import", str(people), "--list", "x\ny")
    assert code == 2 and "list name" in err
    assert not (tmp_path / "n.db").exists() or "ann@" not in (tmp_path / "n.db").read_bytes().decode("latin-1")


def test_a_control_character_in_the_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text('[sender]\npostal_address = "1 Main St\\u000bSpringfield"\n', encoding="utf-8")
    code, _, err = run("--config", str(config), "render", str(SEED_ISSUE), "-o", str(tmp_path / "out"))
    assert code == 2 and "postal_address contains a control character" in err


def _coded(out: str, *codes: str) -> list[str]:
    """The printed findings with one of ``codes``."""
    return [line for line in out.splitlines() if line.rstrip().endswith(tuple(f"[{code}]" for code in codes))]


def test_check_reports_weak_alt_text(tmp_path: Path) -> None:
    issue = write_issue(tmp_path, "# Pictures\n\nWords before the pictures, enough of them to read.\n\n"
                        '![image](https://example.com/a.png "600x300")\n\n'
                        '![Photo](https://example.com/b.png "600x300")\n\n'
                        '![IMG_0042.jpg](https://example.com/IMG_0042.jpg "600x300")\n\n'
                        '![Screenshot 2024-01-02 at 10.15.32.png](https://example.com/c.png "600x300")\n\n'
                        '![The river at dawn, under fog](https://example.com/river.jpg "600x300")\n')
    code, out, _ = run("check", str(issue))
    assert code == 1
    weak = _coded(out, "a11y-alt", "image-alt")
    assert [line.split("image '", 1)[1].split("'", 1)[0] for line in weak] == [
        "https://example.com/a.png", "https://example.com/b.png", "https://example.com/IMG_0042.jpg",
        "https://example.com/c.png"], out
    assert all(": warning: " in line for line in weak)
    assert "accessibility: 4 finding(s)" in out


def test_check_reports_an_empty_alt_on_a_linked_image_and_a_missing_alt_once(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    own = (ROOT / "templates" / "briefing.mjml").read_text(encoding="utf-8").replace(
        "<mj-section css-class=\"nl-card\" padding=\"28px 0 8px 0\">",
        "<mj-raw><a href=\"https://example.com/\"><img src=\"https://example.com/logo.png\" alt=\"\" width=\"120\" "
        "height=\"40\"></a><img src=\"https://example.com/masthead.png\" width=\"600\" height=\"80\"></mj-raw>"
        "\n    <mj-section css-class=\"nl-card\" padding=\"28px 0 8px 0\">", 1)
    (templates / "briefing.mjml").write_text(own, encoding="utf-8")
    config = tmp_path / "newsletter.toml"
    config.write_text('[templates]\ndir = "templates"\n', encoding="utf-8")
    issue = write_issue(tmp_path, "# Words\n\nA paragraph with enough words to read on its own.\n")
    code, out, _ = run("--config", str(config), "check", str(issue))
    assert code == 1
    alt = _coded(out, "a11y-alt", "image-alt")
    assert len(alt) == 2, alt  # the missing alt once (image-alt), not again as a11y-alt
    assert "logo.png' is a link's only content but its alt is empty" in alt[1] and ": error: " in alt[1]
    assert "masthead.png' in the HTML has no alt attribute" in alt[0] and alt[0].endswith("[image-alt]")


TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAUAAAAFCAYAAACNbyblAAAAHElEQVQI12P4//8/w38GIAXDIBKE0DHxgl"
            "jNBAAO9TXL0Y4OHwAAAABJRU5ErkJggg==")


def test_check_warns_about_a_data_image_naming_the_clients_that_dont_show_it(tmp_path: Path) -> None:
    """The README allows data:image images; caniemail says Gmail doesn't show them: a warning, not an error."""
    issue = write_issue(tmp_path, "# A dot\n\nA paragraph with enough words to read on its own.\n\n"
                        f'![A red dot, five pixels wide]({TINY_PNG} "5x5")\n')
    code, out, _ = run("check", str(issue))
    assert code == 1
    assert "relative-link" not in out and ": error: " not in out, out
    [warning] = [line for line in out.splitlines() if "image-base64" in line]
    assert ": warning: " in warning and warning.endswith("[compat-unsupported]")
    assert "data: URI" in warning and "Gmail iOS" in warning and "Gmail webmail" in warning
    assert "https://www.caniemail.com/features/image-base64/" in warning
    gmail = next(line.split() for line in out.splitlines() if line.startswith("  gmail "))
    assert gmail[1] == "1"  # in the table as unsupported
    # clients that show data: images hear nothing of it
    code, out, _ = run("check", "-a", "--clients", "apple-mail,yahoo", str(issue))
    assert "image-base64" not in out


def test_check_reports_direction_controls_with_their_line_and_never_prints_them(tmp_path: Path) -> None:
    issue = write_issue(tmp_path, "# Your invoice\n\nA paragraph with enough words to read on its own.\n\n"
                        "- Attached: Invoice \u202egpj.exe\u202c for March\n- A clean line\n\n"
                        "A quote \u2067\u05e9\u05dc\u05d5\u05dd\u2069 in Hebrew.\n")
    code, out, _ = run("check", str(issue))
    assert code == 1
    rows = [line for line in out.splitlines() if line.endswith("[direction-control]")]
    assert [row.split(": warning: ")[0] for row in rows] == [f"{issue}:10", f"{issue}:13"], out
    assert "U+202E RIGHT-TO-LEFT OVERRIDE, U+202C POP DIRECTIONAL FORMATTING (from column 21)" in rows[0]
    assert "Invoice <U+202E>gpj.exe<U+202C> for March" in rows[0]
    assert "U+2067 RIGHT-TO-LEFT ISOLATE, U+2069 POP DIRECTIONAL ISOLATE" in rows[1]
    assert not any(chr(code) in out for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
    code, out, _ = run("check", str(SEED_ISSUE))
    assert "direction-control" not in out


# --- check --json holds everything the text shows ---------------------------------------


def _text_and_json(*args: str) -> tuple[int, str, str, str, dict[str, Any]]:
    """``check -a`` (every finding printed), plain ``check`` (the summary's info count) and ``check --json``."""
    code, out, err = run("check", "-a", *args)
    _, _, plain_err = run("check", *args)
    json_code, printed, _ = run("check", "--json", *args)
    document = json.loads(printed)
    assert code == json_code == document["summary"]["exit_code"]
    return code, out, err, plain_err, document


def _assert_text_is_in_json(out: str, err: str, plain_err: str, document: dict[str, Any]) -> None:
    rows = document["findings"]
    invalid = [row for row in rows if row["code"] == "invalid"]
    # every finding line, in order, and every invalid file's line
    findings = [line for line in out.splitlines() if not line.startswith("  ") and ": email-client" not in line]
    assert findings == [f"{row['source']}:{row['line']}: {row['severity']}: {row['message']} [{row['code']}]"
                        for row in rows if row["code"] != "invalid"]
    assert [line for line in err.splitlines() if "file(s) checked" not in line] == [
        f"{row['source']}:{row['line']}: {row['message']}" for row in invalid] + document["notes"]
    # each file's block: the table row by row, the accessibility and dark-mode lines
    lines = [line for line in out.splitlines() if line.startswith("  ") or ": email-client" in line]
    starts = [index for index, line in enumerate(lines) if ": email-client compatibility (caniemail.com):" in line]
    blocks = [lines[start:end] for start, end in zip(starts, [*starts[1:], len(lines)], strict=True)]
    assert [block[0].split(": email-client")[0] for block in blocks] == [file["source"] for file in document["files"]]
    for block, file in zip(blocks, document["files"], strict=True):
        compat = file["compatibility"]
        assert block[1].split() == ["client", *compat["kinds"]]
        table = {line.split()[0]: [int(value) for value in line.split()[1:]] for line in block[2:-2]}
        assert table == {client: [counts[kind] for kind in compat["kinds"]] for client, counts in compat["clients"].items()}
        accessibility = file["accessibility"]
        assert block[-2] == f"  accessibility: {accessibility['findings']} finding(s) ({', '.join(accessibility['checks'])})"
        dark = file["dark_mode"]
        if dark["browser"]:
            shots = f"; screenshots: {', '.join(dark['screenshots'])}" if dark["screenshots"] else ""
            assert block[-1] == f"  dark mode in Chromium: {dark['findings']} finding(s){shots}"
        else:
            assert block[-1].startswith("  dark mode: contrast computed from the dark-scheme CSS") and not dark["findings"]
        counted = [row for row in rows if row["source"] == file["source"] and row["code"] != "invalid"]
        assert file["findings"] == {severity: sum(1 for row in counted if row["severity"] == severity)
                                    for severity in ("error", "warning", "info")}
    # the totals line (only printed when every file was valid)
    summary = document["summary"]
    assert summary["files"] == len(document["files"]) + summary["invalid"] == summary["files"]
    assert summary["findings"] == summary["errors"] + summary["warnings"]
    assert summary["errors"] + summary["warnings"] + summary["info"] == len(rows) - len(invalid)
    if not invalid:
        info = f", {summary['info']} info (-a shows them)" if summary["info"] else ""
        assert plain_err.strip() == "\n".join([f"{summary['files']} file(s) checked, {summary['findings']} finding(s){info}",
                                               *document["notes"]])
    # and, whatever the layout: every number the text shows is in the JSON
    numbers = set(re.findall(r"\b\d+\b", json.dumps(document)))
    assert set(re.findall(r"\b\d+\b", out + err + plain_err)) <= numbers


def _findings_issue(tmp_path: Path) -> Path:
    return write_issue(tmp_path, "# Findings\n\nA paragraph with enough words to read on its own.\n\n"
                       '![photo](https://example.com/p.png "600x300")\n\n'
                       f'![A red dot]({TINY_PNG} "5x5")\n\n'
                       "- A [relative](/about) link, and Invoice \u202egpj.exe\u202c\n",
                       front="subject: " + "S" * 90 + "\ndate: 2024-01-02\n", name="2024-01-02-findings.md")


def test_check_json_holds_every_row_and_number_of_the_text(tmp_path: Path) -> None:
    code, out, err, plain_err, document = _text_and_json(str(SEED_ISSUE), str(_findings_issue(tmp_path)))
    assert code == 1 and document["version"] == 1
    assert [file["source"] for file in document["files"]] == [str(SEED_ISSUE), str(tmp_path / "2024-01-02-findings.md")]
    _assert_text_is_in_json(out, err, plain_err, document)
    seed, findings = document["files"]
    assert seed["compatibility"]["clients"]["outlook-windows"]["accepted"] > 0
    assert seed["accessibility"] == {"checks": ["lang/dir", "layout tables", "heading order", "alt text", "link text",
                                                "contrast light+dark (static)", "font size", "plain text"],
                                     "findings": 0}
    assert findings["accessibility"]["findings"] == 1  # alt='photo'
    assert findings["compatibility"]["clients"]["gmail"]["unsupported"] == 1  # the data: image
    assert document["summary"]["files"] == 2 and document["summary"]["warnings"] >= 5


def test_check_json_with_an_invalid_file_holds_it_too(tmp_path: Path) -> None:
    broken = write_issue(tmp_path, "Hi\n", front="subject: x\n", name="2024-01-03-broken.md")
    code, out, err, plain_err, document = _text_and_json(str(_findings_issue(tmp_path)), str(broken))
    assert code == 2
    _assert_text_is_in_json(out, err, plain_err, document)
    assert document["summary"]["invalid"] == 1 and document["summary"]["files"] == 2
    assert [row["source"] for row in document["findings"] if row["code"] == "invalid"] == [str(broken)]


@pytest.mark.browser
@pytest.mark.slow
def test_check_json_holds_the_browser_check_and_its_screenshots(tmp_path: Path) -> None:
    code, out, err, plain_err, document = _text_and_json("--screenshots", str(tmp_path), str(SEED_ISSUE))
    assert code == 0
    _assert_text_is_in_json(out, err, plain_err, document)
    dark = document["files"][0]["dark_mode"]
    assert dark["browser"] is True and dark["findings"] == 0
    assert sorted(Path(shot).name for shot in dark["screenshots"]) == [
        f"{SEED_ISSUE.stem}-{kind}.png" for kind in ("375", "dark", "light")]
