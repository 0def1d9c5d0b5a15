"""Subscriber input and output: address validation, CSV import rows, CSV/JSON export.

Everything here is untrusted text: addresses are validated with email-validator (no
DNS), names and merge fields lose control characters, and exported cells that a
spreadsheet would run as a formula are defused.

Both directions stream: an import reads its file a line at a time (:func:`csv_lines`,
:func:`read_csv`) and keeps the rows in :class:`UniqueRows`, a private temporary SQLite
file; an export writes each subscriber as the store reads it (:func:`write_csv`,
:func:`write_json`). A million subscribers take the memory of a few thousand.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the C function json.dumps uses for ensure_ascii=False
from typing import BinaryIO, TextIO

from newsletter.errors import StoreError, SubscriberError
from newsletter.sanitize import one_line
from newsletter.store.subscribers import Subscriber, SubscriberRow

__all__ = [
    "ImportResult",
    "UniqueRows",
    "csv_lines",
    "decode_csv",
    "export_csv",
    "export_json",
    "normalise_address",
    "parse_csv",
    "read_csv",
    "subscriber_row",
    "write_csv",
    "write_json",
]

MAX_NAME = 200
MAX_FIELD = 1000
_FIELD_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


@dataclass(frozen=True)
class ImportResult:
    """Rows ready to upsert, and the rejected ones as one-line errors."""

    rows: list[SubscriberRow]
    errors: list[SubscriberError]


def normalise_address(address: str) -> str:
    """The address to store and send to (ASCII domain); raises SubscriberError when invalid.

    email-validator decides. Its answer for an address whose local part is plain ASCII
    (dot-atom, not a role name it lower-cases) depends on the domain alone, apart from the
    total length: so an address at a domain it already accepted in this process is put
    together from the remembered answer (~1 µs instead of ~25 µs; a million rows of an
    import share a few thousand domains). tests/store/test_subscriber_files.py holds the two equal.
    """
    candidate = address.strip()
    local, at, domain = candidate.rpartition("@")
    known = _DOMAINS.get(domain) if at else None
    rules = _rules()
    if known is not None and _plain_local(local, rules) and len(local) + 1 + known[1] <= rules.max_length:
        return f"{local}@{known[0]}"
    from email_validator import EmailNotValidError, validate_email  # ~20 ms: only where addresses come in

    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"invalid address {candidate!r}: {exc}") from exc
    if at and result.ascii_email and _plain_local(local, rules) and len(_DOMAINS) < _MAX_DOMAINS:
        longest = max(len(form.encode("utf-8")) for form in (domain, result.domain, result.ascii_domain))
        _DOMAINS[domain] = (str(result.ascii_domain), longest)
    return str(result.ascii_email or result.normalized)


#: domains email-validator accepted, as written -> (their ASCII form, the longest of the written,
#: normalised and ASCII forms in UTF-8 bytes, which the address's length limit counts)
_DOMAINS: dict[str, tuple[str, int]] = {}
_MAX_DOMAINS = 10_000


@dataclass(frozen=True)
class _Rules:
    dot_atom: re.Pattern[str]
    role_names: frozenset[str]
    max_length: int


@functools.cache
def _rules() -> _Rules:
    """email-validator's own rules for a plain local part and the address's length (imported once)."""
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, DOT_ATOM_TEXT, EMAIL_MAX_LENGTH

    return _Rules(DOT_ATOM_TEXT, frozenset(CASE_INSENSITIVE_MAILBOX_NAMES), EMAIL_MAX_LENGTH)


def _plain_local(local: str, rules: _Rules) -> bool:
    """Whether email-validator keeps ``local`` as it is: ASCII dot-atom, not a role name (RFC 2142) it lower-cases."""
    return rules.dot_atom.match(local) is not None and local.lower() not in rules.role_names


def subscriber_row(email: str, name: str = "", fields: dict[str, str] | None = None) -> SubscriberRow:
    """A validated subscriber; raises SubscriberError for a bad address or field name."""
    clean_fields: dict[str, str] = {}
    for key, value in (fields or {}).items():
        field_name = key.strip().lower()
        if not _FIELD_NAME_RE.match(field_name):
            raise SubscriberError(f"merge field name {key!r} must be letters, digits and '_'")
        clean_fields[field_name] = one_line(value, MAX_FIELD)
    return SubscriberRow(normalise_address(email), one_line(name, MAX_NAME), clean_fields)


def decode_csv(data: bytes, *, source: str) -> str:
    """The text of a CSV file's bytes (UTF-8, with or without a BOM); SubscriberError naming the line if not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SubscriberError(f"{source}:1: the file is UTF-16, not UTF-8 (save it as 'CSV UTF-8')")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        # Lines as the CSV reader counts them: CRLF, LF and a lone CR each end one.
        before = data[: exc.start].replace(b"\r\n", b"\n")
        line = before.count(b"\n") + before.count(b"\r") + 1
        raise SubscriberError(
            f"{source}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as 'CSV UTF-8'"
        ) from exc


