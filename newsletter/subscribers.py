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
    "export_csv",
    "export_json",
    "normalise_address",
    "parse_csv",
    "subscriber_row",
]

MAX_NAME = 200
MAX_FIELD = 1000
_FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


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


def parse_csv(text: str, *, source: str) -> ImportResult:
    """Rows of a CSV with an ``email`` column (``name`` optional, other columns merge fields)."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if "email" not in header:
        raise SubscriberError(f"{source}:1: no 'email' column (the first line must name the columns)")
    reader.fieldnames = header
    rows: list[SubscriberRow] = []
    errors: list[SubscriberError] = []
    seen: dict[str, int] = {}
    line = 1
    try:
        for record in reader:
            line = reader.line_num
            if None in record:
                errors.append(SubscriberError(f"{source}:{line}: more cells than columns"))
                continue
            extra = {k: v or "" for k, v in record.items() if k not in ("email", "name") and k}
            try:
                row = subscriber_row(record.get("email") or "", record.get("name") or "", extra)
            except SubscriberError as exc:
                errors.append(SubscriberError(f"{source}:{line}: {exc}"))
                continue
            key = row.email.lower()
            if key in seen:  # a later row for the same address wins, merged into one
                rows[seen[key]] = row
                continue
            seen[key] = len(rows)
            rows.append(row)
    except csv.Error as exc:
        errors.append(SubscriberError(f"{source}:{reader.line_num or line}: bad CSV: {exc}"))
    return ImportResult(rows, errors)


def _cell(value: str) -> str:
    # A leading = + - @ makes spreadsheets evaluate a cell; a quote keeps it text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_csv(subscribers: Iterable[Subscriber]) -> str:
    """Subscribers as CSV: email, name, status, lists, then every merge field."""
    people = list(subscribers)
    extra = sorted({key for person in people for key in person.fields})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
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
