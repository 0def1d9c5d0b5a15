"""``python -m newsletter`` runs the CLI."""

from newsletter.cli.commands import run

run()
