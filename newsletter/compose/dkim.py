"""DKIM signatures (RFC 6376) on the wire-ready bytes of :func:`newsletter.compose.personalise`.

``load_signer`` reads and checks an RSA private key once; ``DkimSigner.sign`` then prepends
a ``DKIM-Signature:`` header (rsa-sha256, relaxed/relaxed, folded to lines of at most 78
octets with CRLF). ``generate_key`` writes a new key and returns the DNS TXT record to publish
at ``<selector>._domainkey.<domain>``; ``txt_strings`` cuts it into the strings a TXT record holds.

Signing, and reading, checking, making and publishing keys, go through ``cryptography``
(OpenSSL). The signature is made here, relaxed/relaxed as RFC 6376 says: ~0.5 ms for a 30 KB
message with OpenSSL's RSA, where dkimpy (pure-Python RSA) took ~8 ms and would cap a sender
at ~120 messages a second. dkimpy is only a test dependency: the tests verify every
signature with its verifier.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from newsletter.errors import ComposeError, ConfigError

__all__ = ["DkimSigner", "generate_key", "load_signer", "txt_strings"]

# The headers signed: every instance of each, and then each name once more, whether the
# message has it or not ("over-signing", RFC 6376 section 8.15). A verifier hashes an empty
# instance for the extra slot, so a copy added after signing breaks the signature: a second
# From, To or Subject on a replayed message to show readers another sender or text, a
# List-Unsubscribe or Reply-To that sends their answer elsewhere, a Content-Type that shows
# another part, a Content-Language that makes a screen reader read it as another language.
# This tool sends each message straight to its subscriber; a mailing list that re-sends it
# adds its own List-* headers and, with a "[list]" tag or a footer, breaks
# the signature anyway (ARC is how lists vouch for what they received). Headers added in
# transit (Received, Return-Path, ARC-*, Authentication-Results) stay outside.
_SIGNED = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-language",
    b"content-type",
)
_SIGNED_SET = frozenset(_SIGNED)
# Signed (and over-signed) only in a message that has them: a confirmation email's
# Auto-Submitted (RFC 3834) can't be taken away or doubled without breaking the signature,
# and an issue's signature names the same headers it always did.
_SIGNED_WHEN_PRESENT = (b"auto-submitted",)

# A DNS label: letters, digits and "-", not at either end. Selector and domain are capped at
# 63 characters so that every tag of the signature (``i=@<domain>;``) fits on one folded
# line: dkimpy cuts a longer token in the middle, which would corrupt its value.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_SELECTOR_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_MAX_NAME = 63
_MAX_LINE = 78
_MAX_KEY_FILE = 64 * 1024  # a 16384-bit PEM is ~12 KB
_MIN_BITS = 1024  # RFC 8301: verifiers must not accept smaller keys
_MAX_TXT_STRING = 255  # octets in one character-string of a TXT record (RFC 1035 3.3)
# The PEM armour is read here, not by ``cryptography``, so that each way a file can be wrong
# gets its own message (no block, a public key, an encrypted key, bad base64); the DER inside
# goes to ``cryptography``.
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
# RSASSA-PKCS1-v1_5 is deterministic: the same key and the same signed data give the same bytes.
_PADDING = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class DkimSigner:
    """Signs messages as ``domain`` with the key published at ``<selector>._domainkey.<domain>``.

    Build it with :func:`load_signer`. ``repr`` and ``str`` show the selector, domain, key
    file and key size, never the key.
    """

    selector: str
    domain: str
    key_file: Path
    bits: int
    # repr=False keeps it out of the dataclass's repr; the key object's own repr shows no material.
    _key: rsa.RSAPrivateKey = field(repr=False, compare=False)

    @property
    def dns_name(self) -> str:
        """Where the public key's TXT record lives: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_record(self) -> str:
        """The TXT record value that publishes this key: ``v=DKIM1; k=rsa; p=…``."""
        return _dns_record(self._key)

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """``message`` with a ``DKIM-Signature:`` header prepended; raises ComposeError if it can't be signed.

        ``message`` is a complete message with CRLF line ends, as ``personalise`` returns it.
        """
        head_end = message.find(b"\r\n\r\n")
        if head_end < 0 or message.count(b"\n") != message.count(b"\r\n"):
            raise ComposeError("can't DKIM-sign a message without CRLF line ends and a blank line after the headers")
        fields = _header_fields(message[: head_end + 2])
        names = [name.lower() for name, _ in fields]
        if b"from" not in names:
            raise ComposeError("can't DKIM-sign a message without a From header")
        present = [name for name in _SIGNED_WHEN_PRESENT if name in names]
        signed = _SIGNED_SET.union(present) if present else _SIGNED_SET
        include = [name for name in names if name in signed] + list(_SIGNED) + present
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(message[head_end + 4:])).digest())
        header = _fold_tags([
            b"v=1", b"a=rsa-sha256", b"c=relaxed/relaxed", b"d=" + self.domain.encode("ascii"),
            b"s=" + self.selector.encode("ascii"), b"t=%d" % (time.time() if timestamp is None else timestamp),
            b"h=" + b":".join(include), b"bh=" + body_hash, b"b=",
        ])
        signed_data = b"".join(_relaxed_header(name, value) for name, value in _pick(fields, include))
        signed_data += _relaxed_header(b"DKIM-Signature", header[len(b"DKIM-Signature:"):])[:-2]
        signature = base64.b64encode(self._key.sign(signed_data, _PADDING, _SHA256))
        return header + _fold_value(signature, len(header) - header.rfind(b"\n") - 1) + b"\r\n" + message


