"""The run history's contract (beatd.history, `RunHistory` and the history paragraphs of
`StateStore.commit` and `WorkQueue` in beatd/backends/base.py), run against every backend as
part of `BackendContract`.

Besides the fixtures `BackendContract` asks for, a backend's test module provides
`history_off_backend`: a handle on the same storage as `backend`, opened with `history=False`.

Times the backend takes from its own clock are checked to lie between two readings of
`server_time()` taken around the call, so the tests hold for a fake clock and a real one alike.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from beatd.backends.base import (
    Backend,
    BeatdQueue,
    CeleryQueue,
    Delivery,
    Lease,
    Outgoing,
    StateWrite,
)
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.errors import NotApplied, OutcomeUnknown
from beatd.history import (
    LOST,
    TIME_LIMIT,
    Attempt,
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    MissedSlots,
    Retention,
    RunKind,
    RunRecord,
    RunStatus,
)
from beatd.outcomes import Outcome
from beatd.state import EntryState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST, PID = socket.gethostname(), os.getpid()


def slot_of(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def run_id(entry: str, minute: int) -> str:
    return f"{entry}@{slot_of(minute):%Y-%m-%dT%H:%M:%SZ}"


def run(
    entry: str,
    minute: int,
    queue: str = "default",
    *,
    jitter: float = 0.0,
    kind: RunKind = RunKind.SCHEDULED,
) -> Outgoing:
    """A scheduler's run of `entry` at slot `minute`: published with its record."""
    slot = slot_of(minute)
    rid = run_id(entry, minute)
    return Outgoing(
        entry, rid, BeatdQueue(queue), f'{{"id": "{rid}"}}', slot, slot + timedelta(seconds=jitter)
    )._replace(kind=kind)


def missed(entry: str, reason: str, first: int, last: int) -> MissedSlots:
    return MissedSlots(entry, reason, slot_of(first), slot_of(last), last - first + 1)


def lead(backend: Backend) -> Lease:
    lease = backend.acquire_lease("a", 600)
    assert lease is not None
    return lease


def publish(
    backend: Backend | FaultyBackend,
    lease: Lease,
    *runs: Outgoing,
    gone: tuple[MissedSlots, ...] = (),
) -> None:
    """Commit `runs` (and the missed slots `gone`), each entry's horizon moved on from where it
    stands to its newest slot here."""
    states = backend.load_states()
    horizon: dict[str, datetime] = {}
    for r in runs:
        assert r.slot is not None
        horizon[r.entry] = max(r.slot, horizon.get(r.entry, r.slot))
    for m in gone:
        horizon[m.entry] = max(m.last, horizon.get(m.entry, m.last))
    writes = []
    for entry, last in horizon.items():
        current = states.get(entry)
        expected = current.last_slot if current is not None else None
        last = max(last, expected) if expected is not None else last
        if expected is not None and last == expected:
            last += timedelta(seconds=1)  # a write must move the horizon
        mine = tuple(m for m in gone if m.entry == entry)
        writes.append(StateWrite(EntryState(entry, last, last, "every 60s"), expected, mine))
    assert backend.commit(lease, writes, list(runs)) == set()


def instant(backend: Backend) -> datetime:
    return datetime.fromtimestamp(backend.server_time(), UTC)


@contextmanager
def window(backend: Backend) -> Iterator[list[datetime]]:
    """The backend's clock read before and after the block: [before, after]."""
    bounds = [instant(backend)]
    yield bounds
    bounds.append(instant(backend))


def within(moment: datetime | None, bounds: list[datetime]) -> bool:
    # a backend may store microseconds: allow the reading's own rounding
    slack = timedelta(milliseconds=1)
    return moment is not None and bounds[0] - slack <= moment <= bounds[1] + slack


def record(backend: Backend, rid: str) -> RunRecord:
    found = backend.run(rid)
    assert found is not None, f"no record of run {rid}"
    return found


def claimed(backend: Backend, queue: str, consumer: str, visibility: float = 60) -> Delivery:
    delivery = backend.claim([queue], consumer, visibility)
    assert delivery is not None
    return delivery


def finish_all(backend: Backend, queue: str = "default") -> None:
    """Claim and ack every run queued in `queue`: their records are finished."""
    while (delivery := backend.claim([queue], "w", 60)) is not None:
        backend.ack(delivery)


def settle(
    backend: Backend | FaultyBackend, how: str, delivery: Delivery, ending: Ending | None
) -> None:
    """Settle `delivery` with the step `how` (ack, retry, dead_letter, release)."""
    if how == "ack":
        backend.ack(delivery, ending)
    elif how == "retry":
        backend.retry(delivery, delivery.body, 600, ending)
    elif how == "dead_letter":
        backend.dead_letter(delivery, "boom", ending)
    else:
        backend.release(delivery, ending)


