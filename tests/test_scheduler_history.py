"""What the scheduler feeds the run history, on a fake clock and the in-memory backend: each
published run's record, and the slots it missed as one range per entry and reason."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from beatd.backends.base import StoreIdentity
from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config.model import Entry, MissedPolicy
from beatd.history import HistoryQuery, MissedSlots, RunKind
from beatd.scheduler import run_for
from beatd.schedules import IntervalSchedule
from tests.in_process import T0, memory_backend, scheduler

NAME = "scheduler-history"


def every(name: str, seconds: int, **kw: Any) -> Entry:
    schedule = IntervalSchedule(timedelta(seconds=seconds))
    return Entry(name=name, task="t.task", schedule=schedule, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend(NAME, clock)


def test_downtime_is_one_missed_range_and_the_kept_run_is_caught_up(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    tick = every("tick", 60, missed=MissedPolicy.RUN_ONCE, misfire_grace=timedelta(seconds=5))
    first = scheduler(backend, clock, tick)
    run_for(first, 125)  # 12:01 and 12:02 on time
    first.shutdown()
    clock.advance(3630)  # down for an hour: 13:02 is 35 s late, beyond its 5-s grace
    second = scheduler(backend, clock, tick, node="b")
    second.step()
    runs = backend.runs(HistoryQuery(entry="tick"))
    assert [(r.slot.strftime("%H:%M"), r.kind, r.node) for r in runs] == [
        ("13:02", RunKind.CAUGHT_UP, "b"),
        ("12:02", RunKind.SCHEDULED, "a"),
        ("12:01", RunKind.SCHEDULED, "a"),
    ]
    assert [r.due for r in runs] == [r.slot for r in runs]  # no jitter
    (missed,) = backend.missed(entry="tick")
    skipped = MissedSlots(
        "tick", "skipped", T0 + timedelta(minutes=3), T0 + timedelta(hours=1, minutes=1), 59
    )
    assert (missed.slots, missed.node) == (skipped, "b")
    assert second.counts.get("tick")["missed_skipped"] == 59


class Restartable:
    """The in-memory backend as a server that restarts without its data (Redis without AOF):
    `restart` empties it and changes its run id."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.inner = MemoryBackend(NAME, wall_clock=lambda: clock.now().timestamp())
        self.run_id = 1

    def identity(self) -> StoreIdentity:
        leader = self.inner.leader()
        epoch = leader.epoch if leader is not None else 0
        return StoreIdentity(str(self.run_id), "marker", self.run_id == 1 or epoch > 0, epoch)

    def restart(self) -> None:
        discard(NAME)
        self.inner = MemoryBackend(NAME, wall_clock=lambda: self._clock.now().timestamp())
        self.run_id += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_slots_lost_with_the_backends_data_are_one_state_lost_range(clock: FakeClock) -> None:
    discard(NAME)
    server = Restartable(clock)
    assert server.inner.acquire_lease("a", 30) is not None
    beat = scheduler(server, clock, every("tick", 1), node="b")
    beat.step()  # a standby: it sees a's lease, so the data is whole now
    server.restart()
    clock.advance(10)
    beat.step()  # the loss is noticed; the lease is left to a node holding positions
    assert (beat.lease, beat.totals.data_lost) == (None, 1)
    clock.advance(30)
    beat.step()  # nobody came: it leads, and counts the slots since the data was whole
    assert beat.lease is not None
    assert beat.counts.get("tick")["missed_state_lost"] == 40
    (lost,) = server.inner.missed(entry="tick")
    assert lost.slots == MissedSlots(
        "tick", "state_lost", T0 + timedelta(seconds=1), T0 + timedelta(seconds=40), 40
    )
    discard(NAME)
