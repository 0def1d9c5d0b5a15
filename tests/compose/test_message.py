"""Messages as subscribers get them: strict parsing, encodings, escaping, no header injection."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.cli.commands import main
from newsletter.compose.message import compile_message, fill_html, fill_text, format_recipient, personalise
from newsletter.config import SenderSettings
from newsletter.errors import ComposeError
from newsletter.issue.parse import parse_issue
from newsletter.models import Recipient, RenderedIssue
from newsletter.render.engine import render_issue
from newsletter.store.subscribers import Store, SubscriberRow
from tests.conftest import SEED_ISSUE, write_issue
from tests.harness.htmltext import visible_text
from tests.harness.smtpserver import SmtpServer, running_server

DATE = "Fri, 07 Jul 2017 10:00:00 +0000"
URL = "https://news.example.com/unsubscribe/" + "A" * 43
STRICT = policy.default.clone(raise_on_defect=True)


def message(rendered: RenderedIssue, sender: SenderSettings, recipient: Recipient) -> bytes:
    return personalise(compile_message(rendered, sender=sender), recipient, message_id="m1.x@news.example.com", date=DATE)


def parsed(data: bytes) -> EmailMessage:
    result = email.message_from_bytes(data, policy=STRICT)
    assert isinstance(result, EmailMessage)
    assert not result.defects
    return result


def test_seed_message_structure(seed_rendered: RenderedIssue, sender: SenderSettings) -> None:
    data = message(seed_rendered, sender, Recipient("ann@example.org", "Ann Reader", URL))
    msg = parsed(data)
    assert msg.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in msg.iter_parts()] == ["text/plain", "text/html"]
    for part in msg.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        for problem in part.defects:
            raise AssertionError(problem)
    assert msg["To"] == "Ann Reader <ann@example.org>"
    assert msg["From"] == "The Briefing <briefing@news.example.com>"
    assert msg["Subject"] == seed_rendered.subject
    assert msg["Message-ID"] == "<m1.x@news.example.com>"
    assert msg["Date"] == DATE
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https://[^>]+>", str(msg["List-Unsubscribe"]).strip())
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert html.replace("\r\n", "\n") == fill_html(seed_rendered, Recipient("ann@example.org", "Ann Reader", URL))
    assert text.replace("\r\n", "\n") == fill_text(seed_rendered, Recipient("ann@example.org", "Ann Reader", URL))
    assert URL in html and URL in text
    assert "__nl" not in html and "__nl" not in text


def test_wire_format(seed_rendered: RenderedIssue, sender: SenderSettings) -> None:
    data = message(seed_rendered, sender, Recipient("ann@example.org", ".Dotty Zoë", URL))
    lines = data.split(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    assert data.endswith(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    header_end = lines.index(b"")
    assert all(len(line) <= 76 for line in lines[header_end:]), "QP lines must be at most 76 octets"
    assert not any(line.startswith(b".") for line in lines), "no dot-stuffing should ever be needed"
    assert data.isascii()


def test_subject_non_ascii_is_rfc2047(sender: SenderSettings) -> None:
    issue = parse_issue("---\nsubject: Café “quoted” — 東京\ndate: 2024-01-02\n---\nHi\n", source="x.md")
    data = message(render_issue(issue, sender=sender), sender, Recipient("a@example.org", "", URL))
    raw_subject = data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw_subject.startswith(b"=?utf-8?")
    assert parsed(data)["Subject"] == "Café “quoted” — 東京"


@pytest.mark.parametrize(
    "name",
    ["Zoë Ünïcode", 'Smith, "JJ" John', "Ann\r\nBcc: evil@example.com", "<script>alert(1)</script>", "x" * 300, ""],
)
def test_names_never_inject_headers_or_html(name: str, seed_rendered: RenderedIssue, sender: SenderSettings) -> None:
    data = message(seed_rendered, sender, Recipient("ann@example.org", name, URL))
    msg = parsed(data)
    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"
    assert len(msg["To"].addresses) == 1
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html


@pytest.mark.parametrize("address", ["no-at-sign", "a@b@c", "a b@example.org", "a@example.org\r\nBcc: x@y.z", "<a@b.c>", ""])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ComposeError):
        format_recipient(Recipient(address, "Ann", URL))


def test_bad_message_id_and_url_are_refused(seed_rendered: RenderedIssue, sender: SenderSettings) -> None:
    template = compile_message(seed_rendered, sender=sender)
    with pytest.raises(ComposeError):
        personalise(template, Recipient("a@example.org", "", URL), message_id="x>\r\nBcc: y@z", date=DATE)
    with pytest.raises(ComposeError):
        personalise(template, Recipient("a@example.org", "", "https://x/\r\nBcc: y"), message_id="a@b", date=DATE)


def test_script_in_issue_is_escaped_in_html_and_intact_in_text(sender: SenderSettings, tmp_path: Path) -> None:
    hostile = 'Look <script>alert("x")</script> and <img src=x onerror="alert(1)"> here.'
    issue = parse_issue(
        f"---\nsubject: '<b>bold</b> subject'\ndate: 2024-01-02\npreheader: '<i>pre</i>'\n---\n"
        f"# Head <script>h()</script>\n\n{hostile}\n\n- item <img src=y onerror=z> [Src <b>/ x</b>]\n",
        source="x.md",
    )
    rendered = render_issue(issue, sender=sender)
    recipient = Recipient("a@example.org", "", URL)
    html = fill_html(rendered, recipient)
    assert "<script" not in html.lower()
    assert "onerror" not in re.sub(r"&lt;.*?&gt;", "", html)  # only inside escaped text
    assert "<img src=x" not in html and "<b>" not in html and "<i>pre" not in html
    assert hostile in visible_text(html)
    text = fill_text(rendered, recipient)
    assert hostile in text.replace("\n", " ")
    assert "[Src <b>/ x</b>]" in text


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80), local=st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True))
def test_any_name_gives_one_parsable_to_header(name: str, local: str) -> None:
    address = f"{local}@example.org"
    try:
        header = format_recipient(Recipient(address, name, URL))
    except ComposeError:
        assert local.startswith(".") or local.endswith(".") or ".." in local
        return
    assert header.count("\r\n") == header.count("\r\n ") + 1, "only folds, then one final CRLF"
    msg = email.message_from_bytes(header.encode("ascii") + b"\r\n", policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == address


_DOTTY = st.lists(st.sampled_from([".", " ", "a", "=", "Zé", "\t", "-", "..", ". ."]), max_size=60).map("".join)


@settings(max_examples=150, deadline=None)
@given(name=_DOTTY, city=_DOTTY, path=st.from_regex(r"\.[A-Za-z0-9._-]{0,90}", fullmatch=True))
def test_no_line_ever_starts_with_a_dot(name: str, city: str, path: str) -> None:
    """The transport skips the dot-stuffing search on this promise (``dot_safe``): keep it true."""
    issue = parse_issue(
        "---\nsubject: Dots\ndate: 2024-01-02\n---\n# {{ name | .reader }}\n\n.{{ city | . }}\n\n"
        "..two dots and . spaced\n", source="dots.md",
    )
    rendered = render_issue(issue, sender=SenderSettings())
    recipient = Recipient(f"x{len(name)}@example.org", name, "https://news.example.com/u/" + path,
                          unsubscribe_mailto="mailto:u@example.org?subject=" + path, fields={"city": city})
    data = personalise(compile_message(rendered, sender=SenderSettings()), recipient,
                       message_id="m.1@news.example.com", date=DATE)
    assert not data.startswith(b".") and b"\n." not in data


# --- Unicode direction controls in subscriber names --------------------------------------

#: shows as "Invoice exe.jpg": U+202E turns the rest of the line around, U+202C ends it
SPOOFED = "Invoice \u202egpj.exe\u202c"
_DIRECTION = re.compile("[\u202a-\u202e\u2066-\u2069]")
_KEY = "compose-test-key-0123456789"


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    yield from running_server()


def test_direction_controls_in_names_never_reach_a_subscriber(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Names from a CSV import, `subscribers add` and a database filled before are all neutralised.

    What the subscriber's server receives holds no direction override or isolate: not in
    To:, not in the greeting of either part, not in another merge field.
    """
    (tmp_path / "issues").mkdir()
    issue = write_issue(tmp_path / "issues", "Hello {{ name | reader }} from {{ city | somewhere }}.\n")
    config = tmp_path / "newsletter.toml"
    config.write_text(
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
        '[database]\npath = "news.db"\n[issues]\ndir = "issues"\n', encoding="utf-8")
    people = tmp_path / "people.csv"
    people.write_text(f"email,name,city\nann@example.org,{SPOOFED},\u2067Leeds\u2069\n", encoding="utf-8")
    runner = CliRunner()

    def cli(*args: str) -> Result:
        return runner.invoke(main, ["--config", str(config), *args], env={"NEWSLETTER_SECRET_KEY": _KEY})

    assert cli("subscribers", "import", str(people)).exit_code == 0
    result = cli("subscribers", "add", "bob@example.org", "--name", "\u202dBob\u202c \u2066Smith\u2069")
    assert result.exit_code == 0, result.output
    with Store.open(tmp_path / "news.db") as store:  # stored before names were neutralised
        store.upsert_subscribers([SubscriberRow("carol@example.org", SPOOFED)], list_name="default")
        stored = {person.email: person.name for person in store.subscribers()}
    assert stored["ann@example.org"] == "Invoice gpj.exe" and stored["bob@example.org"] == "Bob Smith"

    result = cli("dispatch", "--issue", str(issue))
    assert result.exit_code == 0, result.output
    received = {message.rcpt: message for message in smtp_server.recorder.received()}
    assert set(received) == {"ann@example.org", "bob@example.org", "carol@example.org"}
    for address, expected in [("ann@example.org", "Invoice gpj.exe"), ("bob@example.org", "Bob Smith"),
                              ("carol@example.org", "Invoice gpj.exe")]:
        message = received[address].parsed()
        assert message["To"].addresses[0].display_name == expected
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert f"Hello {expected} from" in text and f"Hello {expected} from" in visible_text(html)
        decoded = "".join([str(message["To"]), text, html])
        assert not _DIRECTION.search(decoded), (address, _DIRECTION.findall(decoded))
    assert "from Leeds." in received["ann@example.org"].parsed().get_body(("plain",)).get_content()  # type: ignore[union-attr]


