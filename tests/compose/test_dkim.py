"""DKIM: real messages signed with a real key verify, any signed change breaks them, keys never leak."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.compose.dkim import DkimSigner, generate_key, load_signer, txt_strings
from newsletter.compose.message import compile_message, personalise
from newsletter.config import SenderSettings
from newsletter.errors import ComposeError, ConfigError
from newsletter.models import Recipient, RenderedIssue

SELECTOR = "nl2024"
DOMAIN = "news.example.com"
DATE = "Fri, 07 Jul 2017 10:00:00 +0000"
URL = "https://news.example.com/unsubscribe/" + "A" * 43
RECIPIENT = Recipient("ann@example.org", "Ann Reader", URL)
STRICT = policy.default.clone(raise_on_defect=True)


@dataclasses.dataclass(frozen=True)
class Key:
    path: Path
    record: str


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    return Key(path, generate_key(path))


@pytest.fixture(scope="session")
def signer(key: Key) -> DkimSigner:
    return load_signer(key.path, selector=SELECTOR, domain=DOMAIN)


@pytest.fixture(scope="session")
def unsigned(seed_rendered: RenderedIssue, sender: SenderSettings) -> bytes:
    with_reply_to = dataclasses.replace(sender, reply_to="editors@news.example.com")
    template = compile_message(seed_rendered, sender=with_reply_to)
    return personalise(template, RECIPIENT, message_id="m1.x@news.example.com", date=DATE)


@pytest.fixture(scope="session")
def signed(signer: DkimSigner, unsigned: bytes) -> bytes:
    return signer.sign(unsigned)


def dns(record: str, name: str = f"{SELECTOR}._domainkey.{DOMAIN}") -> Callable[..., bytes | None]:
    """A resolver that knows one TXT record (dkimpy asks for the name with a final dot)."""

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return record.encode("ascii") if qname == f"{name}.".encode("ascii") else None

    return lookup


def verifies(data: bytes, record: str, name: str = f"{SELECTOR}._domainkey.{DOMAIN}") -> bool:
    return bool(dkim.verify(data, dnsfunc=dns(record, name)))


def signature_tags(data: bytes) -> dict[bytes, bytes]:
    header = data.split(b"\r\n\r\n", 1)[0]
    match = re.match(rb"DKIM-Signature:((?:[^\r]*\r\n[ \t])*[^\r]*)\r\n", header)
    assert match, "the message must start with a DKIM-Signature header"
    tags: dict[bytes, bytes] = dkim.util.parse_tag_value(re.sub(rb"\r\n[ \t]", b" ", match.group(1)))
    return tags


def header_names(data: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line[:1] not in b" \t"]


def openssl(*args: str, data: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


# --- signing and verifying


def test_signed_message_verifies(signed: bytes, unsigned: bytes, key: Key) -> None:
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(unsigned), "the message itself is left as it was"
    assert verifies(signed, key.record)
    assert not verifies(unsigned, key.record)


def test_signature_tags(signed: bytes, unsigned: bytes) -> None:
    tags = signature_tags(signed)
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == DOMAIN.encode()
    assert tags[b"s"] == SELECTOR.encode()
    signed_names = [name.strip() for name in tags[b"h"].split(b":")]
    expected = [
        b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"list-id", b"list-unsubscribe",
        b"list-unsubscribe-post", b"mime-version", b"content-language", b"content-type",
    ]
    assert header_names(unsigned) == expected, "compose's headers changed: review the signed set"
    assert signed_names == expected + expected, "each signed as often as it occurs, then once more (over-signed)"


def test_absent_headers_are_signed_as_absent(signer: DkimSigner, seed_rendered: RenderedIssue, sender: SenderSettings,
                                             key: Key) -> None:
    assert not sender.reply_to
    data = personalise(compile_message(seed_rendered, sender=sender), RECIPIENT, message_id="m2@news.example.com", date=DATE)
    signed = signer.sign(data)
    signed_names = [name.strip() for name in signature_tags(signed)[b"h"].split(b":")]
    assert signed_names.count(b"reply-to") == 1 and signed_names.count(b"from") == 2
    assert verifies(signed, key.record)
    assert not verifies(b"Reply-To: Support <help@phish.example>\r\n" + signed, key.record)
    assert not verifies(_below_the_headers(signed, b"Reply-To: help@phish.example"), key.record)


#: a copy of each signed header, as a replay would add it to show readers something else
ADDED_COPIES: dict[str, bytes] = {
    "From": b"From: Bank <alerts@bank.example>",
    "To": b"To: eve@example.net",
    "Subject": b"Subject: Urgent: confirm your password",
    "Date": b"Date: Sat, 08 Jul 2017 10:00:00 +0000",
    "Message-ID": b"Message-ID: <other@news.example.com>",
    "Reply-To": b"Reply-To: Support <help@phish.example>",
    "List-Id": b"List-Id: Other <other.lists.example.net>",
    "List-Unsubscribe": b"List-Unsubscribe: <https://phish.example/unsubscribe>",
    "List-Unsubscribe-Post": b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    "MIME-Version": b"MIME-Version: 1.0",
    "Content-Type": b'Content-Type: text/html; charset="utf-8"',
}


def _below_the_headers(data: bytes, line: bytes) -> bytes:
    return data.replace(b"\r\n\r\n", b"\r\n" + line + b"\r\n\r\n", 1)


@pytest.mark.parametrize("where", ["on top", "below the others"])
@pytest.mark.parametrize("name", ADDED_COPIES, ids=list(ADDED_COPIES))
def test_an_added_copy_of_any_signed_header_breaks_the_signature(name: str, where: str, signed: bytes, key: Key
                                                                  ) -> None:
    """RFC 6376 8.15: each is signed once more than it occurs, so a verifier hashes an empty one for a copy."""
    assert verifies(signed, key.record)
    line = ADDED_COPIES[name]
    tampered = line + b"\r\n" + signed if where == "on top" else _below_the_headers(signed, line)
    assert not verifies(tampered, key.record)


def test_another_key_or_no_record_fails(signed: bytes, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other.pem")
    assert not verifies(signed, other)
    assert not verifies(signed, "")
    assert not verifies(signed, other, name=f"other._domainkey.{DOMAIN}")


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, old
    return data.replace(old, new, 1)


def _body_byte(data: bytes) -> bytes:
    start = data.index(b"\r\n\r\n") + len(data) // 2
    index = start + re.search(rb"[a-z]", data[start:]).start()  # type: ignore[union-attr]
    return data[:index] + (b"b" if data[index : index + 1] != b"b" else b"c") + data[index + 1 :]


TAMPERING: dict[str, Callable[[bytes], bytes]] = {
    "To": lambda d: _replace_once(d, b"\r\nTo: Ann Reader <ann@example.org>\r\n", b"\r\nTo: Ann Reader <eve@example.org>\r\n"),
    "Subject": lambda d: _replace_once(d, b"\r\nSubject: A big,", b"\r\nSubject: A small,"),
    "List-Unsubscribe URL": lambda d: _replace_once(d, b"\r\n <" + URL.encode(), b"\r\n <" + URL.replace("AAAA", "AAAB").encode()),
    "one body byte": _body_byte,
    "From": lambda d: _replace_once(d, b"\r\nFrom: The Briefing", b"\r\nFrom: The Brief1ng"),
    "Date": lambda d: _replace_once(d, b"\r\nDate: Fri, 07 Jul 2017 10:00:00", b"\r\nDate: Fri, 07 Jul 2017 10:00:01"),
    "List-Unsubscribe-Post": lambda d: _replace_once(d, b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click"),
    "Reply-To": lambda d: _replace_once(d, b"Reply-To: editors@", b"Reply-To: eve@"),
    "a second To on top": lambda d: b"To: eve@example.net\r\n" + d,
    "a second Subject on top": lambda d: b"Subject: Urgent: confirm your password\r\n" + d,
    "a second From on top": lambda d: b"From: Bank <alerts@bank.example>\r\n" + d,
    "a signature header value": lambda d: _replace_once(d, b"c=relaxed/relaxed", b"c=relaxed/simple"),
}


@pytest.mark.parametrize("change", TAMPERING, ids=list(TAMPERING))
def test_any_signed_change_breaks_the_signature(change: str, signed: bytes, key: Key) -> None:
    tampered = TAMPERING[change](signed)
    assert tampered != signed
    assert not verifies(tampered, key.record)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: b"Received: from mx.example.net by mx.example.org; Fri, 07 Jul 2017 10:00:05 +0000\r\n" + d,
        lambda d: d.replace(b"\r\nSubject: ", b"\r\nSUBJECT:   ", 1),  # relaxed: case and spaces of headers
        lambda d: d.replace(b"\r\n\r\n", b"\r\nX-Spam-Score: 0\r\n\r\n", 1),  # an unsigned header below ours
    ],
    ids=["Received on top", "relaxed header case and spaces", "an unsigned header"],
)
def test_transit_changes_keep_the_signature(change: Callable[[bytes], bytes], signed: bytes, key: Key) -> None:
    tampered = change(signed)
    assert tampered != signed
    assert verifies(tampered, key.record)


def test_signed_message_wire_format(signed: bytes, unsigned: bytes) -> None:
    head = signed.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert b"\n" not in signed.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in signed.replace(b"\r\n", b""), "bare CR"
    signature = head[: head.index(b"\r\nFrom: ") + 2]
    lines = signature.split(b"\r\n")
    assert lines[-1] == b"", "ends with CRLF"
    assert len(lines) > 3, "folded"
    for line in lines[:-1]:
        assert len(line) <= 78, line
        assert line.strip(), "no blank continuation line"
    assert all(line[:1] in b" \t" for line in lines[1:-1]), "continuation lines start with white space"
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert signed.isascii()

    msg = BytesParser(policy=policy.default).parsebytes(signed)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    strict = BytesParser(policy=STRICT).parsebytes(signed)
    original = BytesParser(policy=STRICT).parsebytes(unsigned)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "Reply-To"):
        assert str(strict[name]) == str(original[name])
    assert strict.get_body(("html",)).get_content() == original.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "".join(str(msg["DKIM-Signature"]).split()).startswith("v=1;a=rsa-sha256;c=relaxed/relaxed;d=news.example.com;")


@pytest.mark.parametrize(
    ("selector", "domain"),
    [("s" * 63, DOMAIN), ("2024-01.news", ("d" * 50) + ".example.com"), ("a", "x" * 59 + ".io")],
)
def test_longest_names_still_fold_and_verify(selector: str, domain: str, key: Key, unsigned: bytes) -> None:
    data = load_signer(key.path, selector=selector, domain=domain).sign(unsigned)
    signature = data[: data.index(b"\r\nFrom: ") + 2]
    assert all(len(line) <= 78 for line in signature.split(b"\r\n"))
    assert signature_tags(data)[b"d"] == domain.encode()
    assert verifies(data, key.record, name=f"{selector}._domainkey.{domain}")


def test_sign_refuses_what_it_cannot_sign(signer: DkimSigner, unsigned: bytes) -> None:
    with pytest.raises(ComposeError, match="CRLF"):
        signer.sign(unsigned.replace(b"\r\n", b"\n"))
    without_from = re.sub(rb"^From: [^\r]*\r\n", b"", unsigned)
    assert without_from != unsigned
    with pytest.raises(ComposeError, match="From"):
        signer.sign(without_from)
    with pytest.raises(ComposeError):
        signer.sign(b"not a header line\r\n\r\nbody\r\n")


# --- keys


def test_generate_key_writes_a_private_file_and_the_matching_record(key: Key) -> None:
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    pem = key.path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/]+={0,2}", key.record)
    public_der = openssl("pkey", "-pubout", "-outform", "DER", data=pem)
    assert key.record == "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode()
    assert "2048 bit" in openssl("pkey", "-noout", "-text", data=pem).decode().splitlines()[0]


def test_generate_key_never_overwrites(key: Key, tmp_path: Path) -> None:
    before = key.path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(key.path)
    assert key.path.read_bytes() == before
    with pytest.raises(ConfigError, match="1024"):
        generate_key(tmp_path / "weak.pem", bits=1024)
    assert not (tmp_path / "weak.pem").exists()


def test_signer_shows_no_key_material(signer: DkimSigner, key: Key) -> None:
    secrets = _key_pieces(key.path.read_bytes())
    assert secrets
    for text in (repr(signer), str(signer), repr(vars(signer))):
        assert SELECTOR in text and DOMAIN in text and str(key.path) in text
        assert not any(piece in text for piece in secrets)
        assert "PRIVATE KEY" not in text
    assert signer.bits == 2048
    assert signer.dns_name == f"{SELECTOR}._domainkey.{DOMAIN}"
    assert signer.dns_record == key.record


def test_pkcs1_key_is_accepted(key: Key, tmp_path: Path, unsigned: bytes) -> None:
    pkcs1 = openssl("pkey", "-traditional", data=key.path.read_bytes())
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    path = tmp_path / "pkcs1.pem"
    path.write_bytes(pkcs1.replace(b"\n", b"\r\n"))  # CRLF line ends, as a key edited on Windows has
    assert verifies(load_signer(path, selector=SELECTOR, domain=DOMAIN).sign(unsigned), key.record)


@pytest.fixture(scope="module")
def openssl_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[bytes, str]]:
    """RSA keys made by the openssl command (not by the code under test): PKCS#8 PEM and the DNS record openssl gives."""
    keys = {}
    for bits in (1024, 2048):
        pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}")
        keys[bits] = (pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(openssl("pkey", "-pubout", "-outform", "DER", data=pem)).decode())
    return keys


