"""The outbox: a signup's confirmation email and a list's welcome issue, each sent once.

Both wait in the database (:class:`~newsletter.store.signups.Signups`: a ``confirmations``
row per confirmation email, a ``welcomes`` row per welcome), so that a mail is neither lost
nor sent twice: :meth:`~newsletter.store.signups.Signups.claim_mail` marks a row ``sending``
with a lease (a conditional update: two senders never hold one row), and the result is
recorded as soon as the relay answers. A sender that dies in between leaves its row claimed
until the lease passes; the next sender (``serve``'s next signup, ``newsletter dispatch``)
takes it again.

One connection to ``[smtp]``, the same sender, headers and DKIM signature as an issue. A
temporary failure (4xx, the relay away) waits with the backoff of ``[dispatch]``
(``retry_initial`` … ``retry_max``) and fails after ``give_up_after_hours``, or once a
confirmation's link has expired; a permanent one (5xx) fails at once.

The confirmation email (:mod:`~newsletter.render.confirm`) names the address and the lists
and nothing the form's visitor typed: a name or a page address in a message to someone
else's inbox is how signup forms are abused to carry spam. The welcome issue is the
``[lists.NAME] welcome`` file, rendered and encoded as an issue (once per run) and
personalised for its reader, with their unsubscribe link for that list; it is not an
issue of the ledger (nor of the archive).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from newsletter.compose.message import MessageTemplate, compile_message, now_header_date, personalise
from newsletter.compose.notice import compose_notice
from newsletter.compose.signing import message_signer
from newsletter.config import ListSettings, Settings, SmtpSettings
from newsletter.deliver.retry import retry_delay
from newsletter.deliver.transport import SendResult, SmtpConnection
from newsletter.errors import ComposeError, ConfigError, DeliveryError, IssueError, RenderError
from newsletter.issue.parse import load_issue
from newsletter.models import Recipient
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import render_issue
from newsletter.store.signups import OutgoingMail, PurgeCounts, SignupRequest, Signups
from newsletter.store.subscribers import Store
from newsletter.tokens import TokenSigner, confirm_link, reader_links, split_keys

__all__ = [
    "OUTBOX_FLUSH_LIMIT",
    "OutboxSummary",
    "PendingSignup",
    "catch_up",
    "purge_line",
    "request_confirmation",
    "send_outbox",
    "send_outbox_now",
]

#: mails a ``newsletter dispatch`` sends at most from the outbox before its issues (the rest: next run)
OUTBOX_FLUSH_LIMIT = 10_000


@dataclass
class OutboxSummary:
    """What one pass over the outbox did."""

    sent: int = 0
    #: temporary failures: each waits for its retry (a later pass, ``newsletter dispatch``)
    deferred: int = 0
    failed: int = 0
    #: the relay took no final verdict on them: recorded sent (not sent again, as ``dispatch`` does)
    uncertain: int = 0
    #: what an operator should know, one line each (the relay away, a welcome file that doesn't parse)
    notes: list[str] = field(default_factory=list)
    #: each mail that wasn't sent: ``<address>: <outcome>: <why>``
    problems: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Mails this pass took from the outbox."""
        return self.sent + self.deferred + self.failed + self.uncertain

    def describe(self) -> str:
        """One line: ``outbox: 2 sent, 1 deferred, 0 failed`` (+ uncertain when there were any)."""
        line = f"outbox: {self.sent} sent, {self.deferred} deferred, {self.failed} failed"
        return line + (f", {self.uncertain} uncertain" if self.uncertain else "")

    def as_dict(self) -> dict[str, object]:
        """The summary as plain JSON-ready data."""
        return {"sent": self.sent, "deferred": self.deferred, "failed": self.failed, "uncertain": self.uncertain,
                "notes": list(self.notes)}


def _lease(smtp: SmtpSettings) -> float:
    """Seconds one mail may take before another sender may think its sender dead: connect, three
    commands, the final reply, and room to spare."""
    return 6 * smtp.timeout + smtp.final_reply_timeout + 60.0


@dataclass
class _Tools:
    """What building a message needs: the signing keys and DKIM, made once a mail is claimed."""

    tokens: TokenSigner
    sign: Callable[[bytes], bytes] | None


@dataclass(frozen=True)
class _Welcome:
    """A list's welcome issue, encoded once for this pass."""

    template: MessageTemplate
    list_id: int


