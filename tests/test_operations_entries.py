"""Runtime entries as every way in writes them (beatd.operations.entries), on SQLite and on a
real redis-server: the name and version rules, the messages `beatd check` uses, `set`'s merge,
the list with file entries, and export / import back into the same entries."""

from __future__ import annotations

import gc
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from beatd.backends import Backend, open_backend
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.config import load_config
from beatd.errors import ConfigError
from beatd.operations import entries as ops
from beatd.operations import entry_objects as shown
from beatd.operations.entries_files import FileDefinitions, export_texts, write_export
from beatd.runtime_entries import (
    FileEntryReadOnly,
    InvalidEntry,
    NameTaken,
    UnknownEntry,
    VersionMismatch,
    resolve_entry,
)
from tests.entries_backends import broker, redis_server, register_files, store

__all__ = ["broker", "redis_server", "store"]  # fixtures
WRITING = ops.Writing("ops@host")
NIGHTLY = {"task": "reports.nightly", "cron": "30 2 * * *", "kwargs": {"region": "eu"}}
RESOLVED = {
    "task": "reports.nightly",
    "args": [],
    "kwargs": {"region": "eu"},
    "description": "",
    "cron": "30 2 * * *",
    "timezone": "UTC",
    "queue": "default",
    "protocol": "beatd",
    "priority": None,
    "headers": {},
    "enabled": True,
    "jitter": 0,
    "expires": None,
    "missed": "run_once",
    "max_catch_up": 100,
    "misfire_grace": 60,
    "deadline": None,
    "alert_after_failures": None,
    "overlap": "allow",
    "overlap_timeout": None,
    "pause_after_failures": None,
}


def test_add_stores_every_field_resolved_and_who_wrote_it(store: Backend) -> None:
    added = shown.entry_object(ops.add(store, "nightly", NIGHTLY, WRITING))
    assert added == {
        "name": "nightly",
        "source": "api",
        "version": 1,
        "definition": RESOLVED,
        "created_at": added["created_at"],
        "created_by": "ops@host",
        "updated_at": added["created_at"],
        "updated_by": "ops@host",
    }
    assert shown.get_entry(store, None, "nightly") == added


def test_add_is_create_only(store: Backend) -> None:
    ops.add(store, "nightly", NIGHTLY, WRITING)
    with pytest.raises(VersionMismatch) as refused:
        ops.add(store, "nightly", {"task": "x.y", "every": "1h"}, WRITING)
    assert str(refused.value) == "entry nightly exists already (version 1); nothing was written"
    assert ops.refusal(refused.value) == ops.Refusal(
        409,
        [
            {
                "entry": "nightly",
                "field": "name",
                "message": str(refused.value),
                "pointer": "/name",
            }
        ],
    )


def test_a_file_entry_name_is_taken_and_its_definition_read_only(store: Backend) -> None:
    register_files(store, {"nightly": "schedules/app.yaml"})
    with pytest.raises(NameTaken) as taken:
        ops.add(store, "nightly", NIGHTLY, WRITING)
    assert str(taken.value) == (
        "entry nightly: the name is taken by a file entry in schedules/app.yaml; names are unique "
        "across schedule files and runtime entries: choose another name"
    )
    read_only = (
        "entry nightly is defined in schedules/app.yaml and cannot be changed or removed at "
        "runtime: edit schedules/app.yaml and reload (pause, resume, trigger and backfill work "
        "on it)"
    )
    for write in (
        lambda: ops.update(store, "nightly", {"every": "1h"}, WRITING),
        lambda: ops.replace(store, "nightly", NIGHTLY, WRITING),
        lambda: ops.remove(store, "nightly", "ops@host"),
    ):
        with pytest.raises(FileEntryReadOnly) as refused:
            write()
        assert str(refused.value) == read_only