# Relaxed canonicalisation (RFC 6376 3.4.2 and 3.4.4), in C-speed regex passes.
_WSP_RUN = re.compile(rb"[ \t]+")
# Only what changes: two or more spaces (a pattern that also starts at every single space is
# ~5x slower); tabs, rare in our bodies, take the general pattern.
_SPACES = re.compile(rb"  +")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def _relaxed_body(body: bytes) -> bytes:
    """WSP runs become one space, none at line ends, no empty lines at the end; "" stays ""."""
    body = _WSP_RUN.sub(b" ", body) if b"\t" in body else _SPACES.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    while body.endswith(b"\r\n"):  # empty lines at the end, and the last line end (added back below)
        body = body[:-2]
    return body + b"\r\n" if body else b""


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    """``name:value`` relaxed: lower-case name, unfolded, WSP runs as one space, trimmed, CRLF."""
    unfolded = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" \r\n")
    return name.strip().lower() + b":" + unfolded + b"\r\n"


def _header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, raw value with its folds) for each header field of ``head`` (which ends in CRLF)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ComposeError("can't DKIM-sign a message with a malformed header line")
            fields.append((name, value))
    return fields


def _pick(fields: list[tuple[bytes, bytes]], include: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The instances ``h=`` names, each taken from the bottom up; an over-signed name past its last adds nothing."""
    remaining: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in fields:
        remaining.setdefault(name.lower(), []).append((name, value))
    picked: list[tuple[bytes, bytes]] = []
    for name in include:
        instances = remaining.get(name)
        if instances:
            picked.append(instances.pop())
    return picked


def _fold_tags(tags: list[bytes]) -> bytes:
    """``DKIM-Signature: tag; tag; …`` folded before a tag that would pass 78 columns (h= at its colons)."""
    lines: list[bytes] = [b"DKIM-Signature:"]
    for index, tag in enumerate(tags):
        text = tag + (b";" if index < len(tags) - 1 else b"")
        pieces = [text]
        if len(text) > _MAX_LINE - 2 and text.startswith(b"h="):
            parts = text.split(b":")
            pieces = [part + b":" for part in parts[:-1]] + [parts[-1]]
        for number, piece in enumerate(pieces):
            joiner = b" " if number == 0 else b""
            if len(lines[-1]) + len(joiner) + len(piece) > _MAX_LINE:
                lines.append(b" " + piece)
            else:
                lines[-1] += joiner + piece
    return b"\r\n".join(lines)


def _fold_value(value: bytes, column: int) -> bytes:
    """A base64 value continued after ``column``, cut into folded lines of at most 78 octets."""
    out = bytearray()
    room = _MAX_LINE - column
    while value:
        if room <= 0:
            out += b"\r\n "
            room = _MAX_LINE - 1
        out += value[:room]
        value = value[room:]
        room = 0
    return bytes(out)


def load_signer(key_file: Path, *, selector: str, domain: str) -> DkimSigner:
    """A :class:`DkimSigner` for the PEM RSA private key in ``key_file`` (PKCS#1 or PKCS#8, unencrypted).

    Raises ConfigError, one line naming the file and never showing key material, when the
    selector or domain isn't a DNS name or the file is missing, unreadable or not a usable key.
    """
    _check_names(selector, domain)
    try:
        with key_file.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"DKIM key file {key_file}: not found") from exc
    except OSError as exc:
        raise ConfigError(f"DKIM key file {key_file}: can't be read ({exc.strerror or type(exc).__name__})") from exc
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"DKIM key file {key_file}: too large for a PEM private key")
    key = _parse_key(data, f"DKIM key file {key_file}")
    return DkimSigner(selector, domain, key_file, key.key_size, key)


def generate_key(path: Path, *, bits: int = 2048) -> str:
    """Write a new RSA private key to ``path`` (PEM, PKCS#8, mode 0600) and return its DNS TXT record value.

    The value, ``v=DKIM1; k=rsa; p=…``, is to be published at ``<selector>._domainkey.<domain>``
    (:func:`txt_strings` cuts it for a zone file). An existing file is never overwritten (its
    key may be the one in DNS), and the file appears whole or not at all.
    """
    if not 2048 <= bits <= 4096:
        raise ConfigError(f"DKIM key size {bits}: use 2048 to 4096 bits (2048 is what receivers expect)")
    if path.exists():
        raise ConfigError(f"DKIM key file {path}: already exists (not overwritten: its key may be published in DNS)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_new_private_file(path, pem)
    return _dns_record(key)


def txt_strings(record: str) -> list[str]:
    """``record`` cut into the character-strings of a TXT record: at most 255 octets each, in order.

    One string can't hold a 2048-bit key's record (~400 characters); zone files and DNS
    providers take several, which resolvers join back without anything in between.
    """
    data = record.encode("ascii")
    return [data[start : start + _MAX_TXT_STRING].decode("ascii") for start in range(0, len(data), _MAX_TXT_STRING)]


def _write_new_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` with mode 0600: whole or not at all, never over another file.

    The bytes go to a temporary file beside ``path`` (created 0600, so no one else can open
    it even for a moment) and reach the disk; then it is hard-linked under its name, which
    fails if the name is taken (a rename would replace that file) and never shows a
    half-written key. The temporary name is removed whatever happens.
    """
    where = f"DKIM key file {path}"
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"{where}: can't be created ({exc.strerror or type(exc).__name__})") from exc
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)  # exactly 0600, whatever the umask
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise ConfigError(f"{where}: can't be written ({exc.strerror or type(exc).__name__})") from exc
        try:
            os.link(temporary, path)
        except FileExistsError as exc:
            raise ConfigError(f"{where}: already exists (not overwritten)") from exc
        except OSError as exc:
            raise ConfigError(f"{where}: can't be created ({exc.strerror or type(exc).__name__})") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    # The new name reaches the disk too (best effort: not every file system syncs a directory).
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _check_names(selector: str, domain: str) -> None:
    hint = "letters, digits and '-' in dot-separated labels, at most 63 characters"
    if len(selector) > _MAX_NAME or not _SELECTOR_RE.fullmatch(selector):
        raise ConfigError(f"DKIM selector {selector!r} is not a DNS name ({hint})")
    if len(domain) > _MAX_NAME or not _DOMAIN_RE.fullmatch(domain):
        raise ConfigError(f"DKIM domain {domain!r} is not a DNS domain name ({hint}, at least one dot)")


def _parse_key(data: bytes, where: str) -> rsa.RSAPrivateKey:
    """The RSA private key of the first private-key PEM block of ``data``, checked for size and consistency.

    Error messages begin with ``where`` and name the PEM label at most: never any of the key's bytes.
    """
    blocks = [(match.group(1).decode("ascii"), match.group(2)) for match in _PEM_RE.finditer(data)]
    if not blocks:
        raise ConfigError(f"{where}: not a PEM private key (no '-----BEGIN … PRIVATE KEY-----' block)")
    # The first private key, as a file may hold a certificate or public key as well.
    label, body = next(((label, body) for label, body in blocks if label.endswith("PRIVATE KEY")), blocks[0])
    if label == "ENCRYPTED PRIVATE KEY" or b"Proc-Type:" in body:
        raise ConfigError(f"{where}: the key is encrypted; DKIM signing needs it unencrypted")
    if label not in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        raise ConfigError(f"{where}: holds a {label!r} PEM block, not an RSA private key")
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise ConfigError(f"{where}: the PEM block is not valid base64") from exc
    not_rsa = f"{where}: not an RSA private key in PKCS#1 or PKCS#8 form"
    damaged = False
    try:
        # PKCS#8 or PKCS#1 DER; an RSA key is checked as it loads (OpenSSL's RSA_check_key:
        # primes, modulus, exponents, CRT coefficient), since a key with a damaged part
        # would sign every message and every signature would fail.
        key = serialization.load_der_private_key(der, password=None)
    except TypeError as exc:  # an encrypted PKCS#8 structure under a plain label
        raise ConfigError(f"{where}: the key is encrypted; DKIM signing needs it unencrypted") from exc
    except UnsupportedAlgorithm as exc:
        raise ConfigError(not_rsa) from exc
    except ValueError as exc:
        # Not a key it reads, or an RSA key that fails the check: reading it unchecked tells which.
        try:
            key = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
        except (TypeError, UnsupportedAlgorithm, ValueError):
            raise ConfigError(not_rsa) from exc
        damaged = True
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # Not every receiver verifies Ed25519 signatures (RFC 8463 has senders sign with RSA
        # as well), and this signer makes rsa-sha256 only.
        raise ConfigError(f"{where}: Ed25519 keys are not supported; use an RSA key (2048 bits)")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(not_rsa)
    if key.key_size < _MIN_BITS:
        raise ConfigError(f"{where}: a {key.key_size}-bit key is too small for DKIM (at least {_MIN_BITS}; use 2048)")
    if damaged:
        raise ConfigError(f"{where}: the RSA key is damaged (its parts don't match)")
    return key


def _dns_record(key: rsa.RSAPrivateKey) -> str:
    """``v=DKIM1; k=rsa; p=<base64 DER SubjectPublicKeyInfo>`` for the key's public part."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode("ascii")
