"""``python -m newsletter`` runs the CLI."""

from newsletter.cli import run

run()
