"""The JSON Schema of schedule files: generated from the field table, committed whole, and
checked against corpora of valid and broken files (each broken one labelled with who refuses it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from beatd.config import load_config
from beatd.config.schema import schedule_schema, schema_text
from beatd.errors import ConfigError
from tests.test_cli import beatd

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "schemas" / "schedule.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(schedule_schema())


class EditorLoader(yaml.SafeLoader):
    """YAML as an editor's language server reads it: a timestamp stays a string."""


EditorLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def schema_errors(text: str) -> list[str]:
    document: Any = yaml.load(text, Loader=EditorLoader)  # a SafeLoader: no objects built
    return [error.message for error in VALIDATOR.iter_errors(document)]


def test_the_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == schema_text()


def test_beatd_schema_prints_it() -> None:
    assert beatd("schema") == (0, schema_text(), "")


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(COMMITTED.read_text()))


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


SHIPPED = [
    *(str(p.relative_to(REPO)) for p in sorted((REPO / "schedules").glob("*.yaml"))),
    *(f"README.md#{i}" for i in range(len(yaml_blocks(REPO / "README.md")))),
    *(f"docs/celery.md#{i}" for i in range(len(yaml_blocks(REPO / "docs" / "celery.md")))),
]


def shipped_text(name: str) -> str:
    path, _, index = name.partition("#")
    return yaml_blocks(REPO / path)[int(index)] if index else (REPO / path).read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_example_is_valid_for_both(name: str, tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(shipped_text(name))
    load_config([str(tmp_path / "s.yaml")])
    assert schema_errors(shipped_text(name)) == []


# Valid files the examples do not show: both must accept each.
VALID = {
    "no_entries_on_purpose": "entries: {}\nqueues: {celery: {protocol: celery}}\n",
    "empty_sections": "defaults:\nqueues:\nimports:\nentries: {a: {task: t.a, every: 60}}\n",
    "every_field": """\
defaults: {timezone: Europe/Berlin, queue: q, protocol: beatd, priority: null, headers: {},
           enabled: true, jitter: 0, expires: null, missed: skip, max_catch_up: 3,
           misfire_grace: 30s, deadline: 30m, alert_after_failures: 2}
entries:
  a.b:c/d-e:
    task: pkg.mod.task
    args: [1, "x", null]
    kwargs: {k: [1]}
    description: ""
    every: 1h30m
    anchor: 2026-01-01T00:15:00
    start: "2026-12-01T00:00:00+01:00"
    end: 2027-01-01
    priority: 9
""",
    "hashed_cron_and_unquoted_one_off": """\
entries:
  spread: {task: t.a, cron: "H(0-29)/30 H * * *"}
  once: {task: t.b, at: 2030-01-01T00:00:00}
""",
}


@pytest.mark.parametrize("text", list(VALID.values()), ids=list(VALID))
def test_valid_files_are_valid_for_both(text: str, tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(text)
    load_config([str(tmp_path / "s.yaml")])
    assert schema_errors(text) == []


SCHEMA = "schema-catchable"  # both refuse it
VALIDATOR_ONLY = "validator-only"  # only `beatd check` can tell
BROKEN = {
    "no_entries_section": (SCHEMA, "queues: {}\n"),
    "unknown_section": (SCHEMA, "entries: {}\nentry: {}\n"),
    "unknown_field": (SCHEMA, "entries: {a: {task: t.a, every: 60, cronn: '* * * * *'}}\n"),
    "no_task": (SCHEMA, "entries: {a: {every: 60}}\n"),
    "no_schedule": (SCHEMA, "entries: {a: {task: t.a}}\n"),
    "two_schedules": (SCHEMA, "entries: {a: {task: t.a, every: 60, cron: '* * * * *'}}\n"),
    "bad_entry_name": (SCHEMA, "entries: {'a b': {task: t.a, every: 60}}\n"),
    "bad_task_name": (SCHEMA, "entries: {a: {task: 'not a task', every: 60}}\n"),
    "priority_out_of_range": (SCHEMA, "entries: {a: {task: t.a, every: 60, priority: 10}}\n"),
    "unknown_missed_policy": (SCHEMA, "entries: {a: {task: t.a, every: 60, missed: never}}\n"),
    "enabled_as_text": (SCHEMA, "entries: {a: {task: t.a, every: 60, enabled: 'no'}}\n"),
    "defaults_with_an_entry_field": (SCHEMA, "defaults: {task: t.a}\nentries: {}\n"),
    "bad_queue_protocol": (SCHEMA, "queues: {q: {protocol: amqp}}\nentries: {}\n"),
    "cron_syntax": (VALIDATOR_ONLY, "entries: {a: {task: t.a, cron: '0 25 * * *'}}\n"),
    "h_range_backwards": (VALIDATOR_ONLY, "entries: {a: {task: t.a, cron: 'H(9-1) * * * *'}}\n"),
    "unknown_zone": (VALIDATOR_ONLY, "entries: {a: {task: t.a, every: 60, timezone: Mars/B}}\n"),
    "duration_text": (VALIDATOR_ONLY, "entries: {a: {task: t.a, every: soon}}\n"),
    "anchor_without_every": (
        VALIDATOR_ONLY,
        "entries: {a: {task: t.a, cron: '* * * * *', anchor: '2026-01-01T00:00:00'}}\n",
    ),
    "window_on_a_one_off": (
        VALIDATOR_ONLY,
        "entries: {a: {task: t.a, at: '2030-01-01T00:00:00', end: '2031-01-01T00:00:00'}}\n",
    ),
    "window_backwards": (
        VALIDATOR_ONLY,
        "entries: {a: {task: t.a, every: 60, start: '2030-01-02', end: '2030-01-01'}}\n",
    ),
    "jitter_longer_than_the_period": (
        VALIDATOR_ONLY,
        "entries: {a: {task: t.a, every: 60, jitter: 2m}}\n",
    ),
    "not_a_date": (VALIDATOR_ONLY, "entries: {a: {task: t.a, at: tomorrow}}\n"),
}


@pytest.mark.parametrize(("label", "text"), list(BROKEN.values()), ids=list(BROKEN))
def test_broken_files_are_refused_by_whom_their_label_says(
    label: str, text: str, tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError):
        load_config([str(tmp_path / "s.yaml")])
    assert bool(schema_errors(text)) == (label == SCHEMA)
