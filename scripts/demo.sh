#!/usr/bin/env bash
# The demo on embedded defaults (no newsletter.toml): set up, render the seed issue into
# build/, then dispatch it for real to a few demo subscribers through the local capture
# SMTP server (`newsletter outbox` on 127.0.0.1:8025), which stores each message in a Maildir.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
bash scripts/bootstrap.sh
nl="$root/.venv/bin/newsletter"
seed="$root/issues/2017-07-07-trump-putin.md"

"$nl" check "$seed"
"$nl" render "$seed" -o build

# A fresh demo directory each time: its own database, secret key and outbox.
demo="$root/build/demo"
rm -rf "$demo"
mkdir -p "$demo"
cd "$demo"
unset NEWSLETTER_CONFIG
# The key that signs unsubscribe links; a real install keeps its own outside the repository.
NEWSLETTER_SECRET_KEY="$("$root/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
export NEWSLETTER_SECRET_KEY

cat > subscribers.csv <<'CSV'
email,name,city
ann.reader@example.org,Ann Reader,Leeds
bob@example.net,"Bob ""the"" Builder",Springfield
chloe@example.com,Chloé Müller,Zürich
dev@example.org,,
erin@example.com,Erin Left,Paris
CSV
"$nl" subscribers import subscribers.csv --list default
"$nl" subscribers remove erin@example.com >/dev/null   # unsubscribed: must not get the issue

"$nl" outbox --port 8025 --maildir outbox 2>outbox.log &
outbox_pid=$!
trap 'kill "$outbox_pid" 2>/dev/null || true; wait "$outbox_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q listening outbox.log 2>/dev/null && break
  kill -0 "$outbox_pid" 2>/dev/null || { cat outbox.log >&2; exit 1; }
  sleep 0.1
done

"$nl" dispatch --issue "$seed"
"$nl" status

echo
echo "Done. The seed issue, personalised for each subscriber, is in the outbox Maildir:"
ls -1 "$demo/outbox/new" | sed "s|^|  $demo/outbox/new/|"
echo "Open one in a mail client, or: less $demo/outbox/new/<file>"
echo "Preview files: $root/build/2017-07-07-trump-putin.html (.txt, .eml)"
