"""``newsletter send-test``: an issue to a few addresses, exactly as a subscriber gets it, outside the ledger."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from newsletter.compose.message import compile_message, now_header_date, personalise
from newsletter.compose.signing import message_signer
from newsletter.config import Settings
from newsletter.deliver.transport import SendResult, SmtpConnection
from newsletter.errors import DeliveryError
from newsletter.issue.parse import load_issue
from newsletter.models import Recipient
from newsletter.render.engine import render_issue
from newsletter.store.subscriber_files import normalise_address
from newsletter.store.subscribers import Store
from newsletter.tokens import TokenSigner, reader_links, split_keys

__all__ = [
    "SentTest",
    "send_test",
]


@dataclass(frozen=True)
class SentTest:
    """What became of a test message to one address."""

    address: str
    result: SendResult
    message_id: str


def send_test(issue_path: str | Path, addresses: Sequence[str], settings: Settings) -> list[SentTest]:
    """Send ``issue_path`` to ``addresses`` as a subscriber would get it, subject prefixed ``[TEST]``.

    Nothing goes into the ledger. An address that is a subscriber gets their own name,
    merge fields and a working unsubscribe link; any other gets the message as an
    anonymous reader (its unsubscribe link says it was a test). The envelope sender is
    the bare ``bounce_address`` when set (no delivery to name), else the From address.
    Everything is checked and rendered before the first connection.
    """
    recipients = [normalise_address(address) for address in addresses]
    issue = load_issue(issue_path)
    sign = message_signer(settings)
    rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir)
    template = compile_message(replace(rendered, subject=f"[TEST] {rendered.subject}"), sender=settings.sender,
                               list_id=issue.list_name)
    people = _known_subscribers(settings, issue.list_name, recipients)
    date = now_header_date()
    messages: list[tuple[str, str, bytes]] = []
    for email in recipients:
        message_id = f"test.{issue.slug}.{secrets.token_hex(8)}@{settings.sender.domain}"
        anonymous = Recipient(email=email,
                              **reader_links(settings.sender.site_url, settings.sender.unsubscribe_address, "test"))
        recipient = people.get(email.lower()) or anonymous
        message = personalise(template, recipient, message_id=message_id, date=date)
        messages.append((email, message_id, sign(message) if sign else message))
    return asyncio.run(_send_all(settings, messages))


def _known_subscribers(settings: Settings, list_name: str, emails: Sequence[str]) -> dict[str, Recipient]:
    """Recipients for the addresses that are subscribers of ``list_name`` (only if the database exists already)."""
    if not settings.database.url and not settings.database.path.exists():
        return {}
    with Store.open(settings.database.location) as store:
        people = store.subscribers(emails=emails)
        list_id = store.find_list(list_name)
    tokens = TokenSigner(split_keys(settings.secret_key.reveal())) if settings.secret_key and list_id else None
    found: dict[str, Recipient] = {}
    for person in people:
        token = tokens.make(person.id, list_id) if tokens is not None and list_id is not None else "test"
        found[person.email.lower()] = Recipient(
            email=person.email, name=person.name, fields=person.fields,
            **reader_links(settings.sender.site_url, settings.sender.unsubscribe_address, token))
    return found


async def _send_all(settings: Settings, messages: Sequence[tuple[str, str, bytes]]) -> list[SentTest]:
    connection = SmtpConnection(settings.smtp)
    # The bare bounce mailbox: a test belongs to no delivery, so it gets no signed id, but a
    # bounce of it still reaches the mailbox `newsletter inbound` reads (which files it as unhandled).
    sender = settings.sender.bounce_address or settings.sender.from_email
    results: list[SentTest] = []
    try:
        for email, message_id, message in messages:
            try:
                result = await connection.send(sender, email, message)
            except DeliveryError as exc:
                result = SendResult("deferred", None, str(exc))
            results.append(SentTest(email, result, message_id))
    finally:
        await connection.close()
    return results
