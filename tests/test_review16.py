"""Review of issue 16 (operator controls): defects found, each a strict xfail until fixed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
NAME = "review16"


def every_minute(name: str = "tick", **kw: Any) -> Entry:
    return Entry(name=name, task="t.task", schedule=IntervalSchedule(M), **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    discard(NAME)
    yield MemoryBackend(NAME, wall_clock=lambda: clock.now().timestamp())
    discard(NAME)


def scheduler(backend: Any, clock: FakeClock, *entries: Entry, node: str = "a") -> Scheduler:
    config = Config({e.name: e for e in entries})
    settings = SchedulerSettings(node=node, lease_ttl=30, max_clock_skew=3600)
    return Scheduler(backend, lambda: config, clock, settings)


@pytest.mark.xfail(
    strict=True,
    reason="review16: pause_after_failures remembers 'paused once' per process only; a new "
    "leader re-pauses an entry the operator resumed, with no new failure",
)
def test_a_resumed_entry_is_not_paused_again_by_the_next_leader(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(pause_after_failures=2)
    first = scheduler(backend, clock, entry)
    for _ in range(2):
        run_for(first, 65)
        delivery = backend.claim(["default"], "w1", 3600)
        assert delivery is not None
        backend.dead_letter(delivery, "boom")
    run_for(first, 60)
    assert backend.load_controls(["tick"])["tick"].pause is not None
    backend.resume(["tick"], "ann@ops")  # the operator fixed the cause and resumed
    first.shutdown()
    second = scheduler(backend, clock, entry, node="b")
    run_for(second, 60)  # no run has failed since the resume
    assert [c.pause for c in backend.load_controls(["tick"]).values()] in ([], [None])
    assert [r.action for r in backend.audit("tick")] == ["resume", "pause"]
