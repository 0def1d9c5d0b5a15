"""Checks before sending: the issue's content, email-client support, accessibility, dark mode.

``content`` checks the issue and its rendered parts; ``compat`` checks the final HTML
against caniemail.com's data (shipped in ``data/``); ``accessibility`` and ``darkmode``
check what readers see; ``report`` runs them all for ``newsletter check``. Every check
reports a :class:`~newsletter.preflight.finding.Finding`.

They read the email with libraries: lxml builds the HTML tree (``htmldom`` adds Outlook's
conditional comments), tinycss2 reads the CSS and its colour values (``css``, ``colour``),
cssselect2 parses and matches the selectors (``css``, and ``styles``, the cascade).
"""