def csv_lines(stream: BinaryIO, *, source: str) -> Iterator[str]:
    """The lines of a CSV file, decoded as they are read: what :func:`decode_csv` and
    ``io.StringIO(text, newline="")`` make of the whole file, without holding it.

    UTF-8, with or without a BOM; lines end with CRLF, LF or a lone CR, as the CSV reader
    counts them. A byte that isn't UTF-8 is a SubscriberError naming its line, raised when
    the reading gets there.
    """
    number = 0
    for raw in stream:  # split on LF only: a lone CR ends a line too
        if number == 0 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise SubscriberError(f"{source}:1: the file is UTF-16, not UTF-8 (save it as 'CSV UTF-8')")
        for piece in _LONE_CR_RE.split(raw) if raw.count(b"\r") > raw.endswith(b"\r\n") else (raw,):
            if not piece:
                continue
            number += 1
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SubscriberError(f"{source}:{number}: not valid UTF-8 (byte 0x{piece[exc.start]:02x}); "
                                      "save the file as 'CSV UTF-8'") from exc
            if number == 1:
                text = text.removeprefix("\ufeff")
                if not text:
                    continue
            yield text


#: where a line ends at a CR that no LF follows (a file split on LF still holds those)
_LONE_CR_RE = re.compile(rb"(?<=\r)(?!\n)")


def read_csv(lines: Iterable[str], *, source: str) -> Iterator[SubscriberRow | SubscriberError]:
    """Each row of a CSV with an ``email`` column (``name`` optional, other columns merge fields),
    in file order: a :class:`SubscriberRow`, or a one-line SubscriberError naming the row's first line.

    A bad header (no ``email`` column, a column twice, a column name that can't be a merge
    field) is a SubscriberError raised for the whole file. The same address twice is
    yielded twice: :class:`UniqueRows` (or :func:`parse_csv`) keeps the later one.
    """
    first = True

    def without_bom(text: str) -> str:
        nonlocal first
        if first:
            first = False
            return text.removeprefix("\ufeff")
        return text

    # strict: a stray quote is an error of its row, not a quietly different cell; an unclosed
    # one would otherwise swallow every later row into one cell without a word.
    reader = csv.reader(map(without_bom, lines), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
    except csv.Error as exc:
        raise SubscriberError(f"{source}:1: bad CSV in the header line: {_csv_problem(exc)}") from exc
    _check_header(header, source)
    while True:
        line = reader.line_num + 1  # where the next row starts (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield SubscriberError(f"{source}:{line}: bad CSV: {_csv_problem(exc)}")
            continue
        if not cells:  # a blank line
            continue
        if len(cells) > len(header):
            yield SubscriberError(f"{source}:{line}: more cells than columns")
            continue
        record = dict(zip(header, cells, strict=False))
        extra = {key: value for key, value in record.items() if key not in ("email", "name") and key}
        try:
            yield subscriber_row(record.get("email", ""), record.get("name", ""), extra)
        except SubscriberError as exc:
            yield SubscriberError(f"{source}:{line}: {exc}")


def parse_csv(text: str, *, source: str) -> ImportResult:
    """Rows of a CSV held in memory (see :func:`read_csv`): one per address, a later row
    for the same address replacing the earlier one in its place, and the refused rows."""
    rows: list[SubscriberRow] = []
    errors: list[SubscriberError] = []
    seen: dict[str, int] = {}
    for item in read_csv(io.StringIO(text, newline=""), source=source):
        if isinstance(item, SubscriberError):
            errors.append(item)
            continue
        key = item.email.lower()
        if key in seen:  # a later row for the same address wins, merged into one
            rows[seen[key]] = item
            continue
        seen[key] = len(rows)
        rows.append(item)
    return ImportResult(rows, errors)


class UniqueRows:
    """Import rows, one per address (case-insensitive): a later row for an address replaces the
    earlier one, in the earlier one's place, as :func:`parse_csv` does in memory.

    They wait in a private temporary SQLite database (deleted when closed; in ``TMPDIR``,
    spilling to disk past a small cache), so a file of a million rows takes a few MB of
    memory; iterating gives them in order of first appearance.
    """

    #: rows written to the scratch database at a time
    BATCH = 5000

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, str, str]] = []
        try:
            # "": a private, temporary on-disk database that SQLite removes on close.
            self._db = sqlite3.connect("", isolation_level=None)
            self._db.execute("PRAGMA cache_size = -16000")  # KiB
            # The rowid is the order of first appearance; an upsert keeps it and takes the new values.
            self._db.execute("CREATE TABLE rows (key TEXT NOT NULL UNIQUE, email TEXT NOT NULL, name TEXT NOT NULL,"
                             " fields TEXT NOT NULL)")
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _scratch_error(exc) from exc

    def add(self, row: SubscriberRow) -> None:
        """Keep ``row`` (replacing an earlier row for its address)."""
        self._pending.append((row.email.lower(), row.email, row.name, json.dumps(dict(row.fields))))
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        try:
            self._db.executemany(
                "INSERT INTO rows (key, email, name, fields) VALUES (?, ?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET email = excluded.email, name = excluded.name, fields = excluded.fields",
                self._pending,
            )
        except sqlite3.Error as exc:
            raise _scratch_error(exc) from exc
        self._pending.clear()

    def __len__(self) -> int:
        self._flush()
        return int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0])

    def __iter__(self) -> Iterator[SubscriberRow]:
        self._flush()
        try:
            for email, name, fields in self._db.execute("SELECT email, name, fields FROM rows ORDER BY rowid"):
                yield SubscriberRow(email, name, json.loads(fields))
        except sqlite3.Error as exc:
            raise _scratch_error(exc) from exc

    def close(self) -> None:
        """Drop the rows (and the temporary file)."""
        self._db.close()

    def __enter__(self) -> UniqueRows:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _scratch_error(exc: sqlite3.Error) -> StoreError:
    return StoreError(f"the import's temporary file failed ({one_line(str(exc))}); it goes in TMPDIR (or /var/tmp,"
                      " /tmp): free some space there, or point TMPDIR at a folder with room")


