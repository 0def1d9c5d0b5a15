#!/usr/bin/env bash
# The demo on embedded defaults: set up, then render the seed issue into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/newsletter check issues/2017-07-07-trump-putin.md
.venv/bin/newsletter render issues/2017-07-07-trump-putin.md -o build
echo "open build/2017-07-07-trump-putin.html in a browser, or build/2017-07-07-trump-putin.eml in a mail client"
