"""``newsletter preview``: the real server (uvicorn on 127.0.0.1, a free port) on a copy of
the seed issue, asked over HTTP with httpx and watched in Debian's Chromium.

Every wait is for a condition, with a deadline: the long poll ``/events`` answers as soon
as the render changed, and Playwright waits for what the page shows.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path
from typing import IO

import httpx
import pytest

from newsletter.compose.sample import render_to_files
from newsletter.config import Settings
from newsletter.errors import IssueError
from newsletter.preflight.content import GMAIL_CLIP_BYTES
from newsletter.render.engine import default_templates_dir
from newsletter.web.preview import LONG_POLL_SECONDS, PreviewServer, preview_app
from tests.conftest import ROOT, SEED_ISSUE

SEED_HEADLINE = "# A big, beautiful handshake. Trump and Putin meet face to face"
DEADLINE = 10.0  # seconds any one change may take to show: a render is ~10 ms, the watcher ~0.1 s


@pytest.fixture
def issue(tmp_path: Path) -> Path:
    """A copy of the seed issue that a test may edit."""
    target = tmp_path / "issues" / SEED_ISSUE.name
    target.parent.mkdir()
    shutil.copyfile(SEED_ISSUE, target)
    return target


@contextmanager
def serving(issue: Path, settings: Settings | None = None, *,
            host: str = "127.0.0.1") -> Iterator[tuple[str, PreviewServer]]:
    """The preview of ``issue`` served by uvicorn in a thread on a free loopback port (``host``: the
    address the preview is told it serves on)."""
    app = preview_app(issue, settings or Settings(), host=host)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = PreviewServer(app, log_config=None)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not server.started:
        assert thread.is_alive(), "the preview server stopped during start-up"
        assert time.monotonic() < deadline, "the preview server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        listener.close()
        assert not thread.is_alive(), "the preview server did not stop"


def version_of(client: httpx.Client) -> str:
    """The version the server has now (a stale version makes /events answer at once)."""
    response = client.get("/events", params={"version": ""})
    assert response.status_code == 200
    version: str = response.json()["version"]
    return version


def next_version(client: httpx.Client, seen: str) -> str:
    """Wait (long poll) until the server's version is no longer ``seen``; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while (left := deadline - time.monotonic()) > 0:
        try:
            response = client.get("/events", params={"version": seen}, timeout=left)
        except httpx.ReadTimeout:
            break
        assert response.status_code == 200
        version: str = response.json()["version"]
        if version != seen:
            return version
    pytest.fail(f"the preview did not change within {DEADLINE} s")


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the file, saved the way editors do: a new file renamed over it."""
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text.replace(old, new, 1), encoding="utf-8")
    temp.replace(path)


# --- HTTP ---------------------------------------------------------------------------


def test_page_shows_both_widths_the_text_headers_size_and_findings(issue: Path, tmp_path: Path) -> None:
    # No preheader and a relative link: two findings `check` reports, shown with their line.
    edit(issue, 'preheader: "Trump pressed Putin on election meddling in a meeting that ran two hours and 16 minutes."\n', "")
    edit(issue, "It was their first face-to-face meeting", "It was [their first](/meetings) face-to-face meeting")
    expected = render_to_files(issue, tmp_path / "expected", Settings())
    html = expected.html.read_text(encoding="utf-8")
    text = expected.text.read_text(encoding="utf-8")
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        page = client.get("/")
        email = client.get("/email.html")
        eml = client.get("/message.eml")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    body = page.text
    # the two views of the email, framed from /email.html, which is exactly what `render` writes
    assert re.search(r'<iframe class="phone" src="/email\.html\?v=[^"]+" width="375"', body)
    assert re.search(r'<iframe class="desktop" src="/email\.html\?v=[^"]+" width="700"', body)
    assert email.status_code == 200 and email.text == html
    assert 'class="nl-headline"' not in body  # the email is only ever inside the frames
    # the plain text, escaped, whole
    assert f'<pre id="text">{escape(text)}</pre>' in body
    # the example reader's headers
    assert "<th>To:</th><td>Example Reader &lt;reader@example.com&gt;</td>" in body
    assert "<th>Subject:</th><td>A big, beautiful handshake. Trump and Putin meet face to face</td>" in body
    assert "<th>List-Unsubscribe-Post:</th>" in body
    # the size against Gmail's clip
    assert f"HTML {expected.html_bytes:,} bytes" in body
    assert f"of Gmail's {GMAIL_CLIP_BYTES // 1024} KB clip: {expected.html_bytes / GMAIL_CLIP_BYTES:.0%}" in body
    assert f'max="{GMAIL_CLIP_BYTES}"' in body and f'value="{expected.html_bytes}"' in body
    # the findings of `newsletter check`, errors first
    findings = body.split('<section id="findings">', 1)[1].split("</section>", 1)[0]
    assert "2 finding(s), 2 that fail" in findings
    link_line = issue.read_text(encoding="utf-8").split("\n").index(next(
        line for line in issue.read_text(encoding="utf-8").split("\n") if "(/meetings)" in line)) + 1
    assert f"error</span> line {link_line}: link &#x27;/meetings&#x27; is not an absolute" in findings, findings
    assert "warning</span> line 1: no preheader" in findings
    assert findings.index("relative-link") < findings.index("no-preheader")
    # and the whole message, as the example reader would get it
    assert eml.status_code == 200 and eml.headers["content-type"].startswith("message/rfc822")
    assert eml.content.startswith(b"From: ") and b"\r\nTo: Example Reader <reader@example.com>\r\n" in eml.content


def test_security_headers_and_no_inline_script(issue: Path) -> None:
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        responses = {path: client.get(path) for path in ("/", "/email.html", "/static/preview.js", "/events?version=")}
        missing = client.get("/nothing-here")
    for path, response in responses.items():
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["script-src"] == "'self'", path  # files from here only: no 'unsafe-inline'
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'self'" and directives["frame-src"] == "'self'"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] in ("no-store", "no-cache")
    assert missing.status_code == 404 and missing.headers["referrer-policy"] == "no-referrer"
    page = responses["/"].text
    scripts = re.findall(r"<script\b[^>]*>", page, flags=re.IGNORECASE)
    assert scripts == ['<script src="/static/preview.js" defer>'], scripts
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers either
    # the frames may run nothing and can't reach the page
    sandboxes = re.findall(r'<iframe [^>]*sandbox="([^"]*)"', page)
    assert len(sandboxes) == 2 and all("allow-scripts" not in s and "allow-same-origin" not in s for s in sandboxes)
    script = responses["/static/preview.js"]
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/events?version=" in script.text and "location.reload()" in script.text


def test_only_loopback_host_names_are_answered(issue: Path) -> None:
    """DNS rebinding: a page on evil.example that points evil.example at 127.0.0.1 could read the
    draft with the browser's own requests; those name evil.example in Host, and get nothing."""
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        port = base.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", f"127.0.0.1.nip.io:{port}",
                     f"[::2]:{port}", f"192.168.1.5:{port}", ""):
            for path in ("/", "/email.html", "/message.eml", "/events?version=", "/static/preview.js"):
                response = client.get(path, headers={"Host": host})
                assert response.status_code in (400, 421), (host, path, response.status_code)
                assert "Trump" not in response.text and "handshake" not in response.text
                assert response.headers["x-frame-options"] == "SAMEORIGIN"
        for host in ("localhost", f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            response = client.get("/", headers={"Host": host})
            assert response.status_code == 200 and "handshake" in response.text, host
    # Served on another address (--host), the preview answers to that one too.
    with serving(issue, host="192.168.1.5") as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        port = base.rsplit(":", 1)[1]
        assert client.get("/", headers={"Host": f"192.168.1.5:{port}"}).status_code == 200
        assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert client.get("/", headers={"Host": f"evil.example:{port}"}).status_code == 400


def test_issue_text_and_errors_are_escaped(issue: Path) -> None:
    edit(issue, 'subject: "A big, beautiful handshake.', 'subject: "<script>alert(1)</script> & <b>bold</b>')
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        good = client.get("/").text
        version = version_of(client)
        edit(issue, "credit:", '"<img src=x onerror=alert(2)>": 1\ncredit:')
        next_version(client, version)
        broken = client.get("/").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in good
    assert "<script>alert" not in good and "<b>bold" not in good
    assert "&lt;img src=x onerror=alert(2)&gt;" in broken  # the unknown key, quoted in the error
    assert "<img src=x" not in broken


def test_direction_controls_in_the_body_are_shown_as_check_shows_them(issue: Path) -> None:
    edit(issue, "It was their first face-to-face meeting", "It was their first \u202eteem\u202c face-to-face meeting")
    line = next(number for number, text in enumerate(issue.read_text(encoding="utf-8").split("\n"), 1)
                if "\u202e" in text)
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        body = client.get("/").text
    findings = body.split('<section id="findings">', 1)[1].split("</section>", 1)[0]
    assert f"warning</span> line {line}: invisible direction control" in findings, findings
    assert "&lt;U+202E&gt;teem&lt;U+202C&gt;" in findings
    assert "\u202e" not in findings  # shown by name, never raw


def test_a_broken_file_shows_the_error_keeps_the_last_render_and_recovers(issue: Path) -> None:
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        first = version_of(client)
        good_email = client.get("/email.html").text
        assert 'id="problem"' not in client.get("/").text

        edit(issue, "date: 2017-07-07", "date: 2017-02-30")
        broken = next_version(client, first)
        page = client.get("/")
        assert page.status_code == 200
        problem = page.text.split('<section class="problem" id="problem"', 1)[1].split("</section>", 1)[0]
        assert f"{issue}:3: date &#x27;2017-02-30&#x27; does not exist" in problem
        assert "<dt>Line</dt><dd>3</dd>" in problem
        assert "the last good render" in problem
        # the last good render stays, in the frames and in the text
        assert client.get("/email.html").text == good_email
        assert "A big, beautiful handshake" in page.text.split('<pre id="text">', 1)[1]

        edit(issue, "date: 2017-02-30", "date: 2017-07-07")
        edit(issue, SEED_HEADLINE, "# Fixed and rendered again")
        fixed = next_version(client, broken)
        page = client.get("/")
        assert 'id="problem"' not in page.text
        email = client.get("/email.html").text
        assert "Fixed and rendered again" in email and email != good_email
        assert fixed not in (first, broken)


def test_starting_with_a_broken_file_serves_the_error_and_an_empty_state(issue: Path) -> None:
    issue.write_text("---\nsubject: Hello\ndate: 2024-01-02\nsubjetc: typo\n---\n# Hi\n", encoding="utf-8")
    with serving(issue) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        page = client.get("/")
        email = client.get("/email.html")
        eml = client.get("/message.eml")
        version = version_of(client)
        issue.write_text("---\nsubject: Hello\ndate: 2024-01-02\n---\n# Hi there\n", encoding="utf-8")
        next_version(client, version)
        after = client.get("/")
    assert page.status_code == 200
    assert "unknown key &#x27;subjetc&#x27; (did you mean &#x27;subject&#x27;?)" in page.text
    assert "<dt>Line</dt><dd>4</dd>" in page.text
    assert "<dt>Fix</dt><dd>did you mean &#x27;subject&#x27;?</dd>" in page.text
    assert 'id="empty"' in page.text and "<iframe" not in page.text
    assert email.status_code == 200 and "Nothing rendered yet" in email.text
    assert eml.status_code == 404
    assert 'id="problem"' not in after.text and "<iframe" in after.text


def test_a_template_change_renders_again(issue: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), templates)
    settings = Settings(templates_dir=templates)
    with serving(issue, settings) as (base, _server), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        version = version_of(client)
        assert "View this issue in your browser" in client.get("/email.html").text
        edit(templates / "briefing.mjml", "View this issue in your browser", "Read this issue on the web")
        version = next_version(client, version)
        assert "Read this issue on the web" in client.get("/email.html").text
        # A broken template is shown like a broken issue, and the server carries on.
        edit(templates / "briefing.mjml", "{% for section in issue.sections %}", "{% for section in %}")
        next_version(client, version)
        page = client.get("/")
    assert page.status_code == 200
    assert "briefing.mjml" in page.text and "template error" in page.text


