"""``newsletter subscribers import``: a CSV file into a list, in bounded memory, bad rows reported by line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Settings
from newsletter.errors import SubscriberError
from newsletter.models import is_valid_name
from newsletter.store.consent import consent_claim
from newsletter.store.subscriber_files import UniqueRows, csv_lines, read_csv
from newsletter.store.subscribers import Store, UpsertCounts
from newsletter.tokens import split_keys

__all__ = [
    "ImportReport",
    "check_list_name",
    "import_subscribers",
]


@dataclass(frozen=True)
class ImportReport:
    """What ``import_subscribers`` did, and the rows it refused."""

    counts: UpsertCounts | None
    errors: list[SubscriberError]


def import_subscribers(csv_path: str | Path, list_name: str, settings: Settings, *, all_or_nothing: bool = False,
                       consent: str | None = None) -> ImportReport:
    """Import a CSV into ``list_name``: good rows in one transaction, bad rows reported by line.

    With ``all_or_nothing`` a single bad row means nothing is imported. With ``consent``
    (how the readers agreed, gathered elsewhere) each membership the import creates gets a
    consent record (method ``import``) saying so, in the same transaction.
    """
    source = str(csv_path)
    check_list_name(list_name)
    claim = None if consent is None else consent_claim("import", consent)
    errors: list[SubscriberError] = []
    # The file is read a line at a time into a temporary file of unique rows, then merged
    # chunk by chunk in one transaction: memory stays flat for a million rows, and the
    # database is opened only once the whole file has been read and judged.
    try:
        with open(csv_path, "rb") as stream, UniqueRows() as rows:
            for item in read_csv(csv_lines(stream, source=source), source=source):
                if isinstance(item, SubscriberError):
                    errors.append(item)
                else:
                    rows.add(item)
            if errors and all_or_nothing:
                return ImportReport(None, errors)
            with Store.open(settings.database.location) as store:
                # Forgotten addresses are recognised by their keyed hash and left out.
                keys = split_keys(settings.secret_key.reveal())
                store.check_forget_keys(keys)
                counts = store.upsert_subscribers(rows, list_name=list_name, forget_keys=keys,
                                                  consent=claim)
    except OSError as exc:
        raise SubscriberError(f"{source}: can't read it: {exc.strerror or exc}") from exc
    return ImportReport(counts, errors)


def check_list_name(name: str) -> None:
    """Raise SubscriberError unless ``name`` is a list name an issue can address."""
    if not is_valid_name(name):
        raise SubscriberError(f"list name {name!r}: use lower-case letters, digits, '-' and '_' "
                              "(up to 64, starting with a letter or digit), as an issue's list: does")
