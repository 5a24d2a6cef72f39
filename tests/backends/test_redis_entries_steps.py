"""Redis writes a batch of runtime entries in steps (issue 18): one script per `put_step`
entries, so that no script holds Redis for long (a 100,000-entry script held it 5.2 s, beyond a
lease TTL of 5 s), every entry checked before the first step so that a refusal writes nothing.
The contract (tests/backends/entries_contract.py) runs with the default step; these tests make
the steps small."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from beatd.backends.redis import RedisBackend
from beatd.errors import OutcomeUnknown
from beatd.runtime_entries import (
    EntryChange,
    EntryPut,
    NameTaken,
    PartlyWritten,
    ResolvedEntry,
    VersionMismatch,
    resolve_entry,
)
from tests.backends.history_contract import lead
from tests.redis_server import RedisServer

BY = "ops@host"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def defined(name: str) -> ResolvedEntry:
    return resolve_entry(name, {"task": "reports.nightly", "every": "1h"}, now=NOW)


def batch(*names: str) -> list[ResolvedEntry]:
    return [defined(n) for n in names]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def make(server: RedisServer, admin: redis.Redis) -> Iterator[Callable[..., RedisBackend]]:
    made: list[RedisBackend] = []

    def backend(kind: type[RedisBackend] = RedisBackend, step: int = 2) -> RedisBackend:
        made.append(kind(server.url))
        made[-1].put_step = step
        return made[-1]

    yield backend
    for each in made:
        each.close()


def scripts_run(admin: redis.Redis) -> int:
    stats: dict[str, Any] = admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_a_batch_of_many_steps_is_written_whole_in_order_one_script_a_step(
    make: Callable[..., RedisBackend], admin: redis.Redis
) -> None:
    backend = make(step=2)
    backend.put_entry(defined("warm-up"), BY)  # the format check and the scripts' loading
    cursor = backend.entry_changes(None).cursor
    before = scripts_run(admin)
    stored = backend.put_entries(batch("e", "d", "c", "b", "a"), BY, create_only=True)
    assert scripts_run(admin) - before == 1 + 3  # the check of every entry, then three steps
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


def test_a_refusal_of_an_entry_in_a_later_step_writes_nothing(
    make: Callable[..., RedisBackend],
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


class CheckedThenRaced(RedisBackend):
    """Another writer creates entry `raced` between the check of every entry and the steps."""

    raced = "d"

    def _check_puts(self, puts: Sequence[EntryPut], head: Sequence[str]) -> None:
        super()._check_puts(puts, head)
        other = RedisBackend(self.url)
        try:
            other.put_entry(defined(self.raced), "someone@else")
        finally:
            other.close()


def test_a_name_taken_between_the_check_and_its_step_keeps_the_earlier_steps_and_says_so(
    make: Callable[..., RedisBackend],
) -> None:
    backend = make(CheckedThenRaced, step=2)
    with pytest.raises(PartlyWritten) as partly:
        backend.put_entries(batch("a", "b", "c", "d", "e"), BY, create_only=True)
    version = backend.get_entry("d")
    assert version is not None
    assert str(partly.value) == (
        f"entry d exists already (version {version.version}); nothing was written; 2 of the "
        "batch's 5 entries were written before it (a to b), the other 3 were not: add those again"
    )
    assert partly.value.written == ["a", "b"]
    assert [x.name for x in backend.list_entries()] == ["a", "b", "d"]


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


def test_a_batch_cut_off_between_steps_is_completed_by_its_repeat_writing_each_entry_once(
    make: Callable[..., RedisBackend],
) -> None:
    backend = make(CutOff, step=2)
    cursor = backend.entry_changes(None).cursor
    names = batch("a", "b", "c", "d", "e")
    with pytest.raises(OutcomeUnknown):
        backend.put_entries(names, BY, create_only=True, request_id="bulk-1")
    assert [x.name for x in backend.list_entries()] == ["a", "b", "c", "d"]
    stored = backend.put_entries(names, BY, create_only=True, request_id="bulk-1")
    assert [(e.name, e.version) for e in stored] == [
        (name, cursor + i) for i, name in enumerate("abcde", start=1)
    ]
    assert len(backend.entry_changes(cursor).changes) == 5


def test_the_index_of_the_controls_records_is_trimmed_with_the_log(
    make: Callable[..., RedisBackend], admin: redis.Redis
) -> None:
    backend = make()
    backend.pause(["a"], "r", None, BY)
    backend.put_entries(batch("a", "b"), BY)
    assert admin.zcard("beatd:ctl:audit-ctl") == 1
    time.sleep(0.01)
    assert backend.trim_audit(timedelta(microseconds=1)) == 3
    assert admin.zcard("beatd:ctl:audit-ctl") == 0
    assert backend.audit(controls_only=True) == []