def test_fields_are_refused_in_the_words_of_beatd_check(store: Backend) -> None:
    with pytest.raises(InvalidEntry) as refused:
        ops.add(store, "bad", {"task": "x.y", "every": "1h", "priority": 12, "qeue": "q"}, WRITING)
    assert str(refused.value) == (
        "entry bad: field qeue: unknown field; did you mean 'queue'?\n"
        "entry bad: field priority: expected a whole number 0-9 (9 highest), got number 12"
    )
    assert [p.pointer for p in refused.value.fields] == ["/qeue", "/priority"]
    with pytest.raises(InvalidEntry) as too_long:
        ops.add(store, "bad", {"task": "x.y", "every": "1h", "jitter": "2h"}, WRITING)
    assert str(too_long.value) == (
        "entry bad: field jitter: jitter 2h must be shorter than the schedule's period 1h"
    )
    assert shown.all_runtime_entries(store) == []


def test_args_and_kwargs_over_64_kib_are_refused_naming_the_larger(store: Backend) -> None:
    big = {"task": "x.y", "every": "1h", "args": [1], "kwargs": {"blob": "x" * 65_536}}
    with pytest.raises(ops.ArgumentsTooLarge) as refused:
        ops.add(store, "big", big, WRITING)
    assert str(refused.value) == (
        "entry big: field kwargs: args and kwargs take 65551 bytes as JSON, more than 64 KiB: "
        "pass a reference (an id, a key, a path) and let the task load the data"
    )
    answered = ops.refusal(refused.value)
    assert answered is not None and answered.status == 413


def test_set_changes_the_given_fields_and_a_new_schedule_drops_what_the_old_derived(
    store: Backend,
) -> None:
    ops.add(store, "poll", {"task": "x.y", "every": "10s", "queue": "fast"}, WRITING)
    assert ops.stored_entry(store, "poll").definition["misfire_grace"] == 10
    changed = ops.update(store, "poll", {"cron": "0 * * * *"}, ops.Writing("eve@host"))
    assert changed.version == 2
    assert changed.updated_by == "eve@host" and changed.created_by == "ops@host"
    definition = dict(changed.definition)
    assert (definition["cron"], definition["queue"], definition["misfire_grace"]) == (
        "0 * * * *",
        "fast",
        60,
    )
    assert "every" not in definition and "anchor" not in definition
    with pytest.raises(VersionMismatch) as stale:
        ops.update(store, "poll", {"queue": "slow"}, WRITING, expected=1)
    assert str(stale.value) == (
        "entry poll is at version 2, not the expected 1: it changed since it was read; nothing "
        "was written: read it again and retry"
    )


def test_replace_and_remove_with_an_expected_version(store: Backend) -> None:
    ops.add(store, "nightly", NIGHTLY, WRITING)
    replaced = ops.replace(store, "nightly", {"task": "a.b", "every": "1d"}, WRITING, 1)
    assert (replaced.version, replaced.definition["task"]) == (2, "a.b")
    with pytest.raises(VersionMismatch):
        ops.remove(store, "nightly", "ops@host", expected=1)
    assert ops.remove(store, "nightly", "ops@host", expected=2).version == 2
    with pytest.raises(UnknownEntry) as gone:
        ops.remove(store, "nightly", "ops@host")
    assert str(gone.value) == "no runtime entry nightly"
    actions = [(r.action, r.entry, r.by) for r in store.audit("nightly")]
    assert actions == [
        ("entry.remove", "nightly", "ops@host"),
        ("entry.set", "nightly", "ops@host"),
        ("entry.add", "nightly", "ops@host"),
    ]


def test_add_many_is_all_or_nothing_and_names_every_problem(store: Backend) -> None:
    batch = [
        ("a", {"task": "x.y", "every": "1h"}),
        ("b", {"task": "x.y", "every": "soon"}),
        ("a", {"task": "x.y", "every": "2h"}),
    ]
    with pytest.raises(InvalidEntry) as refused:
        ops.add_many(store, batch, WRITING)
    assert str(refused.value) == (
        "entry a: field name: the name is given twice in one batch; nothing was written\n"
        f"entry b: field every: {_every_problem('soon')}"
    )
    assert shown.all_runtime_entries(store) == []
    added = ops.add_many(store, [*batch[:1], ("b", {"task": "x.y", "every": "2h"})], WRITING)
    assert [(e.name, e.version) for e in added] == [("a", 1), ("b", 2)]  # their changes' seqs


