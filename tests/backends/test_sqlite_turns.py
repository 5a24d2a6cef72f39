"""Turns at a SQLite file's one writer within a process (beatd.backends.sqlite_turns): bulk
steps wait for the process's other writers, and are sized by the time they hold the writer."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from beatd.backends.sqlite import SQLiteBackend
from beatd.backends.sqlite_turns import WriteTurns, next_step, turns_of
from beatd.runtime_entries import EntryPut, RuntimeEntry
from tests.backends.test_entries_steps import BY, CountedSQLite, batch
from tests.waiting import wait_for


@pytest.mark.parametrize(
    ("size", "took", "expected"),
    [
        pytest.param(250, 0.05, 500, id="quick_step_grows_at_most_twice"),
        pytest.param(250, 0.1, 250, id="on_target_stays"),
        pytest.param(1000, 0.4, 250, id="slow_step_shrinks_to_the_target"),
        pytest.param(1000, 0.001, 1000, id="never_above_most"),
        pytest.param(100, 30.0, 50, id="never_below_least"),
        pytest.param(300, 0.0, 600, id="no_time_measured_grows"),
    ],
)
def test_next_step(size: int, took: float, expected: int) -> None:
    assert next_step(size, took, least=50, most=1000, target=0.1) == expected


def test_a_step_waits_for_the_writers_under_way_and_no_longer_than_its_limit() -> None:
    turns = WriteTurns()
    assert turns.step_turn(limit=0)
    with turns.writing():
        with turns.writing():
            assert turns.writers == 2
        assert not turns.step_turn(limit=0)
    assert turns.writers == 0
    assert turns.step_turn(limit=0)


def test_every_handle_on_one_file_shares_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "beatd.db"
    assert turns_of(path) is turns_of(path.parent / "." / "beatd.db")
    assert turns_of(path) is not turns_of(path.parent / "other.db")


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


def test_a_batchs_steps_are_sized_by_the_time_they_hold_the_file(tmp_path: Path) -> None:
    backend = CountedSQLite(tmp_path / "beatd.db")
    backend.put_step, backend.put_step_least = 8, 2
    backend.put_step_time = 0.0  # every step too long: the least
    backend.put_entries(batch(*"abcdefg"), BY)
    assert backend.steps == 4
    backend.steps = 0
    backend.put_step_time = 1e9  # every step quick: twice the last, up to put_step
    backend.put_entries(batch(*"hijklmnopqrstu"), BY)
    assert backend.steps == 3  # 2, 4, 8
    assert len(backend.list_entries()) == 21
    backend.close()
