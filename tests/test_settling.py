"""Settling runs on a real SQLite file with a FakeClock: no pool, no worker loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from beatd.backends.base import BeatdQueue, Delivery, Outgoing
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.errors import TransientBackendError
from beatd.message import RunMessage
from beatd.pool import Reply
from beatd.settling import Outcome, Settler, WorkerStats
from beatd.tasks import Task

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def add(a: int, b: int) -> int:
    return a + b


@dataclass(eq=False)
class Started:
    """A run as the worker hands it to the settler (its Job, without a slot)."""

    delivery: Delivery
    message: RunMessage
    task: Task[..., Any]
    started: float
    timed_out: bool = False
    lost: bool = False


class FailingWrites(SQLiteBackend):
    """A real SQLite backend whose next `failures` acks and dead letters fail (disk full)."""

    failures = 0

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientBackendError(f"{self.path}: database or disk is full")

    def ack(self, delivery: Delivery) -> None:
        self._maybe_fail()
        super().ack(delivery)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._maybe_fail()
        super().dead_letter(delivery, reason)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[FailingWrites]:
    handle = FailingWrites(tmp_path / "beatd.db")
    yield handle
    handle.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def claimed(backend: SQLiteBackend, attempt: int = 1) -> tuple[Delivery, RunMessage]:
    message = RunMessage("sum@1", "jobs.add", "sum", START, START, "default", attempt=attempt)
    backend.enqueue([Outgoing("sum", "sum@1", BeatdQueue("default"), message.to_json())])
    delivery = backend.claim(["default"], "test", 30)
    assert delivery is not None
    return delivery, message


def outcome_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " outcome=" in r.getMessage()]


def test_a_refused_write_is_retried_with_backoff_and_reported_once(
    backend: FailingWrites, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stats = WorkerStats()
    settler = Settler(backend, clock, stats, max_backoff=5.0)
    delivery, message = claimed(backend)
    run = Started(delivery, message, Task("jobs.add", add), clock.monotonic())
    backend.failures = 3
    with caplog.at_level("INFO", logger="beatd.worker"):
        settler.replied(run, Reply("ok", "3"))
        retries = []
        while settler.unsettled:
            assert settler.held() == [delivery]  # its claim is kept alive meanwhile
            assert stats.count(Outcome.SUCCEEDED) == 0  # reported once written, not before
            retry_at = settler.next_retry()
            assert retry_at is not None
            retries.append(retry_at - clock.monotonic())
            clock.advance(retry_at - clock.monotonic())
            settler.retry_due(clock.monotonic())
    assert retries == [1.0, 2.0, 4.0]
    assert (stats.count(Outcome.SUCCEEDED), backend.queue_depths()) == (1, {})
    assert outcome_lines(caplog) == [
        "task=jobs.add id=sum@1 attempt=1 outcome=succeeded duration=0.000s"  # the task's time
    ]


@pytest.mark.parametrize(
    ("attempt", "outcome", "line"),
    [
        (
            1,
            Outcome.RETRIED,
            "task=jobs.add id=sum@1 attempt=1 outcome=retried duration=0.000s retry_in=2s "
            "error=ValueError: boom",
        ),
        (
            2,
            Outcome.FAILED,
            "task=jobs.add id=sum@1 attempt=2 outcome=failed duration=0.000s "
            "reason=failed after 2 attempt(s): ValueError: boom",
        ),
    ],
    ids=["retries_left", "retries_spent"],
)
def test_a_failure_is_retried_while_retries_are_left(
    backend: FailingWrites,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    attempt: int,
    outcome: Outcome,
    line: str,
) -> None:
    stats = WorkerStats()
    settler = Settler(backend, clock, stats, max_backoff=5.0)
    delivery, message = claimed(backend, attempt)
    run = Started(delivery, message, Task("jobs.add", add, max_retries=1), clock.monotonic())
    with caplog.at_level("INFO", logger="beatd.worker"):
        settler.replied(run, Reply("error", "ValueError: boom"))
    assert stats.count(outcome) == 1
    assert outcome_lines(caplog) == [line]
    dead = [(d.id, d.reason) for d in backend.dead_letters()]
    failed = outcome is Outcome.FAILED
    assert dead == ([("sum@1", "failed after 2 attempt(s): ValueError: boom")] if failed else [])
    assert backend.queue_depths() == ({} if failed else {"default": 1})


def test_a_crash_writes_nothing_and_is_reported_at_once(
    backend: FailingWrites, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stats = WorkerStats()
    settler = Settler(backend, clock, stats, max_backoff=5.0)
    delivery, message = claimed(backend)
    run = Started(delivery, message, Task("jobs.add", add), clock.monotonic())
    clock.advance(0.25)
    with caplog.at_level("INFO", logger="beatd.worker"):
        settler.crashed(run, "child pid=7 was killed by SIGKILL", max_deliveries=5)
    assert (stats.count(Outcome.CRASHED), stats.last_failure) == (1, {"sum": clock.now()})
    assert outcome_lines(caplog) == [
        "task=jobs.add id=sum@1 attempt=1 outcome=crashed duration=0.250s deliveries=1 "
        "reason=child pid=7 was killed by SIGKILL; delivered again after the visibility "
        "timeout, dead-lettered after 5 deliveries"
    ]
    assert backend.dead_letters() == [] and settler.unsettled == []
    assert backend.claim(["default"], "other", 30) is None  # still claimed: it lapses later
