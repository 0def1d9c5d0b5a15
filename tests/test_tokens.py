"""Unsubscribe and confirmation tokens and return paths: only the key holder can make one; altered or forged
ones are refused, and no kind passes for another."""

from __future__ import annotations

import base64
import datetime as dt
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter import tokens
from newsletter.errors import ConfigError
from newsletter.tokens import (
    MAX_BOUNCE_LOCAL_PART,
    UNSUBSCRIBE_TAG,
    ConfirmToken,
    ReturnPaths,
    SignedDelivery,
    TokenSigner,
    UnsubscribeToken,
    confirm_link,
    preferences_link,
    split_keys,
)

KEY = b"k" * 32
OTHER = b"o" * 32


def test_round_trip() -> None:
    signer = TokenSigner([KEY])
    token = signer.make(42, 7)
    assert signer.verify(token) == UnsubscribeToken(42, 7)
    assert token.startswith("42-7-")


def test_token_is_url_safe_and_short() -> None:
    token = TokenSigner([KEY]).make(123456, 1)
    assert all(char.isalnum() or char in "-_" for char in token)
    assert len(token) <= 64


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("42-", "43-", 1),           # another subscriber
    lambda t: t.replace("-7-", "-8-", 1),           # another list
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # one character of the MAC
    lambda t: t[:-2],                                 # truncated
    lambda t: t + "A",                                # extended
    lambda t: "",
    lambda t: t.upper(),
    lambda t: "0-7-" + t.split("-", 2)[2],          # a zero id
])
def test_altered_tokens_are_refused(mutate: object) -> None:
    signer = TokenSigner([KEY])
    token = signer.make(42, 7)
    altered = mutate(token)  # type: ignore[operator]
    assert altered != token
    assert signer.verify(altered) is None


def test_a_token_from_another_key_is_refused() -> None:
    assert TokenSigner([KEY]).verify(TokenSigner([OTHER]).make(42, 7)) is None


def test_rotation_keeps_old_links_working() -> None:
    old = TokenSigner([KEY]).make(42, 7)
    rotated = TokenSigner([OTHER, KEY])
    assert rotated.verify(old) == UnsubscribeToken(42, 7)
    new = rotated.make(42, 7)
    assert new != old and TokenSigner([OTHER]).verify(new) == UnsubscribeToken(42, 7)


def test_keys_from_the_environment_value() -> None:
    assert split_keys(" new-key-0123456789 , old-key-0123456789 ") == [b"new-key-0123456789", b"old-key-0123456789"]
    with pytest.raises(ConfigError, match="at least 16"):
        split_keys("short")
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        TokenSigner(split_keys(""))


def test_repr_hides_the_keys() -> None:
    assert "k" * 16 not in repr(TokenSigner([KEY]))


@given(st.text(max_size=80))
def test_random_strings_are_never_accepted(text: str) -> None:
    assert TokenSigner([KEY]).verify(text) is None


# --- return paths (VERP) -------------------------------------------------------------------

BOUNCES = "bounces@news.example.com"


def test_return_path_round_trip() -> None:
    paths = ReturnPaths(BOUNCES, [KEY])
    address = paths.make(42, 123456)
    assert paths.read(address) == SignedDelivery(42, 123456)
    local, domain = address.split("@")
    assert domain == "news.example.com" and local.startswith("bounces+16-2n9c-")
    assert address == address.lower() and all(char.isalnum() or char in "+-" for char in local)
    assert paths.tag(address) == local.split("+", 1)[1]
    assert paths.make(42, 123456) == address  # one delivery, one return path


def test_a_return_path_still_reads_upper_cased_or_in_brackets() -> None:
    """Some mail servers fold the local part's case; a DSN may give the address in <>."""
    paths = ReturnPaths(BOUNCES, [KEY])
    address = paths.make(42, 7)
    assert paths.read(address.upper()) == SignedDelivery(42, 7)
    assert paths.read(f" <{address}> ") == SignedDelivery(42, 7)


