"""Subscriber input and output: address validation, CSV import rows, CSV/JSON export.

Everything here is untrusted text: addresses are validated with email-validator (no
DNS), names and merge fields lose control characters, and exported cells that a
spreadsheet would run as a formula are defused.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from newsletter.errors import SubscriberError
from newsletter.sanitize import one_line
from newsletter.store import Subscriber, SubscriberRow

__all__ = [
    "ImportResult",
    "decode_csv",
    "export_csv",
    "export_json",
    "normalise_address",
    "parse_csv",
    "subscriber_row",
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
    """The address to store and send to (ASCII domain); raises SubscriberError when invalid."""
    from email_validator import EmailNotValidError, validate_email  # ~20 ms: only where addresses come in

    candidate = address.strip()
    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"invalid address {candidate!r}: {exc}") from exc
    return str(result.ascii_email or result.normalized)


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


def parse_csv(text: str, *, source: str) -> ImportResult:
    """Rows of a CSV with an ``email`` column (``name`` optional, other columns merge fields).

    A bad header (no ``email`` column, a column twice, a column name that can't be a merge
    field) is a SubscriberError for the whole file; a bad row is reported with its first
    line and the others are still read.
    """
    # strict: a stray quote is an error of its row, not a quietly different cell; an unclosed
    # one would otherwise swallow every later row into one cell without a word.
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
    except csv.Error as exc:
        raise SubscriberError(f"{source}:1: bad CSV in the header line: {_csv_problem(exc)}") from exc
    _check_header(header, source)
    rows: list[SubscriberRow] = []
    errors: list[SubscriberError] = []
    seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1  # where the next row starts (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(SubscriberError(f"{source}:{line}: bad CSV: {_csv_problem(exc)}"))
            continue
        if not cells:  # a blank line
            continue
        if len(cells) > len(header):
            errors.append(SubscriberError(f"{source}:{line}: more cells than columns"))
            continue
        record = dict(zip(header, cells, strict=False))
        extra = {key: value for key, value in record.items() if key not in ("email", "name") and key}
        try:
            row = subscriber_row(record.get("email", ""), record.get("name", ""), extra)
        except SubscriberError as exc:
            errors.append(SubscriberError(f"{source}:{line}: {exc}"))
            continue
        key = row.email.lower()
        if key in seen:  # a later row for the same address wins, merged into one
            rows[seen[key]] = row
            continue
        seen[key] = len(rows)
        rows.append(row)
    return ImportResult(rows, errors)


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


def export_csv(subscribers: Iterable[Subscriber]) -> str:
    """Subscribers as CSV: email, name, status, lists, then every merge field."""
    people = list(subscribers)
    extra = sorted({key for person in people for key in person.fields})
    out = io.StringIO()
    # CRLF as RFC 4180 has it: the writer quotes a cell holding any character of the line
    # terminator, and with "\n" alone a bare CR in a cell went out unquoted and split its row.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "name", "status", "lists", *extra])
    for person in people:
        writer.writerow([_cell(person.email), _cell(person.name), person.status, " ".join(person.lists),
                         *(_cell(person.fields.get(key, "")) for key in extra)])
    return out.getvalue()


def export_json(subscribers: Iterable[Subscriber]) -> str:
    """Subscribers as a JSON list."""
    return json.dumps(
        [{"email": p.email, "name": p.name, "status": p.status, "lists": list(p.lists), "fields": dict(p.fields)}
         for p in subscribers],
        indent=2, ensure_ascii=False,
    )
