"""newsletter: turn an issue file into a responsive email and deliver it.

The pipeline, one direction::

    issues.parse_issue -> Issue -> render.render_issue -> RenderedIssue
        -> compose.compile_message (once per issue) -> compose.personalise (per recipient)
"""

from newsletter.compose.message import compile_message, personalise
from newsletter.errors import NewsletterError
from newsletter.issue.parse import load_issue, parse_issue
from newsletter.render.engine import render_issue

__all__ = [
    "NewsletterError",
    "compile_message",
    "load_issue",
    "parse_issue",
    "personalise",
    "render_issue",
]
__version__ = "0.1.0"