def _check_header(header: list[str], source: str) -> None:
    if "email" not in header:
        raise SubscriberError(f"{source}:1: no 'email' column (the first line must name the columns)")
    named = [name for name in header if name]  # an unnamed column (a trailing comma) is ignored
    for name in named:
        if named.count(name) > 1:
            raise SubscriberError(f"{source}:1: column '{name}' appears twice; keep one")
        if name not in ("email", "name") and not _FIELD_NAME_RE.match(name):
            raise SubscriberError(
                f"{source}:1: column {one_line(name)!r} can't be a merge field: use letters, digits and '_'"
                ", starting with a letter"
            )


def _csv_problem(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):
        return "a quoted cell is never closed (the rest of the file was read into it)"
    return one_line(str(exc))


def _cell(value: str) -> str:
    # A leading = + - @ makes spreadsheets evaluate a cell; a quote keeps it text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(subscribers: Iterable[Subscriber], out: TextIO, fields: Sequence[str]) -> None:
    """Write subscribers to ``out`` as CSV, each as it comes: email, name, status, lists, then ``fields``
    (the merge fields, in that order; :meth:`Store.field_names` gives them for a whole export)."""
    # CRLF as RFC 4180 has it: the writer quotes a cell holding any character of the line
    # terminator, and with "\n" alone a bare CR in a cell went out unquoted and split its row.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "name", "status", "lists", *fields])
    for person in subscribers:
        writer.writerow([_cell(person.email), _cell(person.name), person.status, " ".join(person.lists),
                         *(_cell(person.fields.get(key, "")) for key in fields)])


def export_csv(subscribers: Iterable[Subscriber]) -> str:
    """Subscribers as CSV: email, name, status, lists, then every merge field."""
    people = list(subscribers)
    out = io.StringIO()
    write_csv(people, out, sorted({key for person in people for key in person.fields}))
    return out.getvalue()


def write_json(subscribers: Iterable[Subscriber], out: TextIO) -> None:
    """Write subscribers to ``out`` as a JSON list, each as it comes: exactly the text of
    ``json.dumps([...], indent=2, ensure_ascii=False)``, without holding the list."""
    separator = "[\n"
    for person in subscribers:
        out.write(separator)
        separator = ",\n"
        lists = "[\n" + ",\n".join(f"      {encode_basestring(name)}" for name in person.lists) + "\n    ]" \
            if person.lists else "[]"
        fields = "{\n" + ",\n".join(f"      {encode_basestring(key)}: {encode_basestring(value)}"
                                     for key, value in person.fields.items()) + "\n    }" if person.fields else "{}"
        out.write(f'  {{\n    "email": {encode_basestring(person.email)},'
                  f'\n    "name": {encode_basestring(person.name)},'
                  f'\n    "status": {encode_basestring(person.status)},\n    "lists": {lists},'
                  f'\n    "fields": {fields}\n  }}')
    out.write("[]" if separator == "[\n" else "\n]")


def export_json(subscribers: Iterable[Subscriber]) -> str:
    """Subscribers as a JSON list."""
    out = io.StringIO()
    write_json(subscribers, out)
    return out.getvalue()
