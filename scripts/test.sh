#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --browser --smtp-sink --spamassassin --postgres --dovecot
.venv/bin/ruff check newsletter tests benchmarks scripts
.venv/bin/mypy --strict newsletter
.venv/bin/lint-imports --no-cache  # the stages import only downward (pyproject.toml [tool.importlinter])
.venv/bin/pytest "$@"