class _Outbox:
    """One pass: claim, build, send over one connection, record."""

    def __init__(self, settings: Settings, store: Store, summary: OutboxSummary, now: dt.datetime | None) -> None:
        self.settings = settings
        #: the time to act as if it were (claims, retries, expiry); None: the clock
        self.now = now
        self.store = store
        self.signups = Signups(store, settings.signup)
        self.summary = summary
        self.connection = SmtpConnection(settings.smtp)
        # The bare bounce mailbox: a return path with a signed id names a delivery of the ledger.
        self.envelope_sender = settings.sender.bounce_address or settings.sender.from_email
        self.lease = _lease(settings.smtp)
        self.tools: _Tools | None = None
        #: each list's welcome issue, or why it can't be sent (found once a pass)
        self.welcomes: dict[str, _Welcome | IssueError | RenderError | _Undeliverable] = {}
        #: why the rest of this pass waits (the relay is away, or refused us): "" while it goes on
        self.stopped = ""
        #: a setting that keeps every mail from going, raised at the end of the pass
        self.error: ConfigError | None = None

    async def run(self, ids: Sequence[int] | None, limit: int) -> None:
        if ids is not None:
            wanted = list(dict.fromkeys(ids))
            if wanted:
                await self.send(self.signups.claim_mail(ids=wanted, limit=len(wanted), now=self.now,
                                                        lease_seconds=self.lease * len(wanted)))
            return
        # One at a time: each claim's lease covers one message, so a sender that dies holds up
        # one mail for minutes, not a batch for hours.
        while self.summary.handled < limit and not self.stopped:
            claimed = self.signups.claim_mail(limit=1, now=self.now, lease_seconds=self.lease)
            if not claimed:
                break
            await self.send(claimed)

    async def send(self, mails: Sequence[OutgoingMail]) -> None:
        for mail in mails:
            if self.stopped:
                self.defer(mail, self.stopped)
                continue
            await self.send_one(mail)

    def load_tools(self) -> _Tools:
        if self.tools is None:
            self.tools = _Tools(TokenSigner(split_keys(self.settings.secret_key.reveal())),
                                message_signer(self.settings))
        return self.tools

    async def send_one(self, mail: OutgoingMail) -> None:
        try:
            tools = self.load_tools()
            message_id = f"{mail.kind}.{mail.id}.{secrets.token_hex(6)}@{self.settings.sender.domain}"
            message = self.confirmation(mail, tools, message_id) if mail.kind == "confirm" \
                else self.welcome(mail, tools, message_id)
        except ConfigError as exc:
            # No key, a half-set DKIM: nothing can go until an operator fixes it; every mail
            # claimed waits, and the error is raised once they are recorded.
            self.error = exc
            self.stop(str(exc))
            self.defer(mail, str(exc))
            return
        except (IssueError, RenderError) as exc:
            # A template or welcome file an operator can fix: the mail waits for the fix.
            self.note(str(exc))
            self.defer(mail, str(exc))
            return
        except (ComposeError, _Undeliverable) as exc:
            self.record(mail, "failed", detail=str(exc))
            return
        try:
            # compose_notice and personalise never start a line with a dot: no dot-stuffing needed.
            result = await self.connection.send(self.envelope_sender, mail.email, message, dot_safe=True)
        except DeliveryError as exc:
            # No connection, or the relay refused our login or sender: the rest wait too.
            self.stop(str(exc))
            self.defer(mail, str(exc))
            return
        self.outcome(mail, result, message_id)

    def confirmation(self, mail: OutgoingMail, tools: _Tools, message_id: str) -> bytes:
        if mail.expires is None:
            raise _Undeliverable("a confirmation without an expiry")
        settings = self.settings
        lists = [settings.list_settings(name) or ListSettings(name, name) for name in mail.lists]
        url = confirm_link(settings.sender.site_url, tools.tokens.make_confirm(mail.id, mail.expires))
        notice = render_confirmation(email=mail.email, lists=lists, confirm_url=url, expires=mail.expires,
                                     sender=settings.sender, templates_dir=settings.templates_dir)
        # To: the bare address: a name typed into a form is not shown to the address's owner.
        message = compose_notice(notice, email=mail.email, sender=settings.sender, message_id=message_id,
                                 date=now_header_date())
        return tools.sign(message) if tools.sign is not None else message

    def welcome(self, mail: OutgoingMail, tools: _Tools, message_id: str) -> bytes:
        list_name = mail.lists[0]
        welcome = self.welcome_of(list_name)
        settings = self.settings
        token = tools.tokens.make(mail.subscriber_id, welcome.list_id)
        people = self.store.subscribers(emails=[mail.email])
        fields = people[0].fields if people else {}
        recipient = Recipient(email=mail.email, name=mail.name, fields=fields,
                              **reader_links(settings.sender.site_url, settings.sender.unsubscribe_address, token))
        message = personalise(welcome.template, recipient, message_id=message_id, date=now_header_date())
        return tools.sign(message) if tools.sign is not None else message

    def welcome_of(self, list_name: str) -> _Welcome:
        """The list's welcome issue, rendered and encoded once a pass (or why it can't be, raised)."""
        found = self.welcomes.get(list_name)
        if found is None:
            try:
                found = self._load_welcome(list_name)
            except (IssueError, RenderError, _Undeliverable) as exc:
                found = exc
            self.welcomes[list_name] = found
        if isinstance(found, _Welcome):
            return found
        raise found

    def _load_welcome(self, list_name: str) -> _Welcome:
        list_settings = self.settings.list_settings(list_name)
        list_id = self.store.find_list(list_name)
        if list_settings is None or list_settings.welcome is None or list_id is None:
            raise _Undeliverable(f"list '{list_name}' has no welcome issue ([lists.{list_name}] welcome)")
        issue = load_issue(list_settings.welcome)
        # Not in the archive (it is no issue of the ledger): no "view in browser" link to a page that isn't there.
        rendered = render_issue(issue, sender=self.settings.sender, templates_dir=self.settings.templates_dir,
                                archived=False)
        return _Welcome(compile_message(rendered, sender=self.settings.sender, list_id=list_name), list_id)

    def outcome(self, mail: OutgoingMail, result: SendResult, message_id: str) -> None:
        if result.outcome == "sent":
            self.record(mail, "sent", message_id=message_id)
        elif result.outcome == "uncertain":
            # The whole message went out and the relay gave no verdict: it may have it. Not sent
            # again (a second confirmation is what the limits are there to prevent).
            self.summary.uncertain += 1
            self.signups.record_mail(mail, "sent", message_id=message_id, detail=f"uncertain: {result.describe()}",
                                     now=self.now)
        elif result.outcome == "failed":
            if result.bounced and mail.kind == "welcome":
                self.store.mark_bounced(mail.subscriber_id)  # a member whose mailbox is gone, as dispatch does
            self.record(mail, "failed", detail=result.describe())
        else:
            self.defer(mail, result.describe())

    def defer(self, mail: OutgoingMail, detail: str) -> None:
        """Record a temporary failure: a retry after the backoff, or failed when it is too late for one."""
        now = self.now or dt.datetime.now(dt.UTC)
        late = self.too_late(mail, now)
        if late:
            self.record(mail, "failed", detail=f"{late}: {detail}")
            return
        # attempts counts this one: the first retry waits retry_initial, as an issue's does.
        retry_at = now + dt.timedelta(seconds=retry_delay(mail.attempts, self.settings.dispatch))
        self.record(mail, "deferred", detail=detail, retry_at=retry_at)

    def too_late(self, mail: OutgoingMail, now: dt.datetime) -> str:
        """Why ``mail`` is not worth another try ("" when it is)."""
        if mail.kind == "confirm" and mail.expires is not None and mail.expires < now.date():
            return "its link expired before it could be sent"
        hours = self.settings.dispatch.give_up_after_hours
        if mail.created_at is not None and (now - mail.created_at).total_seconds() >= hours * 3600:
            return f"gave up after {hours:g} h"
        return ""

    def record(self, mail: OutgoingMail, outcome: str, *, message_id: str = "", detail: str = "",
               retry_at: dt.datetime | None = None) -> None:
        if outcome == "sent":
            self.summary.sent += 1
            self.signups.record_mail(mail, "sent", message_id=message_id, now=self.now)
            return
        if outcome == "failed":
            self.summary.failed += 1
            self.signups.record_mail(mail, "failed", detail=detail, now=self.now)
        else:
            self.summary.deferred += 1
            self.signups.record_mail(mail, "deferred", detail=detail, retry_at=retry_at, now=self.now)
        self.summary.problems.append(f"{mail.email}: {outcome}: {detail}")

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = reason
            self.note(f"stopped: {reason}; the rest wait for a later run")

    def note(self, line: str) -> None:
        if line not in self.summary.notes:
            self.summary.notes.append(line)


