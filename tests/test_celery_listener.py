"""The leader's Celery event listener against the in-memory backend's run history, fed the
payloads real workers published (tests/fixtures/celery_events); the Redis subscription and a
real worker are in tests/test_celery.py."""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.backends.memory import MemoryBackend, discard
from beatd.celery_listener import CeleryEventListener, CeleryEvents
from beatd.clock import FakeClock
from beatd.config import AmqpTarget, Config
from beatd.config.model import Entry
from beatd.core import Decision, Run
from beatd.errors import BackendError, NotApplied
from beatd.events import Adopted, Published, Status, SteppedDown, Stopped
from beatd.history import Attempt, HistoryQuery, RunRecord
from beatd.outcomes import Outcome
from beatd.schedules import OnceSchedule
from beatd.state import EntryState
from tests.waiting import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "celery_events"
FOREIGN = "0b1e6a3c-9d43-4d7e-a6a7-1c2d3e4f5a6b"
T0 = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
RUNS = ("ok@1", "fail@1", "retry@1", "exp@1", "slow@1")


def payloads(pool: str) -> list[bytes]:
    lines = (FIXTURES / f"{pool}.jsonl").read_text().splitlines()
    return [json.loads(line)["data"].encode() for line in lines]


class Heard:
    """A stand-in for the backend's subscription: hands out what a test queued, else waits."""

    url = "heard://test"

    def __init__(self) -> None:
        self.queued: deque[list[bytes] | Exception] = deque()
        self.stops = 0
        self.calls = 0
        self.lock = threading.Lock()

    def celery_events(self, timeout: float) -> list[bytes]:
        with self.lock:
            self.calls += 1
            item = self.queued.popleft() if self.queued else None
        if isinstance(item, Exception):
            raise item
        if item is None:
            threading.Event().wait(min(timeout, 0.01))
            return []
        return item

    def stop_celery_events(self) -> None:
        self.stops += 1


@pytest.fixture
def backend() -> MemoryBackend:
    discard("celery-listener")
    memory = MemoryBackend("celery-listener")
    lease = memory.acquire_lease("n1", 600)
    assert lease is not None
    publish(memory, lease, *RUNS)
    return memory


def publish(backend: MemoryBackend, lease: Lease, *ids: str) -> None:
    slot = T0
    writes, messages = [], []
    for rid in ids:
        entry = rid.partition("@")[0]
        writes.append(StateWrite(EntryState(entry, slot, slot, "once"), None))
        messages.append(Outgoing(entry, rid, BeatdQueue("celery"), "{}", slot, slot))
    assert backend.commit(lease, writes, messages) == set()


def listener(backend: MemoryBackend, source: Heard | None = None) -> CeleryEventListener:
    return CeleryEventListener(source or Heard(), backend, FakeClock(T0), poll=0.01)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_a_prefork_workers_events_become_the_runs_attempts(backend: MemoryBackend) -> None:
    ear = listener(backend)
    ear.handle(payloads("prefork"))
    runs = {rid: backend.run(rid) for rid in RUNS}
    assert {rid: r.status for rid, r in runs.items() if r is not None} == {
        "ok@1": "succeeded",
        "fail@1": "failed",
        "retry@1": "succeeded",
        "exp@1": "expired",
        "slow@1": "failed",
    }
    ok = runs["ok@1"]
    assert isinstance(ok, RunRecord)
    assert ok.received_at == at(1796434143.0082238)
    assert ok.attempts == (
        Attempt(
            1,
            "w1@test",
            "test",
            23518,
            at(1796434143.020527),
            at(1796434143.0213134),
            Outcome.SUCCEEDED,
        ),
    )
    retried = runs["retry@1"]
    assert retried is not None
    assert [(a.number, a.outcome, a.error_type, a.error) for a in retried.attempts] == [
        (1, "retried", "KeyError", "again"),
        (2, "succeeded", "", ""),
    ]
    failed = runs["fail@1"]
    assert failed is not None
    [attempt] = failed.attempts
    assert (attempt.error_type, attempt.error) == ("ValueError", "boom 'x'\nline2")
    # a time-limit kill is reported twice: one attempt, not a second one started at its end
    slow = runs["slow@1"]
    assert slow is not None
    assert [(a.outcome, a.reason, a.error_type) for a in slow.attempts] == [
        ("failed", "time_limit", "TimeLimitExceeded")
    ]
    expired = runs["exp@1"]
    assert expired is not None
    assert [(a.outcome, a.reason, a.consumer) for a in expired.attempts] == [
        ("expired", "expired", "")
    ]
    assert ear.stats.events == {
        "task-received": 6,
        "task-started": 6,
        "task-succeeded": 3,
        "task-failed": 3,
        "task-retried": 1,
        "task-revoked": 1,
    }
    assert ear.stats.last_received_at == T0  # the listener's clock: when it heard them
    # 17 events of beatd's runs: the repeated end is dropped, the retry's second task-received
    # changes nothing
    assert ear.stats.recorded == 15
    summary = backend.summaries(["retry"])["retry"]
    assert summary.last_status == "succeeded"


