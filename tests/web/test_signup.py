"""What ``/subscribe`` and ``/api/subscribe`` accept and how they check it, the signup pages as
HTML (escaping, the accessibility checks the emails pass), and tokens kept out of the access log.

The routes themselves, over real HTTP and in Chromium, are in ``test_signup_routes.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from newsletter.config import ListSettings, Settings
from newsletter.preflight.accessibility import check_accessibility
from newsletter.preflight.finding import Finding
from newsletter.web import archive
from newsletter.web.security import MAX_BODY, redact_path
from newsletter.web.signup import SignupInput, ValidSignup, form_input, json_input, offered_lists, validate

if TYPE_CHECKING:
    from playwright.sync_api import Page

NEWS = ListSettings("news", "Weekly news", "Every Friday, the week in five minutes.")
EVENTS = ListSettings("events", "Events near you")
HIDDEN = ListSettings("staff", "Staff notes", signup=False)
SETTINGS = Settings(lists=(NEWS, HIDDEN, EVENTS))
#: what a hostile form could put in every reflected value
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_offered_lists_are_those_with_signup_in_file_order() -> None:
    assert offered_lists(SETTINGS) == (NEWS, EVENTS)
    assert offered_lists(Settings()) == ()


def test_a_good_signup_is_normalised() -> None:
    checked = validate(SignupInput(email=" Ada@EXAMPLE.org ".strip(), name="  Ada \n Lovelace\u202e ",
                                   lists=("events", "news"), source="https://blog.example/\x1b[2Jabout"),
                       offered_lists(SETTINGS))
    assert checked == ValidSignup("Ada@example.org", "Ada Lovelace", ("events", "news"), "https://blog.example/ [2Jabout")


@pytest.mark.parametrize(("signup", "errors"), [
    (SignupInput(lists=("news",)), {"email": "Enter your email address."}),
    (SignupInput(email="not an address", lists=("news",)), {"email": "This is not an email address we can send to."}),
    (SignupInput(email="a@" + "x" * 260 + ".org", lists=("news",)), {"email": "This address is too long"}),
    (SignupInput(email="ada@example.org", name="x" * 201, lists=("news",)), {"name": "A name is at most 200"}),
    (SignupInput(email="ada@example.org"), {"lists": "Choose at least one list."}),
    (SignupInput(email="ada@example.org", lists=("staff",)), {"lists": "There is no list 'staff' to sign up to"}),
    (SignupInput(email="ada@example.org", lists=("news", "nope")), {"lists": "There is no list 'nope'"}),
    (SignupInput(email="", name="y" * 300, lists=("nope",)),
     {"email": "Enter", "name": "A name is at most", "lists": "There is no list"}),
])
def test_bad_signups_get_an_error_per_field(signup: SignupInput, errors: dict[str, str]) -> None:
    checked = validate(signup, offered_lists(SETTINGS))
    assert isinstance(checked, dict)
    assert list(checked) == list(errors)  # in the form's order
    for field, start in errors.items():
        assert checked[field].startswith(start), checked


def test_with_one_list_offered_none_named_means_that_one() -> None:
    checked = validate(SignupInput(email="ada@example.org"), (NEWS,))
    assert isinstance(checked, ValidSignup) and checked.lists == ("news",)


def test_form_fields_hidden_source_before_the_referer_and_the_honeypot() -> None:
    fields = {"email": [" ada@example.org "], "name": ["Ada"], "list": ["news", " news", "events", ""],
              "website": [""]}
    signup = form_input(fields, referer="https://blog.example/post")
    assert signup == SignupInput("ada@example.org", "Ada", ("news", "events"), "https://blog.example/post", False)
    assert form_input({**fields, "source": ["https://blog.example/about"]}, referer="x").source \
        == "https://blog.example/about"
    assert form_input({**fields, "website": ["https://spam.example"]}).honeypot
    assert form_input({}) == SignupInput()


def test_json_signups() -> None:
    body = json.dumps({"email": "ada@example.org", "name": "Ada", "lists": ["news", "news"]}).encode()
    assert json_input(body, referer="https://x.example/") == SignupInput("ada@example.org", "Ada", ("news",),
                                                                        "https://x.example/")
    assert json_input(b'{"email": "a@b.org", "source": "https://s.example/"}') == SignupInput(
        "a@b.org", source="https://s.example/")


@pytest.mark.parametrize(("body", "field", "error"), [
    (b"\xff\xfe{}", None, "the body is not UTF-8"),
    (b"email=ada@example.org", None, "the body is not JSON"),
    (b"", None, "the body is not JSON"),
    (b"[" * MAX_BODY, None, "the body is nested too deeply"),
    (b"1" * 5000, None, "the body is not JSON"),  # past Python's integer-string limit
    (b'["ada@example.org"]', None, "the body must be a JSON object"),
    (b'{"email": "a@b.org", "email": "c@d.org"}', "email", "the key 'email' appears twice"),
    (b'{"email": "a@b.org", "list": ["news"]}', "list", "unknown key 'list' (known: email, lists, name, source)"),
    (b'{"email": ["a@b.org"]}', "email", "email must be a string"),
    (b'{"email": "a@b.org", "name": null}', "name", "name must be a string"),
    (b'{"email": "a@b.org", "lists": "news"}', "lists", "lists must be an array"),
    (b'{"email": "a@b.org", "lists": [1]}', "lists", "lists must be an array"),
])
def test_bad_json_bodies(body: bytes, field: str | None, error: str) -> None:
    parsed = json_input(body)
    assert isinstance(parsed, tuple), parsed
    assert parsed[0] == field and parsed[1].startswith(error), parsed


def _page(template: str, **values: object) -> str:
    return archive.page(template, SETTINGS, **values)


def _form(**values: object) -> str:
    defaults: dict[str, object] = {"email": "", "name": "", "chosen": (), "lists": offered_lists(SETTINGS),
                                   "errors": {}, "source": "", "max_name": 200, "all_lists_href": "",
                                   "robots": "index"}
    return _page("subscribe.html", **{**defaults, **values})


#: every signup page in each of its states, as the routes fill them
PAGES = {
    "form": lambda: _form(),
    "form-one-list": lambda: _form(lists=(NEWS,), chosen=("news",), all_lists_href="/subscribe"),
    "form-errors": lambda: _form(email="x", name="y" * 300, errors={"email": "This is not an email address.",
                                                                   "name": "A name is at most 200 characters.",
                                                                   "lists": "Choose at least one list."}),
    "sent": lambda: _page("subscribe_sent.html", email="ada@example.org"),
    "confirm": lambda: _page("confirm.html", state="ready", email="ada@example.org", lists=[NEWS, EVENTS],
                             action="/confirm/t"),
    "confirm-already": lambda: _page("confirm.html", state="confirmed", email="ada@example.org", lists=[NEWS],
                                     action="/confirm/t"),
    "confirm-expired": lambda: _page("confirm.html", state="expired", pending_days=7, subscribe_href="/subscribe"),
    "confirmed": lambda: _page("confirmed.html", email="ada@example.org", lists=[NEWS, EVENTS]),
    "confirmed-nothing-active": lambda: _page("confirmed.html", email="ada@example.org", lists=[]),
}


def _static_findings(html: str) -> list[Finding]:
    # The pages' colours are CSS variables, which only a browser resolves: that one "can't tell" note is
    # expected here, and test_signup_routes.py measures the contrast in Chromium, light and dark.
    return [finding for finding in check_accessibility(html)
            if not (finding.code == "a11y-contrast" and finding.severity == "info")]


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_signup_page_passes_the_emails_accessibility_checks(name: str) -> None:
    assert [str(finding) for finding in _static_findings(PAGES[name]())] == []


def test_the_form_escapes_everything_it_shows_again() -> None:
    html = _form(email=HOSTILE, name=HOSTILE, source=HOSTILE, chosen=(HOSTILE,),
                 errors={"email": HOSTILE, "name": HOSTILE, "lists": HOSTILE})
    assert "<script>" not in html and "<img" not in html
    # The email, the name and the source kept, and the three errors, each shown as text.
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;") == 6
    sent = _page("subscribe_sent.html", email=HOSTILE)
    assert "<script>" not in sent and "&lt;script&gt;" in sent
    hostile_list = ListSettings("x", HOSTILE, HOSTILE)
    for html in (_form(lists=(hostile_list, NEWS)),
                 _page("confirm.html", state="ready", email=HOSTILE, lists=[hostile_list], action="/confirm/t"),
                 _page("confirmed.html", email=HOSTILE, lists=[hostile_list])):
        assert "<script>" not in html and "<img" not in html


def test_the_honeypot_is_out_of_sight_out_of_the_tab_order_and_unnamed_to_screen_readers() -> None:
    html = _form()
    block = html[html.index('<div class="hp"'):]
    block = block[:block.index("</div>")]
    assert 'aria-hidden="true"' in block and 'tabindex="-1"' in block and 'autocomplete="off"' in block
    assert 'name="website"' in block
    style = html[:html.index("</style>")]
    assert ".hp { position: absolute; left: -10000px;" in style and "display: none" not in style


@pytest.mark.parametrize(("path", "logged"), [
    ("/confirm/17-abc-DEFG0123456789abcdefghij", "/confirm/<token>"),
    ("/confirm/x/", "/confirm/<token>"),
    ("/preferences/3-4-abcdEFGH", "/preferences/<token>"),
    ("/unsubscribe/3-4-abcdEFGH", "/unsubscribe/<token>"),
    ("/confirm/", "/confirm/"),
    ("/subscribe", "/subscribe"),
    ("/api/subscribe", "/api/subscribe"),
])
def test_the_access_log_shows_no_confirm_or_preferences_token(path: str, logged: str) -> None:
    assert redact_path({"path": path}) == logged


@pytest.mark.browser
@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_signup_page_has_contrast_in_light_and_dark(name: str) -> None:
    """The emails' contrast check (WCAG AA, both colour schemes, colours computed by Chromium)."""
    from newsletter.preflight.darkmode import check_dark_mode
    from tests.harness.browser import CHROMIUM

    report = check_dark_mode(PAGES[name](), chromium=CHROMIUM)
    assert [str(finding) for finding in report.findings] == []


