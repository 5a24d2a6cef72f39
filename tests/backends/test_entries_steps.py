"""A batch of runtime entries is written in steps, on SQLite and Redis alike (issue 18,
review18): one Redis script or one SQLite transaction per `put_step` entries, so that none holds
Redis or the file's one writer for long (a 100,000-entry script held Redis 5.2 s, beyond a lease
TTL of 5 s; 100,000 entries in one SQLite transaction held the file about 5 s, the leader's lease
renewal waiting out its busy timeout), every entry checked before the first step so that a
refusal writes nothing. The contract (tests/backends/entries_contract.py) runs with the default
step; these tests make the steps small, on both backends (`stepped`), then what only Redis can
meet (a reply lost between two steps)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beatd.backends.base import Backend
from beatd.backends.redis import RedisBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.errors import OutcomeUnknown
from beatd.runtime_entries import (
    EntryChange,
    EntryPut,
    NameTaken,
    PartlyWritten,
    ResolvedEntry,
    RuntimeEntry,
    VersionMismatch,
)
from tests.backends.entries_contract import BY, defined
from tests.backends.history_contract import lead
from tests.backends.test_redis import backends_of
from tests.entries_backends import BACKENDS, redis_server
from tests.redis_server import RedisServer

STEP = 2

__all__ = ["redis_server"]  # a fixture


def batch(*names: str) -> list[ResolvedEntry]:
    return [defined(n) for n in names]


def put_by_another_writer(other: Backend, name: str) -> None:
    try:
        other.put_entry(defined(name), "someone@else")
    finally:
        other.close()


@dataclass
class Stepped:
    """A backend writing batches `STEP` entries a step, and what a test needs around it."""

    backend: Backend
    calls: Callable[[], int]
    """How many calls the backend has made of its writer so far: Redis's scripts run (from the
    server's own count), SQLite's transactions of a batch (its check, then each step)."""
    race: Callable[[str], None]
    """Makes another writer create entry NAME after the next batch's check of every entry,
    before the step that writes NAME."""


# --- SQLite -------------------------------------------------------------------------------


class CountedSQLite(SQLiteBackend):
    """Counts a batch's check and the write transactions of its steps; between two steps,
    another process's write (the leader's commit) takes the file's writer at once (`between`)."""

    calls = 0
    steps = 0
    between: Callable[[], None] | None = None

    def _check_puts(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], request_id: str | None
    ) -> None:
        self.calls += 1
        super()._check_puts(db, puts, request_id)

    def _put_step(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], by: str, request_id: str | None
    ) -> list[RuntimeEntry]:
        self.calls += 1
        self.steps += 1
        if self.steps == 2 and self.between is not None:
            db.execute("ROLLBACK")  # the step's transaction starts after the other write
            self.between()
            db.execute("BEGIN IMMEDIATE")
        return super()._put_step(db, puts, by, request_id)


def sqlite_stepped(path: Path) -> Iterator[Stepped]:
    backend = CountedSQLite(path)
    backend.put_step = STEP

    def other_writer(name: str) -> None:
        with sqlite3.connect(path, timeout=0) as other:  # no wait at all: the file is free
            other.execute("BEGIN IMMEDIATE")
        other.close()
        put_by_another_writer(SQLiteBackend(path), name)

    def race(name: str) -> None:
        backend.steps = 0
        backend.between = lambda: other_writer(name)

    yield Stepped(backend, lambda: backend.calls, race)
    backend.close()


# --- Redis --------------------------------------------------------------------------------


class RacedRedis(RedisBackend):
    """Another writer creates entry `raced` between the check of every entry and the steps."""

    raced: str | None = None

    def _check_puts(self, puts: Sequence[EntryPut], head: Sequence[str]) -> None:
        super()._check_puts(puts, head)
        if self.raced is not None:
            put_by_another_writer(RedisBackend(self.url), self.raced)


def scripts_run(server: RedisServer) -> int:
    admin = server.client()
    try:
        stats: dict[str, Any] = admin.info("commandstats")
    finally:
        admin.close()
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def redis_backends(server: RedisServer, kind: type[RedisBackend]) -> Iterator[RedisBackend]:
    """An empty Redis's backend of `kind`, `STEP` entries a step (a fixture's body)."""
    admin = server.client()
    admin.flushall()
    admin.close()
    for make in backends_of(server.url, kind=kind):
        backend = make()
        backend.put_step = STEP
        yield backend


