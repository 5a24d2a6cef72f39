"""The scheduler and a thread-pool worker together on the in-memory backend, on a fake clock.

The scheduler is stepped by the test; the worker runs in its own thread and is nudged after
each step, as the embedded worker of `beatd run --with-worker` is. Faults come from the same
hook the backend contract uses (beatd/backends/faults.py). Nothing sleeps: the test waits for
the worker to settle what was published, then moves the fake clock on.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

import beatd
from beatd.backends.faults import THIEF, Fault, FaultPlan, FaultyBackend
from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry, MissedPolicy
from beatd.message import format_slot
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.schedules import IntervalSchedule
from beatd.tasks import registry
from beatd.worker import Outcome, Worker, WorkerSettings
from tests.waiting import wait_for

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
RAN: list[str] = []  # the run ids the task saw, in the order it ran them
RAN_LOCK = threading.Lock()


@beatd.task
def record() -> None:
    with RAN_LOCK:
        RAN.append(beatd.current_run().id)


def every(name: str, seconds: int) -> Entry:
    return Entry(
        name=name,
        task=record.name,
        schedule=IntervalSchedule(timedelta(seconds=seconds)),
        missed=MissedPolicy.CATCH_UP,
        misfire_grace=timedelta(hours=1),
    )


def slots(entry: str, seconds: int, until: datetime) -> set[str]:
    """The run ids of every slot of `entry` after T0 up to `until`."""
    first = T0.replace(microsecond=0) + timedelta(seconds=seconds)
    count = int((until - first).total_seconds()) // seconds + 1
    return {f"{entry}@{format_slot(first + timedelta(seconds=seconds * k))}" for k in range(count)}


class Deployment:
    """One process's scheduler and embedded worker sharing a `memory://` store."""

    def __init__(self, name: str, entries: list[Entry], batch_size: int = 1000) -> None:
        self.clock = FakeClock(T0)
        self.store = MemoryBackend(name, wall_clock=lambda: self.clock.now().timestamp())
        self.plan = FaultPlan(thief_ttl=15.0)
        backend = FaultyBackend(self.store, self.plan)
        config = Config({e.name: e for e in entries})
        settings = SchedulerSettings(node="a", lease_ttl=10, batch_size=batch_size)
        self.beat = Scheduler(backend, lambda: config, self.clock, settings)
        worker_settings = WorkerSettings(concurrency=2, pool="thread", consumer="w")
        self.worker = Worker(backend, registry, worker_settings, self.clock)
        self.thread = threading.Thread(target=self.worker.run, name="worker")
        self.thread.start()

    def run_for(self, seconds: float) -> None:
        """The scheduler's loop for `seconds` of fake time (as `beatd.scheduler.run_for`), the
        worker nudged after each step and every queued run settled before time moves on."""
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            delay = self.beat.step()
            self.worker.nudge()
            wait_for(self._settled, timeout=20, what="the worker to settle every published run")
            self.clock.advance(min(delay, end - self.clock.monotonic()))

    def _settled(self) -> bool:
        with RAN_LOCK:
            ran = len(RAN)
        acked = self.worker.stats.count(Outcome.SUCCEEDED)
        return self.store.queue_depths() == {} and acked == ran

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def published(self) -> int:
        return self.beat.counts.totals()["published"]


@pytest.fixture
def deploy() -> Iterator[Callable[..., Deployment]]:
    with RAN_LOCK:
        RAN.clear()
    names: list[str] = []
    made: list[Deployment] = []

    def make(entries: list[Entry], batch_size: int = 1000) -> Deployment:
        names.append(f"pair-{uuid.uuid4().hex}")
        made.append(Deployment(names[-1], entries, batch_size))
        return made[-1]

    yield make
    for deployment in made:
        if deployment.thread.is_alive():
            deployment.stop()
    for name in names:
        discard(name)


def test_published_runs_are_run_and_acknowledged_once(
    deploy: Callable[..., Deployment],
) -> None:
    pair = deploy([every("tick", 10), every("tock", 15)])
    pair.run_for(51)
    pair.stop()
    until = T0 + timedelta(seconds=51)
    assert Counter(RAN) == Counter(slots("tick", 10, until) | slots("tock", 15, until))
    assert pair.worker.stats.count(Outcome.SUCCEEDED) == len(RAN) == pair.published() == 8
    assert pair.store.queue_depths() == {} and pair.store.dead_letters() == []


def test_a_commit_that_failed_after_writing_is_run_and_counted_once(
    deploy: Callable[..., Deployment],
) -> None:
    pair = deploy([every("tick", 10)])
    pair.run_for(5)  # leads, adopts the configuration
    pair.plan.inject("commit", Fault.FAIL_AFTER_WRITE)
    # tick@:10 is published, its reply lost: held in doubt, decided again after the backoff,
    # refused by the compare-and-set, and counted as applied
    pair.run_for(30)
    pair.stop()
    assert pair.plan.injected == [("commit", Fault.FAIL_AFTER_WRITE)]
    assert Counter(RAN) == Counter(slots("tick", 10, T0 + timedelta(seconds=35)))
    assert pair.published() == len(RAN) == 3
    assert pair.beat.totals.backend_up


def test_a_lease_lost_mid_burst_publishes_no_slot_twice(
    deploy: Callable[..., Deployment],
) -> None:
    entries = [every(f"e{n:02d}", 10) for n in range(30)]
    pair = deploy(entries, batch_size=10)
    pair.run_for(5)  # leads, adopts the configuration
    pair.plan.inject("commit", Fault.LOSE_LEASE, after=1)  # the burst's second batch
    pair.run_for(50)  # the thief's lease lapses; this node leads again and catches up
    pair.stop()
    assert pair.plan.injected == [("commit", Fault.LOSE_LEASE)]
    assert pair.plan.thief is not None and pair.plan.thief.node == THIEF
    assert pair.beat.lease is not None and pair.beat.lease.epoch > pair.plan.thief.epoch
    expected = set().union(*(slots(e.name, 10, T0 + timedelta(seconds=55)) for e in entries))
    assert Counter(RAN) == Counter(expected)  # every slot once: none lost, none twice
    assert pair.published() == len(RAN) == 150


def test_a_delayed_commit_reply_holds_the_scheduler_not_the_worker(
    deploy: Callable[..., Deployment],
) -> None:
    pair = deploy([every("tick", 10)])
    pair.run_for(5)  # leads, adopts the configuration
    pair.plan.inject("commit", Fault.DELAY_REPLY)
    pair.clock.advance(5)  # tick@:10 is due
    stepping = threading.Thread(target=pair.beat.step, name="scheduler")
    stepping.start()
    assert pair.plan.holding.wait(10), "the scheduler never waited for the commit's reply"
    pair.worker.nudge()  # the run was written: the worker runs it while the reply is held
    wait_for(lambda: RAN == ["tick@2026-03-01T12:00:10Z"], what="the worker to run tick@:10")
    assert stepping.is_alive() and pair.published() == 0
    pair.plan.release()
    stepping.join(10)
    assert not stepping.is_alive()
    assert pair.published() == 1 and pair.beat.totals.backend_up