# --- the footer's "Manage your subscription" link (issue 16 item 5) ---------------------------

PREFERENCES = "https://news.example.com/preferences/7-1-abcdABCD0123456789_-xyzXYZ"


def test_each_message_links_its_own_preferences_page_in_both_parts(seed_rendered: RenderedIssue,
                                                                   sender: SenderSettings) -> None:
    template = compile_message(seed_rendered, sender=sender)
    ann = Recipient("ann@example.org", "Ann", URL, preferences_url=PREFERENCES)
    bob = Recipient("bob@example.org", "Bob", URL, preferences_url=PREFERENCES.replace("7-1", "8-1"))
    for recipient in (ann, bob):
        msg = parsed(personalise(template, recipient, message_id="m1.x@news.example.com", date=DATE))
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f'href="{recipient.preferences_url}"' in html and ">Manage your subscription</a>" in html
        assert f"Manage your subscription (your lists, your name):\r\n{recipient.preferences_url}\r\n" in text
        # Next to unsubscribe, which stays as it was (RFC 8058 headers too).
        assert html.index(URL) < html.index(recipient.preferences_url)
        assert text.index(URL) < text.index(recipient.preferences_url)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert str(msg["List-Unsubscribe"]).strip() == f"<{URL}>"


def test_a_recipient_made_without_a_preferences_url_gets_the_unsubscribe_page_not_an_empty_link(
        seed_rendered: RenderedIssue) -> None:
    html = fill_html(seed_rendered, Recipient("ann@example.org", "Ann", URL))
    assert 'href=""' not in html and html.count(f'href="{URL}"') == 2


@pytest.mark.parametrize("url", ["javascript:alert(1)", "https://x/\r\nBcc: y", 'https://x/"><script>', "/relative"])
def test_a_preferences_url_that_is_not_one_is_refused(seed_rendered: RenderedIssue, sender: SenderSettings,
                                                      url: str) -> None:
    with pytest.raises(ComposeError, match="preferences URL"):
        message(seed_rendered, sender, Recipient("a@example.org", "", URL, preferences_url=url))


def test_the_web_version_has_no_preferences_link() -> None:
    from newsletter.config import Settings
    from newsletter.web.archive import web_version

    html = web_version(SEED_ISSUE.read_text(encoding="utf-8"), str(SEED_ISSUE), Settings())
    assert "/preferences/" not in html and "Manage your subscription" not in html and "__nl" not in html
