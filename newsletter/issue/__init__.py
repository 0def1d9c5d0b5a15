"""Stage 1: an issue file (YAML front matter + Markdown) parsed and validated into an :class:`~newsletter.models.Issue`.

Pure: text in, ``Issue`` out, or an :class:`~newsletter.errors.IssueError` naming the file,
the line and a fix. ``parse`` is the one module.
"""