@pytest.mark.parametrize("mutate", [
    lambda a: a.replace("+16-", "+17-", 1),                     # another issue
    lambda a: a.replace("-7-", "-8-", 1),                       # another subscriber
    lambda a: a.replace("@", "a@", 1),                          # MAC extended
    lambda a: a.replace("+16-", "+016-", 1),                    # a leading zero
    lambda a: a.replace("-7-", "-07-", 1),
    lambda a: a.replace("+16-", "+0-", 1),                      # a zero id
    lambda a: a.replace("@news.example.com", "@example.org"),   # a foreign domain
    lambda a: a.replace("@news.example.com", "@news.example.com.evil.example"),
    lambda a: a.replace("bounces+", "other+", 1),               # another mailbox at the domain
    lambda a: a.replace("bounces+", "bounces-", 1),
    lambda a: a.split("+")[0] + "@news.example.com",            # the bare mailbox
    lambda a: "bounces+unsubscribe@news.example.com",           # the unsubscribe tag
    lambda a: a.split("@")[0],                                  # no domain
    lambda a: "",
])
def test_altered_return_paths_are_refused(mutate: object) -> None:
    paths = ReturnPaths(BOUNCES, [KEY])
    address = paths.make(42, 7)
    altered = mutate(address)  # type: ignore[operator]
    assert altered.lower() != address
    assert paths.read(altered) is None


def test_a_one_character_change_of_the_mac_is_refused() -> None:
    paths = ReturnPaths(BOUNCES, [KEY])
    address = paths.make(22, 7)
    local, domain = address.split("@")
    for index in range(len(local) - 13, len(local)):
        for char in "a2z7":
            if local[index] != char:
                assert paths.read(f"{local[:index]}{char}{local[index + 1:]}@{domain}") is None


def test_ids_beyond_64_bits_are_refused_even_with_a_valid_mac() -> None:
    """A MAC made with the key over ids no row can have still names no delivery."""
    ids = f"{tokens._base36(2**63)}-7"
    forged = f"bounces+{ids}-{tokens._verp_mac(KEY, ids)}@news.example.com"
    assert ReturnPaths(BOUNCES, [KEY]).read(forged) is None


def test_a_return_path_from_another_key_is_refused_and_rotation_accepts_the_old_one() -> None:
    old = ReturnPaths(BOUNCES, [KEY]).make(42, 7)
    assert ReturnPaths(BOUNCES, [OTHER]).read(old) is None
    rotated = ReturnPaths(BOUNCES, [OTHER, KEY])
    assert rotated.read(old) == SignedDelivery(42, 7)
    new = rotated.make(42, 7)
    assert new != old and ReturnPaths(BOUNCES, [OTHER]).read(new) == SignedDelivery(42, 7)
    assert ReturnPaths(BOUNCES, [KEY]).read(new) is None  # the newest key signs


def test_the_longest_return_path_fits_smtp_local_part_limit() -> None:
    """RFC 5321 4.5.3.1.1: 64 octets before the @, with the longest mailbox name and the largest ids."""
    largest = 2**63 - 1
    mailbox = "b" * MAX_BOUNCE_LOCAL_PART + "@news.example.com"
    paths = ReturnPaths(mailbox, [KEY])
    address = paths.make(largest, largest)
    assert len(address.split("@")[0]) <= 64
    assert paths.read(address) == SignedDelivery(largest, largest)
    with pytest.raises(ValueError):
        ReturnPaths("b" * (MAX_BOUNCE_LOCAL_PART + 1) + "@news.example.com", [KEY])
    with pytest.raises(ValueError):
        paths.make(largest + 1, 1)
    with pytest.raises(ValueError):
        paths.make(1, 0)


def test_the_unsubscribe_address_and_tags() -> None:
    paths = ReturnPaths(BOUNCES, [KEY])
    assert paths.unsubscribe_address == f"bounces+{UNSUBSCRIBE_TAG}@news.example.com"
    assert paths.tag("Bounces+Unsubscribe@News.Example.com") == UNSUBSCRIBE_TAG
    assert paths.tag("bounces@news.example.com") == ""
    assert paths.tag("editors@news.example.com") is None
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        ReturnPaths(BOUNCES, [])
    with pytest.raises(ValueError):
        ReturnPaths("bounces+x@news.example.com", [KEY])


@given(st.text(max_size=80))
def test_random_strings_are_never_a_return_path(text: str) -> None:
    paths = ReturnPaths(BOUNCES, [KEY])
    assert paths.read(text) is None
    assert paths.read(f"bounces+{text}@news.example.com") is None


