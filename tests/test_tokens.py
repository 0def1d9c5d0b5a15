"""Unsubscribe tokens: only the key holder can make one; altered or forged ones are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.errors import ConfigError
from newsletter.tokens import TokenSigner, UnsubscribeToken, split_keys

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
