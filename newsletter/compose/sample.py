"""An issue rendered for a made-up reader: what ``render``, ``preview`` and ``check`` look at.

``render`` writes it to files (the preview HTML, the text part, the whole message);
``preview`` serves it; ``check`` inspects it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from newsletter.compose.message import compile_message, fill_html, fill_text, now_header_date, personalise
from newsletter.config import Settings
from newsletter.issue.parse import load_issue
from newsletter.models import Issue, Recipient, RenderedIssue
from newsletter.render.engine import render_issue
from newsletter.tokens import preferences_link

__all__ = [
    "RenderedFiles",
    "Sample",
    "example_recipient",
    "render_sample",
    "render_to_files",
    "write_atomically",
]


@dataclass(frozen=True)
class RenderedFiles:
    """What ``render_to_files`` wrote."""

    html: Path
    text: Path
    eml: Path
    html_bytes: int
    eml_bytes: int


def example_recipient(settings: Settings) -> Recipient:
    """The made-up subscriber that previews are personalised for."""
    return Recipient(
        email="reader@example.com",
        name="Example Reader",
        unsubscribe_url=f"{settings.sender.site_url}/unsubscribe/example-token",
        preferences_url=preferences_link(settings.sender.site_url, "example-token"),
    )


@dataclass(frozen=True)
class Sample:
    """An issue rendered for the example reader: what ``render``, ``preview`` and ``check`` look at."""

    issue: Issue
    rendered: RenderedIssue
    #: the whole message (headers and both parts), as a subscriber would get it
    message: bytes
    html: str
    text: str


def render_sample(issue_path: str | Path, settings: Settings) -> Sample:
    """Parse and render ``issue_path`` and personalise it for :func:`example_recipient`."""
    issue = load_issue(issue_path)
    rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
    recipient = example_recipient(settings)
    message = personalise(
        compile_message(rendered, sender=settings.sender, list_id=issue.list_name),
        recipient,
        message_id=f"{issue.slug}.preview@{settings.sender.domain}",
        date=now_header_date(),
    )
    return Sample(issue, rendered, message, fill_html(rendered, recipient), fill_text(rendered, recipient))


def render_to_files(issue_path: str | Path, out_dir: str | Path, settings: Settings) -> RenderedFiles:
    """Render an issue file into ``out_dir/<slug>.html``, ``.txt`` and ``.eml``.

    Everything is rendered before anything is written, and each file is replaced
    atomically, so a bad issue leaves ``out_dir`` as it was.
    """
    sample = render_sample(issue_path, settings)
    issue, message = sample.issue, sample.message
    html, text = sample.html.encode("utf-8"), sample.text.encode("utf-8")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / f"{issue.slug}.html", folder / f"{issue.slug}.txt", folder / f"{issue.slug}.eml")
    for path, data in zip(paths, (html, text, message), strict=True):
        write_atomically(path, data)
    return RenderedFiles(paths[0], paths[1], paths[2], len(html), len(message))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old file or the new one, never half of it."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
