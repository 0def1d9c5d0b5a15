"""Checks before sending: the issue's content, email-client support, accessibility, dark mode.

``content`` checks the issue and its rendered parts; ``compat`` checks the final HTML
against caniemail.com's data (shipped in ``data/``); ``accessibility`` and ``darkmode``
check what readers see; ``report`` runs them all for ``newsletter check``.
"""