def redis_stepped(server: RedisServer) -> Iterator[Stepped]:
    for backend in redis_backends(server, RacedRedis):
        assert isinstance(backend, RacedRedis)

        def race(name: str, backend: RacedRedis = backend) -> None:
            backend.raced = name

        yield Stepped(backend, lambda: scripts_run(server), race)


@pytest.fixture(params=BACKENDS)
def stepped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stepped]:
    if request.param == "sqlite":
        yield from sqlite_stepped(tmp_path / "beatd.db")
    else:
        yield from redis_stepped(request.getfixturevalue("redis_server"))


# --- both ---------------------------------------------------------------------------------


def test_a_batch_of_many_steps_is_written_whole_in_order_one_call_a_step(
    stepped: Stepped,
) -> None:
    backend = stepped.backend
    backend.put_entry(defined("warm-up"), BY)  # Redis's format check and scripts' loading
    cursor = backend.entry_changes(None).cursor
    before = stepped.calls()
    stored = backend.put_entries(batch("e", "d", "c", "b", "a"), BY, create_only=True)
    assert stepped.calls() - before == 1 + 3  # the check of every entry, then three steps
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("edcba", start=1)
    ]
    assert stored[0].definition == defined("e").definition
    assert backend.list_entries() == sorted([*stored, backend.get_entry("warm-up")],
                                            key=lambda e: e.name)  # fmt: skip
    assert backend.entry_changes(cursor).changes == tuple(
        EntryChange(cursor + i, name, cursor + i) for i, name in enumerate("edcba", start=1)
    )
    assert len([r for r in backend.audit(limit=10) if r.action == "entry.add"]) == 6


def test_a_refusal_of_an_entry_in_a_later_step_writes_nothing(stepped: Stepped) -> None:
    backend = stepped.backend
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


def test_a_name_taken_after_the_check_keeps_the_earlier_steps_and_says_so(
    stepped: Stepped,
) -> None:
    """On Redis the other writer comes between the check and the first step; on SQLite it gets
    the file's writer between the first step and the second."""
    backend = stepped.backend
    stepped.race("d")
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
    stepped: Stepped,
) -> None:
    backend = stepped.backend
    cursor = backend.entry_changes(None).cursor
    first = backend.put_entries(batch("a", "b"), BY, create_only=True, request_id="bulk-1")
    stored = backend.put_entries(batch("a", "b", "c"), BY, create_only=True, request_id="bulk-1")
    assert stored[:2] == first
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("abc", start=1)
    ]
    assert len(backend.entry_changes(cursor).changes) == 3


# --- Redis only: a reply lost between two steps ---------------------------------------------


class CutOff(RedisBackend):
    """The connection is lost before the reply of the second step's script arrives."""

    cut = False

    def _send(self, name: str, keys: Sequence[str], args: Sequence[str | int], **kw: Any) -> Any:
        waiting = super()._send(name, keys, args, **kw)
        if name != "put_entries" or "write" not in args[:6]:
            return waiting
        self.steps = getattr(self, "steps", 0) + 1

        def lost() -> Any:
            waiting()
            raise OutcomeUnknown("put_entries: the connection was lost waiting for the reply")

        if self.steps == 2 and not self.cut:
            self.cut = True
            return lost
        return waiting


@pytest.fixture
def cut_off(redis_server: RedisServer) -> Iterator[RedisBackend]:
    yield from redis_backends(redis_server, CutOff)


def test_a_batch_cut_off_between_steps_is_completed_by_its_repeat_writing_each_entry_once(
    cut_off: RedisBackend,
) -> None:
    cursor = cut_off.entry_changes(None).cursor
    names = batch("a", "b", "c", "d", "e")
    with pytest.raises(OutcomeUnknown):
        cut_off.put_entries(names, BY, create_only=True, request_id="bulk-1")
    assert [x.name for x in cut_off.list_entries()] == ["a", "b", "c", "d"]
    stored = cut_off.put_entries(names, BY, create_only=True, request_id="bulk-1")
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("abcde", start=1)
    ]
    assert len(cut_off.entry_changes(cursor).changes) == 5