def test_stopping_answers_a_pending_long_poll_at_once(issue: Path) -> None:
    answers: list[httpx.Response] = []
    with serving(issue) as (base, server), httpx.Client(base_url=base, timeout=LONG_POLL_SECONDS + 5) as client:
        version = version_of(client)
        poll = threading.Thread(target=lambda: answers.append(client.get("/events", params={"version": version})))
        poll.start()
        deadline = time.monotonic() + DEADLINE
        while not server.server_state.tasks:  # the poll is being handled: waiting for a change
            assert time.monotonic() < deadline, "the long poll never reached the server"
            time.sleep(0.01)
        started = time.monotonic()
        server.should_exit = True
        poll.join(DEADLINE)
    stopped = time.monotonic() - started
    assert not poll.is_alive()
    assert stopped < LONG_POLL_SECONDS / 2, stopped  # nobody waited for the poll's 20 s
    assert answers and answers[0].status_code == 200 and answers[0].json() == {"version": version}


def test_a_missing_issue_file_is_refused_before_serving(tmp_path: Path) -> None:
    with pytest.raises(IssueError, match="no such issue file"):
        preview_app(tmp_path / "nope.md", Settings())


def test_serve_preview_prints_the_url_and_stops_cleanly_on_ctrl_c(issue: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from newsletter.config import Settings;"
        " from newsletter.web.preview import serve_preview;"
        " serve_preview(Path(sys.argv[1]), Settings(), port=0)"
    )
    lines: queue.Queue[str] = queue.Queue()

    def read(stream: IO[str] | None) -> None:
        for line in stream or ():
            lines.put(line)

    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as errors, subprocess.Popen(
        [sys.executable, "-c", code, str(issue)], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=errors,
    ) as process:
        reader = threading.Thread(target=read, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            first = lines.get(timeout=DEADLINE * 2)  # an interpreter start-up with every import
            match = re.fullmatch(
                rf"Previewing {re.escape(str(issue))} at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)\n", first)
            assert match, first
            with httpx.Client(base_url=match.group(1), timeout=DEADLINE) as client:
                page = client.get("/")
            assert page.status_code == 200 and "Example Reader &lt;reader@example.com&gt;" in page.text
            process.send_signal(signal.SIGINT)
            process.wait(timeout=DEADLINE)
            reader.join(DEADLINE)  # it has read everything once the pipe is closed
        finally:
            if process.poll() is None:
                process.kill()
    err = stderr.read_text()
    assert process.returncode == 0, err
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert rest[-1] == "Preview stopped.\n", rest
    assert any(" rendered: " in line for line in rest), rest
    assert "Traceback" not in err, err


# --- the browser ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_reloads_in_a_browser_when_the_issue_file_is_edited(issue: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.harness.browser import CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/bootstrap.sh --browser (apt install chromium)")
    timeout = DEADLINE * 1000
    with serving(issue) as (base, _server), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(base + "/")
            phone = page.frame_locator("iframe.phone").locator("h1.nl-headline")
            desktop = page.frame_locator("iframe.desktop").locator("h1.nl-headline")
            expect(phone).to_have_text("A big, beautiful handshake. Trump and Putin meet face to face")
            expect(page.locator("#live")).to_have_text("live", timeout=timeout)  # the script runs, under the CSP
            # the two frames really are a phone and a desktop: the card fills one, not the other
            widths = [page.frame_locator(f"iframe.{name}").locator("h1.nl-headline").evaluate(
                "el => el.closest('table').getBoundingClientRect().width") for name in ("phone", "desktop")]
            assert widths[0] >= 370 and widths[1] <= 600, widths
            page.evaluate("() => { window.beforeTheEdit = true; }")

            edit(issue, SEED_HEADLINE, "# Edited while the page was open")
            expect(phone).to_have_text("Edited while the page was open", timeout=timeout)
            expect(desktop).to_have_text("Edited while the page was open", timeout=timeout)
            expect(page.locator("#text")).to_contain_text("Edited while the page was open")
            assert page.evaluate("() => window.beforeTheEdit") is None  # a reload, not a patch of the old page

            edit(issue, "date: 2017-07-07", "date: 2017-02-30")
            problem = page.locator("#problem")
            expect(problem).to_contain_text(f"{issue}:3: date '2017-02-30' does not exist", timeout=timeout)
            expect(phone).to_have_text("Edited while the page was open")  # the last good render

            edit(issue, "date: 2017-02-30", "date: 2017-07-07")
            edit(issue, "# Edited while the page was open", "# Fixed again")
            expect(phone).to_have_text("Fixed again", timeout=timeout)
            expect(problem).to_have_count(0)
            assert not [error for error in errors if "Content Security Policy" in error], errors
        finally:
            browser.close()
