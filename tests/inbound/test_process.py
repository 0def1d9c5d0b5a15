"""What one returned message does to the store (issue 15, items 3 and 4): the delivery found from a
signed return path, a signed token, or the Message-ID with the recipient it names, never from ``To:``
alone; forgeries change nothing; a second reading changes nothing. On an SQLite file and on a real
PostgreSQL server (tests/harness/pgserver.py).

The messages are this folder's fixtures (written from the published formats), with their return path,
recipient, Message-ID and token replaced by ones the ledger and the key really made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.inbound.process import Resolver, handle_message
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import ReturnPaths, TokenSigner

pytest_plugins = ["tests.harness.pgserver"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inbound"
KEYS = [b"inbound-test-key-0123456789abcdef"]
RETURN_PATHS = ReturnPaths("bounces@news.example.com", KEYS)
TOKENS = TokenSigner(KEYS)
SLUG = "2026-12-briefing"
#: what each fixture says, to be replaced: (its return path, its recipient, its Message-ID's subscriber, its token)
SAYS = {
    "postfix-dsn-5.1.1.eml": ("bounces+c-2n9c-pivjai472sf2f@news.example.com", "nobody@example.org", "123456",
                              "123456-3-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"),
    "postfix-dsn-4.2.2.eml": ("bounces+c-2n9d-q3kx7hz2mwd4e@news.example.com", "full@example.com", None, None),
    "arf-abuse.eml": ("bounces+c-2n9n-m2kq7wz5xa4bf@news.example.com", "annoyed@example.com", "123467",
                      "123467-3-Zy8xW7vU6tS5rQ4pO3nM2lK1jI"),
    "unsubscribe.eml": (None, None, None, "123456-3-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"),
}


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    """r0..r4@example.org on 'default' (r0 and r1 on 'other' too), and one issue sent to them."""
    with Store.open(database) as opened:
        opened.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(5)], list_name="default")
        opened.upsert_subscribers([SubscriberRow(f"r{n}@example.org") for n in range(2)], list_name="other")
        Ledger(opened).open_issue(slug=SLUG, list_name="default", subject="News", content_hash="h",
                                  domain="news.example.com")
        with opened.transaction() as cursor:
            cursor.execute("UPDATE deliveries SET status = 'sent', sent_at = '2026-12-01T09:00:00+00:00'")
        yield opened


def resolver(store: Store) -> Resolver:
    return Resolver(store, Feedback(store), return_paths=RETURN_PATHS, tokens=TOKENS)


def ids(store: Store, email: str) -> tuple[int, int, int]:
    """(issue id, subscriber id, 'default' list id) of ``email``'s delivery."""
    row = store.query("SELECT d.issue_id, d.subscriber_id, i.list_id FROM deliveries d JOIN issues i"
                      " ON i.id = d.issue_id JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email_key = ?",
                      (email,))[0]
    return int(row[0]), int(row[1]), int(row[2])


def state(store: Store, email: str) -> tuple[str, list[str]]:
    """The subscriber's status and the lists they are active on."""
    status = str(store.query("SELECT status FROM subscribers WHERE email_key = ?", (email,))[0][0])
    lists = [str(row[0]) for row in store.query(
        "SELECT l.name FROM memberships m JOIN lists l ON l.id = m.list_id JOIN subscribers s"
        " ON s.id = m.subscriber_id WHERE s.email_key = ? AND m.status = 'active' ORDER BY l.name", (email,))]
    return status, lists


