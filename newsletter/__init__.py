"""newsletter: turn an issue file into a responsive email and deliver it.

The pipeline, one direction::

    issues.parse_issue -> Issue -> render.render_issue -> RenderedIssue
        -> compose.compile_message (once per issue) -> compose.personalise (per recipient)
"""

from newsletter.compose import compile_message, personalise
from newsletter.errors import NewsletterError
from newsletter.issues import load_issue, parse_issue
from newsletter.render import render_issue

__all__ = [
    "NewsletterError",
    "compile_message",
    "load_issue",
    "parse_issue",
    "personalise",
    "render_issue",
]
__version__ = "0.1.0"
