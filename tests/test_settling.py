"""Settling runs on a real SQLite file with a FakeClock: no pool, no worker loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from beatd.backends.base import BeatdQueue, Delivery, Outgoing, StateWrite
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.errors import TransientBackendError
from beatd.history import ERROR_LIMIT, LOST, Ending
from beatd.message import RunMessage
from beatd.pool import Reply
from beatd.settling import Outcome, Settler, WorkerStats
from beatd.state import EntryState
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

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._maybe_fail()
        super().ack(delivery, ending)

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        self._maybe_fail()
        super().dead_letter(delivery, reason, ending)

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        self._maybe_fail()
        super().note_ending(delivery, ending)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> Iterator[FailingWrites]:
    handle = FailingWrites(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    yield handle
    handle.close()


def claimed(
    backend: SQLiteBackend, attempt: int = 1, published: bool = False
) -> tuple[Delivery, RunMessage]:
    """A claimed run; `published` by a leader's commit, so that the history holds its record."""
    message = RunMessage("sum@1", "jobs.add", "sum", START, START, "default", attempt=attempt)
    if published:
        lease = backend.acquire_lease("leader", 60)
        assert lease is not None
        outgoing = Outgoing("sum", "sum@1", BeatdQueue("default"), message.to_json(), START, START)
        backend.commit(lease, [StateWrite(EntryState("sum", START, START, "i"), None)], [outgoing])
    else:
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


# --- the run history: each attempt ends in the worker's words, with its settling write -----------


def ended(backend: SQLiteBackend) -> list[tuple[str | None, str, str, str]]:
    record = backend.run("sum@1")
    assert record is not None
    return [(a.outcome, a.reason, a.error_type, a.error) for a in record.attempts]


def timed_out(task: Task[..., Any], backend: FailingWrites, clock: FakeClock) -> Started:
    delivery, message = claimed(backend, published=True)
    return Started(delivery, message, task, clock.monotonic(), timed_out=True)


LIMITED = Task("jobs.add", add, max_retries=1, time_limit=5)
OVER = "ran over its time limit of 5s"


@pytest.mark.parametrize(
    ("attempt", "reply", "ending"),
    [
        (1, Reply("ok", "3"), ("succeeded", "", "", "")),
        (1, Reply("error", "ValueError: boom"), ("retried", "", "ValueError", "boom")),
        (2, Reply("error", "ValueError: boom"), ("failed", "", "ValueError", "boom")),
        (1, Reply("retry", "not yet", countdown=3), ("retried", "", "Retry", "not yet")),
        (1, Reply("error", "KeyError: "), ("retried", "", "KeyError", "")),
        (1, Reply("error", "no type here"), ("retried", "", "", "no type here")),
        (
            1,
            Reply("error", "OSError: " + "x" * 2000),
            ("retried", "", "OSError", "x" * (ERROR_LIMIT - 1) + "…"),
        ),
    ],
    ids=[
        "succeeded",
        "retried",
        "failed",
        "retry_asked",
        "empty_message",
        "no_type",
        "message_cut",
    ],
)
def test_a_reply_ends_the_attempt_in_the_history_with_its_settling_write(
    backend: FailingWrites,
    clock: FakeClock,
    attempt: int,
    reply: Reply,
    ending: tuple[str, str, str, str],
) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    delivery, message = claimed(backend, attempt, published=True)
    run = Started(delivery, message, Task("jobs.add", add, max_retries=1), clock.monotonic())
    settler.replied(run, reply)
    assert ended(backend) == [ending]


@pytest.mark.parametrize(
    ("attempt", "outcome"), [(1, "retried"), (2, "failed")], ids=["retried", "failed"]
)
def test_a_time_limit_kill_is_a_failure_with_reason_time_limit(
    backend: FailingWrites, clock: FakeClock, attempt: int, outcome: str
) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    delivery, message = claimed(backend, attempt, published=True)
    run = Started(delivery, message, LIMITED, clock.monotonic(), timed_out=True)
    settler.crashed(run, "child pid=7 was killed by SIGKILL", max_deliveries=5)
    how = f"{OVER}; child pid=7 was killed by SIGKILL"
    assert ended(backend) == [(outcome, "time_limit", "TimeLimitExceeded", how)]


def test_a_thread_interrupted_over_its_time_limit_fails_with_reason_time_limit(
    backend: FailingWrites, clock: FakeClock
) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    run = timed_out(LIMITED, backend, clock)
    settler.replied(run, Reply("error", "TimeLimitExceeded: interrupted"))
    assert ended(backend) == [("retried", "time_limit", "TimeLimitExceeded", OVER)]


def test_runs_that_never_started_end_expired_or_dead_lettered_with_the_reason(
    backend: FailingWrites, clock: FakeClock
) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    delivery, message = claimed(backend, published=True)
    settler.expired(delivery, message)
    assert ended(backend) == [("expired", "", "", "")]
    other = FailingWrites(backend.path.with_name("other.db"))
    delivery, message = claimed(other, published=True)
    Settler(other, clock, WorkerStats(), max_backoff=5.0).rejected(delivery, message, "no task")
    assert ended(other) == [("dead_lettered", "no task", "", "")]
    other.close()


def test_a_released_run_says_why(backend: FailingWrites, clock: FakeClock) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    delivery, message = claimed(backend, published=True)
    run = Started(delivery, message, Task("jobs.add", add), clock.monotonic())
    settler.released(run, "the worker stopped before the task finished")
    assert ended(backend) == [("released", "the worker stopped before the task finished", "", "")]


def test_a_crash_is_noted_so_the_next_claim_does_not_call_the_attempt_lost(
    backend: FailingWrites, clock: FakeClock
) -> None:
    settler = Settler(backend, clock, WorkerStats(), max_backoff=5.0)
    delivery, message = claimed(backend, published=True)
    run = Started(delivery, message, Task("jobs.add", add), clock.monotonic())
    settler.crashed(run, "child pid=7 was killed by SIGKILL", max_deliveries=5)
    crashed = ("crashed", "child pid=7 was killed by SIGKILL", "", "")
    assert ended(backend) == [crashed]
    assert backend.claim(["default"], "other", 30) is None  # the claim is left to lapse
    clock.advance(31)
    assert backend.claim(["default"], "other", 30) is not None
    assert ended(backend) == [crashed, (None, "", "", "")]


def test_a_refused_crash_note_is_logged_once_and_not_written_again(
    backend: FailingWrites, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stats = WorkerStats()
    settler = Settler(backend, clock, stats, max_backoff=5.0)
    delivery, message = claimed(backend, published=True)
    run = Started(delivery, message, Task("jobs.add", add), clock.monotonic())
    backend.failures = 1
    with caplog.at_level("WARNING", logger="beatd.worker"):
        settler.crashed(run, "child pid=7 was killed by SIGKILL", max_deliveries=5)
    assert [r.getMessage() for r in caplog.records if "history" in r.getMessage()] == [
        "id=sum@1 outcome=crashed not written to the run history (the next claim records the "
        f"attempt as lost): {backend.path}: database or disk is full"
    ]
    assert (settler.unsettled, stats.count(Outcome.CRASHED)) == ([], 1)
    assert ended(backend) == [(None, "", "", "")]  # still open: the next claim ends it lost
    clock.advance(31)
    assert backend.claim(["default"], "other", 30) is not None
    assert ended(backend) == [(LOST, "", "", ""), (None, "", "", "")]