class _Watching:
    """A backend that notes whether the cyclic collector ran while a batch was written."""

    def __init__(self, store: Backend) -> None:
        self.store, self.collecting = store, [gc.isenabled()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put_entries(self, *args: Any, **kwargs: Any) -> Any:
        self.collecting.append(gc.isenabled())
        return self.store.put_entries(*args, **kwargs)


def test_add_many_pauses_the_cyclic_collector_and_leaves_it_as_it_found_it(
    store: Backend,
) -> None:
    watching = _Watching(store)
    ops.add_many(watching, [("a", {"task": "x.y", "every": "1h"})], WRITING)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntry):
        ops.add_many(store, [("b", {"task": "x.y", "every": "soon"})], WRITING)
    assert watching.collecting == [True, False]
    assert gc.isenabled()
    gc.disable()
    try:
        ops.add_many(store, [("c", {"task": "x.y", "every": "1h"})], WRITING)
        assert not gc.isenabled()  # off before: not turned on
    finally:
        gc.enable()


def test_overlapping_pauses_of_the_collector_end_with_the_last() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait(5)
        with ops.collector_paused():
            second_in.set()
            first_out.wait(5)
            seen.append(gc.isenabled())  # the first has ended: still paused for this one

    thread = threading.Thread(target=second)
    thread.start()
    with ops.collector_paused():
        first_in.set()
        second_in.wait(5)
    first_out.set()
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled()


def _every_problem(text: str) -> str:
    """What `beatd check` says of `every: TEXT` in a file (its own words, read from it)."""
    return _check_problem({"task": "x.y", "every": text}).split("field every: ", 1)[1]


def _check_problem(fields: dict[str, Any]) -> str:
    try:
        resolve_entry("b", fields, now=datetime.now(UTC))
    except InvalidEntry as exc:
        return str(exc)
    raise AssertionError("no problem")