class _Undeliverable(Exception):
    """A mail that no retry can send (its list has no welcome any more, say): it fails."""


async def send_outbox(settings: Settings, *, ids: Sequence[int] | None = None, limit: int = 100,
                      now: dt.datetime | None = None) -> OutboxSummary:
    """Send what waits in the outbox: the confirmations ``ids`` (all of them), else up to ``limit`` due mails.

    Confirmation emails and welcome issues alike, each recorded as it is answered. Returns the
    counts; a relay that can't be reached leaves the mails queued for a later pass (a note
    says so). ConfigError (no ``NEWSLETTER_SECRET_KEY``, a half-set DKIM) once a mail was
    claimed: the mails wait. The database work is blocking: a server calls
    :func:`send_outbox_now` in a worker thread. ``now`` is the time to act as if it were
    (what is due, when a retry comes due, whether it is too late): for tests and tools.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    summary = OutboxSummary()
    with Store.open(settings.database.location) as store:
        outbox = _Outbox(settings, store, summary, now)
        try:
            await outbox.run(ids, limit)
        finally:
            await outbox.connection.close()
    if outbox.error is not None:
        raise outbox.error
    return summary


def send_outbox_now(settings: Settings, ids: Sequence[int] | None = None, *, limit: int = 100,
                    now: dt.datetime | None = None) -> OutboxSummary:
    """:func:`send_outbox` from synchronous code (a worker thread of ``serve``, the command line)."""
    return asyncio.run(send_outbox(settings, ids=ids, limit=limit, now=now))


async def catch_up(settings: Settings, *, now: dt.datetime | None = None) -> tuple[PurgeCounts, OutboxSummary]:
    """What ``newsletter dispatch`` does first: purge expired signups, then send what waits in the outbox.

    Purging first: a confirmation whose link has expired is not worth sending.
    """
    with Store.open(settings.database.location) as store:
        purged = Signups(store, settings.signup).purge(now=now)
    return purged, await send_outbox(settings, limit=OUTBOX_FLUSH_LIMIT)


def purge_line(counts: PurgeCounts) -> str:
    """One line about a purge, or "" when it removed no signup (old counter windows don't count)."""
    if not (counts.consents or counts.memberships or counts.subscribers or counts.confirmations):
        return ""
    return (f"signups: purged {counts.memberships} unconfirmed membership(s), {counts.subscribers} subscriber(s)"
            f" left with nothing, {counts.confirmations} expired confirmation(s), {counts.consents} consent row(s)")


@dataclass(frozen=True)
class PendingSignup:
    """What :func:`request_confirmation` did."""

    #: as :class:`~newsletter.store.signups.SignupOutcome` says: "queued" (a confirmation went, or
    #: waits), "joined" (a confirmation sent within ``confirm_every_hours`` asks for this list too),
    #: "nothing" (already on the list, or the address is suppressed)
    status: str
    #: the sending of the new confirmation ("queued" only)
    summary: OutboxSummary | None = None


def request_confirmation(settings: Settings, email: str, *, list_name: str, name: str = "",
                         source: str = "") -> PendingSignup:
    """``subscribers add --pending``: a pending membership of ``email`` on ``list_name``, its consent
    (method ``cli``, ``source``) and a confirmation email, sent at once.

    ``email`` is normalised already. The keys and DKIM are checked before anything is stored
    (ConfigError). When the relay doesn't take the email, DeliveryError says why; a temporary
    failure leaves it queued, for ``newsletter dispatch`` to send.
    """
    keys = split_keys(settings.secret_key.reveal())
    TokenSigner(keys)  # ConfigError now, not with the signup stored and its email unsendable
    message_signer(settings)
    with Store.open(settings.database.location) as store:
        outcome = Signups(store, settings.signup, forget_keys=keys).request(
            SignupRequest(email=email, lists=(list_name,), method="cli", name=name, source=source))
    if outcome.status != "queued" or outcome.confirmation_id is None:
        return PendingSignup(outcome.status)
    summary = send_outbox_now(settings, [outcome.confirmation_id])
    if summary.sent or summary.uncertain:
        return PendingSignup(outcome.status, summary)
    why = "; ".join(summary.problems) or "it was not due (another sender has it)"
    if summary.deferred:
        raise DeliveryError(f"the confirmation to {email} is queued but was not sent ({why});"
                            " `newsletter dispatch` sends it once the relay takes it")
    raise DeliveryError(f"the confirmation to {email} could not be sent ({why})")