def message(store: Store, fixture: str, email: str, *, return_path: str | None = None,
            message_for: str | None = None, recipient: str | None = None) -> bytes:
    """``fixture`` about ``email``'s delivery: its real return path (or ``return_path``), Message-ID
    (or that of ``message_for``'s delivery), recipient (or ``recipient``) and token."""
    issue_id, subscriber_id, list_id = ids(store, email)
    text = (FIXTURES / fixture).read_text(encoding="utf-8")
    old_path, old_recipient, old_message, old_token = SAYS[fixture]
    if old_path:
        text = text.replace(old_path, return_path or RETURN_PATHS.make(issue_id, subscriber_id))
    if old_recipient:
        new = recipient or email
        text = text.replace(old_recipient, new).replace(old_recipient.capitalize(), new)
    if old_message:
        named = ids(store, message_for)[1] if message_for else subscriber_id
        text = text.replace(f"{SLUG}.{old_message}@", f"{SLUG}.{named}@")
    if old_token:
        text = text.replace(old_token, TOKENS.make(subscriber_id, list_id))
    return text.encode("utf-8")


def test_a_hard_bounce_to_a_signed_return_path_marks_that_reader_bounced_once(store: Store) -> None:
    raw = message(store, "postfix-dsn-5.1.1.eml", "r1@example.org")
    first = handle_message(raw, resolver(store))
    assert (first.verdict, first.kind, first.changes) == ("processed", "hard_bounce", ("bounced",))
    assert state(store, "r1@example.org")[0] == "bounced"
    assert [state(store, f"r{n}@example.org")[0] for n in (0, 2, 3, 4)] == ["active"] * 4
    again = handle_message(raw, resolver(store))
    assert again.changes == ("duplicate",)
    issue_id = ids(store, "r1@example.org")[0]
    assert Feedback(store).issue_feedback(issue_id)["hard_bounces"] == 1


def test_the_signed_return_path_wins_over_the_recipient_the_report_names(store: Store) -> None:
    """A reader's mail forwarded elsewhere bounces under another address: the signed id says who it was."""
    raw = message(store, "postfix-dsn-5.1.1.eml", "r2@example.org", recipient="forwarded@elsewhere.example")
    assert handle_message(raw, resolver(store)).changes == ("bounced",)
    assert state(store, "r2@example.org")[0] == "bounced"


def test_a_forged_return_path_changes_nothing_even_with_the_right_message_id_and_recipient(store: Store) -> None:
    real = RETURN_PATHS.make(*ids(store, "r1@example.org")[:2])
    forged = real[:-len("@news.example.com") - 1] + ("a" if real[-len("@news.example.com") - 1] != "a" else "b") \
        + "@news.example.com"
    raw = message(store, "postfix-dsn-5.1.1.eml", "r1@example.org", return_path=forged)
    handled = handle_message(raw, resolver(store))
    assert (handled.verdict, handled.changes) == ("processed", ())
    assert "forged" in handled.note
    assert state(store, "r1@example.org") == ("active", ["default", "other"])


def test_a_return_path_signed_with_another_key_is_a_forgery(store: Store) -> None:
    stranger = ReturnPaths("bounces@news.example.com", [b"someone-elses-key-0123456789abcdef"])
    raw = message(store, "postfix-dsn-5.1.1.eml", "r3@example.org",
                  return_path=stranger.make(*ids(store, "r3@example.org")[:2]))
    assert handle_message(raw, resolver(store)).changes == ()
    assert state(store, "r3@example.org")[0] == "active"


def test_a_report_naming_a_reader_only_in_its_headers_changes_nothing(store: Store) -> None:
    """No return path of ours, a Message-ID that isn't the ledger's, the reader in To: and Final-Recipient."""
    raw = message(store, "postfix-dsn-5.1.1.eml", "r1@example.org", return_path="someone@elsewhere.example")
    raw = raw.replace(f"{SLUG}.".encode(), b"some-other-issue.")
    handled = handle_message(raw, resolver(store))
    assert (handled.verdict, handled.changes) == ("processed", ())
    assert state(store, "r1@example.org")[0] == "active"


