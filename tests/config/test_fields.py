"""The entry-field table is what the builder reads: its examples load, its defaults are Entry's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from beatd.config import Entry, load_config
from beatd.config.entries import ENTRY_FIELDS
from beatd.config.fields import (
    DERIVED,
    FIELDS,
    REQUIRED,
    SCHEDULE_FIELDS,
    WINDOW_FIELDS,
    Field,
)
from beatd.schedules.window import WindowedSchedule


def entry_with(field: Field) -> str:
    """A YAML entry that sets `field` to its example, with what it needs besides."""
    lines = [f"    {field.name}: {field.example}"]
    if field.name != "task":
        lines.append("    task: reports.nightly")
    if field.name not in SCHEDULE_FIELDS:
        lines.append("    every: 1d")
    if field.name == "amqp":  # an AMQP destination takes Celery's messages
        lines.append("    protocol: celery")
    return "\n".join(lines)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_each_example_is_a_valid_value(field: Field, tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(f"entries:\n  example:\n{entry_with(field)}\n")
    entry = load_config([str(path)]).entries["example"]  # ConfigError if the example is bad
    if field.name in WINDOW_FIELDS:  # the window bounds the schedule
        assert isinstance(entry.schedule, WindowedSchedule)
        assert getattr(entry.schedule, field.name) is not None
    elif field.name not in (*SCHEDULE_FIELDS, "anchor"):  # those become the schedule
        assert getattr(entry, field.name) != field.default  # the example was read, not skipped


def test_the_defaults_in_the_table_are_the_entrys() -> None:
    declared = {f.name: f.default for f in FIELDS}
    for attribute in dataclasses.fields(Entry):
        default = declared.get(attribute.name, DERIVED)
        if default in (REQUIRED, DERIVED) or attribute.name in SCHEDULE_FIELDS:
            continue
        value = (
            attribute.default
            if attribute.default is not dataclasses.MISSING
            else attribute.default_factory()  # type: ignore[misc]
        )
        assert value == default, attribute.name


def test_every_field_is_an_entry_attribute_or_part_of_its_schedule() -> None:
    attributes = {a.name for a in dataclasses.fields(Entry)}
    assert [f for f in ENTRY_FIELDS if f not in attributes] == [
        *SCHEDULE_FIELDS,
        "anchor",
        *WINDOW_FIELDS,
    ]
