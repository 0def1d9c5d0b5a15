"""The issue parser: front matter, body, citations, and one-line errors for bad input."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.errors import IssueError
from newsletter.issue.parse import parse_issue
from newsletter.models import Citation, Image, Link, ListBlock, Paragraph, Quote, Text

FRONT = "---\nsubject: Hello\ndate: 2024-01-02\n---\n"


def parse(body: str, front: str = FRONT) -> object:
    return parse_issue(front + body, source="issues/2024-01-02-x.md")


def test_front_matter_fields() -> None:
    issue = parse_issue(
        "---\nsubject: Hi there\ndate: 2024-01-02\npreheader: Short\nsend_at: 2024-01-02T06:00:00-05:00\n"
        "list: morning\ntemplate: briefing\ncredit: via [Vox](https://vox.com)\n---\nBody\n",
        source="issues/2024-01-02-hi.md",
    )
    assert issue.subject == "Hi there"
    assert issue.date == dt.date(2024, 1, 2)
    assert issue.send_at == dt.datetime(2024, 1, 2, 11, 0, tzinfo=dt.UTC)
    assert issue.list_name == "morning"
    assert issue.slug == "2024-01-02-hi"
    assert issue.headline == (Text("Hi there"),)  # no "# " heading: the subject
    assert isinstance(issue.credit[1], Link)


def test_first_h1_is_the_headline_and_h2_starts_sections() -> None:
    issue = parse_issue(FRONT + "Intro\n\n# Head\n\n## One\n\nA\n\n## Two\n\n- b\n", source="x.md")
    assert issue.headline == (Text("Head"),)
    assert [s.title for s in issue.sections] == [(), (Text("One"),), (Text("Two"),)]


@pytest.mark.parametrize(
    ("markdown", "content", "citation"),
    [
        ("Text here. [Washington Post / Abby Phillip and David Filipov]", "Text here.",
         Citation("Washington Post / Abby Phillip and David Filipov")),
        ("Denied. [NYT]", "Denied.", Citation("NYT")),
        ("Linked. [NPR / Miles Parks](https://npr.org/x)", "Linked.", Citation("NPR / Miles Parks", "https://npr.org/x")),
        ("Wrapped. [[NYT](https://nytimes.com/a)]", "Wrapped.", Citation("NYT", "https://nytimes.com/a")),
        ("Read [the report](https://x.org)", None, None),  # an ordinary final link is no citation
        ("A [bracket] in the middle.", None, None),
    ],
)
def test_citations(markdown: str, content: str | None, citation: Citation | None) -> None:
    for body in (markdown + "\n", f"- {markdown}\n"):
        block = parse(body).sections[0].blocks[0]  # type: ignore[attr-defined]
        target = block if isinstance(block, Paragraph) else block.items[0]
        assert target.citation == citation
        if content is not None:
            assert target.content == (Text(content),)


def test_blocks() -> None:
    issue = parse("> quoted\n\n1. one\n2. two\n\n![A chart](https://x.org/c.png \"600x300\")\n")
    quote, numbered, image_para = issue.sections[0].blocks  # type: ignore[attr-defined]
    assert isinstance(quote, Quote)
    assert isinstance(numbered, ListBlock) and numbered.ordered
    assert image_para.content == (Image("https://x.org/c.png", "A chart", 600, 300),)


def test_raw_html_stays_text() -> None:
    block = parse("Hi <script>alert(1)</script> <img src=x onerror=alert(1)>\n").sections[0].blocks[0]  # type: ignore[attr-defined]
    assert block.content == (Text("Hi <script>alert(1)</script> <img src=x onerror=alert(1)>"),)


def test_javascript_links_are_not_links() -> None:
    block = parse("[click](javascript:alert(1))\n").sections[0].blocks[0]  # type: ignore[attr-defined]
    assert not any(isinstance(node, Link) for node in block.content)


@pytest.mark.parametrize("markdown", ["[x](data:image/png;base64,iVBORw0KGgo=)", "<data:image/png;base64,iVBORw0KGgo=>",
                                      "[x](DATA:image/gif;base64,R0lGOD==)", "[x](data:text/html;base64,PHA+)"])
def test_data_uris_are_never_links(markdown: str) -> None:
    """The README allows data:image for images only: a link to one stays text, as other unsafe schemes do."""
    block = parse(f"Click {markdown} here\n").sections[0].blocks[0]  # type: ignore[attr-defined]
    assert block.content == (Text(f"Click {markdown} here"),)


def test_data_images_are_images_even_inside_a_link() -> None:
    data = "data:image/png;base64,iVBORw0KGgo="
    image, linked = parse(f"![A dot]({data})\n\n[![A dot]({data})](https://x.org)\n").sections[0].blocks  # type: ignore[attr-defined]
    assert image.content == (Image(data, "A dot"),)
    assert linked.content == (Link("https://x.org", (Image(data, "A dot"),)),)


# --- bad input: one line, file:line, the fix ---------------------------------------

BAD = [
    ("no front matter", "Just text\n", 1, "no front matter"),
    ("unclosed", "---\nsubject: x\n", 1, "never closed"),
    ("bad yaml", "---\nsubject: [unclosed\ndate: 2024-01-02\n---\n", 3, "bad YAML"),
    ("missing subject", "---\ndate: 2024-01-02\n---\n", 1, "missing required key 'subject'"),
    ("missing date", "---\nsubject: x\n---\n", 1, "missing required key 'date'"),
    ("unknown key", "---\nsubject: x\ndate: 2024-01-02\nsubjetc: y\n---\n", 4, "unknown key 'subjetc' (did you mean 'subject'?)"),
    ("impossible date", "---\nsubject: x\ndate: 2024-02-30\n---\n", 3, "date '2024-02-30' does not exist"),
    ("date format", "---\nsubject: x\ndate: 02/01/2024\n---\n", 3, "not YYYY-MM-DD"),
    ("send_at naive", "---\nsubject: x\ndate: 2024-01-02\nsend_at: 2024-01-02T06:00:00\n---\n", 4, "has no UTC offset"),
    ("send_at junk", "---\nsubject: x\ndate: 2024-01-02\nsend_at: soon\n---\n", 4, "not an ISO 8601"),
    ("subject LF", '---\nsubject: "a\\nBcc: evil@example.com"\ndate: 2024-01-02\n---\n', 2, "subject must be one line"),
    ("subject CR", '---\nsubject: "a\\rb"\ndate: 2024-01-02\n---\n', 2, "subject must be one line"),
    ("subject block", "---\nsubject: |\n  two\n  lines\ndate: 2024-01-02\n---\n", 2, "subject must be one line"),
    ("empty subject", '---\nsubject: ""\ndate: 2024-01-02\n---\n', 2, "subject is empty"),
    ("list of subjects", "---\nsubject: [a, b]\ndate: 2024-01-02\n---\n", 2, "must be text"),
    ("duplicate", "---\nsubject: a\nsubject: b\ndate: 2024-01-02\n---\n", 3, "given twice"),
    ("template path", "---\nsubject: a\ndate: 2024-01-02\ntemplate: ../../etc/passwd\n---\n", 4, "not a valid name"),
    ("image alt", "---\nsubject: a\ndate: 2024-01-02\n---\n\ntext\n\n![](https://x.org/a.png)\n", 8, "image has no alt text"),
    ("not a mapping", "---\n- a\n- b\n---\n", 2, "must be 'key: value'"),
    ("subject direction override", '---\nsubject: "Invoice \\u202egpj.exe\\u202c"\ndate: 2024-01-02\n---\n', 2,
     "subject holds the invisible direction control U+202E, which makes the text after it read in another order"
     " (remove it"),
    ("subject as typed", "---\ndate: 2024-01-02\nsubject: Invoice \u202egpj.exe\n---\n", 3, "control U+202E"),
    ("subject isolate", '---\nsubject: "a \\u2066b\\u2069"\ndate: 2024-01-02\n---\n', 2, "control U+2066"),
    ("preheader embedding", '---\nsubject: a\ndate: 2024-01-02\npreheader: "\\u202bx"\n---\n', 4,
     "preheader holds the invisible direction control U+202B"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_with_file_and_line(name: str, text: str, line: int, message: str) -> None:
    with pytest.raises(IssueError) as caught:
        parse_issue(text, source="issues/x.md")
    error = caught.value
    assert error.line == line, str(error)
    assert str(error).startswith(f"issues/x.md:{line}: ")
    assert message in str(error)
    assert "\n" not in str(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_body_parses_or_raises_issue_error(body: str) -> None:
    try:
        issue = parse_issue(FRONT + body, source="issues/f.md")
    except IssueError as exc:
        assert "\n" not in str(exc)
    else:
        assert issue.subject == "Hello"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_front_matter_parses_or_raises_issue_error(front: str) -> None:
    try:
        parse_issue(f"---\n{front}\n---\nbody\n", source="issues/f.md")
    except IssueError as exc:
        assert str(exc).startswith("issues/f.md:")
        assert "\n" not in str(exc)
