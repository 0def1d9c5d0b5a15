"""Subscribers, lists and memberships: the repository over the database (:class:`Store`).

:class:`Store` is the :class:`~newsletter.store.engine.Database` with what the commands, the
web pages and an import do to subscribers: add and update them (an import merges a chunk
at a time, in bounded memory), take them off one list or all, bring one list back, and
read them (streamed, by list or status or address). The SQL is written once; where SQLite
and PostgreSQL differ (string aggregation, JSON keys, an import's bulk statements) the
database's dialect states its own.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from newsletter.errors import ConfigError
from newsletter.store.consent import ConsentClaim
from newsletter.store.dialect import Cursor
from newsletter.store.engine import Database
from newsletter.store.rights import lookup_forgotten

__all__ = [
    "IMPORT_CHUNK",
    "MembershipState",
    "Rejoined",
    "Store",
    "Subscriber",
    "SubscriberRow",
    "UpsertCounts",
]

#: rows an import reads, decides about and writes at a time: its memory stays flat whatever the file's size
IMPORT_CHUNK = 2000

#: what :meth:`Store.rejoin` did
Rejoined = Literal["rejoined", "unchanged", "suppressed", "unknown"]

_FIELDS_JSON = json.JSONEncoder(sort_keys=True)

@dataclass(frozen=True)
class Subscriber:
    """A subscriber as stored."""

    id: int
    email: str
    name: str
    fields: Mapping[str, str]
    status: str
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriberRow:
    """One validated subscriber to upsert (from a CSV row or the command line)."""

    email: str
    name: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MembershipState:
    """One membership as stored: the address, the list, its status and the subscriber's."""

    email: str
    list_name: str
    status: str  # 'active' | 'unsubscribed' | 'pending'
    person: str  # 'active' | 'unsubscribed' | 'bounced' | 'complained'

    @property
    def receives(self) -> bool:
        """Whether they get this list now."""
        return self.status == "active" and self.person == "active"

    @property
    def suppressed(self) -> bool:
        """Whether the address is kept from every list (bounced, complained): re-subscribing can't bring it back."""
        return self.person not in ("active", "unsubscribed")


@dataclass(frozen=True)
class UpsertCounts:
    """What an import did."""

    added: int
    updated: int
    kept_out: int  # unsubscribed or bounced before: left as they were
    forgotten: int = 0  # forgotten before (``subscribers forget``): not added again


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _fields_json(fields: Mapping[str, str]) -> str:
    """Merge fields as stored: a JSON object, keys sorted."""
    return _FIELDS_JSON.encode(fields) if fields else "{}"


@dataclass
class _Person:
    """A subscriber while an import decides about it."""

    id: int | None
    email: str
    name: str
    status: str
    fields: dict[str, str]
    changed: bool = False


