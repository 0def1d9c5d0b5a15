"""DKIM signatures (RFC 6376) on the wire-ready bytes of :func:`newsletter.compose.personalise`.

``load_signer`` reads and checks an RSA private key once; ``DkimSigner.sign`` then prepends
a ``DKIM-Signature:`` header (rsa-sha256, relaxed/relaxed, folded to lines of at most 78
octets with CRLF). ``generate_key`` writes a new key and returns the DNS TXT record to publish
at ``<selector>._domainkey.<domain>``.

The signature is made here, relaxed/relaxed as RFC 6376 says, with OpenSSL's RSA through
``cryptography``: ~0.5 ms for a 30 KB message, where dkimpy (pure-Python RSA) took ~8 ms
and would cap a sender at ~120 messages a second. dkimpy still reads and checks the key
(:func:`load_signer`), and the tests verify every signature with dkimpy's verifier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import dkim.asn1  # type: ignore[import-untyped]
import dkim.crypto  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.errors import ComposeError, ConfigError

__all__ = ["DkimSigner", "generate_key", "load_signer"]

# The headers signed: every instance of each, and then each name once more, whether the
# message has it or not ("over-signing", RFC 6376 section 8.15). A verifier hashes an empty
# instance for the extra slot, so a copy added after signing breaks the signature: a second
# From, To or Subject on a replayed message to show readers another sender or text, a
# List-Unsubscribe or Reply-To that sends their answer elsewhere, a Content-Type that shows
# another part. This tool sends each message straight to its subscriber; a mailing list
# that re-sends it adds its own List-* headers and, with a "[list]" tag or a footer, breaks
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
    b"content-type",
)
_SIGNED_SET = frozenset(_SIGNED)

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
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_ED25519_OID = b"\x06\x03\x2b\x65\x70"  # 1.3.101.112 in DER
_RSA_OID = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"  # 1.2.840.113549.1.1.1 (rsaEncryption)


class _PrivateKey:
    """Key material that no repr, str or traceback of local variables shows."""

    __slots__ = ("_rsa", "numbers", "pem")

    def __init__(self, pem: bytes, numbers: dict[str, int]) -> None:
        self.pem = pem
        self.numbers = numbers  # modulus, exponents, primes, CRT coefficient
        public = rsa.RSAPublicNumbers(numbers["publicExponent"], numbers["modulus"])
        self._rsa = rsa.RSAPrivateNumbers(
            numbers["prime1"], numbers["prime2"], numbers["privateExponent"], numbers["exponent1"],
            numbers["exponent2"], numbers["coefficient"], public,
        ).private_key()

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over ``data`` (OpenSSL, through ``cryptography``)."""
        return self._rsa.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def __repr__(self) -> str:
        return "<DKIM private key>"


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
    _key: _PrivateKey = field(repr=False, compare=False)

    @property
    def dns_name(self) -> str:
        """Where the public key's TXT record lives: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_record(self) -> str:
        """The TXT record value that publishes this key: ``v=DKIM1; k=rsa; p=…``."""
        return _dns_record(self._key.numbers)

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
        include = [name for name in names if name in _SIGNED_SET] + list(_SIGNED)
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(message[head_end + 4:])).digest())
        header = _fold_tags([
            b"v=1", b"a=rsa-sha256", b"c=relaxed/relaxed", b"d=" + self.domain.encode("ascii"),
            b"s=" + self.selector.encode("ascii"), b"t=%d" % (time.time() if timestamp is None else timestamp),
            b"h=" + b":".join(include), b"bh=" + body_hash, b"b=",
        ])
        signed_data = b"".join(_relaxed_header(name, value) for name, value in _pick(fields, include))
        signed_data += _relaxed_header(b"DKIM-Signature", header[len(b"DKIM-Signature:"):])[:-2]
        signature = base64.b64encode(self._key.sign(signed_data))
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
    pem, numbers = _parse_key(data, str(key_file))
    return DkimSigner(selector, domain, key_file, numbers["modulus"].bit_length(), _PrivateKey(pem, numbers))


def generate_key(path: Path, *, bits: int = 2048) -> str:
    """Write a new RSA private key to ``path`` (PEM, mode 0600) and return its DNS TXT record value.

    The value, ``v=DKIM1; k=rsa; p=…``, is to be published at ``<selector>._domainkey.<domain>``.
    An existing file is never overwritten (its key may be the one in DNS). The key is made
    by the ``openssl`` command (dkimpy has no key generator of its own but a wrapper around
    the same command, and the ``cryptography`` package isn't a dependency).
    """
    if not 2048 <= bits <= 4096:
        raise ConfigError(f"DKIM key size {bits}: use 2048 to 4096 bits (2048 is what receivers expect)")
    if path.exists():
        raise ConfigError(f"DKIM key file {path}: already exists (not overwritten: its key may be published in DNS)")
    command = ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"]
    try:
        result = subprocess.run(command, capture_output=True, check=True, timeout=300)
    except FileNotFoundError as exc:
        raise ConfigError("can't generate a DKIM key: the openssl command isn't installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {exc.returncode}"]
        raise ConfigError(f"can't generate a DKIM key: openssl failed ({detail[0]})") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("can't generate a DKIM key: openssl took too long") from exc
    stdout: bytes = result.stdout
    _pem, numbers = _parse_key(stdout, f"{path} (from openssl)")
    try:
        # O_EXCL: never replace a file that appeared meanwhile. The key is written only here.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"DKIM key file {path}: already exists (not overwritten)") from exc
    except OSError as exc:
        raise ConfigError(f"DKIM key file {path}: can't be created ({exc.strerror or type(exc).__name__})") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # exactly 0600, whatever the umask
            handle.write(stdout)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(f"DKIM key file {path}: can't be written ({exc.strerror or type(exc).__name__})") from exc
    return _dns_record(numbers)


def _check_names(selector: str, domain: str) -> None:
    hint = "letters, digits and '-' in dot-separated labels, at most 63 characters"
    if len(selector) > _MAX_NAME or not _SELECTOR_RE.fullmatch(selector):
        raise ConfigError(f"DKIM selector {selector!r} is not a DNS name ({hint})")
    if len(domain) > _MAX_NAME or not _DOMAIN_RE.fullmatch(domain):
        raise ConfigError(f"DKIM domain {domain!r} is not a DNS domain name ({hint}, at least one dot)")


def _parse_key(data: bytes, source: str) -> tuple[bytes, dict[str, int]]:
    """The PEM dkimpy reads (LF line ends) and the key's numbers; checks size and consistency.

    Error messages name ``source`` and the PEM label at most: never any of the key's bytes.
    """
    where = f"DKIM key file {source}"
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
    if label == "PRIVATE KEY" and _ED25519_OID in der[:16]:
        # dkimpy signs ed25519-sha256 only with PyNaCl installed and from a raw base64 seed,
        # and not every receiver verifies it (RFC 8463 signs with RSA as well): RSA only.
        raise ConfigError(f"{where}: Ed25519 keys are not supported; use an RSA key (2048 bits)")
    try:
        numbers: dict[str, int] = dkim.crypto.parse_private_key(der)
    except (dkim.crypto.UnparsableKeyError, dkim.asn1.ASN1FormatError, AssertionError, ValueError) as exc:
        # AssertionError: dkimpy's ASN.1 reader asserts that a NULL is empty.
        raise ConfigError(f"{where}: not an RSA private key in PKCS#1 or PKCS#8 form") from exc
    size = numbers["modulus"].bit_length()
    if size < _MIN_BITS:
        raise ConfigError(f"{where}: a {size}-bit key is too small for DKIM (at least {_MIN_BITS}; use 2048)")
    if not _consistent(numbers):
        raise ConfigError(f"{where}: the RSA key is damaged (its parts don't match)")
    # dkimpy's reader wants LF line ends; base64.encodebytes gives 76-character lines ending in LF.
    armour = f"-----BEGIN {label}-----\n", f"-----END {label}-----\n"
    return armour[0].encode("ascii") + base64.encodebytes(der) + armour[1].encode("ascii"), numbers


def _consistent(numbers: dict[str, int]) -> bool:
    """Whether a signature made with the key's CRT parts (as dkimpy signs) verifies with its public part.

    A key with a damaged part would otherwise sign every message, and every signature would fail.
    """
    if numbers["prime1"] * numbers["prime2"] != numbers["modulus"]:
        return False
    digest = hashlib.sha256(b"newsletter DKIM key self-test")
    try:
        signature = dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, numbers)
        return bool(dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, bytes(signature), numbers))
    except (dkim.crypto.DigestTooLargeError, ValueError, ZeroDivisionError):
        return False


def _dns_record(numbers: dict[str, int]) -> str:
    """``v=DKIM1; k=rsa; p=<base64 DER SubjectPublicKeyInfo>`` for the key's public part."""
    rsa_public_key = _der(0x30, _der_int(numbers["modulus"]) + _der_int(numbers["publicExponent"]))
    algorithm = _der(0x30, _RSA_OID + b"\x05\x00")  # rsaEncryption, NULL parameters
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public_key))  # BIT STRING, no unused bits
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode("ascii")


def _der(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length (short or long form), content."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_int(value: int) -> bytes:
    """A non-negative DER INTEGER: big-endian, with a leading zero octet when the top bit is set."""
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