KEY_FORMS: dict[str, Callable[[bytes], bytes]] = {
    "PKCS#8": lambda pem: pem,
    "PKCS#1": lambda pem: openssl("pkey", "-traditional", data=pem),
    "PKCS#8, CRLF line ends": lambda pem: pem.replace(b"\n", b"\r\n"),
    "PKCS#1 after a certificate": lambda pem: openssl(
        "req", "-x509", "-key", "/dev/stdin", "-subj", "/CN=news.example.com", "-days", "1", data=pem,
    ) + openssl("pkey", "-traditional", data=pem),
}


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("form", KEY_FORMS, ids=list(KEY_FORMS))
def test_pkcs8_and_pkcs1_keys_load_and_sign_verifiably(form: str, bits: int, openssl_keys: dict[int, tuple[bytes, str]],
                                                      tmp_path: Path, unsigned: bytes) -> None:
    """A key openssl made, in each form a user may have it, signs what dkimpy verifies against openssl's record."""
    pem, record = openssl_keys[bits]
    path = tmp_path / "dkim.key"
    path.write_bytes(KEY_FORMS[form](pem))
    signer = load_signer(path, selector=SELECTOR, domain=DOMAIN)
    assert signer.bits == bits
    assert signer.dns_record == record
    signed = signer.sign(unsigned, timestamp=1499421600)
    assert verifies(signed, record)
    # RSASSA-PKCS1-v1_5 is deterministic: the same key signs the same bytes whatever form its file has.
    (tmp_path / "pkcs8.key").write_bytes(pem)
    assert load_signer(tmp_path / "pkcs8.key", selector=SELECTOR, domain=DOMAIN).sign(unsigned, timestamp=1499421600) == signed