def test_events_of_tasks_beatd_did_not_publish_write_nothing(backend: MemoryBackend) -> None:
    before = backend.runs(backend_query())
    ear = listener(backend)
    foreign = [p for p in payloads("prefork") if FOREIGN.encode() in p]
    ear.handle([p for p in foreign if b"ok@1" not in p and b"slow@1" not in p])
    assert ear.stats.recorded == 0
    assert backend.run(FOREIGN) is None
    assert backend.runs(backend_query()) == before
    # ids of beatd's shape that the history does not hold are asked and write nothing
    ear.handle([p.replace(b"ok@1", b"gone@1") for p in payloads("solo")[:1]])
    assert backend.run("gone@1") is None


def backend_query() -> HistoryQuery:
    return HistoryQuery(limit=1000)


def test_hearing_the_same_events_again_writes_nothing(backend: MemoryBackend) -> None:
    ear = listener(backend)
    ear.handle(payloads("solo"))
    recorded, records = ear.stats.recorded, [backend.run(rid) for rid in RUNS]
    ear.handle(payloads("solo"))
    assert ear.stats.recorded == recorded
    assert [backend.run(rid) for rid in RUNS] == records


def test_the_thread_listens_until_stopped_and_comes_back_after_an_outage(
    backend: MemoryBackend,
) -> None:
    source = Heard()
    outage, bug = NotApplied("redis://x: unreachable"), RuntimeError("a bug")
    source.queued.extend([outage, bug, payloads("solo")])
    ear = listener(backend, source)
    ear.start()
    try:
        wait_for(lambda: ear.stats.recorded >= 14, 10, "the solo worker's events recorded")
        assert listening(ear)
    finally:
        ear.stop(wait=5)
    assert not ear.running and not ear.stats.listening
    assert source.stops == 2  # after the unexpected error, and at the end
    record = backend.run("retry@1")
    assert record is not None and record.status == "succeeded"


def running(ear: CeleryEventListener) -> bool:
    return ear.running


def listening(ear: CeleryEventListener) -> bool:
    return ear.running and ear.stats.listening


def entry(name: str, protocol: str) -> Entry:
    return Entry(name, "t", OnceSchedule(T0), queue="q", protocol=protocol)


def test_the_observer_listens_while_leading_celery_entries(backend: MemoryBackend) -> None:
    ear = listener(backend)
    observer = CeleryEvents(ear)
    beatd_only = Config({"b": entry("b", "beatd")})
    both = Config({"b": entry("b", "beatd"), "c": entry("c", "celery")})
    try:
        observer.notify(Adopted(beatd_only))
        assert not running(ear)
        observer.notify(Adopted(both))
        assert running(ear)
        runs = tuple(Run(both.entries["c"], T0 + timedelta(minutes=m), T0, False) for m in (1, 2))
        state = EntryState("c", T0, T0, "once")
        decisions = [Decision(both.entries["c"], None, state, runs)]
        decisions.append(Decision(both.entries["b"], None, state, runs[:1]))
        observer.notify(Published(T0, decisions))
        assert ear.stats.published == 2  # the Celery entry's runs only
        observer.notify(SteppedDown(Status(True, False, 2, "memory://")))
        assert not running(ear)
        observer.notify(Adopted(both))
        assert running(ear)
        observer.notify(Adopted(beatd_only))  # reloaded without Celery entries
        assert not running(ear)
        observer.notify(Adopted(both))
        observer.notify(Stopped())  # the daemon stops: the thread has ended
        assert ear._thread is not None and not ear._thread.is_alive()
    finally:
        ear.stop(wait=5)


