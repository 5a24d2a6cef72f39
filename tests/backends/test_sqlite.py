"""The SQLite backend against the contract, plus what only a file can do (fill up), and that
the run history's reads are indexed."""

from __future__ import annotations

import gc
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from beatd.backends.base import (
    BeatdQueue,
    CeleryQueue,
    Delivery,
    Outgoing,
    StateWrite,
    StorageReplaced,
)
from beatd.backends.sqlite import SQLiteBackend
from beatd.backends.sqlite_history import FOLD_EVERY
from beatd.controls import AuditRecord
from beatd.errors import BackendError, NotApplied
from beatd.history import Attempt, Ending, HistoryQuery, Retention, RunKind, RunRecord
from beatd.outcomes import Outcome
from beatd.state import EntryState
from tests.backends.contract import BackendContract, Wall, message, state
from tests.backends.controls_contract import trigger


@pytest.fixture
def backend_factory(tmp_path: Path, wall: Wall) -> Callable[[], SQLiteBackend]:
    return lambda: SQLiteBackend(tmp_path / "beatd.db", wall_clock=wall)


@pytest.fixture
def backend(backend_factory: Callable[[], SQLiteBackend]) -> SQLiteBackend:
    return backend_factory()


@pytest.fixture
def history_off_backend(tmp_path: Path, wall: Wall) -> SQLiteBackend:
    return SQLiteBackend(tmp_path / "beatd.db", wall_clock=wall, history=False)


class TestSQLiteContract(BackendContract):
    pass


def test_full_database_is_a_transient_error_and_loses_nothing(backend: SQLiteBackend) -> None:
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [])
    db = backend._connection()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = [message("e", 1)] * 1
    huge = big[0]._replace(body="x" * 200_000)
    with pytest.raises(NotApplied) as caught:  # the transaction rolled back: nothing written
        backend.commit(lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [huge])
    full = caught.value.__cause__  # SQLite's words are its own: its error code says "full"
    assert isinstance(full, sqlite3.OperationalError) and full.sqlite_errorname == "SQLITE_FULL"
    assert str(caught.value) == f"{backend.path}: {full}"
    assert backend.load_states() == {"e": state("e", 0)}
    assert backend.queue_depths() == {}
    db.execute("PRAGMA max_page_count = 1073741823")
    backend.commit(lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [huge])
    assert backend.load_states() == {"e": state("e", 1, 1)}


def test_celery_messages_are_refused_by_name(backend: SQLiteBackend) -> None:
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    celery = Outgoing("e", "e@1", CeleryQueue("celery"), "{}")
    with pytest.raises(BackendError) as caught:
        backend.commit(lease, [StateWrite(state("e", 0), None)], [celery])
    assert str(caught.value) == (
        "entry e publishes to a CeleryQueue, which needs a Redis broker (Redis transport only); "
        "SQLite stores beatd's own messages only"
    )
    assert not backend.accepts(CeleryQueue)


def test_a_new_epoch_starts_above_min_epoch(backend: SQLiteBackend) -> None:
    first = backend.acquire_lease("a", 10, min_epoch=7)
    assert first is not None and first.epoch == 8
    backend.release_lease(first)
    second = backend.acquire_lease("b", 10, min_epoch=3)  # lower than the last: ignored
    assert second is not None and second.epoch == 9


def test_the_database_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    umask = os.umask(0o022)  # the usual one, under which files are made 0644
    try:
        backend = SQLiteBackend(tmp_path / "beatd.db")
        backend.enqueue([message("e", 1)])
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"beatd.db": 0o600, "beatd.db-wal": 0o600, "beatd.db-shm": 0o600}


