"""The signup tables at a million subscribers (issue 16), for the subscribers benchmark's plans.

After the imports of :mod:`benchmarks.subscribers` (N subscribers, all active on ``default``),
:func:`populate` fills what a list of that size holds after years of signups:

* one issue sent to everyone: N ``deliveries`` (``Ledger.open_issue``, then marked sent);
* every 5th subscriber came through the form: a confirmed, sent confirmation and its consent
  (method ``form``, a network, the confirmation's id); half of those got a welcome issue
  (sent); every other subscriber has an import consent (no confirmation);
* N/200 signups of the last week still unconfirmed, made by :meth:`Signups.request` itself
  (a new subscriber with a ``pending`` membership, its consent and confirmation), the newest
  50 confirmations still queued, the rest sent; N/2,000 that expired 2-3 days ago and wait
  for purge; N/1,000 existing readers asking for a second list (``offers``: pending);
* ``signup_counters``: 2,000 networks in each hour of the last 26 (what a busy form, or a
  spread-out attack, leaves when the last purge, which drops windows older than a day, ran
  two hours ago: a dispatch purges).

Set-based SQL for the bulk (one statement per table); the real code for the pending signups.
PostgreSQL then gets ``ANALYZE`` (autovacuum would do it soon; the plans are the steady
state's), SQLite nothing (the tool never analyzes it: its plans are what a user gets).

:func:`statements` names every statement of ``store/signups.py``, ``store/consent.py`` and
``store/rights.py`` that reads or changes rows by something other than a primary key, plus
``Store.count``'s, each with realistic parameters; :func:`full_scans` finds the plan lines
that read a whole big table (or a whole index of one that isn't partial).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.store.subscribers import Store

__all__ = ["BIG_TABLES", "WHOLE_TABLE", "full_scans", "partial_indexes", "populate", "purge", "statements"]

#: tables that are large on a list of a million (the others: lists, issues, forgotten, feedback here)
BIG_TABLES = frozenset({"subscribers", "memberships", "deliveries", "consents", "confirmations", "welcomes",
                        "signup_counters"})
NETWORKS = 2_000
HOURS = 26
SLUG = "2026-01-bench"


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def populate(store: Store, count: int, now: dt.datetime) -> list[str]:
    """Fill the signup tables (and one issue's deliveries) for ``count`` subscribers; one note per step."""
    from newsletter.config import SignupSettings
    from newsletter.store.ledger import Ledger
    from newsletter.store.signups import SignupRequest, Signups

    notes: list[str] = []

    def step(what: str, started: float) -> None:
        notes.append(f"{what} ({time.perf_counter() - started:.1f} s)")

    default = store.find_list("default")
    started = time.perf_counter()
    issue = Ledger(store).open_issue(slug=SLUG, list_name="default", subject="Bench", content_hash="h",
                                     domain="news.example.com")
    step(f"{_rows(store, 'deliveries'):,} deliveries of one issue (Ledger.open_issue)", started)
    started = time.perf_counter()
    sent = _iso(now - dt.timedelta(days=30))
    with store.transaction() as cursor:
        cursor.execute("UPDATE deliveries SET status = 'sent', attempts = 1, sent_at = ?, updated_at = ?"
                       " WHERE issue_id = ?", (sent, sent, issue.id))
    step("all of them marked sent (one UPDATE)", started)

    started = time.perf_counter()
    year_ago = now - dt.timedelta(days=365)
    created, confirmed = _iso(year_ago), _iso(year_ago + dt.timedelta(hours=1))
    with store.transaction() as cursor:
        cursor.execute(
            "INSERT INTO confirmations (subscriber_id, created_at, expires_at, confirmed_at, status, attempts,"
            " next_attempt_at, claimed_at, sent_at, message_id)"
            " SELECT id, ?, ?, ?, 'sent', 1, ?, ?, ?, 'confirm.' || id || '@news.example.com'"
            " FROM subscribers WHERE id % 5 = 0",
            (created, _iso(year_ago + dt.timedelta(days=7)), confirmed, year_ago.timestamp(), year_ago.timestamp(),
             created))
        cursor.execute(
            "INSERT INTO consents (subscriber_id, list_id, method, source, ip_prefix, requested_at, confirmed_at,"
            " confirmation_id) SELECT c.subscriber_id, ?, 'form', 'https://example.org/join', '203.0.113.0/24',"
            " c.created_at, c.confirmed_at, c.id FROM confirmations c", (default,))
        cursor.execute(
            "INSERT INTO consents (subscriber_id, list_id, method, source, requested_at)"
            " SELECT m.subscriber_id, m.list_id, 'import', 'the old provider', ? FROM memberships m"
            " WHERE m.subscriber_id % 5 <> 0", (_iso(year_ago - dt.timedelta(days=30)),))
        cursor.execute(
            "INSERT INTO welcomes (subscriber_id, list_id, created_at, status, attempts, next_attempt_at, sent_at,"
            " message_id) SELECT subscriber_id, ?, confirmed_at, 'sent', 1, ?, confirmed_at,"
            " 'welcome.' || subscriber_id || '@news.example.com' FROM confirmations WHERE subscriber_id % 10 = 0",
            (default, year_ago.timestamp()))
    step(f"{_rows(store, 'confirmations'):,} confirmed signups (confirmation, consent), "
         f"{_rows(store, 'consents') - _rows(store, 'confirmations'):,} import consents, "
         f"{_rows(store, 'welcomes'):,} welcomes, all sent", started)

    started = time.perf_counter()
    signups = Signups(store, SignupSettings(per_network_per_hour=0, per_hour=0))
    week, expired, joining = max(1, count // 200), max(1, count // 2000), max(1, count // 1000)
    for number in range(week + expired):
        fresh = number < week
        # spread over the last 7 days; the expired ones 9-10 days ago (pending_days = 7)
        at = (now - dt.timedelta(seconds=(week - number) * 7 * 86_400 / week) if fresh
              else now - dt.timedelta(days=9, seconds=number * 86_400 / expired))
        signups.request(SignupRequest(f"signup{number}@mail{number % 2000}.example.net", ("default",), "form",
                                      name=f"Signup {number}", source="https://example.org/join",
                                      ip=f"198.51.{number % 256}.7"), now=at)
    for number in range(joining):
        signups.request(SignupRequest(f"reader{number * 7 + 1}@mail{(number * 7 + 1) % 2000}.example.org",
                                      ("offers",), "form", ip="192.0.2.1"),
                        now=now - dt.timedelta(hours=number % 100))
    with store.transaction() as cursor:
        newest = cursor.execute("SELECT created_at FROM confirmations WHERE status = 'queued'"
                                " ORDER BY created_at DESC LIMIT 1 OFFSET 49").fetchone()
        cursor.execute("UPDATE confirmations SET status = 'sent', attempts = 1, sent_at = created_at"
                       " WHERE status = 'queued' AND created_at < ?", (str(newest[0]) if newest else "",))
    queued = _rows(store, "confirmations WHERE status = 'queued'")
    step(f"{week:,} signups of the last week, {expired:,} expired ones and {joining:,} readers asking for a "
         f"second list, by Signups.request (pending; the newest {queued:,} confirmations still queued)", started)

    started = time.perf_counter()
    hour = int(now.timestamp()) // 3600 * 3600
    rows = [(f"net:198.{n // 256 % 256}.{n % 256}.0/24", hour - 3600 * back, 1 + n % 7)
            for back in range(HOURS) for n in range(NETWORKS)]
    rows += [("all", hour - 3600 * back, 900) for back in range(HOURS)]
    with store.transaction() as cursor:
        cursor.executemany("INSERT INTO signup_counters (key, window_start, count) VALUES (?, ?, ?)", rows)
    step(f"{len(rows):,} signup counter windows", started)

    if store.dialect.name == "postgresql":
        started = time.perf_counter()
        store.connection.execute("ANALYZE")
        step("ANALYZE", started)
    return notes


def purge(store: Store, now: dt.datetime) -> str:
    """Run :meth:`Signups.purge` once (after the plans: it deletes rows their parameters name); what it took."""
    from newsletter.config import SignupSettings
    from newsletter.store.signups import Signups

    started = time.perf_counter()
    counts = Signups(store, SignupSettings()).purge(now=now)
    return (f"Signups.purge: {time.perf_counter() - started:.2f} s for {counts.confirmations:,} expired confirmations, "
            f"{counts.consents:,} consents, {counts.memberships:,} pending memberships, {counts.subscribers:,} "
            f"subscribers and {counts.counters:,} counter windows")


def _rows(store: Store, table: str) -> int:
    return int(store.query(f"SELECT count(*) FROM {table}")[0][0])


def statements(store: Store, now: dt.datetime) -> dict[str, tuple[str, Sequence[Any]]]:
    """Each named statement of the signup side, consent and data rights, and count, with realistic parameters."""
    from newsletter.store import consent, rights, signups, subscribers
    from newsletter.store.rights import forget_hash

    stamp = _iso(now)
    at = now.timestamp()
    # someone who signed up this week and hasn't confirmed, and a reader who confirmed a year ago
    pending_id, pending_confirmation = (int(v) for v in store.query(
        "SELECT subscriber_id, id FROM confirmations WHERE confirmed_at IS NULL ORDER BY id DESC LIMIT 1")[0])
    reader_id, reader_confirmation = (int(v) for v in store.query(
        "SELECT subscriber_id, id FROM confirmations WHERE confirmed_at IS NOT NULL ORDER BY id LIMIT 1 OFFSET 100")[0])
    default = store.find_list("default") or 0
    lock = store.dialect.skip_locked
    cutoff = _iso(now - dt.timedelta(days=7))
    hashes = [forget_hash("reader1@mail1.example.org", b"k" * 32), forget_hash("x@example.org", b"k" * 32)]
    window = int(at) // 3600 * 3600
    return {
        "count": (subscribers._COUNT_STATUSES, ()),
        "count: active with pending memberships only": (subscribers._COUNT_ONLY_PENDING, ()),
        "count --list default": (subscribers._COUNT_ON_LIST, ("default",)),
        "signup: the network's counter (UPSERT)": (signups._COUNT, ("net:198.51.7.0/24", window)),
        "signup: the subscriber by address": (signups._BY_KEY, ("reader5@mail5.example.org",)),
        "signup: their memberships": (signups._MEMBERSHIPS, (reader_id,)),
        "signup: their latest confirmation": (signups._LATEST, (pending_id,)),
        "signup: the lists it already asks about": (signups._CONSENTED, (pending_confirmation,)),
        "signup: a pending membership again": (signups._REFRESH, (stamp, default, pending_id)),
        "confirm page: the confirmation": (signups._VIEW, (pending_confirmation,)),
        "confirm page / claim: its lists": (signups._LISTS_OF, (pending_confirmation,)),
        "confirm: its consents": (signups._CONFIRM_CONSENTS, (stamp, pending_confirmation)),
        "confirm: its lists and when asked": (signups._CONFIRMED_LISTS, (pending_confirmation,)),
        "confirm: the membership": (signups._ACTIVATE, (stamp, pending_id, default, stamp)),
        "confirm: the lists now active": (signups._ACTIVE_LISTS, (reader_id, reader_confirmation)),
        "claim: confirmations due": (signups._CONFIRM_DUE.format(ids="", lock=lock("c")), (at, 100)),
        "claim: welcomes due": (signups._WELCOME_DUE.format(lock=lock("w")), (at, 100)),
        "purge: expired confirmations": (signups._EXPIRED, (stamp,)),
        "purge: old pending memberships": (signups._PENDING_OLD, (cutoff,)),
        "purge: an expired confirmation's consents": (signups._DROP_CONSENTS, (pending_confirmation,)),
        "purge: an expired confirmation (foreign key: its consents)": (signups._DROP_CONFIRMATION,
                                                                        (pending_confirmation,)),
        "purge: unlink its other consents": (signups._UNLINK_CONSENTS, (pending_confirmation,)),
        "purge: a pending membership": (signups._DROP_PENDING, (pending_id, default, cutoff)),
        "purge: a subscriber left with nothing": (signups._DROP_SUBSCRIBER, (pending_id,)),
        "purge: old counter windows": (signups._DROP_COUNTERS, (window - 86_400,)),
        "consent: a subscriber's consents": (consent._OF_SUBSCRIBER, (reader_id,)),
        "show: the subscriber": (rights._SUBSCRIBER, ("reader5@mail5.example.org",)),
        "show: memberships": (rights._MEMBERSHIPS, (reader_id,)),
        "show: deliveries": (rights._DELIVERIES, (reader_id,)),
        "show: feedback": (rights._FEEDBACK, (reader_id,)),
        "forget / import: forgotten hashes": (rights._FORGOTTEN.format(marks="?,?"), hashes),
        "forget: consent sources": (rights._CONSENT_SOURCES, (reader_id,)),
        "forget: unlink consents": (rights._UNLINK_CONSENTS, (reader_id,)),
        "forget: confirmations": (rights._DROP_CONFIRMATIONS, (reader_id,)),
        "forget: welcomes": (rights._DROP_WELCOMES, (reader_id,)),
    }


#: statements that read a whole table by design (a count of everyone, of a whole list): not checked
WHOLE_TABLE = frozenset({"count", "count --list default"})

_ALIAS = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+(\w+)(?:\s+(?:AS\s+)?(?!ON\b|WHERE\b|JOIN\b|CROSS\b|LEFT\b|"
                    r"GROUP\b|ORDER\b|SET\b|USING\b|LIMIT\b|VALUES\b)(\w+))?", re.IGNORECASE)


def partial_indexes(store: Store) -> set[str]:
    """The names of the indexes that hold only some rows (``CREATE INDEX … WHERE``)."""
    if store.dialect.name == "postgresql":
        rows = store.query("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '% WHERE %'")
    else:
        rows = store.query("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'")
    return {str(row[0]) for row in rows}


def full_scans(postgres: bool, sql: str, plan: str, partial: set[str]) -> list[str]:
    """The lines of ``plan`` that read every row of a big table, or all of a big table's index that isn't partial."""
    tables = {}
    for found in _ALIAS.finditer(sql):
        tables[found.group(1).lower()] = found.group(1).lower()
        if found.group(2):
            tables[found.group(2).lower()] = found.group(1).lower()
    problems = []
    lines = plan.splitlines()
    for number, line in enumerate(lines):
        text = line.strip()
        if postgres:
            seq = re.search(r"Seq Scan on (\w+)", text)
            if seq and seq.group(1) in BIG_TABLES:
                problems.append(text)
            index = re.search(r"Index (?:Only )?Scan (?:Backward )?using (\w+) on (\w+)", text)
            if index and index.group(2) in BIG_TABLES and index.group(1) not in partial:
                depth = len(line) - len(line.lstrip())
                details = []
                for after in lines[number + 1:]:
                    if len(after) - len(after.lstrip()) <= depth or after.strip().startswith("->"):
                        break
                    details.append(after.strip())
                if not any(detail.startswith("Index Cond") for detail in details):
                    problems.append(text)
            continue
        scan = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", text)
        if scan and tables.get(scan.group(1).lower(), scan.group(1).lower()) in BIG_TABLES:
            if scan.group(2) is None or scan.group(2) not in partial:
                problems.append(text)
    return problems