def test_without_a_return_path_the_message_id_and_its_recipient_together_find_the_delivery(store: Store) -> None:
    """A relay that replaced the envelope sender: the ledger's Message-ID, and that delivery's own address."""
    raw = message(store, "postfix-dsn-5.1.1.eml", "r2@example.org", return_path="bounce-handler@relay.example")
    assert handle_message(raw, resolver(store)).changes == ("bounced",)
    assert state(store, "r2@example.org")[0] == "bounced"
    # The Message-ID of r3's delivery with r4's address: they don't belong together.
    raw = message(store, "postfix-dsn-5.1.1.eml", "r4@example.org", return_path="bounce-handler@relay.example",
                  message_for="r3@example.org")
    assert handle_message(raw, resolver(store)).changes == ()
    assert state(store, "r3@example.org")[0] == state(store, "r4@example.org")[0] == "active"


def test_a_soft_bounce_is_counted_and_the_reader_stays(store: Store) -> None:
    raw = message(store, "postfix-dsn-4.2.2.eml", "r0@example.org")
    handled = handle_message(raw, resolver(store))
    assert (handled.kind, handled.changes) == ("soft_bounce", ("soft",))
    assert state(store, "r0@example.org") == ("active", ["default", "other"])
    assert Feedback(store).issue_feedback(ids(store, "r0@example.org")[0])["soft_bounces"] == 1


def test_a_complaint_unsubscribes_the_reader_from_everything(store: Store) -> None:
    raw = message(store, "arf-abuse.eml", "r0@example.org")
    handled = handle_message(raw, resolver(store))
    assert (handled.verdict, handled.kind, handled.changes) == ("processed", "complaint", ("complained",))
    assert state(store, "r0@example.org") == ("complained", [])
    assert state(store, "r1@example.org") == ("active", ["default", "other"])
    assert handle_message(raw, resolver(store)).changes == ("duplicate",)


def test_a_complaint_whose_return_path_was_rewritten_is_found_by_its_signed_token(store: Store) -> None:
    raw = message(store, "arf-abuse.eml", "r1@example.org", return_path="fbl@relay.example")
    assert handle_message(raw, resolver(store)).changes == ("complained",)
    assert state(store, "r1@example.org") == ("complained", [])


def test_a_mail_unsubscribe_ends_that_list_only_as_the_web_page_does(store: Store) -> None:
    raw = message(store, "unsubscribe.eml", "r1@example.org")
    handled = handle_message(raw, resolver(store))
    assert (handled.verdict, handled.kind, handled.changes) == ("processed", "unsubscribe", ("unsubscribed",))
    assert state(store, "r1@example.org") == ("active", ["other"])
    assert handle_message(raw, resolver(store)).changes == ("unchanged",)


def test_a_mail_unsubscribe_with_a_forged_token_changes_nothing(store: Store) -> None:
    raw = message(store, "unsubscribe.eml", "r1@example.org")
    token = TOKENS.make(*ids(store, "r1@example.org")[1:])
    raw = raw.replace(token.encode(), (token[:-1] + ("A" if token[-1] != "A" else "B")).encode())
    handled = handle_message(raw, resolver(store))
    assert (handled.verdict, handled.changes) == ("processed", ())
    assert state(store, "r1@example.org") == ("active", ["default", "other"])


@pytest.mark.parametrize(("fixture", "verdict", "kind"), [
    ("autoreply-auto-submitted.eml", "processed", "auto_reply"),
    ("out-of-office.eml", "processed", "auto_reply"),
    ("postfix-delay.eml", "processed", "delayed"),
    ("spam.eml", "unhandled", "unknown"),
    ("no-mime.eml", "unhandled", "unknown"),
])
def test_what_changes_nobody_is_counted_or_left_for_a_human(store: Store, fixture: str, verdict: str,
                                                             kind: str) -> None:
    handled = handle_message((FIXTURES / fixture).read_bytes(), resolver(store))
    assert (handled.verdict, handled.kind, handled.changes) == (verdict, kind, ())
    assert [state(store, f"r{n}@example.org")[0] for n in range(5)] == ["active"] * 5