def test_list_pages_runtime_and_file_entries_by_name(store: Backend, tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(
        "entries:\n  b-file:\n    task: x.y\n    every: 1h\n  d-file:\n    task: x.y\n"
        "    cron: '0 3 * * *'\n"
    )
    config = load_config([str(tmp_path / "app.yaml")])
    ops.add_many(store, [(n, {"task": "x.y", "every": "5m"}) for n in ("a", "c", "e")], WRITING)
    first = shown.list_entries(store, config, limit=3)
    assert [(e["name"], e["source"]) for e in first.entries] == [
        ("a", "api"),
        ("b-file", str(tmp_path / "app.yaml")),
        ("c", "api"),
    ]
    assert first.next_after == "c"
    rest = shown.list_entries(store, config, after="c", limit=3)
    assert [e["name"] for e in rest.entries] == ["d-file", "e"]
    assert rest.next_after is None
    files = shown.list_entries(store, config, source="file").entries
    assert files[1]["definition"]["cron"] == "0 3 * * *" and files[1]["version"] is None
    assert [e["name"] for e in shown.list_entries(store, config, source="api").entries] == [
        "a",
        "c",
        "e",
    ]


def test_export_is_accepted_by_check_and_adds_back_the_same_entries(
    store: Backend, tmp_path: Path
) -> None:
    definitions = [(f"tenant-{i:03d}", {**NIGHTLY, "kwargs": {"tenant": i}}) for i in range(40)]
    definitions.append(
        ("once", {"task": "x.y", "at": "2099-01-01T09:00:00", "timezone": "Asia/Tokyo"})
    )
    ops.add_many(store, definitions, WRITING)
    exported = shown.all_runtime_entries(store)
    paths = write_export(exported, tmp_path / "out", max_bytes=8_000)
    assert len(paths) > 1
    assert all(path.stat().st_size <= 8_000 for path in paths)
    assert sorted(load_config([str(tmp_path / "out")]).entries) == sorted(n for n, _ in definitions)
    other = open_backend(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        for path in paths:
            found = FileDefinitions(str(path))
            ops.add_many(other, list(found.items()), WRITING)
        again = {e.name: dict(e.definition) for e in shown.all_runtime_entries(other)}
    finally:
        other.close()
    assert again == {e.name: dict(e.definition) for e in exported}


def test_an_empty_export_is_still_a_schedule_file() -> None:
    (text,) = export_texts([])
    assert text.endswith("entries: {}\n")


def test_from_yaml_problems_are_located_in_the_file(store: Backend, tmp_path: Path) -> None:
    path = tmp_path / "new.yaml"
    path.write_text(
        "defaults:\n  queue: reports\nentries:\n  ok:\n    task: x.y\n    every: 1h\n"
        "  late:\n    task: x.y\n    at: '2001-01-01T00:00:00'\n"
    )
    found = FileDefinitions(str(path))
    assert found["ok"]["queue"] == "reports"
    with pytest.raises(InvalidEntry) as refused:
        ops.add_many(store, list(found.items()), WRITING)
    assert str(found.located(refused.value)) == (
        f"{path}:9:9: entry late: field at: 2001-01-01T00:00:00+00:00 is not after now: the "
        "entry would never run"
    )
    path.write_text("entries:\n  bad:\n    task: x.y\n    every: 1h\n    colour: red\n")
    with pytest.raises(ConfigError) as unread:
        FileDefinitions(str(path))
    assert str(unread.value) == (f"{path}:5:5: entry bad: field colour: unknown field")


def test_next_runs_of_a_runtime_entry(store: Backend) -> None:
    ops.add(store, "nightly", NIGHTLY, WRITING)
    now = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    assert shown.next_runs(store, None, "nightly", 2, now) == [
        {"slot": "2026-12-06T02:30:00Z", "dst": None},
        {"slot": "2026-12-07T02:30:00Z", "dst": None},
    ]
    with pytest.raises(UnknownEntry):
        shown.next_runs(store, None, "nope", 2, now)


def test_a_write_whose_reply_was_lost_is_repeated_and_written_once(store: Backend) -> None:
    plan = FaultPlan()
    faulty: Any = FaultyBackend(store, plan)
    plan.inject("put_entry", Fault.FAIL_AFTER_WRITE)
    plan.inject("put_entries", Fault.FAIL_AFTER_WRITE)
    assert ops.add(faulty, "nightly", NIGHTLY, WRITING).version == 1
    plan.inject("put_entry", Fault.FAIL_BEFORE_WRITE)
    assert ops.update(faulty, "nightly", {"queue": "q"}, WRITING).version == 2
    added = ops.add_many(faulty, [("a", NIGHTLY), ("b", NIGHTLY)], WRITING)
    assert [(e.name, e.version) for e in added] == [("a", 3), ("b", 4)]  # their changes' seqs
    assert [name for name, _ in plan.injected] == ["put_entry", "put_entry", "put_entries"]
    assert sorted((r.action, r.entry) for r in store.audit()) == [
        ("entry.add", "a"),
        ("entry.add", "b"),
        ("entry.add", "nightly"),
        ("entry.set", "nightly"),
    ]


def test_entries_text_is_the_entry_objects_as_json_whether_the_put_made_the_text_or_not(
    store: Backend,
) -> None:
    """A batch's answer splices each definition's text, made once for the backend's write
    (`ResolvedEntry.text`), into its entry object: the same text json.dumps makes of them."""
    odd = {
        "task": "reports.odd",
        "every": "1.5h",
        "args": ["ünï", 1.25, None, True],
        "kwargs": {"quote": 'say "hi"\n', "nested": {"x": [1, {"y": "→"}]}},
        "description": "naïve \u2028 line",
        "headers": {"h": "v"},
        "priority": 3,
        "expires": 0.5,
    }
    once = {"task": "a.b", "at": "2099-01-01T00:00:00Z"}
    definitions = [("nightly", NIGHTLY), ("odd/name", odd), ("once", once)]
    written = ops.add_many(store, definitions, WRITING)
    assert all(entry.text is not None for entry in written)
    read = [store.get_entry(name) for name, _ in definitions]
    assert read == written  # the text is no part of an entry's value
    for entries in (written, read, []):
        expected = json.dumps(
            {"entries": [shown.entry_object(e) for e in entries]}, ensure_ascii=False
        )
        assert shown.entries_text(entries) == expected