def test_generated_key_is_pkcs8_0600_whatever_the_umask(tmp_path: Path) -> None:
    for umask in (0o000, 0o077, 0o377):
        path = tmp_path / f"umask-{umask:03o}" / "dkim.pem"
        path.parent.mkdir()
        previous = os.umask(umask)
        try:
            record = generate_key(path)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"umask {umask:03o}"
        assert [entry.name for entry in path.parent.iterdir()] == ["dkim.pem"], "no temporary file left beside it"
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
        assert "valid" in openssl("pkey", "-noout", "-check", data=path.read_bytes()).decode()
        assert record == load_signer(path, selector=SELECTOR, domain=DOMAIN).dns_record


def test_generate_key_into_a_missing_folder_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dkim.pem"
    with pytest.raises(ConfigError) as caught:
        generate_key(path)
    assert str(caught.value) == f"DKIM key file {path}: can't be created (No such file or directory)"
    assert list(tmp_path.iterdir()) == []


def test_generated_record_verifies_what_the_key_signs(tmp_path: Path, unsigned: bytes) -> None:
    """The record generate_key returns is the one DNS must answer: dkimpy verifies with exactly it."""
    path = tmp_path / "dkim.pem"
    record = generate_key(path, bits=3072)
    signed = load_signer(path, selector="s3072", domain=DOMAIN).sign(unsigned)
    assert verifies(signed, record, name=f"s3072._domainkey.{DOMAIN}")
    assert "3072 bit" in openssl("pkey", "-noout", "-text", data=path.read_bytes()).decode().splitlines()[0]
    strings = txt_strings(record)
    assert [len(string) for string in strings] == [255, 255, len(record) - 510]
    assert "".join(strings) == record