def test_return_paths_are_stable() -> None:
    """Fixed vectors: a return path already out in the world must keep reading (and the fast encoders
    must keep making exactly what the first implementation made)."""
    paths = ReturnPaths(BOUNCES, [KEY])
    largest = 2**63 - 1
    assert [paths.make(42, 7), paths.make(largest, largest), paths.make(1, 1296), paths.make(36, 1295)] == [
        "bounces+16-7-civ46zrs6db3r@news.example.com",
        "bounces+1y2p0ij32e8e7-1y2p0ij32e8e7-mh5nu5vyeevsd@news.example.com",
        "bounces+1-100-427aanpfvnkzw@news.example.com",
        "bounces+10-zz-vw45mq6r7dd6v@news.example.com",
    ]


@given(st.integers(min_value=0, max_value=2**64), st.binary(min_size=16, max_size=100))  # > 64: hashed first
def test_the_fast_encoders_match_the_plain_ones(number: int, key: bytes) -> None:
    assert int(tokens._base36(number), 36) == number
    assert tokens._base36(number) == "0" or not tokens._base36(number).startswith("0")
    ids = f"{tokens._base36(number)}-1"
    digest = hmac.digest(key, b"return path\x00" + ids.encode("ascii"), "sha256")
    assert tokens._verp_mac(key, ids) == base64.b32encode(digest[:9]).decode("ascii")[:13].lower()


# --- confirmation tokens (double opt-in) ---------------------------------------------------


DAY = dt.date(2026, 3, 8)


def test_confirm_round_trip_carries_the_expiry_day() -> None:
    signer = TokenSigner([KEY])
    token = signer.make_confirm(42, DAY)
    assert signer.verify_confirm(token) == ConfirmToken(42, DAY)
    assert token.startswith("c42.20260308.")
    assert all(char.isalnum() or char in "-_." for char in token) and len(token) <= 64  # one URL path segment


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("c42.", "c43.", 1),                  # another confirmation
    lambda t: t.replace(".20260308.", ".20260309.", 1),      # a later expiry
    lambda t: t.replace(".20260308.", ".20990308.", 1),
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),       # one character of the MAC
    lambda t: t[:-2],
    lambda t: t + "A",
    lambda t: t + "\n",
    lambda t: "",
    lambda t: t.upper(),
    lambda t: "c0." + t.split(".", 1)[1],                    # a zero id
    lambda t: t[1:],                                         # without its kind
])
def test_altered_confirm_tokens_are_refused(mutate: object) -> None:
    signer = TokenSigner([KEY])
    token = signer.make_confirm(42, DAY)
    altered = mutate(token)  # type: ignore[operator]
    assert altered != token
    assert signer.verify_confirm(altered) is None


def test_confirm_and_unsubscribe_macs_are_never_interchangeable() -> None:
    signer = TokenSigner([KEY])
    confirm, unsubscribe = signer.make_confirm(42, DAY), signer.make(42, 20260308)
    assert signer.verify(confirm) is None and signer.verify_confirm(unsubscribe) is None
    # The same MAC under the other kind's shape: still refused (the purpose strings differ).
    assert signer.verify(f"42-20260308-{confirm.rsplit('.', 1)[1]}") is None
    assert signer.verify_confirm(f"c42.20260308.{unsubscribe.rsplit('-', 1)[1]}") is None


def test_a_confirm_token_from_another_key_is_refused_and_rotation_accepts_the_old_one() -> None:
    old = TokenSigner([OTHER]).make_confirm(7, DAY)
    assert TokenSigner([KEY]).verify_confirm(old) is None
    assert TokenSigner([KEY, OTHER]).verify_confirm(old) == ConfirmToken(7, DAY)


def test_confirm_tokens_refuse_ids_out_of_range() -> None:
    signer = TokenSigner([KEY])
    for bad in (0, -1, 2**63):
        with pytest.raises(ValueError):
            signer.make_confirm(bad, DAY)
    with pytest.raises(ValueError):
        signer.make_confirm(1, dt.date(999, 1, 1))


@given(st.text(max_size=80))
def test_random_strings_are_never_a_confirm_token(text: str) -> None:
    assert TokenSigner([KEY]).verify_confirm(text) is None


def test_links() -> None:
    assert confirm_link("https://news.example.com", "c1.20260308.x") == "https://news.example.com/confirm/c1.20260308.x"
    assert preferences_link("https://news.example.com", "1-2-x") == "https://news.example.com/preferences/1-2-x"
