"""A reader's own preferences (issue 16 item 5): their name and which lists they get (:class:`Preferences`).

What the preferences page (``GET/POST /preferences/<token>``) reads and saves. The token
is the unsubscribe token of one membership; it came by mail to the address, so it proves
that whoever holds it owns the address. That is why joining a list from the page is
active at once (no second double opt-in) and is recorded as a consent event confirmed on
the spot: method ``form``, source :data:`PREFERENCES_SOURCE`, the requester's network
(:func:`~newsletter.store.consent.truncate_ip`).

Leaving a list is what the unsubscribe link does (:meth:`Store.leave_list`): that membership
becomes ``unsubscribed``, the ledger re-checks memberships at send time. A pending signup
is shown unticked and an unticked box leaves it pending (its confirmation email still
works until it expires); ticking it makes it active.
Joining a list that someone removed from everything (``subscribers remove``) brings them
back with exactly the lists they tick, as "subscribe again" on the unsubscribe page does.
An address that bounced or complained (suppressed) joins nothing; a forgotten one
(``subscribers forget``) can't be changed at all. Everything one save asks for happens in
one transaction, or nothing does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from newsletter.store.consent import truncate_ip
from newsletter.store.dialect import Cursor
from newsletter.store.engine import Database

__all__ = [
    "PREFERENCES_SOURCE",
    "Preferences",
    "PreferencesView",
    "SaveOutcome",
    "SaveResult",
]

#: the consent source of a list joined on the preferences page
PREFERENCES_SOURCE = "preferences page"

#: what :meth:`Preferences.save` did: ``saved`` (something changed), ``unchanged``, ``suppressed``
#: (the address bounced or complained and a join was asked for: nothing changed), ``forgotten``
#: (the person was erased: nothing changed), ``unknown`` (no such subscriber)
SaveOutcome = Literal["saved", "unchanged", "suppressed", "forgotten", "unknown"]

# Statements named so that a test can EXPLAIN exactly these (both search memberships_subscriber).
_PERSON = "SELECT email, name, status FROM subscribers WHERE id = ?"
_MEMBERSHIPS = ("SELECT l.name, m.status, m.list_id FROM memberships m JOIN lists l ON l.id = m.list_id"
                " WHERE m.subscriber_id = ? ORDER BY l.name")
# An existing membership (left, pending) becomes active; a new one is made active.
_JOIN = ("INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
         " VALUES (?, ?, 'active', ?, ?) ON CONFLICT (list_id, subscriber_id)"
         " DO UPDATE SET status = 'active', updated_at = excluded.updated_at WHERE memberships.status <> 'active'")
# Store.leave_list's statement for an active membership, in this save's transaction. A pending one
# (a signup not confirmed yet) is shown unticked and stays as it is: unticked means "not now", and
# its confirmation email still works until it expires.
_LEAVE = ("UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
          " WHERE subscriber_id = ? AND list_id = ? AND status = 'active'")
_CONSENT = ("INSERT INTO consents (subscriber_id, list_id, method, source, ip_prefix, requested_at, confirmed_at)"
            " VALUES (?, ?, 'form', ?, ?, ?, ?)")


@dataclass(frozen=True)
class PreferencesView:
    """One reader as the preferences page shows them."""

    subscriber_id: int
    email: str
    name: str
    #: the subscriber's status: active, unsubscribed (removed from everything), bounced, complained, forgotten
    person: str
    #: (list name, membership status) of every list they have a membership of, by name
    memberships: tuple[tuple[str, str], ...]

    @property
    def forgotten(self) -> bool:
        """The person was erased at their request: nothing of them may be shown."""
        return self.person == "forgotten"

    @property
    def suppressed(self) -> bool:
        """Mail to the address bounced, or its reader complained: it can join no list."""
        return self.person in ("bounced", "complained")

    @property
    def complained(self) -> bool:
        """Suppressed because its reader reported our mail as spam."""
        return self.person == "complained"

    def receives(self, list_name: str) -> bool:
        """Whether they get ``list_name`` now."""
        return self.person == "active" and dict(self.memberships).get(list_name) == "active"

    def status(self, list_name: str) -> str | None:
        """Their membership status on ``list_name`` (active, unsubscribed, pending), None when they have none."""
        return dict(self.memberships).get(list_name)


@dataclass(frozen=True)
class SaveResult:
    """What one save did."""

    outcome: SaveOutcome
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    renamed: bool = False


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Preferences:
    """A reader's name and lists over an open database: read them for the page, save what the page sent."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def view(self, subscriber_id: int, list_id: int) -> PreferencesView | None:
        """The reader a token names, or None when there is no membership (``subscriber_id``, ``list_id``)."""
        with self.store.snapshot():
            person = self.store.query(_PERSON, (subscriber_id,))
            if not person:
                return None
            rows = self.store.query(_MEMBERSHIPS, (subscriber_id,))
        if not any(int(row[2]) == list_id for row in rows):
            return None
        row = person[0]
        return PreferencesView(subscriber_id, str(row[0]), str(row[1]), str(row[2]),
                               tuple((str(found[0]), str(found[1])) for found in rows))

    def save(self, subscriber_id: int, *, lists: Mapping[str, bool], name: str | None = None,
             ip: str | None = None, now: str | None = None) -> SaveResult:
        """Put the reader on the lists ``lists`` maps to True and off those it maps to False, and set
        their ``name`` (None: leave it), in one transaction.

        The caller decides which lists a reader may choose from (the page's); a list that
        isn't in the database yet is made. A join records a consent, method ``form``, source
        :data:`PREFERENCES_SOURCE`, confirmed at once, with ``ip`` kept as its network only.
        Nothing changes for a forgotten person, nor for a suppressed one who asked to join.
        """
        at = now or _now()
        prefix = None if ip is None else truncate_ip(ip)
        with self.store.transaction() as cursor:
            person = cursor.execute(_PERSON, (subscriber_id,)).fetchone()
            if person is None:
                return SaveResult("unknown")
            status = str(person["status"])
            if status == "forgotten":
                return SaveResult("forgotten")
            current = {str(row[0]): (str(row[1]), int(row[2]))
                       for row in cursor.execute(_MEMBERSHIPS, (subscriber_id,)).fetchall()}
            receiving = {list_name for list_name, (state, _) in current.items()
                         if state == "active" and status == "active"}
            joining = sorted(list_name for list_name, wanted in lists.items() if wanted and list_name not in receiving)
            leaving = sorted(list_name for list_name, wanted in lists.items()
                             if not wanted and current.get(list_name, ("", 0))[0] == "active")
            if joining and status not in ("active", "unsubscribed"):
                return SaveResult("suppressed")
            renamed = name is not None and name != str(person["name"])
            if renamed:
                cursor.execute("UPDATE subscribers SET name = ?, updated_at = ? WHERE id = ?",
                               (name, at, subscriber_id))
            for list_name in joining:
                list_id = current[list_name][1] if list_name in current else _list_id(cursor, list_name)
                cursor.execute(_JOIN, (list_id, subscriber_id, at, at))
                cursor.execute(_CONSENT, (subscriber_id, list_id, PREFERENCES_SOURCE, prefix, at, at))
            if joining and status == "unsubscribed":
                # Removed from everything before: back, with only the lists ticked (the others stay ended).
                cursor.execute("UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ?",
                               (at, subscriber_id))
            for list_name in leaving:
                cursor.execute(_LEAVE, (at, subscriber_id, current[list_name][1]))
        changed = bool(joining or leaving or renamed)
        return SaveResult("saved" if changed else "unchanged", tuple(joining), tuple(leaving), renamed)


def _list_id(cursor: Cursor, name: str) -> int:
    cursor.execute("INSERT INTO lists (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
    return int(cursor.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()[0])
