"""The flags of `beatd entries add` and `beatd entries set`: one `--NAME` per entry field,
generated from the field table (beatd.config.fields), so a new field is a new flag with nothing
else to write (tests/test_entries_cli.py compares the flags with the table).

A field whose JSON type is a string (a task, a cron expression, a time, a zone) takes the
flag's text as it is; the others read it as YAML, as a schedule file would (`--kwargs '{region:
eu}'`, `--priority 7`, `--every 90`), so a flag's value means what it means in a file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import yaml

from beatd.cli.common import bad_option
from beatd.config.fields import FIELDS, Field


def flag_name(field: Field) -> str:
    return "--" + field.name.replace("_", "-")


def _dest(field: Field) -> str:
    return f"field_{field.name}"


def _help(field: Field) -> str:
    return f"The entry's `{field.name}` ({field.kind}): {field.doc}."


def field_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """A `--NAME VALUE` flag for every entry field, handed to the command as `fields`: the
    fields given, their values read as a file's."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {}
        for field in FIELDS:
            text = kwargs.pop(_dest(field))
            if text is not None:
                given[field.name] = flag_value(field, text)
        return func(*args, fields=given, **kwargs)

    for field in reversed(FIELDS):
        option = click.option(flag_name(field), _dest(field), metavar="VALUE", help=_help(field))
        command = option(command)
    return command


def flag_value(field: Field, text: str) -> Any:
    if field.schema.get("type") == "string":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        bad_option(flag_name(field), f"cannot read {text!r} as a YAML value: {problem}")