def test_the_observer_listens_while_leading_celery_entries_on_rabbitmq(
    backend: MemoryBackend,
) -> None:
    """Runs for RabbitMQ go to the outbox, but they are Celery's: their events are heard."""
    ear = listener(backend)
    observer = CeleryEvents(ear)
    rabbit = replace(entry("r", "celery"), amqp=AmqpTarget("amqp://guest@127.0.0.1:5672//"))
    amqp_only = Config({"r": rabbit})
    try:
        observer.notify(Adopted(amqp_only))
        assert running(ear)
        state = EntryState("r", T0, T0, "once")
        observer.notify(
            Published(T0, [Decision(rabbit, None, state, (Run(rabbit, T0, T0, False),))])
        )
        assert ear.stats.published == 1
    finally:
        ear.stop(wait=5)


def test_an_outage_is_logged_once_and_counted_once(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Each try during an outage may fail differently (the connection lost, then refused): one
    warning when it begins, one line when it ends, one count; a permanent error found while
    trying again is said too, once."""
    source = Heard()
    lost, refused = NotApplied("amqp://x: connection lost"), NotApplied("amqp://x: refused")
    denied = BackendError("amqp://x: refused the login")
    solo = payloads("solo")
    source.queued.extend([lost, refused, refused, denied, denied, solo[:1], refused, solo[1:]])
    ear = listener(backend, source)
    ear.max_backoff = 0.01
    caplog.set_level(logging.DEBUG, "beatd.celery_listener")
    ear.start()
    try:
        wait_for(lambda: ear.stats.recorded >= 14, 10, "the solo worker's events recorded")
    finally:
        ear.stop(wait=5)
    said = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.INFO and not r.getMessage().startswith("listening to")
    ]
    warning = (
        "Celery task events: unavailable, listening again with backoff (events sent meanwhile "
        "are lost: their runs stay unknown): "
    )
    assert said == [
        ("WARNING", warning + "amqp://x: connection lost"),
        ("ERROR", "Celery task events: amqp://x: refused the login"),
        ("INFO", "hearing Celery's task events again on heard://test"),
        ("WARNING", warning + "amqp://x: refused"),
        ("INFO", "hearing Celery's task events again on heard://test"),
        ("INFO", "stopped listening to Celery's task events"),
    ]
    assert ear.stats.interruptions == 2


def test_the_source_is_still_read_while_the_history_cannot_be_written(
    backend: MemoryBackend,
) -> None:
    """A history outage must not stop the reading: unread, a RabbitMQ connection misses its
    heartbeats and is closed with its queue, and a Redis subscriber's output buffer overflows.
    What was read waits (up to PENDING_LIMIT) and is written when the history is back."""
    plan = FaultPlan()
    plan.inject("run_received", Fault.FAIL_BEFORE_WRITE, times=100)
    source = Heard()
    solo = payloads("solo")
    source.queued.extend([solo[:1], [], solo[1:2], [], solo[2:]])
    ear = CeleryEventListener(
        source, FaultyBackend(backend, plan), FakeClock(T0), poll=0.01, max_backoff=0.01
    )
    ear.start()
    try:
        wait_for(lambda: not source.queued, 10, "every batch read")
        assert ear.stats.recorded == 0 and len(plan.injected) < 100  # the history still fails
        assert ear.stats.listening  # the subscription holds through the history's outage
        wait_for(lambda: ear.stats.recorded >= 14, 20, "the solo worker's events recorded")
    finally:
        ear.stop(wait=5)
    assert ear.stats.interruptions == 1 and ear.stats.write_errors == 0
    record = backend.run("retry@1")
    assert record is not None and record.status == "succeeded"
