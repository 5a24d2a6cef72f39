"""Runtime entries' values (beatd.runtime_entries): validated by the file entries' own code, in
`beatd check`'s words, and stored with every field resolved at write time."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from beatd.cli import main
from beatd.config import load_config
from beatd.config.entries import EntryReader, build_entry
from beatd.config.fields import FIELDS, SCHEDULE_FIELDS
from beatd.config.model import AmqpTarget, QueueSettings
from beatd.runtime_entries import (
    ChangePage,
    EntryChange,
    FieldProblem,
    InvalidEntry,
    RuntimeEntry,
    page_of,
    resolve_entry,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def problems(name: str, fields: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidEntry) as refused:
        resolve_entry(name, fields, now=NOW)
    return str(refused.value).splitlines()


def checked(tmp_path: Path, entry: str) -> list[str]:
    """What `beatd check` says of a file holding one entry `bad` (its fields indented)."""
    path = tmp_path / "bad.yaml"
    path.write_text("entries:\n  bad:\n" + textwrap.indent(textwrap.dedent(entry), "    "))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    return result.stderr.splitlines()


def test_bad_fields_are_refused_in_the_words_beatd_check_uses_for_a_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    file_says = checked(
        tmp_path,
        """\
        task: reports.nightly
        every: 1h
        priority: 12
        kwargs: [1]
        prority: 3
        """,
    )
    assert file_says == [
        f"{path}:5:15: entry bad: field priority: expected a whole number 0-9 (9 highest), "
        "got number 12",
        f"{path}:6:13: entry bad: field kwargs: expected a mapping, got a list",
        f"{path}:7:5: entry bad: field prority: unknown field; did you mean 'priority'?",
    ]
    fields = {
        "task": "reports.nightly",
        "every": "1h",
        "priority": 12,
        "kwargs": [1],
        "prority": 3,
    }
    assert problems("bad", fields) == [
        "entry bad: field prority: unknown field; did you mean 'priority'?",
        "entry bad: field priority: expected a whole number 0-9 (9 highest), got number 12",
        "entry bad: field kwargs: expected a mapping, got a list",
    ]


def test_each_problem_names_its_entry_field_and_json_pointer() -> None:
    with pytest.raises(InvalidEntry) as refused:
        resolve_entry("Bad Name", {"every": "1h", "queue": "no spaces"}, now=NOW)
    assert refused.value.fields == [
        FieldProblem(
            "Bad Name",
            None,
            RULE,
        ),
        FieldProblem("Bad Name", None, "missing required field 'task'"),
        FieldProblem(
            "Bad Name",
            "queue",
            "'no spaces' is not a queue name (letters, digits and _ . : -)",
        ),
    ]
    assert [p.pointer for p in refused.value.fields] == ["", "", "/queue"]


RULE = (
    "entry names use letters, digits and _ . : / -, with no empty, '.' or '..' part between "
    "slashes (a run's id is NAME@SLOT)"
)


@pytest.mark.parametrize(
    "name", ["x/../dead", "x/..", "x/./y", "x/.", "a//b", "a/", "x/../../dead/delete-all"]
)
def test_a_name_with_an_empty_dot_or_dot_dot_part_is_refused(name: str) -> None:
    assert problems(name, {"task": "a.b", "every": "1h"}) == [f"entry {name}: {RULE}"]


@pytest.mark.parametrize("name", ["a.b/c..d", "x/.hidden", "x/..y/z...", "a/b/c", "v1.2:x_y-z"])
def test_dots_inside_a_part_are_allowed(name: str) -> None:
    assert resolve_entry(name, {"task": "a.b", "every": "1h"}, now=NOW).name == name


@pytest.mark.parametrize(
    ("at", "refused"),
    [
        pytest.param("2026-03-01T11:59:59Z", True, id="past"),
        pytest.param("2026-03-01T12:00:00Z", True, id="now"),
        pytest.param("2026-03-01T13:00:00+01:00", True, id="now_in_another_offset"),
        pytest.param("2026-03-01T12:00:01Z", False, id="future"),
    ],
)
def test_an_at_not_after_now_is_refused(at: str, refused: bool) -> None:
    fields = {"task": "reports.once", "at": at}
    if not refused:
        assert resolve_entry("once", fields, now=NOW).definition["at"] == at
        return
    moment = datetime.fromisoformat(at).isoformat()
    assert problems("once", fields) == [
        f"entry once: field at: {moment} is not after now: the entry would never run"
    ]


def test_every_field_is_resolved_at_write_time() -> None:
    resolved = resolve_entry(
        "r", {"task": "reports.nightly", "every": 30, "queue": "legacy"}, now=NOW,
        queues={"legacy": QueueSettings("legacy", "celery")},
    )  # fmt: skip
    assert resolved.definition == {
        "task": "reports.nightly",
        "every": 30,
        "queue": "legacy",
        "args": [],
        "kwargs": {},
        "description": "",
        "anchor": "1970-01-01T00:00:00+00:00",
        "timezone": "UTC",
        "protocol": "celery",  # the queue's at write time
        "priority": None,
        "headers": {},
        "enabled": True,
        "jitter": 0,
        "expires": None,
        "missed": "run_once",
        "max_catch_up": 100,
        "misfire_grace": 30,  # the smaller of the period and 60 s
        "deadline": None,
        "alert_after_failures": None,
        "overlap": "allow",
        "overlap_timeout": None,
        "pause_after_failures": None,
    }


def test_given_values_stay_and_dates_become_iso_text() -> None:
    fields = {
        "task": "reports.nightly",
        "cron": "0 7 * * *",
        "timezone": "Europe/Berlin",
        "protocol": "beatd",
        "start": datetime(2026, 4, 1, 0, 0),  # as a YAML flag reads an unquoted date-time
        "args": ("a", 1),
    }
    definition = resolve_entry(
        "r", fields, now=NOW, queues={"default": QueueSettings("default", "celery")}
    ).definition
    assert (definition["timezone"], definition["protocol"]) == ("Europe/Berlin", "beatd")
    assert (definition["start"], definition["args"]) == ("2026-04-01T00:00:00", ["a", 1])
    assert "anchor" not in definition and "end" not in definition and "every" not in definition


def test_a_stored_entry_builds_what_the_same_fields_in_a_file_build(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            entries:
              report:
                task: reports.nightly
                cron: "30 7 * * mon-fri"
                timezone: Europe/Berlin
                jitter: 5m
                kwargs: {region: eu}
                overlap: skip
            """
        )
    )
    from_file = load_config([path]).entries["report"]
    fields = {
        "task": "reports.nightly",
        "cron": "30 7 * * mon-fri",
        "timezone": "Europe/Berlin",
        "jitter": "5m",
        "kwargs": {"region": "eu"},
        "overlap": "skip",
    }
    resolved = resolve_entry("report", fields, now=NOW)
    stored = RuntimeEntry("report", resolved.definition, 1, NOW, "ops", NOW, "ops")
    built = stored.entry()
    assert built.source == "api"
    assert dataclasses.replace(built, source=from_file.source) == from_file