@contextmanager
def _chromium(**context: object) -> Iterator[Page]:
    """A page in Debian's Chromium with no JavaScript (the signup pages need none)."""
    from playwright.sync_api import sync_playwright

    from tests.harness.browser import CHROMIUM, FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser.new_context(java_script_enabled=False, **context).new_page()  # type: ignore[arg-type]
        finally:
            browser.close()


# For a phone: what would scroll sideways, targets under 24 px (WCAG 2.2 AA; a checkbox counts with its
# label, which toggles it too), and the inputs' font size (under 16 px, iOS Safari zooms in on focus).
_LAYOUT_JS = """() => {
  const small = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), button, a')) {
    if (el.closest('[aria-hidden=true]')) continue;
    const box = el.getBoundingClientRect();
    if (box.height < 24 || box.width < 24) small.push(el.outerHTML.slice(0, 80));
  }
  const fonts = [...document.querySelectorAll('input:not([type=hidden]):not([type=checkbox]), button')]
    .filter(el => !el.closest('[aria-hidden=true]')).map(el => parseFloat(getComputedStyle(el).fontSize));
  return {scroll: document.documentElement.scrollWidth, width: window.innerWidth, small, fonts};
}"""


@pytest.mark.browser
def test_every_signup_page_reads_well_at_375_px() -> None:
    with _chromium(viewport={"width": 375, "height": 740}) as page:
        for name, make in PAGES.items():
            page.set_content(make())
            layout = page.evaluate(_LAYOUT_JS)
            assert layout["width"] == 375 and layout["scroll"] <= 375, name  # nothing sideways
            assert layout["small"] == [], name
            assert all(size >= 16 for size in layout["fonts"]), (name, layout["fonts"])


@pytest.mark.browser
def test_the_form_by_keyboard_skips_the_honeypot_and_shows_where_the_focus_is() -> None:
    with _chromium() as page:
        page.set_content(_form())
        order = []
        for _ in range(5):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
            assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none", order
        assert order == ["email", "name", "list-1", "list-2", "Subscribe"]  # never the honeypot


@pytest.mark.parametrize("value", ["*", "proxy.example", "10.0.0.0/33", ""])
def test_serve_believes_forwarded_headers_only_from_named_proxy_addresses(value: str) -> None:
    """``--proxy`` takes addresses and networks, never "*" (anyone could then name any address)."""
    from click.testing import CliRunner

    from newsletter.cli.commands import main

    result = CliRunner().invoke(main, ["serve", "--proxy", value])
    assert result.exit_code == 2 and "is not an IP address or network" in result.output