class Store(Database):
    """The database with its subscribers, lists and memberships: open with :meth:`open`, close with
    :meth:`close` (or use ``with``); the ledger (:class:`~newsletter.store.ledger.Ledger`) goes over it."""

    # --- lists and subscribers -----------------------------------------------------

    def _list_id(self, cursor: Cursor, name: str) -> int:
        cursor.execute("INSERT INTO lists (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
        row = cursor.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def find_list(self, name: str) -> int | None:
        """The id of the list ``name``, or None when there is none."""
        rows = self.query("SELECT id FROM lists WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def upsert_subscribers(self, rows: Iterable[SubscriberRow], *, list_name: str,
                           forget_keys: Sequence[bytes] = (), consent: ConsentClaim | None = None) -> UpsertCounts:
        """Add or update ``rows`` and put them on ``list_name``, all in one transaction.

        Addresses merge case-insensitively (the same address twice merges like two imports).
        Someone who unsubscribed (from the list or everywhere) or bounced keeps that status: an
        import never re-activates them, and a list it adds them to counts them as left.
        ``rows`` is read :data:`IMPORT_CHUNK` at a time, so an iterator of any length (a
        million rows of ``subscribers import``) takes the same memory as a few thousand.

        An address that was forgotten (``subscribers forget``: its keyed hash under one of
        ``forget_keys``, the keys of ``NEWSLETTER_SECRET_KEY``, is kept) is not added again
        and counts as ``forgotten``. Without keys nobody can be recognised: a command calls
        :meth:`check_forget_keys` first.

        With ``consent`` (``--consent "how"``), each membership this creates gets one consent
        row saying so (:mod:`newsletter.store.consent`), in the same transaction and with one
        statement per chunk; a membership that was there already gets none.
        """
        added = updated = kept_out = forgotten = 0
        now = _now()
        with self.transaction() as cursor:
            self.dialect.prefer_index_lookups(cursor)
            list_id = self._list_id(cursor, list_name)
            pending = iter(rows)
            while chunk := list(itertools.islice(pending, IMPORT_CHUNK)):
                counts = self._merge(cursor, list_id, chunk, now, forget_keys, consent)
                added, updated, kept_out = added + counts.added, updated + counts.updated, kept_out + counts.kept_out
                forgotten += counts.forgotten
        return UpsertCounts(added, updated, kept_out, forgotten)

    def check_forget_keys(self, forget_keys: Sequence[bytes]) -> None:
        """Raise ConfigError when some address was forgotten and there is no key to recognise it by."""
        if not forget_keys and self.query("SELECT 1 FROM forgotten LIMIT 1"):
            raise ConfigError("some subscribers were forgotten (subscribers forget) and no secret key can tell"
                              " who they were: set NEWSLETTER_SECRET_KEY (the one used to forget them)")

    def _merge(self, cursor: Cursor, list_id: int, rows: Sequence[SubscriberRow], now: str,
               forget_keys: Sequence[bytes] = (), consent: ConsentClaim | None = None) -> UpsertCounts:
        """One chunk of an import: read what exists for it, decide in memory, write with a few statements.

        Each statement covers the whole chunk: on PostgreSQL a statement is a round trip
        (array parameters, ``unnest``), on SQLite an ``executemany``; one statement per row
        took minutes for 100,000 rows.
        """
        added = updated = kept_out = 0
        keys = list(dict.fromkeys(row.email.lower() for row in rows))
        people: dict[str, _Person] = {}
        for sql, params in self.dialect.subscribers_by_key(keys):
            for found in cursor.execute(sql, params).fetchall():
                people[found["email_key"]] = _Person(int(found["id"]), found["email"], found["name"],
                                                     found["status"], json.loads(found["fields"]))
        # Of the addresses not stored, those forgotten before: one primary-key search per hash.
        unknown = [key for key in keys if key not in people]
        skipped = set(lookup_forgotten(cursor, unknown, forget_keys)) if unknown and forget_keys else set()
        on_list: dict[int, str] = {}
        known_ids = [person.id for person in people.values() if person.id is not None]
        for sql, params in self.dialect.memberships_on_list(list_id, known_ids):
            for found in cursor.execute(sql, params).fetchall():
                on_list[int(found["subscriber_id"])] = found["status"]
        joined: set[str] = set()  # keys with a membership row by the end of this chunk
        forgotten = 0
        for row in rows:
            key = row.email.lower()
            if key in skipped:
                forgotten += 1
                continue
            person = people.get(key)
            if person is None:
                people[key] = _Person(None, row.email, row.name, "active", dict(row.fields), changed=True)
                added += 1
            else:
                person.fields = {**person.fields, **row.fields}
                if row.name:
                    person.name = row.name
                person.changed = True
                updated += 1
                left_list = person.id is not None and on_list.get(person.id, "active") != "active"
                if person.status != "active" or left_list:
                    kept_out += 1
            joined.add(key)
        new = [(key, person) for key, person in people.items() if person.id is None]
        # A forgotten row never takes a name or fields again, even from an import that read it
        # just before it was forgotten (PostgreSQL: the update re-checks the row it waited for).
        changed = [person for person in people.values() if person.changed and person.id is not None]
        # The new ones in order (their ids follow the file's order), and they learn their ids.
        for subscriber_id, key in self.dialect.insert_subscribers(
                cursor, [(person.email, key, person.name, _fields_json(person.fields)) for key, person in new], now):
            people[key].id = subscriber_id
        self.dialect.update_subscribers(cursor, [(person.id, person.name, _fields_json(person.fields))
                                                 for person in changed if person.id is not None], now)
        # An existing membership keeps its status, unsubscribed included. Someone removed from
        # everything (or bounced) joins a new list as having left it: a later "subscribe
        # again" on one list's page must not wake up lists an import added meanwhile.
        members = [(person.id, "active" if person.status == "active" else "unsubscribed")
                   for person in (people[key] for key in joined) if person.id is not None]
        self.dialect.insert_memberships(cursor, list_id, members, now)
        if consent is not None:
            # The memberships made just now: those not on the list when the chunk was read.
            created = [subscriber_id for subscriber_id, _ in members if subscriber_id not in on_list]
            self.dialect.insert_consents(cursor, list_id, created, consent.method, consent.source, now)
        return UpsertCounts(added, updated, kept_out, forgotten)

    def unsubscribe(self, email: str, *, list_name: str | None = None) -> bool:
        """Unsubscribe ``email`` from ``list_name``, or from everything; False if unknown.

        From everything: every membership ends and the subscriber is ``unsubscribed``, so
        that no import or ``subscribers add`` puts them on a list again. Only their own
        "subscribe again" on one list's page brings back that one list (:meth:`rejoin`).
        """
        now = _now()
        with self.transaction() as cursor:
            row = cursor.execute("SELECT id FROM subscribers WHERE email_key = ?", (email.lower(),)).fetchone()
            if row is None:
                return False
            if list_name is None:
                cursor.execute(
                    "UPDATE subscribers SET status = 'unsubscribed', updated_at = ?"
                    " WHERE id = ? AND status = 'active'", (now, row["id"]),
                )
                # Pending ones too: a confirmation must not bring back someone who left since.
                cursor.execute(
                    "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                    " WHERE subscriber_id = ? AND status IN ('active', 'pending')", (now, row["id"]),
                )
                return True
            result = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = (SELECT id FROM lists WHERE name = ?)",
                (now, row["id"], list_name),
            )
            return bool(result.rowcount > 0)

    def membership_state(self, subscriber_id: int, list_id: int) -> MembershipState | None:
        """One membership as stored (address, list, its status, the subscriber's status), or None."""
        rows = self.query(
            "SELECT s.email, l.name, m.status, s.status AS person FROM memberships m"
            " JOIN subscribers s ON s.id = m.subscriber_id JOIN lists l ON l.id = m.list_id"
            " WHERE m.subscriber_id = ? AND m.list_id = ?",
            (subscriber_id, list_id),
        )
        if not rows:
            return None
        row = rows[0]
        return MembershipState(str(row["email"]), str(row["name"]), str(row["status"]), str(row["person"]))

    def membership(self, subscriber_id: int, list_id: int) -> tuple[str, str, bool] | None:
        """(address, list name, whether they get it now) of one membership, or None when there is none."""
        state = self.membership_state(subscriber_id, list_id)
        return None if state is None else (state.email, state.list_name, state.receives)

    def leave_list(self, subscriber_id: int, list_id: int) -> bool:
        """End one membership (an unsubscribe link); True when it was active, or pending, until now.

        A pending one (a signup not confirmed yet) ends too: its confirmation then changes nothing.
        """
        with self.transaction() as cursor:
            changed = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status IN ('active', 'pending')",
                (_now(), subscriber_id, list_id),
            ).rowcount
        return bool(changed > 0)

    def rejoin(self, subscriber_id: int, list_id: int) -> Rejoined:
        """Put exactly one membership back (the re-subscribe button); what happened.

        ``"rejoined"``: they get this list again, and only it: someone who had been removed
        from everything is active again with this one list, their other lists stay ended. A
        pending membership (a signup not confirmed yet) turns active too: the token that names
        it came by mail to the address, which is what a confirmation proves.
        ``"unchanged"``: they were on it already. ``"suppressed"``: the address bounced, so
        nothing changes (mail to it can't arrive; only an operator can look into that).
        ``"unknown"``: there is no such membership.
        """
        now = _now()
        with self.transaction() as cursor:
            row = cursor.execute(
                "SELECT m.status, s.status AS person FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
                " WHERE m.subscriber_id = ? AND m.list_id = ?",
                (subscriber_id, list_id),
            ).fetchone()
            if row is None:
                return "unknown"
            if row["person"] not in ("active", "unsubscribed"):
                return "suppressed"
            if row["person"] == "active" and row["status"] == "active":
                return "unchanged"
            changed = cursor.execute(
                "UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ? AND status = 'unsubscribed'",
                (now, subscriber_id),
            ).rowcount
            changed += cursor.execute(
                "UPDATE memberships SET status = 'active', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status IN ('unsubscribed', 'pending')",
                (now, subscriber_id, list_id),
            ).rowcount
        # "rejoined" only for a change that happened (the row may have changed since it was read).
        return "rejoined" if changed else "unchanged"

    def rejoin_list(self, subscriber_id: int, list_id: int) -> bool:
        """:meth:`rejoin`, True when it brought the membership back."""
        return self.rejoin(subscriber_id, list_id) == "rejoined"

    def mark_bounced(self, subscriber_id: int) -> None:
        """Never mail this subscriber again (a permanent unknown-user failure)."""
        with self.transaction() as cursor:
            cursor.execute(
                "UPDATE subscribers SET status = 'bounced', updated_at = ? WHERE id = ?", (_now(), subscriber_id)
            )

    # --- reading many rows ------------------------------------------------------------

    def subscriber_select(self, *, list_id: int | None = None, status: str | None = None,
                          emails: Sequence[str] | None = None) -> tuple[str, list[object]]:
        """The statement (and its parameters) that :meth:`iter_subscribers` runs.

        Linear in the subscribers: each one's lists come from ``memberships_subscriber``
        (an index search, not a scan of every membership per row), the list filter from
        the primary key (list_id, subscriber_id).
        """
        lists = self.dialect.string_agg("l.name", "','")
        query = (
            "SELECT s.id, s.email, s.name, s.fields, s.status,"
            f" (SELECT {lists} FROM memberships m JOIN lists l ON l.id = m.list_id"
            "  WHERE m.subscriber_id = s.id AND m.status = 'active') AS lists"
            " FROM subscribers s"
        )
        where, params = self._subscriber_filter(list_id=list_id, status=status, emails=emails)
        return query + where + " ORDER BY s.id", params

    def _subscriber_filter(self, *, list_id: int | None, status: str | None,
                           emails: Sequence[str] | None) -> tuple[str, list[object]]:
        where: list[str] = []
        params: list[object] = []
        if list_id is not None:
            where.append("EXISTS (SELECT 1 FROM memberships m WHERE m.list_id = ? AND m.subscriber_id = s.id"
                         " AND m.status = 'active')")
            params.append(list_id)
        if status is not None:
            where.append("s.status = ?")
            params.append(status)
        if emails is not None:
            keys = sorted({email.lower() for email in emails})
            where.append(f"s.email_key IN ({','.join('?' * len(keys))})" if keys else "1 = 0")
            params.extend(keys)
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def field_names_select(self, *, list_id: int | None = None, status: str | None = None) -> tuple[str, list[object]]:
        """The statement (and its parameters) that :meth:`field_names` runs: every merge field's name, once."""
        where, params = self._subscriber_filter(list_id=list_id, status=status, emails=None)
        where = (where + " AND " if where else " WHERE ") + "s.fields <> '{}'"
        keys = self.dialect.json_keys("s.fields")
        return f"SELECT DISTINCT k.key FROM subscribers s, {keys}{where}", params

    def _list_filter(self, list_name: str | None) -> int | None:
        """The id of ``list_name`` (None: no filter); -1, which matches nothing, for a list that doesn't exist."""
        if list_name is None:
            return None
        found = self.find_list(list_name)
        return -1 if found is None else found

    def field_names(self, *, list_name: str | None = None, status: str | None = None) -> list[str]:
        """The merge fields the subscribers :meth:`iter_subscribers` yields have, sorted (an export's columns)."""
        sql, params = self.field_names_select(list_id=self._list_filter(list_name), status=status)
        return sorted(str(row[0]) for row in self.stream(sql, params))

    def iter_subscribers(self, *, list_name: str | None = None, status: str | None = None,
                         emails: Sequence[str] | None = None) -> Iterator[Subscriber]:
        """Subscribers one at a time by id, optionally only those on ``list_name`` (active there), of
        ``status``, or with ``emails``: a million of them stream in the memory of a few thousand."""
        sql, params = self.subscriber_select(list_id=self._list_filter(list_name), status=status, emails=emails)
        for row in self.stream(sql, params):
            lists = row["lists"]
            yield Subscriber(int(row["id"]), row["email"], row["name"],
                             json.loads(row["fields"]) if row["fields"] != "{}" else {}, row["status"],
                             tuple(sorted(lists.split(","))) if lists else ())

    def subscribers(self, *, list_name: str | None = None, status: str | None = None,
                    emails: Sequence[str] | None = None) -> list[Subscriber]:
        """Subscribers, optionally only those on ``list_name`` (active there), of ``status``, or with ``emails``."""
        return list(self.iter_subscribers(list_name=list_name, status=status, emails=emails))

    def count(self, *, list_name: str | None = None) -> dict[str, int]:
        """How many subscribers there are per status (on ``list_name`` if given)."""
        # others (complained, forgotten; on a list, pending) when there are any
        counts = {"active": 0, "unsubscribed": 0, "bounced": 0}
        if list_name is None:
            rows = self.query("SELECT status, count(*) FROM subscribers GROUP BY status")
        else:
            rows = self.query(
                "SELECT CASE WHEN s.status = 'active' AND m.status <> 'active' THEN m.status"
                " ELSE s.status END AS state, count(*)"
                " FROM memberships m JOIN lists l ON l.id = m.list_id JOIN subscribers s ON s.id = m.subscriber_id"
                " WHERE l.name = ? GROUP BY state",
                (list_name,),
            )
        for state, number in rows:
            counts[str(state)] = int(number)
        return counts