def test_a_page_of_the_feed_or_its_reload_signal() -> None:
    feed = [EntryChange(seq, "a", seq) for seq in (4, 5, 6)]

    def after(seen: int) -> list[EntryChange]:
        return [c for c in feed if c.seq > seen][:2]

    assert page_of(3, 6, 4, after) == ChangePage((feed[0], feed[1]), 5)
    assert page_of(6, 6, 4, after) == ChangePage((), 6)
    assert page_of(2, 6, 4, after) == ChangePage((), 6, reload=True)
    assert page_of(7, 6, 4, after) == ChangePage((), 6, reload=True)
    assert page_of(None, 6, 4, after) == ChangePage((), 6, reload=True)
    assert page_of(0, 0, 1, lambda _: []) == ChangePage((), 0)  # a feed never written


def test_times_in_the_audit_json_are_not_there_only_version_and_definition() -> None:
    resolved = resolve_entry("a", {"task": "t.a", "every": "1m"}, now=NOW)
    later = NOW + timedelta(hours=1)
    stored = RuntimeEntry("a", resolved.definition, 3, NOW, "x", later, "y", "r")
    assert stored.audit_json() == {"version": 3, "definition": dict(resolved.definition)}


def _example_fields() -> list[Any]:
    """Each field of the table with its documented example, on an entry it applies to."""
    schedules = {"every": {"every": "1h"}, "cron": {"cron": "0 7 * * *"}, "at": {}}
    cases = []
    for field in FIELDS:
        value = yaml.safe_load(f"v: {field.example}")["v"]
        base: dict[str, Any] = {"task": "reports.nightly"}
        if field.name not in SCHEDULE_FIELDS:
            base |= schedules["cron" if field.name in ("start", "end") else "every"]
        if field.name == "at":
            value = "2026-12-24T18:00:00"
        cases.append(pytest.param(field.name, {**base, field.name: value}, id=field.name))
    return cases


@pytest.mark.parametrize(("field", "fields"), _example_fields())
def test_each_fields_example_reads_back_as_the_entry_it_was_resolved_from(
    field: str, fields: dict[str, Any]
) -> None:
    resolved = resolve_entry("e", fields, now=NOW)
    assert json.loads(json.dumps(resolved.definition)) == resolved.definition  # JSON values
    stored = RuntimeEntry("e", resolved.definition, 1, NOW, "ops", NOW, "ops")
    reader = EntryReader("api", "e", fields, lambda _f, _k: (0, 0))
    direct = build_entry(reader, {}, "UTC", [])
    assert direct is not None
    assert stored.entry() == dataclasses.replace(direct, source="api")


def test_a_celery_entry_takes_its_queues_amqp_destination_at_write_time() -> None:
    rabbit = AmqpTarget("amqp://rabbit.example:5672/", "jobs")
    resolved = resolve_entry(
        "r", {"task": "reports.nightly", "every": 30, "queue": "legacy"}, now=NOW,
        queues={"legacy": QueueSettings("legacy", "celery", rabbit)},
    )  # fmt: skip
    assert resolved.definition["amqp"] == {"url": "amqp://rabbit.example:5672/", "exchange": "jobs"}
    stored = RuntimeEntry("r", resolved.definition, 1, NOW, "ops", NOW, "ops")
    assert stored.entry().amqp == rabbit
    plain = resolve_entry("p", {"task": "reports.nightly", "every": 30}, now=NOW)
    assert "amqp" not in plain.definition
    assert RuntimeEntry("p", plain.definition, 1, NOW, "ops", NOW, "ops").entry().amqp is None
