"""The SQLite backend against the contract, plus what only a file can do (fill up)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from beatd.backends.base import CeleryQueue, Outgoing, StateWrite, StorageReplaced
from beatd.backends.sqlite import SQLiteBackend
from beatd.errors import BackendError, NotApplied
from tests.backends.contract import BackendContract, Wall, message, state


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
