#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine with Python 3.11:
# a virtual environment in .venv with the project and its dev tools, openssl (the tests' TLS
# certificates and DKIM key variants),
# with --browser Debian's Chromium for the browser tests, with --smtp-sink Postfix's
# smtp-sink test server (the postfix package, installed without configuring or starting
# the mail daemon), and with --spamassassin Debian's SpamAssassin for the deliverability
# test (the rules the package ships; no daemon started, no sa-update run), and with
# --postgres Debian's PostgreSQL server binaries for tests/harness/pgserver.py (no cluster created,
# no service started: the tests run their own throwaway server), and with --dovecot Debian's Dovecot
# IMAP server for tests/harness/dovecot.py (no service started: the tests run their own, with
# their own config). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
want_sink=0
want_spam=0
want_pg=0
want_dovecot=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --smtp-sink) want_sink=1 ;;
    --spamassassin) want_spam=1 ;;
    --postgres) want_pg=1 ;;
    --dovecot) want_dovecot=1 ;;
    *) echo "usage: scripts/bootstrap.sh [--browser] [--smtp-sink] [--spamassassin] [--postgres] [--dovecot]" >&2; exit 2 ;;
  esac
done

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# apt_install with the packages' init scripts kept from starting any service: a policy-rc.d
# that exits 101 ("action forbidden") is what invoke-rc.d and deb-systemd-invoke consult.
# Ours is put in place only if there was none, and removed again whatever apt did.
apt_install_no_daemons() {
  local policy_added=0 status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt_install "$@" || status=$?
  if [ $policy_added = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  return $status
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # Debian splits venv/ensurepip into python3-venv; install it when venv can't bootstrap pip.
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "installing python3-venv (apt)" >&2
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import newsletter, pytest, playwright" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "installing newsletter and its dev tools into .venv (pip)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch .venv/.installed
fi

if ! command -v openssl >/dev/null 2>&1; then
  echo "installing openssl (apt) for the tests' TLS certificates and DKIM key variants" >&2
  apt_install openssl
fi

if [ $want_sink = 1 ] && [ ! -x /usr/sbin/smtp-sink ]; then
  echo "installing postfix (apt) for its smtp-sink test server; the mail daemon is not configured or started" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  apt_install_no_daemons postfix
fi

if [ $want_spam = 1 ] && [ ! -x /usr/bin/spamassassin ]; then
  # Without recommends: no spamc/spamd and no sa-compile (which compiles the rules at install).
  # The rules the package ships are used as they are: sa-update is never run (the package
  # leaves its daily sa-update timer disabled, and the tests don't call it).
  echo "installing spamassassin (apt) for the deliverability test; no daemon is started" >&2
  apt_install_no_daemons spamassassin
  # The package's postinst imports sa-update's signing key with gpg, which leaves a gpg-agent
  # running for that keyring: stop it (only that one, through its own socket).
  sa_keys=/var/lib/spamassassin/sa-update-keys
  if command -v gpgconf >/dev/null 2>&1 && [ -d $sa_keys ]; then
    $SUDO runuser -u "$(stat -c %U $sa_keys)" -- gpgconf --homedir $sa_keys --kill gpg-agent || true
  fi
fi

if [ $want_pg = 1 ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  # On a first install the server package's postinst creates a "main" cluster (for its init
  # script to start) unless createcluster.conf says create_main_cluster = false. That file is
  # the package's (ucf-managed), so the setting goes into a drop-in of the createcluster.d
  # directory it includes; the policy-rc.d keeps the init script from starting anything.
  echo "installing postgresql (apt) for the PostgreSQL tests; no cluster is created or started" >&2
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false  # scripts/bootstrap.sh: tests run their own servers" \
    | $SUDO tee /etc/postgresql-common/createcluster.d/no-main-cluster.conf >/dev/null
  clusters_before=$(ls -d /etc/postgresql/*/* 2>/dev/null || true)
  apt_install_no_daemons postgresql
  # Should a cluster have been made all the same, drop the one(s) this install made (never
  # one that was there before), without starting them.
  for conf in /etc/postgresql/*/*; do
    [ -d "$conf" ] || continue
    if ! grep -qxF "$conf" <<<"$clusters_before"; then
      echo "dropping the cluster $conf that the package created" >&2
      $SUDO pg_dropcluster --stop "$(basename "$(dirname "$conf")")" "$(basename "$conf")"
    fi
  done
fi

if [ $want_dovecot = 1 ] && [ ! -x /usr/lib/dovecot/imap ]; then
  # The package's postinst makes a certificate and would start the system's dovecot service:
  # the policy-rc.d keeps it from starting; tests/harness/dovecot.py runs its own master with
  # its own config in a temporary folder, never /etc/dovecot's.
  echo "installing dovecot-imapd (apt) for the IMAP tests; no service is started" >&2
  apt_install_no_daemons dovecot-imapd
fi

if [ $want_browser = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (apt) for the browser tests" >&2
  apt_install chromium fonts-dejavu-core
fi