def test_missing_directories_are_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "beatd.db"
    with pytest.raises(BackendError) as caught:
        SQLiteBackend(path)
    assert str(caught.value) == (
        f"cannot create the database {path}: there is no directory {path.parent}; create it, "
        "or correct the path"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_in_memory_database_is_refused_and_no_file_named_so_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackendError) as caught:
        SQLiteBackend(":memory:")
    assert str(caught.value) == (
        "cannot use ':memory:' as the database: an in-memory SQLite database belongs to one "
        "connection of one process, but the scheduler, its standbys and the workers share "
        "beatd's database; give a file path (sqlite:///beatd.db)"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_wal_is_truncated_at_the_renewal_after_a_large_catch_up(
    backend: SQLiteBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wal = tmp_path / "beatd.db-wal"
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    backend.commit(lease, [], [message("e", minute) for minute in range(10)])
    assert backend.renew_lease(lease, 60)
    after_small = wal.stat().st_size
    assert after_small > 0, "after a few runs the WAL is left as SQLite keeps it"
    padding = "x" * 200  # about the size of a run message
    catch_up = [
        m._replace(body=f'{{"id": "{m.id}", "task": "t.tick", "padding": "{padding}"}}')
        for m in (message("e", minute) for minute in range(10, 1010))
    ]
    for start in range(0, len(catch_up), 500):
        backend.commit(lease, [], catch_up[start : start + 500])
    before = wal.stat().st_size
    assert backend.renew_lease(lease, 60)
    after = wal.stat().st_size
    with capsys.disabled():
        print(f"\nWAL after 1,000 runs: {before:,} bytes; after the renewal: {after:,} bytes")
    assert before > after_small and after == 0
    assert backend.queue_depths() == {"default": 1010}


def test_a_connection_opened_again_on_another_file_is_refused(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "beatd.db")
    opened = (tmp_path / "beatd.db").stat()
    backend.close()  # as after a failed write to a read-only file
    (tmp_path / "beatd.db").rename(tmp_path / "old.db")
    SQLiteBackend(tmp_path / "beatd.db").close()  # another file at the path now
    with pytest.raises(StorageReplaced) as caught:
        backend.enqueue([message("e", 1)])
    assert str(caught.value).startswith(
        f"{tmp_path / 'beatd.db'} is not the database file this process opened (device "
        f"{opened.st_dev} inode {opened.st_ino}): it was deleted or replaced;"
    )


# --- the run history's indexes ------------------------------------------------------------------

HISTORY_T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def history_of(backend: SQLiteBackend, entries: int, runs: int, open_of: str = "") -> None:
    """`runs` finished runs of each of `entries` entries (e00, e01, ...), one a minute, stored
    as `beatd migrate` stores them; the newest run of entry `open_of` is left unfinished."""
    records = []
    for e in range(entries):
        entry = f"e{e:02d}"
        for minute in range(runs):
            at = HISTORY_T0 + timedelta(minutes=minute)
            done = Attempt(1, "w", "h", 1, at, at + timedelta(seconds=1), Outcome.SUCCEEDED)
            unfinished = entry == open_of and minute == runs - 1
            records.append(
                RunRecord(
                    f"{entry}@{minute:06d}",
                    entry,
                    at,
                    at,
                    at,
                    "n",
                    1,
                    RunKind.SCHEDULED,
                    attempts=() if unfinished else (done,),
                )
            )
    assert backend.import_history(records) == len(records)


def history_of_others(others: int) -> list[RunRecord]:
    """`others` runs of each of 19 entries (x00, x01, ...), older than e00's, never claimed."""
    return [
        RunRecord(
            f"x{e:02d}@{minute:06d}",
            f"x{e:02d}",
            HISTORY_T0 - timedelta(minutes=minute + 1),
            HISTORY_T0,
            HISTORY_T0 - timedelta(minutes=minute + 1),  # older than e00's
            "n",
            1,
            RunKind.SCHEDULED,
        )
        for e in range(19)
        for minute in range(others)
    ]


def steps(backend: SQLiteBackend, read: Callable[[], object]) -> int:
    """How many SQLite VM instructions (in tens) `read` takes: the work, whatever the machine."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    db = backend._connection()
    db.set_progress_handler(count, 10)
    try:
        read()
    finally:
        db.set_progress_handler(None, 10)
    return counted[0]


READS: dict[str, Callable[[SQLiteBackend], object]] = {
    "an_entry_newest_first": lambda b: b.runs(HistoryQuery(entry="e00", limit=10)),
    "all_newest_first": lambda b: b.runs(HistoryQuery(limit=10)),
    "an_entry_since": lambda b: b.runs(
        HistoryQuery(entry="e00", since=HISTORY_T0 + timedelta(minutes=45))
    ),
    "an_entry_unfinished": lambda b: b.runs(HistoryQuery(entry="e00", unfinished=True)),
    "one_run": lambda b: b.run("e00@000049"),
}


@pytest.mark.parametrize("read", list(READS), ids=list(READS))
def test_history_reads_cost_the_same_however_much_other_history_is_held(
    tmp_path: Path, read: str
) -> None:
    """Indexed: reading e00's 50 runs, or the newest 10 of all, takes as much work beside 19
    other entries of 50 runs each as beside 19 of 1,000 (a scan would take 20 times more)."""
    costs = []
    for others in (50, 1000):
        backend = SQLiteBackend(tmp_path / f"{others}.db")
        history_of(backend, 1, 50, open_of="e00")
        backend.import_history(history_of_others(others))
        assert [r.id for r in backend.runs(HistoryQuery(entry="e00", unfinished=True))] == [
            "e00@000049"
        ]
        costs.append(steps(backend, partial(READS[read], backend)))
        backend.close()
    small, large = costs
    assert large <= small * 1.5 + 10, (small, large)


@pytest.mark.parametrize("settle", ["ack", "retry", "release", "dead_letter", "note_ending"])
def test_a_run_whose_id_is_not_utf8_is_settled_and_has_no_history(
    tmp_path: Path, settle: str
) -> None:
    """Another program's queue entry whose id is not UTF-8 text: it is handed out `unreadable`
    and settled like any other (the history holds no such run, so it records nothing)."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    with sqlite3.connect(tmp_path / "beatd.db") as db:
        db.execute(
            "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
            (b"bad@\xff", "default", 5, "{}", 0.0),
        )
    delivery = backend.claim(["default"], "w", 30)
    assert delivery is not None and delivery.unreadable
    calls: dict[str, Callable[[], None]] = {
        "ack": lambda: backend.ack(delivery),
        "retry": lambda: backend.retry(delivery, "{}", 0.0),
        "release": lambda: backend.release(delivery),
        "dead_letter": lambda: backend.dead_letter(delivery, delivery.unreadable),
        "note_ending": lambda: backend.note_ending(delivery, Ending(Outcome.CRASHED)),
    }
    calls[settle]()
    settled = {"ack": {}, "dead_letter": {}}.get(settle, {"default": 1})
    assert (backend.queue_depths(), backend.history_size()) == (settled, (0, 0))
    backend.close()


# --- a queued run's record, kept in its message's row -------------------------------------------


def queued_run(entry: str, minute: int) -> Outgoing:
    slot = HISTORY_T0 + timedelta(minutes=minute)
    rid = f"{entry}@{minute:06d}"
    return Outgoing(entry, rid, BeatdQueue("q"), "{}", slot, slot)


def publish_queued(backend: SQLiteBackend, *runs: Outgoing, node: str = "a") -> None:
    """Commit `runs` (of distinct entries) under a lease taken by `node`."""
    lease = backend.acquire_lease(node, 600)
    assert lease is not None
    held = backend.load_states()
    writes = []
    for r in runs:
        assert r.slot is not None
        before = held.get(r.entry)
        slot = r.slot if before is None else before.last_slot + timedelta(seconds=1)
        new = EntryState(r.entry, slot, slot, "every 60s")
        writes.append(StateWrite(new, None if before is None else before.last_slot))
    assert backend.commit(lease, writes, list(runs)) == set()
    backend.release_lease(lease)


def stored_runs(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM run").fetchone()[0])


def test_a_run_row_is_written_in_bulk_after_the_run_settled_for_good(tmp_path: Path) -> None:
    """A burst's commit writes each run's record into its message's row (no page of `run` nor
    of its indexes); the claim opens its attempt there too; the ack logs record and attempt in
    one row of `run_done`; a later fold (every FOLD_EVERY logged runs, or a trim) stores them in
    `run` and `attempt`. The reads find the record wherever it is, the same."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    publish_queued(backend, queued_run("e", 1), queued_run("f", 1))
    queued = backend.run("e@000001")
    assert queued is not None and queued.attempts == ()
    assert [r.id for r in backend.runs(HistoryQuery(entry="e"))] == ["e@000001"]
    delivery = backend.claim(["q"], "w", 60)
    assert delivery is not None and delivery.id == "e@000001"
    running = backend.run("e@000001")
    assert running is not None and [a.outcome for a in running.attempts] == [None]
    backend.ack(delivery)
    done = backend.run("e@000001")
    assert done is not None and done.finished
    assert (stored_runs(tmp_path / "beatd.db"), backend.history_size()) == (0, (2, 0))
    assert backend.runs(HistoryQuery(unfinished=True)) == [backend.run("f@000001")]
    summaries = backend.summaries()
    assert backend.trim(Retention()) == 0
    assert (stored_runs(tmp_path / "beatd.db"), backend.history_size()) == (2, (2, 0))
    assert backend.run("e@000001") == done
    assert backend.summaries() == summaries
    backend.close()


def test_a_run_queued_twice_keeps_the_first_record(tmp_path: Path) -> None:
    """A run id published again (by another leader) is queued twice; its record stays the
    first's, read from the queue, from the log and once folded."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    publish_queued(backend, queued_run("e", 1), node="a")
    publish_queued(backend, queued_run("e", 1), node="b")
    first = backend.run("e@000001")
    assert first is not None and first.node == "a"
    assert backend.history_size() == (1, 0)
    for _ in range(2):
        delivery = backend.claim(["q"], "w", 60)
        assert delivery is not None
        backend.ack(delivery)
        after = backend.run("e@000001")
        assert after is not None and after.node == "a"
        assert backend.history_size() == (1, 0)
    backend.trim(Retention())
    folded = backend.run("e@000001")
    assert folded is not None and folded.node == "a"
    assert backend.history_size() == (1, 0)
    backend.close()


@pytest.mark.parametrize("read", ["an_entry_newest_first", "an_entry_unfinished", "one_run"])
def test_a_queued_runs_reads_cost_the_same_however_much_history_is_held(
    tmp_path: Path, read: str
) -> None:
    """A queued run is read from the queue, which is scanned, but beside the stored history the
    reads stay indexed: as much work beside 19 entries of 50 stored runs as of 1,000."""
    costs = []
    for others in (50, 1000):
        backend = SQLiteBackend(tmp_path / f"{others}.db")
        history_of(backend, 1, 50)
        backend.import_history(history_of_others(others))
        publish_queued(backend, queued_run("e00", 100_000))
        assert backend.run("e00@100000") is not None
        costs.append(steps(backend, partial(READS[read], backend)))
        backend.close()
    small, large = costs
    assert large <= small * 1.5 + 10, (small, large)


def test_imported_runs_leave_the_summaries_as_they_are(tmp_path: Path) -> None:
    """`import_history` stores records as they are: a copied run's final attempt does not move
    its entry's summary (the copied summary does, when it finished later)."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    history_of(backend, 1, 3)
    assert backend.summaries() == {}
    backend.close()


def test_marking_a_queued_run_moves_every_queued_record_once(tmp_path: Path) -> None:
    """The leader's first deadline mark of a queued run moves the whole queue's records to
    `run` in one scan; the next marks find theirs there."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    publish_queued(backend, *(queued_run(f"e{n}", 1) for n in range(5)))
    assert stored_runs(tmp_path / "beatd.db") == 0
    assert backend.mark_overdue("e0@000001", HISTORY_T0)
    assert stored_runs(tmp_path / "beatd.db") == 5
    assert backend.mark_overdue("e1@000001", HISTORY_T0)
    assert [r.id for r in backend.runs(HistoryQuery(unfinished=True))] == [
        f"e{n}@000001" for n in (4, 3, 2)
    ]
    assert backend.history_size() == (5, 0)
    backend.close()


def test_a_worker_folds_the_log_every_fold_every_runs(tmp_path: Path) -> None:
    """The handle that logs FOLD_EVERY settled runs folds them into `run` with the last one's
    ack, so the log stays short without a leader."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    publish_queued(backend, *(queued_run(f"e{n:03d}", 1) for n in range(FOLD_EVERY + 1)))
    for n in range(FOLD_EVERY + 1):
        delivery = backend.claim(["q"], "w", 60)
        assert delivery is not None
        backend.ack(delivery)
        if n == FOLD_EVERY - 2:
            assert stored_runs(tmp_path / "beatd.db") == 0
    assert stored_runs(tmp_path / "beatd.db") == FOLD_EVERY
    assert backend.history_size() == (FOLD_EVERY + 1, 0)
    assert set(backend.summaries()) == {f"e{n:03d}" for n in range(FOLD_EVERY + 1)}
    backend.close()


def stored_summary(path: Path, entry: str) -> tuple[str, int] | None:
    """The row of `entry_summary` the file holds for `entry`: status and failures."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT last_status, consecutive_failures FROM entry_summary WHERE entry = ?",
            (entry,),
        ).fetchone()
        return None if row is None else (row[0], row[1])


def ended_at(backend: SQLiteBackend, run_id: str) -> datetime | None:
    record = backend.run(run_id)
    assert record is not None and record.attempts
    return record.attempts[-1].ended_at


def test_the_summaries_count_logged_runs_in_the_order_they_ended(tmp_path: Path) -> None:
    """An ack that logs its run writes no summary: the fold counts the log's runs, and the
    summaries read adds the ones logged since. A final end stored outside the log (of a run
    retried before) folds the log first, so the runs count in the order they ended."""
    path = tmp_path / "beatd.db"
    backend = SQLiteBackend(path)
    for minute in (1, 2, 3):
        publish_queued(backend, queued_run("e", minute))
    publish_queued(backend, queued_run("f", 1))
    failed = Ending(Outcome.FAILED, error_type="KeyError", error="'x'")

    def settle(run_id: str, step: Callable[[Delivery], None]) -> None:
        delivery = backend.claim(["q"], "w", 60)
        assert delivery is not None and delivery.id == run_id
        step(delivery)

    settle("e@000001", backend.ack)
    assert stored_summary(path, "e") is None
    first = backend.summaries(["e"])
    assert [(s.last_status, s.consecutive_failures) for s in first.values()] == [
        (Outcome.SUCCEEDED, 0)
    ]
    settle("e@000002", lambda d: backend.retry(d, "{}", 0, Ending(Outcome.RETRIED)))
    settle("e@000002", lambda d: backend.ack(d, failed))
    assert stored_summary(path, "e") == (Outcome.FAILED, 1)
    settle("e@000003", lambda d: backend.ack(d, failed))
    assert stored_summary(path, "e") == (Outcome.FAILED, 1)
    success, failure = ended_at(backend, "e@000001"), ended_at(backend, "e@000003")
    assert success is not None and failure is not None
    summary = backend.summaries()["e"]
    expected = (Outcome.FAILED, failure, success, failure, 2)
    assert (
        summary.last_status,
        summary.last_finished_at,
        summary.last_success_at,
        summary.last_failure_at,
        summary.consecutive_failures,
    ) == expected
    assert set(backend.summaries()) == {"e"}
    assert backend.summaries(["f"]) == {}
    assert backend.trim(Retention()) == 0
    assert stored_summary(path, "e") == (Outcome.FAILED, 2)
    assert backend.summaries() == {"e": summary}
    backend.close()


# --- the operator controls --------------------------------------------------------------------


def manual_run(backend: SQLiteBackend, request_id: str) -> RunRecord:
    """Trigger one manual run of `m` (on queue q), claim it and ack it: its record."""
    result = backend.trigger(trigger("m", request_id))
    delivery = backend.claim(["q"], "w", 60)
    assert delivery is not None and delivery.id == result.run_id
    backend.ack(delivery)
    found = backend.run(result.run_id)
    assert found is not None and result.audit_id is not None
    assert found.audit == result.audit_id
    return found


def test_a_manual_runs_audit_id_is_kept_through_the_log_its_fold_and_a_copy(
    tmp_path: Path,
) -> None:
    """The audit id lives apart from the run's record (`run_audit`): read onto the record while
    it waits in `run_done`, after the fold, and in a copy to another file."""
    backend = SQLiteBackend(tmp_path / "a.db")
    logged = manual_run(backend, "r1")  # in run_done
    backend.trim(Retention(max_age=timedelta(days=1)))  # folds it into run
    assert backend.run(logged.id) == logged
    copy = SQLiteBackend(tmp_path / "b.db")
    copy.import_history([r for batch in backend.export_runs() for r in batch])
    assert copy.run(logged.id) == logged


def test_a_trimmed_manual_run_takes_its_audit_id_with_it(tmp_path: Path, wall: Wall) -> None:
    backend = SQLiteBackend(tmp_path / "beatd.db", wall_clock=wall)
    manual_run(backend, "r1")
    wall.now += 10
    assert backend.trim(Retention(max_age=timedelta(seconds=1))) == 1
    assert backend._connection().execute("SELECT COUNT(*) FROM run_audit").fetchone() == (0,)


def test_a_pause_made_by_one_process_refuses_another_processs_commit(tmp_path: Path) -> None:
    """The controls are in the file: the leader's handle checks a pause another handle (the
    command's) wrote, in its commit's transaction."""
    leader, command = SQLiteBackend(tmp_path / "beatd.db"), SQLiteBackend(tmp_path / "beatd.db")
    lease = leader.acquire_lease("a", 60)
    assert lease is not None
    command.pause(["e"], "maintenance", None, "ops@host")
    due = datetime.now(UTC)
    run = Outgoing("e", "e@1", BeatdQueue("q"), "{}", due, due)
    assert leader.commit(lease, [StateWrite(EntryState("e", due, due, "x"), None)], [run]) == {"e"}
    assert leader.queue_depths() == {}
    command.resume(["e"], "ops@host")
    assert leader.commit(lease, [StateWrite(EntryState("e", due, due, "x"), None)], [run]) == set()


def test_an_entrys_audit_log_is_read_by_its_index_however_long_the_whole_log(
    tmp_path: Path,
) -> None:
    """The console's entry page reads one entry's newest actions: as much work beside 50 other
    records as beside 5,000 (100,000 runtime entries made through the API leave 100,000), the
    entry's own records found by the (entry, at) index, not by walking the whole log."""
    costs = []
    for others in (50, 5000):
        backend = SQLiteBackend(tmp_path / f"{others}.db")
        at = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
        own = [
            AuditRecord(f"own{n}", at + timedelta(seconds=n), "pause", "e", "ops", {})
            for n in range(3)
        ]
        newer = [
            AuditRecord(
                f"o{n:05}", at + timedelta(hours=1, seconds=n), "entry.add", f"x{n}", "ops", {}
            )
            for n in range(others)
        ]
        for record in [*own, *newer]:
            backend.record_audit(record)
        assert [r.id for r in backend.audit("e", limit=50)] == ["own2", "own1", "own0"]
        costs.append(steps(backend, partial(backend.audit, "e", None, 50)))
        backend.close()
    small, large = costs
    assert large <= small * 1.5 + 10, (small, large)


def test_the_leaders_read_of_new_control_records_costs_the_same_however_long_the_log(
    tmp_path: Path,
) -> None:
    """The leader reads the trigger, backfill and resume records written since its last read
    every 5 s: as much work beside 50 older records of runtime entries' changes as beside
    5,000 (an import of 1,000,000 entries leaves 1,000,000; walking them took 2 s a read)."""
    costs = []
    for others in (50, 5000):
        backend = SQLiteBackend(tmp_path / f"{others}.db")
        at = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
        older = [
            AuditRecord(f"o{n:05}", at + timedelta(seconds=n), "entry.add", f"x{n}", "ops", {})
            for n in range(others)
        ]
        resumed = AuditRecord("resumed", at + timedelta(hours=3), "resume", "e", "ops", {})
        for record in [*older, resumed]:
            backend.record_audit(record)
        since = at + timedelta(hours=2)
        read = partial(backend.audit, None, since, 1000, controls_only=True)
        assert [r.id for r in read()] == ["resumed"]
        costs.append(steps(backend, read))
        backend.close()
    small, large = costs
    assert large <= small * 1.5 + 10, (small, large)


def open_files(path: Path) -> int:
    """This process's open descriptors of the database file `path`."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == str(path))


def _target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:  # closed meanwhile (the listing's own descriptor)
        return None


def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    """The metrics server answers each scrape in a thread of its own: a connection is in a
    reference cycle with its statement cache, so it lived on, its page cache held (2 MB after
    counting a big queue), until the collector's full pass, which beatd run makes rare: 2 MB
    more a scrape, 500 MB in 4 minutes of scrapes at a million entries."""
    backend = SQLiteBackend(tmp_path / "beatd.db")
    backend.queue_depths()  # this thread's
    path = tmp_path / "beatd.db"
    before = open_files(path)
    gc.disable()
    try:
        for _ in range(5):
            scrape = threading.Thread(target=backend.queue_depths)
            scrape.start()
            scrape.join()
        # the last thread's locals may be dropped a little later: one more at most, not five
        assert open_files(path) <= before + 1
    finally:
        gc.enable()
        backend.close()
