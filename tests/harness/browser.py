"""Debian's Chromium for the browser tests: where it is, and the flags this closed network needs."""

from __future__ import annotations

import os
import shutil

CHROMIUM = os.environ.get("NEWSLETTER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network and root: no sandbox, no background connections.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
