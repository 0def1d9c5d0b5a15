"""Unsubscribe tokens: an HMAC-SHA256 over (subscriber, list), with room for key rotation.

A token reads ``<subscriber>-<list>-<key id><mac>``: the two ids in decimal, a 4-character
key id naming the key that signed it, and 22 characters of URL-safe base64 (128 bits of
the MAC). Only the holder of the secret key can make one; :meth:`TokenSigner.verify`
compares in constant time and accepts every key it was given, so rotating means putting
the new key first and keeping the old ones until their links no longer matter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.errors import ConfigError

__all__ = [
    "TokenSigner",
    "UnsubscribeToken",
    "split_keys",
    "unsubscribe_links",
]

# Used with fullmatch ("$" would let a trailing line break through); ids are SQLite rowids,
# so up to 19 digits, and at most _MAX_ID.
_TOKEN_RE = re.compile(r"([1-9][0-9]{0,18})-([1-9][0-9]{0,18})-([A-Za-z0-9_-]{4})([A-Za-z0-9_-]{22})")
_MAX_ID = 2**63 - 1
_MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class UnsubscribeToken:
    """What a valid token says: who, and from which list."""

    subscriber_id: int
    list_id: int


def split_keys(value: str) -> list[bytes]:
    """The keys in ``NEWSLETTER_SECRET_KEY``: one, or several separated by commas, newest first."""
    try:
        # surrogateescape: a value that isn't UTF-8 reaches Python as lone surrogates; these
        # are its bytes as they were set.
        keys = [part.strip().encode("utf-8", "surrogateescape") for part in value.split(",") if part.strip()]
    except UnicodeEncodeError as exc:
        raise ConfigError("NEWSLETTER_SECRET_KEY: holds characters that are not text") from exc
    for key in keys:
        if len(key) < _MIN_KEY_LENGTH:
            raise ConfigError(
                f"NEWSLETTER_SECRET_KEY: each key needs at least {_MIN_KEY_LENGTH} characters"
                " (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return keys


def unsubscribe_links(site_url: str, address: str, token: str) -> tuple[str, str]:
    """The one-click URL and the ``mailto:`` for a token, as List-Unsubscribe and the footer give them."""
    return f"{site_url}/unsubscribe/{token}", f"mailto:{address}?subject=unsubscribe%20{token}"


def _key_id(key: bytes) -> str:
    # Derived from the key, so nobody has to name keys; 24 bits tell a handful apart.
    digest = hashlib.sha256(b"newsletter key id\x00" + key).digest()
    return base64.urlsafe_b64encode(digest[:3]).decode("ascii")


class TokenSigner:
    """Makes and checks unsubscribe tokens with ``keys`` (the first one signs)."""

    __slots__ = ("_keys", "_signing_id")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("no secret key to sign unsubscribe links: set NEWSLETTER_SECRET_KEY")
        self._keys = {_key_id(key): key for key in reversed(keys)}
        self._signing_id = _key_id(keys[0])

    def __repr__(self) -> str:
        return f"TokenSigner(<{len(self._keys)} key(s)>)"

    def make(self, subscriber_id: int, list_id: int) -> str:
        """The token for ``subscriber_id`` on ``list_id``."""
        if not (0 < subscriber_id <= _MAX_ID and 0 < list_id <= _MAX_ID):
            raise ValueError("ids are positive 64-bit integers")
        key_id = self._signing_id
        return f"{subscriber_id}-{list_id}-{key_id}{_mac(self._keys[key_id], subscriber_id, list_id)}"

    def verify(self, token: str) -> UnsubscribeToken | None:
        """Who ``token`` names, or None if it is malformed, forged, altered or from an unknown key."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        subscriber_id, list_id = int(match[1]), int(match[2])
        if subscriber_id > _MAX_ID or list_id > _MAX_ID:
            return None
        key = self._keys.get(match[3])
        if key is None:
            return None
        if not hmac.compare_digest(_mac(key, subscriber_id, list_id), match[4]):
            return None
        return UnsubscribeToken(subscriber_id, list_id)


def _mac(key: bytes, subscriber_id: int, list_id: int) -> str:
    # The purpose string keeps these MACs from ever matching one the key makes elsewhere.
    message = f"unsubscribe\x00{subscriber_id}\x00{list_id}".encode("ascii")
    digest = hmac.digest(key, message, "sha256")  # one-shot, in C: ~4x faster than hmac.new
    return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")
