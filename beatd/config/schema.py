"""A JSON Schema (draft 2020-12) of YAML schedule files, generated from the field table.

Every property of an entry is one `Field` of beatd.config.fields: its `schema` fragment, `doc`
as the description and `example` (read as YAML) in `examples`. The schema accepts every file
the validator accepts; what it cannot express (cron syntax, zone names, `anchor` only with
`every`, `start`/`end` only with `every` or `cron`, a jitter shorter than the period) is left to
`beatd check`. `beatd schema` prints it; schemas/schedule.schema.json is a committed copy that
tests/config/test_schema.py compares whole.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from beatd.config.convert import ENTRY_NAME, QUEUE_NAME
from beatd.config.fields import FIELDS, QUEUE_FIELDS, REQUIRED, SCHEDULE_FIELDS, Field

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://github.com/beatd/beatd/schemas/schedule.schema.json"


def schedule_schema() -> dict[str, Any]:
    """The schema of one schedule file."""
    defaults = {f.name: _property(f) for f in FIELDS if f.in_defaults}
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "beatd schedule file",
        "description": "Entries, defaults, queues and task imports; see docs/configuration.md.",
        "type": "object",
        "properties": {
            "entries": {
                "type": "object",
                "propertyNames": {"pattern": _ecma(ENTRY_NAME.pattern)},
                "additionalProperties": {"$ref": "#/$defs/entry"},
            },
            "defaults": {
                "type": ["object", "null"],
                "properties": defaults,
                "additionalProperties": False,
            },
            "queues": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": _ecma(QUEUE_NAME.pattern)},
                "additionalProperties": {"$ref": "#/$defs/queue"},
            },
            "imports": {"type": ["array", "null"], "items": {"type": "string"}},
        },
        "required": ["entries"],
        "additionalProperties": False,
        "$defs": {"entry": _entry(), "queue": _queue()},
    }


def schema_text() -> str:
    """The schema as the committed file holds it: indented, keys in table order, a newline."""
    return json.dumps(schedule_schema(), indent=2, ensure_ascii=False) + "\n"


def _entry() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _property(f) for f in FIELDS},
        "required": [f.name for f in FIELDS if f.default is REQUIRED],
        "oneOf": [{"required": [name]} for name in SCHEDULE_FIELDS],
        "additionalProperties": False,
    }


def _queue() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _property(f) for f in FIELDS if f.name in QUEUE_FIELDS},
        "additionalProperties": False,
    }


def _property(field: Field) -> dict[str, Any]:
    fragment = {key: _ecma_patterns(key, value) for key, value in field.schema.items()}
    return {**fragment, "description": field.doc, "examples": [yaml.safe_load(field.example)]}


def _ecma_patterns(key: str, value: Any) -> Any:
    return _ecma(value) if key == "pattern" else value


def _ecma(pattern: str) -> str:
    r"""A Python pattern used with `match` as an anchored ECMA-262 one (`\Z` is Python's)."""
    return "^" + re.sub(r"\\Z$", "$", pattern)


__all__ = ["schedule_schema", "schema_text"]
