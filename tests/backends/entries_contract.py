"""The runtime entries' contract (`RuntimeEntries` in beatd/backends/base.py, issue 18).

`EntriesContract` is a mixin `BackendContract` includes, so every backend's contract class runs
it, through the `entries` fixture: the backend as its `RuntimeEntries` role.

Times the backend takes from its own clock are checked to lie between two readings of
`server_time()` taken around the call, as in the history's contract.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from beatd.backends.base import Backend, RuntimeEntries
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.controls import AuditRecord, new_audit_id
from beatd.errors import BackendError, LeaseLost, NotApplied, OutcomeUnknown
from beatd.runtime_entries import (
    ChangePage,
    EntryChange,
    FileEntryReadOnly,
    NameTaken,
    ResolvedEntry,
    RuntimeEntry,
    UnknownEntry,
    VersionMismatch,
    resolve_entry,
)
from tests.backends.history_contract import lead, window, within

BY = "ops@host"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def defined(name: str, **fields: Any) -> ResolvedEntry:
    return resolve_entry(name, {"task": "reports.nightly", "every": "1h", **fields}, now=NOW)


def head(entries: RuntimeEntries) -> int:
    page = entries.entry_changes(None)
    assert page.reload and page.changes == ()
    return page.cursor


class EntriesContract:
    @pytest.fixture
    def entries(self, backend: Backend) -> RuntimeEntries:
        assert isinstance(backend, RuntimeEntries)
        return backend

    # --- writes ---------------------------------------------------------------------------

    def test_a_put_creates_the_entry_at_its_change_records_seq_by_the_backends_clock(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        cursor = head(entries)
        with window(backend) as bounds:
            stored = entries.put_entry(defined("a"), BY)
        assert (stored.name, stored.version, stored.created_by, stored.updated_by) == (
            "a",
            cursor + 1,
            BY,
            BY,
        )
        assert entries.entry_changes(cursor).changes == (EntryChange(cursor + 1, "a", cursor + 1),)
        assert stored.definition == defined("a").definition
        assert within(stored.created_at, bounds) and stored.updated_at == stored.created_at
        assert stored.source == "api"
        assert entries.get_entry("a") == stored
        assert entries.get_entry("b") is None

    def test_a_put_replaces_at_the_expected_version_and_keeps_its_creation(
        self, entries: RuntimeEntries
    ) -> None:
        first = entries.put_entry(defined("a"), "first@host")
        second = entries.put_entry(defined("a", queue="reports"), BY, expected_version=1)
        assert second.version == 2 and second.definition["queue"] == "reports"
        assert (second.created_at, second.created_by) == (first.created_at, "first@host")
        assert second.updated_by == BY
        third = entries.put_entry(defined("a"), BY)  # unconditional
        assert third.version == 3
        assert entries.get_entry("a") == third

    def test_a_put_at_another_version_is_refused_naming_both_and_writes_nothing(
        self, entries: RuntimeEntries
    ) -> None:
        entries.put_entry(defined("a"), BY)
        stored = entries.put_entry(defined("a"), BY)
        cursor = head(entries)
        with pytest.raises(VersionMismatch) as refused:
            entries.put_entry(defined("a", queue="q"), BY, expected_version=1)
        assert (refused.value.expected, refused.value.actual) == (1, 2)
        assert str(refused.value) == (
            "entry a is at version 2, not the expected 1: it changed since it was read; "
            "nothing was written: read it again and retry"
        )
        with pytest.raises(VersionMismatch) as exists:
            entries.put_entry(defined("a"), BY, expected_version=0)
        assert str(exists.value) == "entry a exists already (version 2); nothing was written"
        with pytest.raises(VersionMismatch) as absent:
            entries.put_entry(defined("b"), BY, expected_version=4)
        assert str(absent.value) == (
            "entry b does not exist (expected version 4); nothing was written"
        )
        assert (absent.value.expected, absent.value.actual) == (4, 0)
        assert entries.get_entry("a") == stored and entries.get_entry("b") is None
        assert entries.entry_changes(cursor) == ChangePage((), cursor)

    def test_a_repeated_request_is_answered_with_what_it_stored(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        cursor = head(entries)
        stored = entries.put_entry(defined("a"), BY, expected_version=0, request_id="r1")
        assert entries.put_entry(defined("a"), BY, expected_version=0, request_id="r1") == stored
        assert entries.entry_changes(cursor).changes == (EntryChange(cursor + 1, "a", 1),)
        assert [r.action for r in backend.audit("a")] == ["entry.add"]
        again = entries.put_entry(defined("a"), BY, request_id="r2")
        assert again.version == 2 and again.request_id == "r2"

    def test_a_batch_is_written_whole_in_order_with_a_record_each(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        b = entries.put_entry(defined("b"), BY)
        cursor = head(entries)
        stored = entries.put_entries([defined("c"), defined("b", queue="q"), defined("a")], BY)
        c, a = cursor + 1, cursor + 3  # created: the seq of its change record
        assert [(e.name, e.version) for e in stored] == [("c", c), ("b", b.version + 1), ("a", a)]
        assert entries.list_entries() == sorted(stored, key=lambda e: e.name)
        assert entries.entry_changes(cursor).changes == (
            EntryChange(cursor + 1, "c", c),
            EntryChange(cursor + 2, "b", b.version + 1),
            EntryChange(cursor + 3, "a", a),
        )
        assert sorted(r.action for r in backend.audit()) == [
            "entry.add",
            "entry.add",
            "entry.add",
            "entry.set",
        ]

    def test_a_batch_with_one_refusal_writes_nothing(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        lease = lead(backend)
        entries.register_file_entries(lease, {"nightly": "app.yaml"})
        b = entries.put_entry(defined("b"), BY)
        cursor = head(entries)
        with pytest.raises(VersionMismatch) as exists:
            entries.put_entries([defined("a"), defined("b")], BY, create_only=True)
        assert str(exists.value) == (
            f"entry b exists already (version {b.version}); nothing was written"
        )
        with pytest.raises(NameTaken) as taken:
            entries.put_entries([defined("a"), defined("nightly")], BY)
        assert taken.value.path == "app.yaml"
        with pytest.raises(BackendError) as twice:
            entries.put_entries([defined("a"), defined("c"), defined("a")], BY)
        assert str(twice.value) == "entries a are given twice; nothing was written"
        assert [e.name for e in entries.list_entries()] == ["b"]
        assert entries.entry_changes(cursor) == ChangePage((), cursor)

    def test_a_batch_repeated_with_its_request_id_writes_nothing_twice(
        self, entries: RuntimeEntries, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        cursor = head(entries)
        batch = [defined("a"), defined("b")]
        plan.inject("put_entries", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.put_entries(batch, BY, create_only=True, request_id="bulk-1")
        stored = faulty.put_entries(batch, BY, create_only=True, request_id="bulk-1")
        assert [(e.name, e.version) for e in stored] == [("a", cursor + 1), ("b", cursor + 2)]
        assert len(entries.entry_changes(cursor).changes) == 2

    def test_a_remove_returns_the_entry_and_a_second_finds_none(
        self, entries: RuntimeEntries
    ) -> None:
        stored = entries.put_entry(defined("a"), BY)
        entries.put_entry(defined("b"), BY)
        with pytest.raises(VersionMismatch) as refused:
            entries.remove_entry("a", BY, expected_version=stored.version + 1)
        assert (refused.value.expected, refused.value.actual) == (
            stored.version + 1,
            stored.version,
        )
        assert entries.remove_entry("a", BY, expected_version=stored.version) == stored
        assert entries.get_entry("a") is None
        assert [e.name for e in entries.list_entries()] == ["b"]
        with pytest.raises(UnknownEntry) as gone:
            entries.remove_entry("a", BY)
        assert str(gone.value) == "no runtime entry a"
        cursor = head(entries)
        again = entries.put_entry(defined("a"), BY)  # a new life, at a version never seen
        assert again.version == cursor + 1 and again.version > stored.version

    def test_a_write_expecting_a_removed_entrys_version_never_matches_its_successor(
        self, entries: RuntimeEntries
    ) -> None:
        old = entries.put_entry(defined("a"), BY)
        entries.remove_entry("a", BY)
        new = entries.put_entry(defined("a"), BY)
        with pytest.raises(VersionMismatch) as refused:
            entries.put_entry(defined("a", queue="q"), BY, expected_version=old.version)
        assert (refused.value.expected, refused.value.actual) == (old.version, new.version)
        with pytest.raises(VersionMismatch):
            entries.remove_entry("a", BY, expected_version=old.version)
        assert entries.get_entry("a") == new

    def test_entries_are_listed_by_name_in_pages(self, entries: RuntimeEntries) -> None:
        for name in ("c", "a", "e", "b", "d"):
            entries.put_entry(defined(name), BY)
        assert [e.name for e in entries.list_entries(limit=2)] == ["a", "b"]
        assert [e.name for e in entries.list_entries("b", 2)] == ["c", "d"]
        assert [e.name for e in entries.list_entries("d", 2)] == ["e"]
        assert entries.list_entries("e") == []
        assert [e.name for e in entries.list_entries("bb")] == ["c", "d", "e"]

    def test_entries_are_read_by_name_at_once_each_as_get_entry_reads_it(
        self, entries: RuntimeEntries
    ) -> None:
        stored = {n: entries.put_entry(defined(n), BY) for n in ("a", "b", "c")}
        stored["b"] = entries.put_entry(defined("b", queue="q"), BY)
        entries.remove_entry("c", BY)
        read = entries.get_entries(["c", "b", "never", "a", "b"])
        assert read == {"a": stored["a"], "b": stored["b"]}
        assert read == {n: e for n in ("a", "b") if (e := entries.get_entry(n)) is not None}
        assert entries.get_entries([]) == {}

    def test_a_read_of_more_names_than_a_step_reads_them_all(self, entries: RuntimeEntries) -> None:
        """A backend may read a long list in several steps (Redis: `get_step` a script)."""
        first, last = entries.put_entry(defined("a"), BY), entries.put_entry(defined("z"), BY)
        names = ["a", *(f"absent-{i:05d}" for i in range(5_000)), "z"]
        assert entries.get_entries(names) == {"a": first, "z": last}

    # --- names of file entries ------------------------------------------------------------

    def test_a_name_of_a_file_entry_is_refused_even_when_registered_after_the_read(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        lease = lead(backend)
        assert entries.get_entry("nightly") is None  # what an API handler reads first
        assert entries.register_file_entries(lease, {"nightly": "schedules/app.yaml"}) == []
        cursor = head(entries)
        with pytest.raises(NameTaken) as taken:
            entries.put_entry(defined("nightly"), BY)
        assert str(taken.value) == (
            "entry nightly: the name is taken by a file entry in schedules/app.yaml; names are "
            "unique across schedule files and runtime entries: choose another name"
        )
        with pytest.raises(NameTaken):
            entries.put_entry(defined("nightly"), BY, expected_version=0)
        with pytest.raises(FileEntryReadOnly) as read_only:
            entries.put_entry(defined("nightly"), BY, expected_version=3)
        read_only_message = (
            "entry nightly is defined in schedules/app.yaml and cannot be changed or removed "
            "at runtime: edit schedules/app.yaml and reload (pause, resume, trigger and "
            "backfill work on it)"
        )
        assert str(read_only.value) == read_only_message
        with pytest.raises(FileEntryReadOnly) as removal:
            entries.remove_entry("nightly", BY)
        assert str(removal.value) == read_only_message
        assert entries.get_entry("nightly") is None
        assert entries.entry_changes(cursor) == ChangePage((), cursor)
        assert backend.audit("nightly") == []

    def test_registering_names_runtime_entries_use_registers_nothing_and_returns_them(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        lease = lead(backend)
        assert entries.register_file_entries(lease, {"old": "a.yaml"}) == []
        entries.put_entry(defined("b"), BY)
        entries.put_entry(defined("a"), BY)
        files = {"a": "x.yaml", "b": "x.yaml", "c": "y.yaml"}
        assert entries.register_file_entries(lease, files) == ["a", "b"]
        assert entries.file_entries() == {"old": "a.yaml"}  # the last good set stays
        assert entries.register_file_entries(lease, {"c": "y.yaml"}) == []
        assert entries.register_file_entries(lease, {"c": "y.yaml"}) == []  # idempotent
        assert entries.file_entries() == {"c": "y.yaml"}
        entries.put_entry(defined("old"), BY)  # no longer a file entry's

    def test_registering_file_names_needs_the_lease(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        lease = lead(backend)
        backend.release_lease(lease)
        with pytest.raises(LeaseLost):
            entries.register_file_entries(lease, {"a": "x.yaml"})
        assert entries.file_entries() == {}

    # --- the change feed ------------------------------------------------------------------

    def test_the_feed_gives_every_change_in_order_from_a_cursor(
        self, entries: RuntimeEntries
    ) -> None:
        start = head(entries)
        entries.put_entry(defined("a"), BY)
        entries.put_entry(defined("b"), BY)
        entries.put_entry(defined("a"), BY)
        entries.remove_entry("b", BY)
        expected = (  # created at its change record's seq, then one more per change
            EntryChange(start + 1, "a", start + 1),
            EntryChange(start + 2, "b", start + 2),
            EntryChange(start + 3, "a", start + 2),
            EntryChange(start + 4, "b", None),
        )
        assert entries.entry_changes(start) == ChangePage(expected, start + 4)
        first = entries.entry_changes(start, limit=3)
        assert first == ChangePage(expected[:3], start + 3)
        assert entries.entry_changes(first.cursor) == ChangePage(expected[3:], start + 4)
        assert entries.entry_changes(start + 4) == ChangePage((), start + 4)
        assert expected[3].removed and not expected[0].removed
        assert head(entries) == start + 4

    def test_a_cursor_older_than_the_feed_keeps_or_past_its_head_says_reload(
        self, entries: RuntimeEntries
    ) -> None:
        entries.feed_retention = 3
        start = head(entries)
        for version in range(5):
            entries.put_entry(defined("a", description=str(version)), BY)
        last = start + 5
        assert entries.entry_changes(start) == ChangePage((), last, reload=True)
        assert entries.entry_changes(start + 1) == ChangePage((), last, reload=True)
        kept = entries.entry_changes(start + 2)  # the three kept records follow it
        assert kept == ChangePage(
            tuple(EntryChange(start + n, "a", n) for n in (3, 4, 5)), last, reload=False
        )
        assert entries.entry_changes(last + 1) == ChangePage((), last, reload=True)

    def test_a_batch_of_more_changes_than_the_feed_keeps_leaves_its_newest_records(
        self, entries: RuntimeEntries
    ) -> None:
        entries.feed_retention = 3
        start = head(entries)
        entries.put_entries([defined(f"b{n}") for n in range(5)], BY)
        last = start + 5
        kept = tuple(EntryChange(start + n, f"b{n - 1}", start + n) for n in (3, 4, 5))
        assert entries.entry_changes(start + 2) == ChangePage(kept, last)
        assert entries.entry_changes(start + 1) == ChangePage((), last, reload=True)

    # --- audit and migration --------------------------------------------------------------

    def test_each_write_has_its_audit_record_with_before_and_after(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        with window(backend) as bounds:
            first = entries.put_entry(defined("a"), BY, request_id="r1")
            second = entries.put_entry(defined("a", queue="q"), "other@host")
            entries.remove_entry("a", BY)
        records = sorted(backend.audit("a"), key=lambda r: r.action)
        assert [(r.action, r.by, r.entry) for r in records] == [
            ("entry.add", BY, "a"),
            ("entry.remove", BY, "a"),
            ("entry.set", "other@host", "a"),
        ]
        add, remove, change = records
        assert all(within(r.at, bounds) for r in records)
        assert (add.before, add.after) == (None, first.audit_json())
        assert add.detail == {"request_id": "r1", "source": "api"}
        assert (change.before, change.after) == (first.audit_json(), second.audit_json())
        assert (remove.before, remove.after) == (second.audit_json(), None)
        assert first.audit_json() == {
            "version": first.version,
            "definition": defined("a").definition,
        }

    def test_a_read_of_the_controls_records_leaves_the_entries_changes_out(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        """What the leader reads for triggers and backfills (beatd.steering): an import's
        records by the 100,000 must not fill it."""
        [paused] = backend.pause(["a"], "r", None, BY)
        entries.put_entries([defined("a"), defined("b")], BY)
        entries.remove_entry("b", BY)
        backend.record_audit(AuditRecord(new_audit_id(), paused.at, "requeue", None, BY, {}))
        assert {r.action for r in backend.audit()} == {
            "pause", "entry.add", "entry.remove", "requeue",
        }  # fmt: skip
        mine = backend.audit(controls_only=True)
        assert sorted(r.action for r in mine) == ["pause", "requeue"]
        assert [r.action for r in backend.audit("a", controls_only=True)] == ["pause"]
        assert backend.audit(since=paused.at, limit=1, controls_only=True)[0].action in (
            "pause", "requeue",
        )  # fmt: skip

    def test_imported_entries_keep_their_versions_and_are_never_imported_twice(
        self, entries: RuntimeEntries, backend: Backend
    ) -> None:
        entries.put_entry(defined("b"), BY)
        created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
        updated = datetime(2026, 2, 2, 3, 4, 5, tzinfo=UTC)
        copied = [
            RuntimeEntry("a", defined("a").definition, 7, created, "x@h", updated, "y@h", "r"),
            RuntimeEntry("b", defined("b", queue="q").definition, 3, created, "x", created, "x"),
        ]
        cursor = head(entries)
        assert entries.import_entries(copied) == 1
        assert entries.get_entry("a") == copied[0]
        assert entries.get_entry("b") != copied[1]
        # its record follows its version: no entry created later takes version 7
        assert entries.entry_changes(cursor).changes == (EntryChange(8, "a", 7),)
        assert entries.import_entries(copied) == 0
        assert [r.action for r in backend.audit("a")] == []
        entries.remove_entry("a", BY)
        assert entries.put_entry(defined("a"), BY).version == 10

    def test_a_stored_entry_reads_back_as_resolved(self, entries: RuntimeEntries) -> None:
        fields = {"task": "reports.nightly", "cron": "30 7 * * mon-fri", "kwargs": {"é": [1.5]}}
        resolved = resolve_entry("a", {**fields, "timezone": "Europe/Berlin"}, now=NOW)
        entries.put_entry(resolved, BY)
        stored = entries.get_entry("a")
        assert stored is not None and stored.definition == resolved.definition
        entry = stored.entry()
        assert (entry.name, entry.timezone, entry.source) == ("a", "Europe/Berlin", "api")
        assert entry.kwargs == {"é": [1.5]}

    # --- faults ---------------------------------------------------------------------------

    def test_a_put_whose_reply_was_lost_is_retried_with_its_request_id_as_one_write(
        self, entries: RuntimeEntries, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        cursor = head(entries)
        plan.inject("put_entry", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.put_entry(defined("a"), BY, expected_version=0, request_id="r1")
        stored = faulty.put_entry(defined("a"), BY, expected_version=0, request_id="r1")
        assert stored.version == 1 and entries.get_entry("a") == stored
        assert entries.entry_changes(cursor).changes == (EntryChange(cursor + 1, "a", 1),)
        assert [r.action for r in backend.audit("a")] == ["entry.add"]

    def test_writes_that_failed_before_writing_wrote_nothing(
        self, entries: RuntimeEntries, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        entries.put_entry(defined("a"), BY)
        cursor = head(entries)
        plan.inject("put_entry", Fault.FAIL_BEFORE_WRITE)
        plan.inject("remove_entry", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            faulty.put_entry(defined("b"), BY)
        with pytest.raises(NotApplied):
            faulty.remove_entry("a", BY)
        assert [e.name for e in entries.list_entries()] == ["a"]
        assert entries.entry_changes(cursor) == ChangePage((), cursor)

    def test_a_removal_whose_reply_was_lost_finds_the_entry_gone_when_repeated(
        self, entries: RuntimeEntries, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        entries.put_entry(defined("a"), BY)
        plan.inject("remove_entry", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.remove_entry("a", BY)
        with pytest.raises(UnknownEntry):
            faulty.remove_entry("a", BY)

    def test_file_names_registered_by_a_leader_that_lost_its_lease_are_refused(
        self, entries: RuntimeEntries, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease = lead(backend)
        plan.inject("register_file_entries", Fault.LOSE_LEASE)
        with pytest.raises(LeaseLost):
            faulty.register_file_entries(lease, {"a": "x.yaml"})
        assert entries.file_entries() == {}