SETTLING_DEFAULTS = {
    "ack": Outcome.SUCCEEDED,
    "retry": Outcome.RETRIED,
    "dead_letter": Outcome.DEAD_LETTERED,
    "release": Outcome.RELEASED,
}
EXPLICIT = {
    "ack": Ending.failure(Outcome.FAILED, "ValueError", "bad input"),
    "retry": Ending.failure(Outcome.RETRIED, "TimeoutError", "took too long", TIME_LIMIT),
    "dead_letter": Ending(Outcome.DEAD_LETTERED, "unreadable"),
    "release": Ending(Outcome.CRASHED, "", "WorkerLost", "signal 9"),
}


class HistoryContract:
    # --- what commit writes -----------------------------------------------------------------

    def test_commit_records_each_published_run(self, backend: Backend) -> None:
        lease = lead(backend)
        with window(backend) as bounds:
            publish(backend, lease, run("e", 1, jitter=7), run("f", 1, kind=RunKind.CAUGHT_UP))
        e, f = record(backend, run_id("e", 1)), record(backend, run_id("f", 1))
        assert within(e.published_at, bounds)
        assert e == RunRecord(
            run_id("e", 1), "e", slot_of(1), slot_of(1) + timedelta(seconds=7),
            e.published_at, "a", lease.epoch, RunKind.SCHEDULED,
        )  # fmt: skip
        assert (f.kind, f.due, f.celery, f.attempts) == (RunKind.CAUGHT_UP, slot_of(1), False, ())
        assert e.status == RunStatus.QUEUED and not e.finished
        assert backend.history_size() == (2, 0)

    def test_a_message_without_a_slot_gets_no_record(self, backend: Backend) -> None:
        lease = lead(backend)
        requeue = run("e", 1)._replace(slot=None, due=None)
        publish(backend, lease, run("f", 1))
        assert backend.commit(lease, [], [requeue]) == set()
        backend.enqueue([run("g", 1)._replace(slot=None, due=None)])
        assert backend.run(run_id("e", 1)) is None
        assert backend.run(run_id("g", 1)) is None
        assert backend.history_size() == (1, 0)

    def test_a_celery_run_is_recorded_as_celery(self, backend: Backend) -> None:
        if not backend.accepts(CeleryQueue):
            pytest.skip("this backend publishes no Celery messages")
        lease = lead(backend)
        celery = run("c", 1)._replace(destination=CeleryQueue("celery"), body="{}")
        publish(backend, lease, celery)
        assert record(backend, run_id("c", 1)).celery
        assert record(backend, run_id("c", 1)).status == RunStatus.UNKNOWN

    def test_a_run_committed_to_the_amqp_outbox_is_recorded_as_celery(
        self, backend: Backend, history_off_backend: Backend
    ) -> None:
        """An outbox run is a Celery task on RabbitMQ: its attempts come from task events, and
        one no event reached is `unknown`, not `queued` -- also once the relay removed it."""
        lease = lead(backend)
        publish(backend, lease, run("c", 1, OUTBOX_QUEUE), run("c", 2, OUTBOX_QUEUE))
        assert record(backend, run_id("c", 1)).celery
        relay = history_off_backend
        relay.ack(claimed(relay, OUTBOX_QUEUE, "amqp-relay"))
        relayed, waiting = record(backend, run_id("c", 1)), record(backend, run_id("c", 2))
        assert (relayed.celery, relayed.status) == (True, RunStatus.UNKNOWN)
        assert (waiting.celery, waiting.status) == (True, RunStatus.UNKNOWN)

    def test_a_skipped_write_records_nothing(self, backend: Backend) -> None:
        lease = lead(backend)
        publish(backend, lease, run("e", 5))
        stale = StateWrite(
            EntryState("e", slot_of(7), slot_of(7), "every 60s"),
            slot_of(4),
            (missed("e", "skipped", 6, 6),),
        )
        assert backend.commit(lease, [stale], [run("e", 7)]) == {"e"}
        assert backend.run(run_id("e", 7)) is None
        assert backend.missed() == []
        assert backend.history_size() == (1, 0)

    def test_each_missed_item_of_an_applied_write_is_one_record(self, backend: Backend) -> None:
        lease = lead(backend)
        gone = (missed("e", "skipped", 1, 3), missed("e", "beyond_catch_up", 4, 9))
        with window(backend) as bounds:
            publish(backend, lease, run("e", 10), gone=gone)
        records = backend.missed()
        assert sorted(r.slots for r in records) == sorted(gone)
        for r in records:
            assert within(r.recorded_at, bounds)
            assert (r.node, r.epoch, r.overdue_at) == ("a", lease.epoch, None)
        assert backend.history_size() == (1, 2)

    def test_a_record_already_held_is_left_as_it_is(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        first = lead(backend)
        publish(backend, first, run("e", 1), gone=(missed("e", "skipped", 0, 0),))
        before = record(backend, run_id("e", 1))
        backend.release_lease(first)
        other = backend_factory()
        second = other.acquire_lease("b", 600)
        assert second is not None
        again = missed("e", "skipped", 0, 0)._replace(total=5)
        publish(other, second, run("e", 1, jitter=3, kind=RunKind.CAUGHT_UP), gone=(again,))
        assert record(backend, run_id("e", 1)) == before
        [kept] = backend.missed()
        assert (kept.slots.total, kept.node, kept.epoch) == (1, "a", first.epoch)

    # --- what the queue steps write -------------------------------------------------------------

    def test_claim_appends_an_attempt(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        with window(backend) as bounds:
            claimed(backend, "q", "w1")
        [attempt] = record(backend, run_id("e", 1)).attempts
        assert within(attempt.started_at, bounds)
        assert attempt == Attempt(1, "w1", HOST, PID, attempt.started_at)
        assert record(backend, run_id("e", 1)).status == RunStatus.RUNNING

    def test_a_run_the_history_does_not_know_is_never_recorded(self, backend: Backend) -> None:
        backend.enqueue([run("e", 1, "q")])  # a worker's requeue of a run never published here
        delivery = claimed(backend, "q", "w1")
        backend.note_ending(delivery, Ending(Outcome.CRASHED))
        backend.ack(delivery)
        assert backend.run(run_id("e", 1)) is None
        assert backend.summaries() == {}
        assert backend.history_size() == (0, 0)

    def test_a_lapsed_claim_claimed_again_ends_the_open_attempt_lost(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        claimed(backend, "q", "w1", 1 * unit)
        advance(1.5 * unit)
        with window(backend) as bounds:
            claimed(backend, "q", "w2")
        first, second = record(backend, run_id("e", 1)).attempts
        assert (first.number, first.consumer, first.outcome) == (1, "w1", LOST)
        assert first.ended_at is not None and within(first.ended_at, bounds)
        assert (second.number, second.consumer, second.outcome) == (2, "w2", None)
        assert within(second.started_at, bounds)
        assert record(backend, run_id("e", 1)).status == RunStatus.RUNNING

    @pytest.mark.parametrize("how", list(SETTLING_DEFAULTS))
    def test_a_settling_step_ends_the_attempt_with_its_own_outcome(
        self, backend: Backend, how: str
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        delivery = claimed(backend, "q", "w1")
        with window(backend) as bounds:
            settle(backend, how, delivery, None)
        [attempt] = record(backend, run_id("e", 1)).attempts
        assert within(attempt.ended_at, bounds)
        assert attempt == Attempt(
            1, "w1", HOST, PID, attempt.started_at, attempt.ended_at, SETTLING_DEFAULTS[how]
        )
        final = how in ("ack", "dead_letter")
        assert record(backend, run_id("e", 1)).finished is final
        assert set(backend.summaries()) == ({"e"} if final else set())

    @pytest.mark.parametrize("how", list(EXPLICIT))
    def test_a_settling_step_ends_the_attempt_as_told(self, backend: Backend, how: str) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        settle(backend, how, claimed(backend, "q", "w1"), EXPLICIT[how])
        [attempt] = record(backend, run_id("e", 1)).attempts
        ending = EXPLICIT[how]
        assert (attempt.outcome, attempt.reason, attempt.error_type, attempt.error) == (
            ending.outcome,
            ending.reason,
            ending.error_type,
            ending.error,
        )

    @pytest.mark.parametrize("how", list(EXPLICIT))
    def test_the_fault_wrapper_passes_endings_through(
        self, backend: Backend, faulty: FaultyBackend, how: str
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        settle(faulty, how, claimed(backend, "q", "w1"), EXPLICIT[how])
        [attempt] = record(backend, run_id("e", 1)).attempts
        assert attempt.outcome == EXPLICIT[how].outcome
        assert (attempt.reason, attempt.error_type) == (
            EXPLICIT[how].reason,
            EXPLICIT[how].error_type,
        )

    @pytest.mark.parametrize("how", [*SETTLING_DEFAULTS, "note_ending"])
    def test_a_step_after_the_claim_was_lost_writes_no_end(
        self, backend: Backend, advance: Callable[[float], None], unit: float, how: str
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        first = claimed(backend, "q", "w1", 1 * unit)
        advance(1.5 * unit)
        claimed(backend, "q", "w2")
        before = record(backend, run_id("e", 1))
        if how == "note_ending":
            backend.note_ending(first, Ending(Outcome.CRASHED))
        else:
            settle(backend, how, first, None)
        assert record(backend, run_id("e", 1)) == before
        assert [a.outcome for a in before.attempts] == [LOST, None]
        assert backend.summaries() == {}

    def test_an_ending_noted_then_claimed_again_is_not_lost(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        delivery = claimed(backend, "q", "w1", 1 * unit)
        crashed = Ending(Outcome.CRASHED, "", "WorkerLost", "signal 9")
        with window(backend) as bounds:
            backend.note_ending(delivery, crashed)
        backend.note_ending(delivery, crashed)  # repeated: harmless
        [attempt] = record(backend, run_id("e", 1)).attempts
        assert (attempt.outcome, attempt.error_type, attempt.error) == (
            Outcome.CRASHED,
            "WorkerLost",
            "signal 9",
        )
        assert within(attempt.ended_at, bounds)
        assert backend.claim(["q"], "w2", 60) is None  # the claim is left as it is
        assert record(backend, run_id("e", 1)).status == Outcome.CRASHED
        advance(1.5 * unit)
        claimed(backend, "q", "w2")
        first, second = record(backend, run_id("e", 1)).attempts
        assert (first.outcome, second.number, second.outcome) == (Outcome.CRASHED, 2, None)

    def test_a_summary_counts_runs_that_ended_failed_since_the_last_success(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        endings: list[tuple[str, Ending | None]] = [
            ("ack", Ending.failure(Outcome.FAILED, "ValueError", "bad")),  # 1
            ("dead_letter", None),  # 2
            ("retry", None),  # not final: not counted
            ("ack", Ending(Outcome.EXPIRED)),  # final, not a failure
        ]
        for minute, (how, ending) in enumerate(endings, start=1):
            publish(backend, lease, run("e", minute, "q"))
            settle(backend, how, claimed(backend, "q", "w"), ending)  # a retry waits 600 s
        summary = backend.summaries()["e"]
        dead = record(backend, run_id("e", 2)).attempts[-1]
        expired = record(backend, run_id("e", 4)).attempts[-1]
        assert expired.ended_at is not None
        assert summary == EntrySummary(
            "e", Outcome.EXPIRED, expired.ended_at, expired.duration, None, dead.ended_at, 2
        )
        publish(backend, lease, run("e", 5, "q"))
        settle(backend, "ack", claimed(backend, "q", "w"), None)
        good = record(backend, run_id("e", 5)).attempts[-1]
        summary = backend.summaries()["e"]
        assert (summary.last_status, summary.consecutive_failures) == (Outcome.SUCCEEDED, 0)
        assert (summary.last_success_at, summary.last_duration) == (good.ended_at, good.duration)
        assert summary.last_failure_at == dead.ended_at
        publish(backend, lease, run("e", 6, "q"))
        settle(backend, "ack", claimed(backend, "q", "w"), Ending(Outcome.FAILED))
        bad = record(backend, run_id("e", 6)).attempts[-1]
        summary = backend.summaries()["e"]
        assert (summary.consecutive_failures, summary.last_failure_at) == (1, bad.ended_at)
        assert summary.last_success_at == good.ended_at

    def test_summaries_are_of_the_entries_asked_for_that_finished_a_run(
        self, backend: Backend
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"), run("f", 1, "r"), run("g", 1, "s"))
        settle(backend, "ack", claimed(backend, "q", "w"), None)
        settle(backend, "dead_letter", claimed(backend, "r", "w"), None)
        claimed(backend, "s", "w")  # running: no summary yet
        assert set(backend.summaries()) == {"e", "f"}
        assert set(backend.summaries(["f", "g", "h"])) == {"f"}
        assert backend.summaries([]) == {}

    def test_with_history_off_nothing_is_written_and_reads_still_work(
        self, backend: Backend, history_off_backend: Backend
    ) -> None:
        off = history_off_backend
        lease = lead(off)
        publish(off, lease, run("e", 1, "q"), gone=(missed("e", "skipped", 0, 0),))
        off.ack(claimed(off, "q", "w"))
        publish(off, lease, run("e", 2, "q"))
        off.note_ending(claimed(off, "q", "w"), Ending(Outcome.CRASHED))
        assert (off.run(run_id("e", 1)), off.missed(), off.summaries()) == (None, [], {})
        assert off.history_size() == (0, 0)
        publish(backend, lease, run("f", 1))  # written by a handle with history on
        assert off.run(run_id("f", 1)) == backend.run(run_id("f", 1)) is not None
        assert [r.id for r in off.runs(HistoryQuery())] == [run_id("f", 1)]
        held = record(backend, run_id("f", 1))
        assert not off.mark_overdue(held.id, T0)
        assert not off.run_received(held.id, "celery@h", T0)
        assert not off.attempt_started(held.id, "celery@h", "h", None, T0)
        assert not off.attempt_ended(held.id, Ending(Outcome.SUCCEEDED), T0)
        assert record(backend, run_id("f", 1)) == held
        assert off.summaries() == {}

    # --- reading ------------------------------------------------------------------------------

    def test_runs_are_read_newest_first_by_entry_since_and_limit(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        publish(backend, lease, run("e", 1))
        advance(1 * unit)
        publish(backend, lease, run("e", 2), run("f", 2), run("e", 3))  # one published_at
        later = record(backend, run_id("e", 2)).published_at
        assert later > record(backend, run_id("e", 1)).published_at
        newest_first = [run_id("f", 2), run_id("e", 3), run_id("e", 2), run_id("e", 1)]
        assert [r.id for r in backend.runs(HistoryQuery())] == newest_first
        assert [r.id for r in backend.runs(HistoryQuery(limit=2))] == newest_first[:2]
        by_entry = [r.id for r in backend.runs(HistoryQuery(entry="e"))]
        assert by_entry == [run_id("e", 3), run_id("e", 2), run_id("e", 1)]
        since = [r.id for r in backend.runs(HistoryQuery(entry="e", since=later))]
        assert since == [run_id("e", 3), run_id("e", 2)]
        assert backend.runs(HistoryQuery(entry="nobody")) == []
        assert backend.run("nobody@1") is None

    def test_unfinished_runs_are_those_neither_finished_nor_overdue(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("a", 1, "q"), run("b", 1), run("c", 1), run("d", 1))
        settle(backend, "ack", claimed(backend, "q", "w"), None)  # a: finished
        assert backend.mark_overdue(run_id("b", 1), T0)  # b: overdue
        backend.attempt_started(run_id("c", 1), "w", HOST, None, T0)  # c: running
        unfinished = backend.runs(HistoryQuery(unfinished=True))
        assert [r.id for r in unfinished] == [run_id("d", 1), run_id("c", 1)]

    def test_missed_records_are_read_by_entry_since_and_limit(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        publish(backend, lease, run("e", 2), gone=(missed("e", "skipped", 1, 1),))
        advance(1 * unit)
        later = (missed("e", "skipped", 3, 4), missed("f", "disabled", 1, 4))
        publish(backend, lease, run("e", 5), run("f", 5), gone=later)
        everything = backend.missed()
        assert [r.slots for r in everything][2] == missed("e", "skipped", 1, 1)
        assert {r.slots for r in everything[:2]} == set(later)
        since = everything[0].recorded_at
        assert {r.slots for r in backend.missed(since=since)} == set(later)
        assert [r.slots for r in backend.missed("e")] == [later[0], missed("e", "skipped", 1, 1)]
        assert len(backend.missed(limit=1)) == 1
        assert backend.missed("nobody") == []

    # --- the leader's marks and Celery's events -----------------------------------------------

    def test_a_run_is_marked_overdue_once_and_never_when_finished(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 1), run("f", 1, "q"))
        deadline = T0 + timedelta(minutes=5)
        assert backend.mark_overdue(run_id("e", 1), deadline)
        assert not backend.mark_overdue(run_id("e", 1), deadline + timedelta(minutes=1))
        e = record(backend, run_id("e", 1))
        assert (e.overdue_at, e.status) == (deadline, RunStatus.OVERDUE)
        with window(backend) as acked:
            settle(backend, "ack", claimed(backend, "q", "w"), None)
        later = acked[1] + timedelta(seconds=1)  # a deadline after it finished
        assert not backend.mark_overdue(run_id("f", 1), later)
        assert record(backend, run_id("f", 1)).overdue_at is None
        assert not backend.mark_overdue("nobody@1", deadline)

    def test_a_run_finished_after_its_deadline_is_marked_and_keeps_its_outcome(
        self, backend: Backend
    ) -> None:
        # no leader watched the deadline: the next one marks what finished after it
        publish(backend, lead(backend), run("e", 1), run("f", 1))
        ended = T0 + timedelta(seconds=40)
        assert backend.attempt_ended(run_id("e", 1), Ending(Outcome.SUCCEEDED), ended)
        assert backend.attempt_ended(run_id("f", 1), Ending(Outcome.SUCCEEDED), ended)
        assert not backend.mark_overdue(run_id("f", 1), ended)  # finished at its deadline
        deadline = ended - timedelta(seconds=10)
        assert backend.mark_overdue(run_id("e", 1), deadline)
        assert not backend.mark_overdue(run_id("e", 1), deadline)
        e, f = record(backend, run_id("e", 1)), record(backend, run_id("f", 1))
        assert (e.overdue_at, e.status, e.finished_at) == (deadline, Outcome.SUCCEEDED, ended)
        assert (f.overdue_at, f.status) == (None, Outcome.SUCCEEDED)
        assert backend.summaries()["e"].last_status == Outcome.SUCCEEDED

    def test_a_missed_record_is_marked_overdue_once(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 3), gone=(missed("e", "skipped", 1, 2),))
        deadline = slot_of(1) + timedelta(minutes=5)
        assert backend.mark_missed_overdue("e", "skipped", slot_of(1), deadline)
        assert not backend.mark_missed_overdue("e", "skipped", slot_of(1), T0)
        assert [r.overdue_at for r in backend.missed()] == [deadline]
        assert not backend.mark_missed_overdue("e", "disabled", slot_of(1), deadline)
        assert not backend.mark_missed_overdue("e", "skipped", slot_of(2), deadline)

    def test_a_run_is_received_once(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 1))
        at = T0 + timedelta(seconds=3)
        assert not backend.run_received("nobody@1", "celery@h", at)
        assert backend.run_received(run_id("e", 1), "celery@h", at)
        assert not backend.run_received(run_id("e", 1), "celery@h", at + timedelta(seconds=1))
        e = record(backend, run_id("e", 1))
        assert (e.received_at, e.attempts) == (at, ())
        assert backend.history_size() == (1, 0)

    def test_attempts_started_and_ended_from_task_events(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 1))
        rid = run_id("e", 1)
        t1, t2, t3 = (T0 + timedelta(seconds=s) for s in (1, 2, 5))
        assert backend.attempt_started(rid, "celery@h", "h", 41, t1)
        assert not backend.attempt_started(rid, "celery@h", "h", 41, t1)  # the same event again
        assert backend.attempt_started(rid, "celery@k", "k", None, t2)
        first, second = record(backend, rid).attempts
        assert (first.outcome, first.ended_at is not None) == (LOST, True)
        assert second == Attempt(2, "celery@k", "k", None, t2)
        failed = Ending.failure(Outcome.FAILED, "KeyError", "'x'")
        assert backend.attempt_ended(rid, failed, t3)
        assert record(backend, rid).attempts[1] == Attempt(
            2, "celery@k", "k", None, t2, t3, Outcome.FAILED, "", "KeyError", "'x'"
        )
        assert not backend.attempt_ended(rid, failed, t3)  # the same event again
        assert len(record(backend, rid).attempts) == 2
        summary = backend.summaries()["e"]
        assert summary == EntrySummary("e", Outcome.FAILED, t3, t3 - t2, None, t3, 1)

    def test_an_end_without_a_start_starts_the_attempt_at_its_end(self, backend: Backend) -> None:
        publish(backend, lead(backend), run("e", 1))
        at = T0 + timedelta(seconds=9)
        assert backend.attempt_ended(run_id("e", 1), Ending(Outcome.SUCCEEDED), at)
        [attempt] = record(backend, run_id("e", 1)).attempts
        assert (attempt.number, attempt.started_at, attempt.ended_at) == (1, at, at)
        assert attempt.outcome == Outcome.SUCCEEDED
        assert backend.summaries()["e"].last_success_at == at

    def test_events_of_a_run_not_held_write_nothing(self, backend: Backend) -> None:
        assert not backend.attempt_started("nobody@1", "celery@h", "h", 1, T0)
        assert not backend.attempt_ended("nobody@1", Ending(Outcome.SUCCEEDED), T0)
        assert not backend.run_received("nobody@1", "celery@h", T0)
        assert not backend.mark_overdue("nobody@1", T0)
        assert not backend.mark_missed_overdue("nobody", "skipped", T0, T0)
        assert backend.history_size() == (0, 0)
        assert backend.summaries() == {}

    # --- retention ------------------------------------------------------------------------------

    def test_trim_keeps_the_newest_runs_per_entry_and_the_summaries(self, backend: Backend) -> None:
        lease = lead(backend)
        publish(backend, lease, *(run("e", m) for m in range(1, 8)), run("f", 1, "q"))
        settle(backend, "ack", claimed(backend, "q", "w"), None)
        finish_all(backend)
        assert backend.trim(Retention(per_entry=5)) == 2
        kept = [r.id for r in backend.runs(HistoryQuery(entry="e"))]
        assert kept == [run_id("e", m) for m in range(7, 2, -1)]
        assert backend.trim(Retention(per_entry=0)) == 6
        assert backend.history_size() == (0, 0)
        assert set(backend.summaries()) == {"e", "f"}

    def test_trim_remembers_each_entrys_newest_trimmed_slot(self, backend: Backend) -> None:
        lease = lead(backend)
        publish(backend, lease, *(run("e", m) for m in range(1, 5)), run("f", 1))
        finish_all(backend)
        assert backend.trimmed_up_to("e") is None
        assert backend.trim(Retention(per_entry=2)) == 2  # e's minutes 1 and 2
        assert (backend.trimmed_up_to("e"), backend.trimmed_up_to("f")) == (slot_of(2), None)
        assert backend.trim(Retention(max_records=1)) == 2  # e's 3 and 4 (ties: by run id)
        assert (backend.trimmed_up_to("e"), backend.trimmed_up_to("f")) == (slot_of(4), None)

    def test_a_run_trimmed_while_queued_still_counts_in_the_summary_when_it_ends(
        self, backend: Backend
    ) -> None:
        # workers down, a backlog past --history-keep: the leader's trim must not make the
        # backlog's outcomes vanish from `beatd status` and alert_after_failures
        publish(backend, lead(backend), *(run("e", m, "q") for m in range(1, 4)))
        backend.trim(Retention(per_entry=1))
        delivery = claimed(backend, "q", "w")
        assert delivery.id == run_id("e", 1)
        backend.ack(delivery, Ending.failure(Outcome.FAILED, "ValueError", "bad"))
        summary = backend.summaries().get("e")
        assert summary is not None, "a failed run left no trace in the entry's summary"
        assert (summary.last_status, summary.consecutive_failures) == (Outcome.FAILED, 1)

    def test_the_caps_keep_unfinished_runs_and_max_age_drops_them(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        publish(backend, lease, *(run("e", m, "q") for m in range(1, 5)))
        claimed(backend, "q", "w")  # e at minute 1 running, 2..4 queued
        for m in (2, 3):
            backend.mark_overdue(run_id("e", m), T0)  # overdue, still unfinished
        assert backend.trim(Retention(per_entry=1, max_records=1)) == 0
        assert backend.history_size() == (4, 0)
        advance(2 * unit)  # stuck for good: only the age takes them
        assert backend.trim(Retention(max_age=timedelta(seconds=1 * unit))) == 4
        assert backend.history_size() == (0, 0)

    def test_the_caps_trim_celery_runs_no_task_event_reached(self, backend: Backend) -> None:
        # workers without -E: their runs stay unknown for ever, and must not pile up past the
        # caps until max_age (a Redis under noeviction would fill up and stop publishing)
        if not backend.accepts(CeleryQueue):
            pytest.skip("this backend publishes no Celery messages")
        lease = lead(backend)
        celery = [
            run("c", m)._replace(destination=CeleryQueue("celery"), body="{}") for m in (1, 2, 3)
        ]
        publish(backend, lease, *celery)
        backend.run_received(run_id("c", 3), "celery@w", slot_of(3))  # this one was heard of
        assert backend.trim(Retention(per_entry=1)) == 2
        assert [r.id for r in backend.runs(HistoryQuery(entry="c"))] == [run_id("c", 3)]

    def test_trim_drops_records_older_than_max_age(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        publish(backend, lease, run("e", 1), gone=(missed("e", "skipped", 0, 0),))
        advance(2 * unit)
        publish(backend, lease, run("e", 3), gone=(missed("e", "skipped", 2, 2),))
        assert backend.trim(Retention(max_age=timedelta(seconds=1 * unit))) == 2
        assert [r.id for r in backend.runs(HistoryQuery())] == [run_id("e", 3)]
        assert [r.slots.first for r in backend.missed()] == [slot_of(2)]

    def test_trim_drops_the_oldest_records_past_max_records(self, backend: Backend) -> None:
        lease = lead(backend)
        gone = tuple(missed("e", "skipped", m, m) for m in (1, 3, 5))
        publish(backend, lease, *(run("e", m) for m in (2, 4, 6, 8)), gone=gone)
        finish_all(backend)
        assert backend.trim(Retention(max_records=2)) == 3
        assert [r.id for r in backend.runs(HistoryQuery())] == [run_id("e", 8), run_id("e", 6)]
        assert backend.history_size() == (2, 2)
        assert backend.trim(Retention(max_records=2)) == 0

    def test_trim_goes_at_most_limit_at_a_time(self, backend: Backend) -> None:
        publish(backend, lead(backend), *(run("e", m) for m in range(1, 8)))
        finish_all(backend)
        retention = Retention(per_entry=1)
        assert [backend.trim(retention, limit=4) for _ in range(3)] == [4, 2, 0]
        assert [r.id for r in backend.runs(HistoryQuery())] == [run_id("e", 7)]

    # --- export and import ----------------------------------------------------------------------

    def test_export_gives_every_record_in_batches(self, backend: Backend) -> None:
        lease = lead(backend)
        gone = (missed("e", "skipped", 0, 0), missed("f", "disabled", 0, 0))
        publish(backend, lease, *(run("e", m, "q") for m in range(1, 5)), run("f", 1), gone=gone)
        settle(backend, "dead_letter", claimed(backend, "q", "w"), None)
        batches = list(backend.export_runs(batch=2))
        assert [len(b) for b in batches] == [2, 2, 1]
        exported = sorted((r for b in batches for r in b), key=lambda r: r.id)
        assert exported == sorted(backend.runs(HistoryQuery()), key=lambda r: r.id)
        assert sorted(backend.export_missed(), key=lambda m: m.slots) == sorted(
            backend.missed(), key=lambda m: m.slots
        )

    def test_import_stores_records_as_they_are_once(self, backend: Backend) -> None:
        lease = lead(backend)
        publish(backend, lease, run("e", 1))
        held = record(backend, run_id("e", 1))
        at = T0 + timedelta(hours=1)
        ended = Attempt(1, "w", "h", 7, at, at + timedelta(seconds=2), Outcome.FAILED, "", "E", "x")
        lost = Attempt(1, "celery@h", "h", None, at, at + timedelta(seconds=1), LOST)
        open_ = Attempt(2, "celery@h", "h", None, at + timedelta(seconds=1))
        runs = [
            RunRecord("m@1", "m", T0, T0, at, "n", 3, RunKind.MANUAL, attempts=(ended,)),
            RunRecord(
                "c@1", "c", T0, T0 + timedelta(seconds=1), at, "n", 3, RunKind.BACKFILL,
                celery=True, attempts=(lost, open_), received_at=at, overdue_at=at,
            ),
            replace(held, node="elsewhere"),
        ]  # fmt: skip
        gone = [MissedRecord(missed("m", "state_lost", 0, 9), at, "n", 3, at)]
        assert backend.import_history(runs, gone) == 3
        assert backend.run("m@1") == runs[0] and backend.run("c@1") == runs[1]
        assert backend.run(held.id) == held  # already held: left as it is
        assert backend.missed("m") == gone
        assert backend.import_history(runs, gone) == 0
        assert backend.history_size() == (3, 1)

    def test_an_imported_summary_replaces_one_only_when_it_finished_later(
        self, backend: Backend
    ) -> None:
        at = T0 + timedelta(hours=1)
        middle = EntrySummary("e", Outcome.FAILED, at, timedelta(seconds=2), None, at, 4)
        older = EntrySummary("e", Outcome.SUCCEEDED, at - timedelta(minutes=1), None, at, None, 0)
        newer = EntrySummary("e", Outcome.EXPIRED, at + timedelta(minutes=1), None, None, at, 4)
        assert backend.import_history([], [], [middle]) == 0
        assert backend.summaries() == {"e": middle}
        backend.import_history([], [], [older])
        assert backend.summaries() == {"e": middle}
        backend.import_history([], [], [newer])
        assert backend.summaries() == {"e": newer}

    # --- faults -----------------------------------------------------------------------------------

    def test_a_commit_that_failed_before_writing_recorded_nothing(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease = lead(backend)
        plan.inject("commit", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            publish(faulty, lease, run("e", 1), gone=(missed("e", "skipped", 0, 0),))
        assert backend.history_size() == (0, 0)
        plan.inject("commit", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            publish(faulty, lease, run("e", 1), gone=(missed("e", "skipped", 0, 0),))
        assert backend.history_size() == (1, 1)

    def test_a_claim_that_failed_before_writing_started_no_attempt(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        plan.inject("claim", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            faulty.claim(["q"], "w", 60)
        assert record(backend, run_id("e", 1)).attempts == ()
        plan.inject("claim", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.claim(["q"], "w", 60)
        assert [a.consumer for a in record(backend, run_id("e", 1)).attempts] == ["w"]

    @pytest.mark.parametrize("how", ["ack", "retry", "dead_letter"])
    def test_the_history_never_disagrees_with_the_queue_under_faults(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan, how: str
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        delivery = claimed(backend, "q", "w")
        plan.inject(how, Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            settle(faulty, how, delivery, None)
        assert (backend.queue_depths(), backend.dead_letters()) == ({"q": 1}, [])
        assert backend.extend(delivery, 60)  # still claimed
        assert [a.outcome for a in record(backend, run_id("e", 1)).attempts] == [None]
        assert backend.summaries() == {}
        plan.inject(how, Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            settle(faulty, how, delivery, EXPLICIT[how])
        assert not backend.extend(delivery, 60)  # settled: the claim is gone
        after = record(backend, run_id("e", 1))
        assert [(a.outcome, a.reason, a.error) for a in after.attempts] == [
            (EXPLICIT[how].outcome, EXPLICIT[how].reason, EXPLICIT[how].error)
        ]
        assert set(backend.summaries()) == ({"e"} if how != "retry" else set())
        settle(faulty, how, delivery, Ending(Outcome.FAILED))  # repeated: harmless
        assert record(backend, run_id("e", 1)) == after

    def test_a_noted_ending_that_failed_before_writing_recorded_nothing(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        publish(backend, lead(backend), run("e", 1, "q"))
        delivery = claimed(backend, "q", "w")
        plan.inject("note_ending", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            faulty.note_ending(delivery, Ending(Outcome.CRASHED))
        assert [a.outcome for a in record(backend, run_id("e", 1)).attempts] == [None]
        faulty.note_ending(delivery, Ending(Outcome.CRASHED))
        assert [a.outcome for a in record(backend, run_id("e", 1)).attempts] == [Outcome.CRASHED]
