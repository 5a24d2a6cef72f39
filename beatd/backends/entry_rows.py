"""A runtime entry as one row of the SQL backends' `runtime_entry` table (SQLite and
PostgreSQL store the same columns): the definition as JSON text, times in µs since the epoch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from beatd.backends.base import from_micros, to_micros
from beatd.runtime_entries import RuntimeEntry, definition_text

ENTRY_COLUMNS = (
    "name, version, definition, created_us, created_by, updated_us, updated_by, request_id"
)


def entry_of_row(row: Sequence[Any]) -> RuntimeEntry:
    """The entry a row of ENTRY_COLUMNS holds."""
    name, version, definition, created, created_by, updated, updated_by, request_id = row
    return RuntimeEntry(
        name,
        json.loads(definition),
        version,
        from_micros(created),
        created_by,
        from_micros(updated),
        updated_by,
        request_id,
    )


def definition_json(definition: Mapping[str, Any], text: str | None = None) -> str:
    """A definition's JSON text, as every backend stores it: `text` when the writer made it
    already (`ResolvedEntry.text`), else encoded now."""
    return definition_text(definition) if text is None else text


def entry_row(entry: RuntimeEntry) -> tuple[Any, ...]:
    """The row of ENTRY_COLUMNS that holds `entry`."""
    return (
        entry.name,
        entry.version,
        definition_json(entry.definition, entry.text),
        to_micros(entry.created_at),
        entry.created_by,
        to_micros(entry.updated_at),
        entry.updated_by,
        entry.request_id,
    )
