"""SQLite writes a batch of runtime entries in steps (review18), as Redis does: one transaction
per `put_step` entries, so that no transaction holds the file's one writer for long (100,000
entries in one transaction held it about 5 s, the leader's lease renewal waiting out its busy
timeout), every entry checked before the first step so that a refusal writes nothing. The
contract (tests/backends/entries_contract.py) runs with the default step; these tests make the
steps small."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from beatd.backends.sqlite import SQLiteBackend
from beatd.backends.sqlite_turns import turns_of
from beatd.runtime_entries import (
    EntryChange,
    EntryPut,
    NameTaken,
    PartlyWritten,
    ResolvedEntry,
    RuntimeEntry,
    VersionMismatch,
    resolve_entry,
)
from tests.backends.history_contract import lead
from tests.waiting import wait_for

BY = "ops@host"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def defined(name: str) -> ResolvedEntry:
    return resolve_entry(name, {"task": "reports.nightly", "every": "1h"}, now=NOW)


def batch(*names: str) -> list[ResolvedEntry]:
    return [defined(n) for n in names]


class Counted(SQLiteBackend):
    """Counts the write transactions of a batch's steps; between two steps, another process's
    write (the leader's commit) takes the file's writer at once (`between`)."""

    steps = 0
    between: Callable[[Counted], None] | None = None

    def _put_step(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], by: str, request_id: str | None
    ) -> list[RuntimeEntry]:
        self.steps += 1
        if self.steps == 2 and self.between is not None:
            db.execute("ROLLBACK")  # the step's transaction starts after the other write
            self.between(self)
            db.execute("BEGIN IMMEDIATE")
        return super()._put_step(db, puts, by, request_id)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Counted]]:
    made: list[Counted] = []

    def backend(step: int = 2) -> Counted:
        made.append(Counted(tmp_path / "beatd.db"))
        made[-1].put_step = step
        return made[-1]

    yield backend
    for each in made:
        each.close()


def test_a_batch_of_many_steps_is_written_whole_in_order_one_transaction_a_step(
    make: Callable[..., Counted],
) -> None:
    backend = make(step=2)
    backend.put_entry(defined("warm-up"), BY)
    cursor = backend.entry_changes(None).cursor
    backend.steps = 0
    stored = backend.put_entries(batch("e", "d", "c", "b", "a"), BY, create_only=True)
    assert backend.steps == 3
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("edcba", start=1)
    ]
    assert backend.entry_changes(cursor).changes == tuple(
        EntryChange(cursor + i, name, cursor + i) for i, name in enumerate("edcba", start=1)
    )
    assert len([r for r in backend.audit(limit=10) if r.action == "entry.add"]) == 6


def test_a_refusal_of_an_entry_in_a_later_step_writes_nothing(
    make: Callable[..., Counted],
) -> None:
    backend = make(step=2)
    backend.register_file_entries(lead(backend), {"nightly": "app.yaml"})
    e = backend.put_entry(defined("e"), BY)
    cursor = backend.entry_changes(None).cursor
    with pytest.raises(VersionMismatch) as exists:
        backend.put_entries(batch("a", "b", "c", "d", "e"), BY, create_only=True)
    assert str(exists.value) == f"entry e exists already (version {e.version}); nothing was written"
    with pytest.raises(NameTaken):
        backend.put_entries(batch("a", "b", "c", "nightly"), BY)
    assert [x.name for x in backend.list_entries()] == ["e"]
    assert backend.entry_changes(cursor).changes == ()


def test_another_writer_gets_the_file_between_steps_and_a_name_it_took_is_partly_written(
    make: Callable[..., Counted], tmp_path: Path
) -> None:
    backend = make(step=2)

    def other_writer(_: Counted) -> None:
        with sqlite3.connect(tmp_path / "beatd.db", timeout=0) as other:  # no wait at all
            other.execute("BEGIN IMMEDIATE")
        other.close()
        someone = SQLiteBackend(tmp_path / "beatd.db")
        try:
            someone.put_entry(defined("d"), "someone@else")
        finally:
            someone.close()

    backend.between = other_writer
    with pytest.raises(PartlyWritten) as partly:
        backend.put_entries(batch("a", "b", "c", "d", "e"), BY, create_only=True)
    taken = backend.get_entry("d")
    assert taken is not None
    assert str(partly.value) == (
        f"entry d exists already (version {taken.version}); nothing was written; 2 of the "
        "batch's 5 entries were written before it (a to b), the other 3 were not: add those again"
    )
    assert partly.value.written == ["a", "b"]
    assert [x.name for x in backend.list_entries()] == ["a", "b", "d"]


def test_a_repeat_with_the_request_id_completes_a_batch_answering_the_written_as_stored(
    make: Callable[..., Counted],
) -> None:
    backend = make(step=2)
    cursor = backend.entry_changes(None).cursor
    first = backend.put_entries(batch("a", "b"), BY, create_only=True, request_id="bulk-1")
    stored = backend.put_entries(batch("a", "b", "c"), BY, create_only=True, request_id="bulk-1")
    assert stored[:2] == first
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("abc", start=1)
    ]
    assert len(backend.entry_changes(cursor).changes) == 3


class Held(SQLiteBackend):
    """Holds the file's writer in its batch's first step until `release` is set; each step
    notes whether the lease was taken before it began."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.inside, self.release = threading.Event(), threading.Event()
        self.leased_before: list[bool] = []

    def _put_step(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], by: str, request_id: str | None
    ) -> list[RuntimeEntry]:
        self.leased_before.append(db.execute("SELECT count(*) FROM lease").fetchone()[0] > 0)
        if len(self.leased_before) == 1:
            self.inside.set()
            self.release.wait(30)
        return super()._put_step(db, puts, by, request_id)


def _in_thread(backend: SQLiteBackend, work: Callable[[], object]) -> threading.Thread:
    """`work` in a thread of its own, which closes its connection to the file when done."""

    def run() -> None:
        try:
            work()
        finally:
            backend.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_lease_write_waiting_for_the_file_goes_before_a_batchs_next_step(
    tmp_path: Path,
) -> None:
    """SQLite's busy handler lets a waiting writer sleep through many steps of a batch (the
    leader's commit 1.4 s late behind three on a loaded machine); within the process, the step
    after the one under way waits for it."""
    importer, leader = Held(tmp_path / "beatd.db"), SQLiteBackend(tmp_path / "beatd.db")
    importer.put_step = importer.put_step_least = 2
    writing = _in_thread(importer, lambda: importer.put_entries(batch(*"abcde"), BY))
    try:
        assert importer.inside.wait(30)
        taking = _in_thread(leader, lambda: leader.acquire_lease("a", 60.0))
        wait_for(lambda: turns_of(tmp_path / "beatd.db").writers == 1, what="the lease write")
    finally:
        importer.release.set()
    writing.join(30)
    taking.join(30)
    assert importer.leased_before == [False, True, True]
    assert [e.name for e in leader.list_entries()] == list("abcde")
    importer.close()
    leader.close()


def test_a_batchs_steps_are_sized_by_the_time_they_hold_the_file(
    make: Callable[..., Counted],
) -> None:
    backend = make(step=8)
    backend.put_step_least = 2
    backend.put_step_time = 0.0  # every step too long: the least
    backend.put_entries(batch(*"abcdefg"), BY)
    assert backend.steps == 4
    backend.steps = 0
    backend.put_step_time = 1e9  # every step quick: twice the last, up to put_step
    backend.put_entries(batch(*"hijklmnopqrstu"), BY)
    assert backend.steps == 3  # 2, 4, 8
    assert len(backend.list_entries()) == 21