@pytest.mark.parametrize("size", [0, 1, 254, 255, 256, 510, 511, 800])
def test_txt_strings_are_at_most_255_octets_and_join_back(size: int) -> None:
    record = ("v=DKIM1; k=rsa; p=" + "A" * 800)[:size]
    strings = txt_strings(record)
    assert "".join(strings) == record
    assert all(0 < len(string) <= 255 for string in strings)
    assert len(strings) == -(-size // 255)


def test_keys_are_made_without_the_openssl_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   unsigned: bytes) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no openssl (nor anything else) to run
    path = tmp_path / "dkim.pem"
    record = generate_key(path)
    assert verifies(load_signer(path, selector=SELECTOR, domain=DOMAIN).sign(unsigned), record)


def test_importing_the_dkim_module_leaves_dkimpy_alone() -> None:
    """dkimpy is a test dependency only: signing, keys and records don't import it."""
    code = ("import sys, newsletter.compose.dkim, newsletter.compose.signing; "
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'dkim'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _key_pieces(data: bytes) -> set[str]:
    """Every 16-character run of the base64 in ``data``: key material a message must not contain."""
    text = "".join(re.findall(r"[A-Za-z0-9+/=]{20,}", data.decode("ascii", "replace")))
    return {text[i : i + 16] for i in range(len(text) - 15)}


def _damaged_pkcs1(pem: bytes) -> bytes:
    """The key as PKCS#1 with its CRT coefficient changed: parses, but would sign wrongly."""
    text = openssl("pkey", "-noout", "-text", data=pem).decode()
    numbers = []
    for name in ("modulus", "publicExponent", "privateExponent", "prime1", "prime2", "exponent1", "exponent2", "coefficient"):
        match = re.search(rf"^{name}:(?: (\d+) \(0x[0-9a-f]+\)|\n((?:\s+[0-9a-f:]+\n)+))", text, re.M)
        assert match, name
        numbers.append(int(match.group(1)) if match.group(1) else int(re.sub(r"[\s:]", "", match.group(2)), 16))
    numbers[-1] += 1

    def der(tag: int, content: bytes) -> bytes:
        size = len(content)
        length = bytes([size]) if size < 128 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
        return bytes([tag]) + length + content

    body = der(0x02, b"\x00") + b"".join(der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big")) for n in numbers)
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(der(0x30, body)) + b"-----END RSA PRIVATE KEY-----\n"


BAD_KEYS: dict[str, tuple[Callable[[bytes], bytes | None], str]] = {
    "missing": (lambda pem: None, "not found"),
    "empty": (lambda pem: b"", "not a PEM private key"),
    "garbage": (lambda pem: b"\x00\xffhello\nworld" * 50, "not a PEM private key"),
    "truncated PEM": (lambda pem: pem[: len(pem) // 2], "not a PEM private key"),
    "truncated key": (lambda pem: b"\n".join(pem.split(b"\n")[:6]) + b"\n-----END PRIVATE KEY-----\n", "not an RSA private key"),
    "bad base64": (lambda pem: pem.replace(b"\n", b"\n*", 3), "not valid base64"),
    "public key": (lambda pem: openssl("pkey", "-pubout", data=pem), "'PUBLIC KEY'"),
    "encrypted": (lambda pem: openssl("pkey", "-aes256", "-passout", "pass:x", data=pem), "encrypted"),
    "ed25519": (lambda pem: openssl("genpkey", "-algorithm", "ED25519"), "Ed25519"),
    "EC": (lambda pem: openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"), "not an RSA private key"),
    "512-bit RSA": (lambda pem: openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"), "too small"),
    "damaged RSA": (_damaged_pkcs1, "damaged"),
    "encrypted PKCS#1 (Proc-Type)": (lambda pem: openssl("pkey", "-traditional", "-aes256", "-passout", "pass:x", data=pem),
                                     "encrypted"),
    "encrypted PKCS#8 under a plain label": (
        lambda pem: openssl("pkey", "-aes256", "-passout", "pass:x", data=pem).replace(b"ENCRYPTED PRIVATE KEY", b"PRIVATE KEY"),
        "encrypted"),
    "EC (SEC1)": (lambda pem: openssl("pkey", "-traditional", data=openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")), "not an RSA private key"),
    "EC under an RSA label": (lambda pem: openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
                              .replace(b" PRIVATE KEY-----", b" RSA PRIVATE KEY-----"), "not an RSA private key"),
    "512-bit RSA PKCS#1": (lambda pem: openssl("pkey", "-traditional", data=openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512")), "a 512-bit key is too small"),
    "1023-bit RSA": (lambda pem: openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1023"),
                     "a 1023-bit key is too small"),
}


@pytest.mark.parametrize("case", BAD_KEYS, ids=list(BAD_KEYS))
def test_bad_key_file_is_one_clear_line_without_key_material(case: str, key: Key, tmp_path: Path) -> None:
    make, expected = BAD_KEYS[case]
    pem = key.path.read_bytes()
    path = tmp_path / "secret-dkim.key"
    content = make(pem)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_signer(path, selector=SELECTOR, domain=DOMAIN)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message and "\r" not in message
    secrets = _key_pieces(pem) | _key_pieces(content or b"")
    chain: BaseException | None = caught.value
    while chain is not None:  # a traceback prints every exception of the chain
        assert not any(piece in str(chain) for piece in secrets), f"key material in {type(chain).__name__}"
        chain = chain.__cause__ or chain.__context__


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path))}: can't be read"):
        load_signer(tmp_path, selector=SELECTOR, domain=DOMAIN)


@pytest.mark.parametrize(
    ("selector", "domain", "wrong"),
    [
        ("", DOMAIN, "selector"),
        ("-s", DOMAIN, "selector"),
        ("s-", DOMAIN, "selector"),
        ("s_1", DOMAIN, "selector"),
        ("s 1", DOMAIN, "selector"),
        ("s1\r\nBcc: x", DOMAIN, "selector"),
        ("s" * 64, DOMAIN, "selector"),
        ("sélect", DOMAIN, "selector"),
        ("s..1", DOMAIN, "selector"),
        ("s1", "localhost", "domain"),
        ("s1", "example..com", "domain"),
        ("s1", "example.com.", "domain"),
        ("s1", "-x.example.com", "domain"),
        ("s1", "news.example.com\n", "domain"),
        ("s1", "x" * 60 + ".com", "domain"),
        ("s1", "", "domain"),
    ],
)
def test_selector_and_domain_must_be_dns_names(selector: str, domain: str, wrong: str, key: Key) -> None:
    with pytest.raises(ConfigError, match=f"DKIM {wrong} ") as caught:
        load_signer(key.path, selector=selector, domain=domain)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


@given(st.binary(max_size=60).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"\r\n")))
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]

    from newsletter.compose.dkim import _relaxed_body

    assert _relaxed_body(body) == Relaxed.canonicalize_body(body)


@given(st.text(alphabet=" \tab:;=\r\n", max_size=40))
def test_relaxed_header_matches_dkimpy(text: str) -> None:
    from dkim.canonicalization import Relaxed

    from newsletter.compose.dkim import _relaxed_header

    value = text.replace("\r", "").replace("\n", "\r\n ").encode("ascii")  # folded lines start with a blank
    ((name, canonical),) = Relaxed.canonicalize_headers([(b"Subject", value)])
    assert _relaxed_header(b"Subject", value) == name + b":" + canonical
