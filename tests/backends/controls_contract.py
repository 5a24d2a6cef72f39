"""The operator controls' contract (beatd.controls, the `Controls` role and the controls
paragraphs of `StateStore.commit` and `WorkQueue` in beatd/backends/base.py).

`ControlsContract` is a mixin `BackendContract` includes, so every backend's contract class
runs it. It asks for the fixtures `BackendContract` and `HistoryContract` ask for (`backend`,
`backend_factory`, `history_off_backend`, `advance`, `unit`, `plan`, `faulty`).

Times the backend takes from its own clock are checked to lie between two readings of
`server_time()` taken around the call, as in the history's contract; durations are multiples of
`unit`, so a backend that keeps time itself (Redis) sleeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from beatd.backends.base import (
    Backend,
    BeatdQueue,
    CeleryQueue,
    HistoryTrimmed,
    Lease,
    Outgoing,
    StateWrite,
)
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.controls import (
    AuditRecord,
    Busy,
    EntryControl,
    Guard,
    HeldRun,
    Overlap,
    Pause,
    Trigger,
    TriggerKey,
    TriggerResult,
    TriggerStatus,
    manual_run_id,
    pause_json,
)
from beatd.errors import BackendError, NotApplied, OutcomeUnknown
from beatd.history import Ending, HistoryQuery, MissedSlots, Retention, RunKind
from beatd.outcomes import Outcome
from beatd.state import EntryState
from tests.backends.history_contract import (
    claimed,
    instant,
    lead,
    record,
    run,
    run_id,
    slot_of,
    window,
    within,
)

BY = "ops@host"
SKIP = Guard(Overlap.SKIP, 3600.0)
BUFFER = Guard(Overlap.BUFFER_ONE, 3600.0)
FINAL_STEPS = ["ack", "dead_letter", "attempt_ended"]


def at_run(entry: str, due: datetime, queue: str = "q") -> Outgoing:
    """A scheduled run of `entry` whose slot and due time are `due` (for pauses, which compare
    due times with the backend's clock)."""
    rid = f"{entry}@{due:%Y-%m-%dT%H:%M:%S.%fZ}"
    return Outgoing(entry, rid, BeatdQueue(queue), f'{{"id": "{rid}"}}', due, due)


def write(
    backend: Backend | FaultyBackend,
    lease: Lease,
    entry: str,
    *runs: Outgoing,
    guard: Guard | None = None,
    busy: bool = False,
    hold: HeldRun | None = None,
    missed: tuple[MissedSlots, ...] = (),
) -> set[str]:
    """Commit one write of `entry` (its horizon moved on a second past where it stands, or to
    its newest run) with `runs` and the controls' fields; the entries rejected."""
    current = backend.load_states().get(entry)
    expected = current.last_slot if current is not None else None
    base = expected + timedelta(seconds=1) if expected is not None else slot_of(0)
    last = max([base, *(r.slot for r in runs if r.slot is not None)])
    state = StateWrite(EntryState(entry, last, last, "every 60s"), expected, missed)
    return backend.commit(lease, [state._replace(guard=guard, busy=busy, hold=hold)], list(runs))


def trigger(
    entry: str,
    request_id: str = "r1",
    *,
    key: str | None = None,
    guard: Guard | None = None,
    force: bool = False,
    run_id: str | None = None,
) -> Trigger:
    rid = run_id if run_id is not None else manual_run_id(entry, key or request_id)
    body = f'{{"id": "{rid}", "kind": "manual"}}'
    return Trigger(entry, rid, "q", False, None, body, request_id, BY, guard, key, force)


def held(entry: str, minute: int, kind: RunKind = RunKind.SCHEDULED) -> HeldRun:
    rid = run_id(entry, minute)
    return HeldRun(rid, slot_of(minute), slot_of(minute), kind, "q", f'{{"id": "{rid}"}}')


def queued_ids(backend: Backend, queue: str = "q") -> list[str]:
    """Claim every ready message of `queue` (each claim left to lapse): their run ids."""
    ids = []
    while (delivery := backend.claim([queue], "peek", 3600)) is not None:
        ids.append(delivery.id)
    return ids


def finish(backend: Backend, how: str, run: str) -> None:
    """Bring run `run` (claimed first from queue q) to a final outcome by the step `how`."""
    if how == "attempt_ended":  # a Celery task event; the message itself stays
        assert backend.attempt_ended(run, Ending(Outcome.SUCCEEDED), instant(backend))
        return
    delivery = claimed(backend, "q", "w")
    assert delivery.id == run
    if how == "ack":
        backend.ack(delivery)
    else:
        backend.dead_letter(delivery, "boom")


class ControlsContract:
    # --- pause and resume -------------------------------------------------------------------------

    def test_pause_records_the_pause_and_an_audit_record_with_before_and_after(
        self, backend: Backend
    ) -> None:
        with window(backend) as bounds:
            [audit] = backend.pause(["e"], "db maintenance", None, BY)
        pause = backend.load_controls()["e"].pause
        assert within(pause.at, bounds)
        assert pause == Pause(pause.at, None, "db maintenance", BY)
        assert within(audit.at, bounds)
        assert (audit.action, audit.entry, audit.by) == ("pause", "e", BY)
        assert (audit.before, audit.after) == (pause_json(None), pause_json(pause))
        assert backend.audit() == [audit]

    def test_pause_until_is_a_time_or_a_duration_from_the_backends_clock(
        self, backend: Backend
    ) -> None:
        until = instant(backend) + timedelta(hours=2)
        backend.pause(["e"], "r", until, BY)
        with window(backend) as bounds:
            backend.pause(["f"], "r", timedelta(hours=1), BY)
        got = backend.load_controls(["e", "f"])
        assert got["e"].pause.until == until
        assert within(got["f"].pause.until - timedelta(hours=1), bounds)

    def test_a_second_pause_replaces_the_first_in_place(self, backend: Backend) -> None:
        [first] = backend.pause(["e"], "one", None, BY)
        [second] = backend.pause(["e"], "two", timedelta(hours=1), "other@host")
        pause = backend.load_controls()["e"].pause
        assert (pause.reason, pause.by) == ("two", "other@host")
        assert second.before == first.after
        assert second.after == pause_json(pause)
        assert {a.id for a in backend.audit("e")} == {second.id, first.id}

    def test_resume_lifts_only_the_pauses_there_are(self, backend: Backend) -> None:
        [paused] = backend.pause(["e"], "r", None, BY)
        [lifted] = backend.resume(["e", "f"], BY)
        assert (lifted.action, lifted.entry) == ("resume", "e")
        assert (lifted.before, lifted.after) == (paused.after, pause_json(None))
        assert backend.load_controls().get("e", EntryControl()).pause is None
        assert backend.resume(["e"], BY) == []

    def test_a_resumed_pause_is_kept_as_lifted_ending_at_the_resume(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        [paused] = backend.pause(["e"], "r", None, BY)
        advance(1 * unit)
        [resumed] = backend.resume(["e"], BY)
        lifted = Pause(paused.at, resumed.at, "r", BY)
        assert backend.load_controls() == {"e": EntryControl(lifted=(lifted,))}

    def test_a_replaced_pause_is_kept_as_lifted_ending_at_the_new_one(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        [first] = backend.pause(["e"], "r", None, BY)
        advance(1 * unit)
        [second] = backend.pause(["e"], "longer", None, "bob@host")
        pause = Pause(second.at, None, "longer", "bob@host")
        lifted = Pause(first.at, second.at, "r", BY)
        assert backend.load_controls() == {"e": EntryControl(pause, lifted=(lifted,))}

    def test_lifted_pauses_the_horizon_passed_are_dropped_at_the_next_pause_or_resume(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        backend.pause(["e"], "r", None, BY)
        advance(1 * unit)
        backend.resume(["e"], BY)
        later = instant(backend) + timedelta(hours=1)
        assert write(backend, lease, "e", at_run("e", later)) == set()  # past the lifted pause
        [again] = backend.pause(["e"], "r2", None, BY)
        assert backend.load_controls() == {"e": EntryControl(Pause(again.at, None, "r2", BY))}

    def test_a_pause_fails_a_commit_with_a_message_it_covers_and_writes_nothing(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e")
        before = backend.load_states()
        backend.pause(["e"], "r", None, BY)
        due = instant(backend) + timedelta(seconds=5)
        assert write(backend, lease, "e", at_run("e", due)) == {"e"}
        assert backend.load_states() == before
        assert backend.queue_depths() == {}
        assert backend.history_size() == (0, 0)

    def test_a_pause_fails_messages_committed_without_a_write_of_their_entry(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        backend.pause(["e"], "r", None, BY)
        due = instant(backend) + timedelta(seconds=5)
        assert backend.commit(lease, [], [at_run("e", due), at_run("f", due)]) == {"e"}
        assert queued_ids(backend) == [at_run("f", due).id]

    def test_a_write_without_messages_passes_a_pause(self, backend: Backend) -> None:
        lease = lead(backend)
        backend.pause(["e"], "r", None, BY)
        gone = (MissedSlots("e", "paused", slot_of(1), slot_of(1), 1),)
        assert write(backend, lease, "e", missed=gone) == set()
        assert [m.slots for m in backend.missed("e")] == list(gone)

    def test_a_pause_covers_due_times_from_its_start_until_its_end(self, backend: Backend) -> None:
        lease = lead(backend)
        backend.pause(["e"], "r", timedelta(hours=1), BY)
        pause = backend.load_controls()["e"].pause
        earlier = at_run("e", pause.at - timedelta(seconds=1))
        later = at_run("e", pause.until)
        assert write(backend, lease, "e", earlier) == set()
        assert write(backend, lease, "e", later) == set()
        assert write(backend, lease, "e", at_run("e", pause.at)) == {"e"}
        assert write(backend, lease, "f", at_run("f", pause.at)) == set()  # not paused
        expected = [earlier.id, later.id, at_run("f", pause.at).id]
        assert sorted(queued_ids(backend)) == sorted(expected)

    def test_after_resume_a_commit_passes(self, backend: Backend) -> None:
        lease = lead(backend)
        backend.pause(["e"], "r", None, BY)
        due = instant(backend) + timedelta(seconds=5)
        assert write(backend, lease, "e", at_run("e", due)) == {"e"}
        backend.resume(["e"], BY)
        assert write(backend, lease, "e", at_run("e", due)) == set()

    # --- the overlap guard ------------------------------------------------------------------------

    def test_a_guarded_write_with_messages_marks_the_entry_busy_with_its_last_run(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        with window(backend) as bounds:
            runs = (run("e", 1, "q"), run("e", 2, "q"))
            assert write(backend, lease, "e", *runs, guard=SKIP) == set()
        busy = backend.load_controls()["e"].busy
        assert busy == Busy(run_id("e", 2), busy.since)
        assert within(busy.since, bounds)

    def test_a_guarded_write_that_mistakes_busy_fails(self, backend: Backend) -> None:
        lease = lead(backend)
        assert write(backend, lease, "e", guard=SKIP, busy=True) == {"e"}  # not busy
        write(backend, lease, "e", run("e", 1, "q"), guard=SKIP)
        before = backend.load_states()
        assert write(backend, lease, "e", run("e", 2, "q"), guard=SKIP) == {"e"}  # busy
        assert backend.load_states() == before
        assert backend.run(run_id("e", 2)) is None
        gone = (MissedSlots("e", "overlap", slot_of(2), slot_of(2), 1),)
        assert write(backend, lease, "e", guard=SKIP, busy=True, missed=gone) == set()
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 1)

    def test_a_busy_mark_older_than_the_guards_timeout_counts_as_not_busy(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        guard = Guard(Overlap.SKIP, 1 * unit)
        write(backend, lease, "e", run("e", 1, "q"), guard=guard)
        advance(1.5 * unit)
        assert write(backend, lease, "e", guard=guard, busy=True) == {"e"}
        assert write(backend, lease, "e", run("e", 2, "q"), guard=guard) == set()
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 2)

    def test_hold_replaces_the_held_run_and_none_leaves_it(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 3))
        assert backend.load_controls()["e"].held == held("e", 3)
        write(backend, lease, "e", guard=BUFFER, busy=True)
        assert backend.load_controls()["e"].held == held("e", 3)

    def test_a_hold_that_replaces_a_held_run_records_it_missed_by_overlap(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))  # the same run
        assert backend.missed("e") == []
        with window(backend) as bounds:
            write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 3))
        (gone,) = backend.missed("e")
        assert gone.slots == MissedSlots("e", "overlap", slot_of(2), slot_of(2), 1)
        assert (gone.node, gone.epoch) == (lease.node, lease.epoch)
        assert within(gone.recorded_at, bounds)
        assert backend.load_controls()["e"].held == held("e", 3)

    def test_a_hold_never_replaces_a_held_manual_run_its_slot_is_missed_instead(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        manual = backend.trigger(trigger("e", guard=BUFFER))
        assert manual.status == TriggerStatus.HELD
        with window(backend) as bounds:
            assert write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 3)) == set()
        assert backend.load_controls()["e"].held.run_id == manual.run_id
        (kept_out,) = backend.missed("e")
        assert kept_out.slots == MissedSlots("e", "overlap", slot_of(3), slot_of(3), 1)
        assert (kept_out.node, kept_out.epoch) == (lease.node, lease.epoch)
        assert within(kept_out.recorded_at, bounds)
        finish(backend, "ack", run_id("e", 1))
        assert record(backend, manual.run_id).kind == RunKind.MANUAL
        assert queued_ids(backend) == [manual.run_id]

    def test_a_second_held_trigger_is_refused_naming_the_first(self, backend: Backend) -> None:
        """buffer_one keeps one run: a second trigger would lose the first silently, so it is
        refused (its request remembered, its key left free, no audit record)."""
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        first = backend.trigger(trigger("e", "r1", guard=BUFFER))
        second = backend.trigger(trigger("e", "r2", key="k2", guard=BUFFER))
        assert first.status == TriggerStatus.HELD
        assert second == TriggerResult(
            TriggerStatus.REFUSED_HELD, manual_run_id("e", "k2"), first.run_id
        )
        assert backend.trigger(trigger("e", "r2", key="k2", guard=BUFFER)) == second
        assert [a.detail["run_id"] for a in backend.audit("e")] == [first.run_id]
        finish(backend, "ack", run_id("e", 1))
        assert queued_ids(backend) == [first.run_id]
        assert backend.missed("e") == []
        again = backend.trigger(trigger("e", "r3", key="k2", guard=BUFFER))
        assert again.status == TriggerStatus.HELD  # the key was not used up by the refusal

    def test_a_held_trigger_over_a_held_slot_records_the_slot_missed(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        with window(backend) as bounds:
            manual = backend.trigger(trigger("e", guard=BUFFER))
        assert manual.status == TriggerStatus.HELD
        assert backend.load_controls()["e"].held.run_id == manual.run_id
        (gave_way,) = backend.missed("e")
        assert gave_way.slots == MissedSlots("e", "overlap", slot_of(2), slot_of(2), 1)
        assert (gave_way.node, gave_way.epoch) == ("", 0)
        assert within(gave_way.recorded_at, bounds)
        finish(backend, "ack", run_id("e", 1))
        assert queued_ids(backend) == [manual.run_id]

    def test_a_hold_after_the_held_run_was_published_records_nothing_missed(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        finish(backend, "ack", run_id("e", 1))  # publishes e@2, which marks the entry busy
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 3))
        assert backend.missed("e") == []
        assert backend.load_controls()["e"].held == held("e", 3)

    def test_without_a_guard_busy_is_neither_checked_nor_changed(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=SKIP)
        assert write(backend, lease, "e", run("e", 2, "q")) == set()
        assert write(backend, lease, "e", busy=True) == set()
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 1)

    # --- final outcomes ---------------------------------------------------------------------------

    @pytest.mark.parametrize("how", FINAL_STEPS)
    def test_a_final_outcome_clears_the_busy_mark_of_its_run(
        self, backend: Backend, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=SKIP)
        finish(backend, how, run_id("e", 1))
        assert backend.load_controls() == {}
        assert write(backend, lease, "e", run("e", 2, "q"), guard=SKIP) == set()

    @pytest.mark.parametrize("how", FINAL_STEPS)
    def test_a_final_outcome_publishes_the_held_run_in_the_same_step(
        self, backend: Backend, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2, RunKind.CAUGHT_UP))
        with window(backend) as bounds:
            finish(backend, how, run_id("e", 1))
        control = backend.load_controls()["e"]
        assert (control.held, control.busy.run_id) == (None, run_id("e", 2))
        assert within(control.busy.since, bounds)
        published = record(backend, run_id("e", 2))
        assert (published.kind, published.slot, published.due) == (
            RunKind.CAUGHT_UP, slot_of(2), slot_of(2),
        )  # fmt: skip
        assert within(published.published_at, bounds)
        assert run_id("e", 2) in queued_ids(backend)

    def test_a_held_run_keeps_its_priority_and_celery_flag(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        urgent = held("e", 2)._replace(priority=9)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=urgent)
        assert backend.load_controls()["e"].held == urgent
        if backend.accepts(CeleryQueue):
            task = held("e", 3)._replace(destination_queue="celery", celery=True, priority=2)
            write(backend, lease, "e", guard=BUFFER, busy=True, hold=task)
            assert backend.load_controls()["e"].held == task

    def test_a_held_run_is_published_in_its_prioritys_band(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2)._replace(priority=9))
        write(backend, lease, "f", run("f", 1, "q"))  # normal priority, queued before e@2
        finish(backend, "ack", run_id("e", 1))
        assert queued_ids(backend) == [run_id("e", 2), run_id("f", 1)]

    def test_a_held_celery_run_is_published_as_the_commit_publishes_one(
        self, backend: Backend
    ) -> None:
        if not backend.accepts(CeleryQueue):
            pytest.skip("this backend publishes no Celery messages")
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        task = held("e", 2)._replace(destination_queue="q", celery=True, body="{}")
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=task)
        finish(backend, "ack", run_id("e", 1))
        published = record(backend, run_id("e", 2))
        assert (published.celery, published.kind) == (True, RunKind.SCHEDULED)
        assert queued_ids(backend) == []  # not in beatd's queue q: in Celery's

    @pytest.mark.parametrize("how", ["ack", "dead_letter"])
    def test_a_pause_covering_now_drops_the_held_run_as_missed(
        self, backend: Backend, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        backend.pause(["e"], "r", None, BY)
        finish(backend, how, run_id("e", 1))
        control = backend.load_controls()["e"]
        assert (control.busy, control.held) == (None, None)
        assert backend.run(run_id("e", 2)) is None
        assert queued_ids(backend) == []
        assert [m.slots for m in backend.missed("e")] == [
            MissedSlots("e", "paused", slot_of(2), slot_of(2), 1)
        ]

    @pytest.mark.parametrize("how", ["ack", "dead_letter"])
    def test_a_held_manual_run_is_published_when_the_busy_run_ends_under_a_pause(
        self, backend: Backend, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        manual = held("e", 2, RunKind.MANUAL)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=manual)
        backend.pause(["e"], "r", None, BY)
        finish(backend, how, run_id("e", 1))
        control = backend.load_controls()["e"]
        assert (control.busy, control.held) == (Busy(manual.run_id, control.busy.since), None)
        assert queued_ids(backend) == [manual.run_id]
        assert backend.missed("e") == []

    @pytest.mark.parametrize("how", ["retry", "release", "lost"])
    def test_retry_release_and_a_lost_claim_keep_the_entry_busy(
        self, backend: Backend, advance: Callable[[float], None], unit: float, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        delivery = claimed(backend, "q", "w", 1 * unit)
        if how == "retry":
            backend.retry(delivery, delivery.body, 0)
        elif how == "release":
            backend.release(delivery)
        else:
            advance(1.5 * unit)
            claimed(backend, "q", "w2")
        control = backend.load_controls()["e"]
        assert (control.busy.run_id, control.held) == (run_id("e", 1), held("e", 2))

    def test_a_final_outcome_of_another_run_leaves_the_busy_mark(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "f", run("f", 1, "q"))
        write(backend, lease, "e", run("e", 1, "other"), guard=SKIP)
        finish(backend, "ack", run_id("f", 1))
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 1)

    def test_with_history_off_a_final_outcome_still_publishes_the_held_run(
        self, history_off_backend: Backend
    ) -> None:
        off = history_off_backend
        lease = lead(off)
        write(off, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(off, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        finish(off, "ack", run_id("e", 1))
        assert off.load_controls()["e"].busy.run_id == run_id("e", 2)
        assert queued_ids(off) == [run_id("e", 2)]
        assert off.history_size() == (0, 0)

    def test_a_run_acked_from_the_amqp_outbox_keeps_the_busy_mark_until_its_task_event(
        self, backend: Backend, history_off_backend: Backend
    ) -> None:
        """The relay (its outbox opened with history off) acks a run once RabbitMQ confirmed
        it: no outcome of the run, which only Celery's task event (or the guard's timeout)
        ends."""
        relay = history_off_backend
        write(backend, lead(backend), "e", run("e", 1, OUTBOX_QUEUE), guard=SKIP)
        relay.ack(claimed(relay, OUTBOX_QUEUE, "amqp-relay"))
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 1)
        assert backend.attempt_ended(run_id("e", 1), Ending(Outcome.SUCCEEDED), instant(backend))
        assert backend.load_controls() == {}

    def test_a_held_run_published_to_the_amqp_outbox_is_recorded_as_celery(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        task = held("e", 2)._replace(destination_queue=OUTBOX_QUEUE)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=task)
        finish(backend, "attempt_ended", run_id("e", 1))
        assert record(backend, run_id("e", 2)).celery
        assert queued_ids(backend, OUTBOX_QUEUE) == [run_id("e", 2)]

    def test_a_trigger_to_the_amqp_outbox_is_recorded_as_celery(self, backend: Backend) -> None:
        request = replace(trigger("e"), queue=OUTBOX_QUEUE)
        assert backend.trigger(request).status is TriggerStatus.PUBLISHED
        assert record(backend, request.run_id).celery

    def test_a_run_dead_lettered_from_the_amqp_outbox_clears_the_busy_mark(
        self, backend: Backend, history_off_backend: Backend
    ) -> None:
        """An outbox run the relay cannot read never reaches RabbitMQ: it ends there."""
        relay = history_off_backend
        write(backend, lead(backend), "e", run("e", 1, OUTBOX_QUEUE), guard=SKIP)
        relay.dead_letter(claimed(relay, OUTBOX_QUEUE, "amqp-relay"), "unreadable")
        assert backend.load_controls() == {}

    # --- trigger ----------------------------------------------------------------------------------

    def test_a_trigger_publishes_a_manual_run_with_its_audit_record(self, backend: Backend) -> None:
        with window(backend) as bounds:
            result = backend.trigger(trigger("e"))
        rid = manual_run_id("e", "r1")
        assert result == TriggerResult(TriggerStatus.PUBLISHED, rid, "", result.audit_id)
        published = record(backend, rid)
        assert (published.kind, published.audit) == (RunKind.MANUAL, result.audit_id)
        assert within(published.published_at, bounds)
        assert within(published.slot, bounds) and published.due == published.slot
        [audit] = backend.audit("e")
        assert (audit.id, audit.action, audit.by, audit.entry) == (
            result.audit_id, "trigger", BY, "e",
        )  # fmt: skip
        assert audit.detail["run_id"] == rid
        assert queued_ids(backend) == [rid]
        assert backend.load_states() == {}  # the slot cursor does not move

    def test_a_trigger_retried_with_its_request_id_is_one_run(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        plan.inject("trigger", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.trigger(trigger("e", "req"))
        again = faulty.trigger(trigger("e", "req", run_id=manual_run_id("e")))
        assert again.status == TriggerStatus.PUBLISHED
        assert again.run_id == manual_run_id("e", "req")
        assert queued_ids(backend) == [manual_run_id("e", "req")]
        assert len(backend.audit()) == 1

    def test_a_trigger_that_failed_before_writing_wrote_nothing(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        plan.inject("trigger", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            faulty.trigger(trigger("e"))
        assert (backend.queue_depths(), backend.audit()) == ({}, [])
        assert backend.trigger_keys() == []

    def test_a_refused_trigger_does_not_use_up_its_idempotency_key(self, backend: Backend) -> None:
        backend.pause(["e"], "r", None, BY)
        refused = backend.trigger(trigger("e", "r1", key="k"))
        assert refused.status == TriggerStatus.REFUSED_PAUSED
        assert backend.trigger(trigger("e", "r1", key="k")) == refused  # same request
        backend.resume(["e"], BY)
        again = backend.trigger(trigger("e", "r2", key="k"))
        assert (again.status, again.run_id) == (TriggerStatus.PUBLISHED, manual_run_id("e", "k"))

    def test_runs_published_without_a_lease_are_recorded_with_no_node(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        manual = backend.trigger(trigger("f"))
        [filled], _ = backend.backfill("g", [run("g", 1, "q")], BY, {})
        finish(backend, "ack", run_id("e", 1))
        for rid in (manual.run_id, filled, run_id("e", 2)):
            assert (record(backend, rid).node, record(backend, rid).epoch) == ("", 0)

    def test_a_used_idempotency_key_is_a_duplicate(self, backend: Backend) -> None:
        first = backend.trigger(trigger("e", "r1", key="nightly-fix"))
        again = backend.trigger(trigger("e", "r2", key="nightly-fix", run_id="e@x"))
        assert (again.status, again.run_id) == (TriggerStatus.DUPLICATE, first.run_id)
        assert backend.trigger(trigger("f", "r3", key="nightly-fix")).status == (
            TriggerStatus.PUBLISHED  # keys are per entry
        )
        assert len(queued_ids(backend)) == 2

    def test_a_paused_entry_refuses_a_trigger_unless_forced(self, backend: Backend) -> None:
        backend.pause(["e"], "db down", None, BY)
        pause = backend.load_controls()["e"].pause
        refused = backend.trigger(trigger("e", "r1"))
        assert refused == TriggerResult(
            TriggerStatus.REFUSED_PAUSED, manual_run_id("e", "r1"), pause.describe()
        )
        assert queued_ids(backend) == []
        assert backend.audit() == backend.audit("e")  # the pause's only
        assert len(backend.audit()) == 1
        forced = backend.trigger(trigger("e", "r2", force=True))
        assert forced.status == TriggerStatus.PUBLISHED
        assert queued_ids(backend) == [forced.run_id]

    def test_a_busy_entry_under_skip_refuses_a_trigger_naming_the_running_id(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=SKIP)
        refused = backend.trigger(trigger("e", "r1", guard=SKIP))
        assert (refused.status, refused.detail) == (TriggerStatus.REFUSED_BUSY, run_id("e", 1))
        forced = backend.trigger(trigger("e", "r2", guard=SKIP, force=True))
        assert forced.status == TriggerStatus.PUBLISHED
        assert backend.load_controls()["e"].busy.run_id == forced.run_id

    def test_a_trigger_under_a_guard_marks_the_entry_busy(self, backend: Backend) -> None:
        with window(backend) as bounds:
            result = backend.trigger(trigger("e", guard=SKIP))
        busy = backend.load_controls()["e"].busy
        assert busy.run_id == result.run_id and within(busy.since, bounds)
        assert backend.trigger(trigger("e", "r2", guard=SKIP)).status == (
            TriggerStatus.REFUSED_BUSY
        )

    def test_a_trigger_over_a_stale_busy_mark_names_it_and_its_audit_record_too(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = lead(backend)
        guard = Guard(Overlap.SKIP, 1 * unit)
        write(backend, lease, "e", run("e", 1, "q"), guard=guard)
        advance(1.5 * unit)
        result = backend.trigger(trigger("e", guard=guard))
        assert (result.status, result.detail) == (TriggerStatus.PUBLISHED, run_id("e", 1))
        [record] = backend.audit("e")
        assert record.detail["dropped_busy"] == run_id("e", 1)
        assert backend.load_controls()["e"].busy.run_id == result.run_id
        fresh = backend.trigger(trigger("e", "r2", guard=guard, force=True))
        assert (fresh.status, fresh.detail) == (TriggerStatus.PUBLISHED, "")  # forced: not stale

    def test_a_trigger_without_a_guard_leaves_the_busy_mark(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=SKIP)
        assert backend.trigger(trigger("e")).status == TriggerStatus.PUBLISHED
        assert backend.load_controls()["e"].busy.run_id == run_id("e", 1)

    def test_a_busy_entry_under_buffer_one_holds_the_trigger(self, backend: Backend) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        result = backend.trigger(trigger("e", guard=BUFFER))
        assert result.status == TriggerStatus.HELD
        hold = backend.load_controls()["e"].held
        assert (hold.run_id, hold.kind, hold.audit) == (
            result.run_id, RunKind.MANUAL, result.audit_id,
        )  # fmt: skip
        assert backend.run(result.run_id) is None
        finish(backend, "ack", run_id("e", 1))
        published = record(backend, result.run_id)
        assert (published.kind, published.audit) == (RunKind.MANUAL, result.audit_id)
        assert result.run_id in queued_ids(backend)

    def test_a_trigger_at_a_slots_exact_second_and_the_slot_are_two_runs(
        self, backend: Backend
    ) -> None:
        result = backend.trigger(trigger("e"))
        slot = record(backend, result.run_id).slot
        scheduled = at_run("e", slot)._replace(id=f"e@{slot:%Y-%m-%dT%H:%M:%SZ}")
        assert write(backend, lead(backend), "e", scheduled) == set()
        assert sorted(r.id for r in backend.runs(HistoryQuery(entry="e"))) == sorted(
            [result.run_id, scheduled.id]
        )
        assert len(queued_ids(backend)) == 2

    # --- backfill ---------------------------------------------------------------------------------

    def test_backfill_publishes_only_runs_without_a_published_record(
        self, backend: Backend
    ) -> None:
        write(backend, lead(backend), "e", run("e", 1, "q"))
        runs = [run("e", m, "q", kind=RunKind.BACKFILL) for m in (1, 2, 3)]
        ids, audit = backend.backfill("e", runs, BY, {"from": "a", "to": "b"})
        assert ids == [run_id("e", 2), run_id("e", 3)]
        assert (audit.action, audit.entry, audit.by, dict(audit.detail)) == (
            "backfill", "e", BY, {"from": "a", "to": "b", "published": 2, "already_there": 1},
        )  # fmt: skip
        assert backend.audit("e") == [audit]
        for rid in ids:
            assert (record(backend, rid).kind, record(backend, rid).audit) == (
                RunKind.BACKFILL, audit.id,
            )  # fmt: skip
        assert record(backend, run_id("e", 1)).kind == RunKind.SCHEDULED
        again, repeat = backend.backfill("e", runs, BY, {})
        assert again == []
        assert dict(repeat.detail) == {"published": 0, "already_there": 3}
        assert repeat in backend.audit("e")  # as stored
        assert sorted(queued_ids(backend)) == [run_id("e", m) for m in (1, 2, 3)]

    @pytest.mark.parametrize("how", FINAL_STEPS)
    def test_a_backfill_of_the_held_slot_publishes_it_once_the_busy_end_not_again(
        self, backend: Backend, how: str
    ) -> None:
        lease = lead(backend)
        write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=held("e", 2))
        backfilled = [run("e", 2, "q", kind=RunKind.BACKFILL)]
        assert backend.backfill("e", backfilled, BY, {})[0] == [run_id("e", 2)]
        assert backend.load_controls()["e"].held is None
        finish(backend, how, run_id("e", 1))
        assert backend.load_controls() == {}
        assert record(backend, run_id("e", 2)).kind == RunKind.BACKFILL
        assert queued_ids(backend).count(run_id("e", 2)) == 1

    def test_backfill_at_or_before_a_trimmed_slot_is_refused_in_its_step(
        self, backend: Backend
    ) -> None:
        lease = lead(backend)
        for m in (1, 2, 3):
            write(backend, lease, "e", run("e", m, "q"))
            finish(backend, "ack", run_id("e", m))
        assert backend.trim(Retention(per_entry=1)) == 2
        runs = [run("e", m, "q", kind=RunKind.BACKFILL) for m in (2, 3)]
        with pytest.raises(HistoryTrimmed) as refused:
            backend.backfill("e", runs, BY, {})
        assert (refused.value.entry, refused.value.bound) == ("e", slot_of(2))
        assert backend.audit("e") == [] and queued_ids(backend) == []
        assert backend.backfill("e", runs[1:], BY, {})[0] == []  # after it: checked as ever

    def test_backfill_with_history_off_is_refused(self, history_off_backend: Backend) -> None:
        with pytest.raises(BackendError):
            history_off_backend.backfill("e", [run("e", 1, "q")], BY, {})
        assert history_off_backend.queue_depths() == {}

    # --- the audit log ----------------------------------------------------------------------------

    def test_audit_is_read_newest_first_by_entry_since_and_limit(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        [first] = backend.pause(["e"], "r", None, BY)
        advance(1 * unit)
        middle = instant(backend)
        [second] = backend.pause(["f"], "r", None, BY)
        advance(1 * unit)
        [third] = backend.resume(["e"], BY)
        assert [a.id for a in backend.audit()] == [third.id, second.id, first.id]
        assert backend.audit("e") == [third, first]
        assert [a.id for a in backend.audit(since=middle)] == [third.id, second.id]
        assert backend.audit(limit=1) == [third]

    def test_an_audit_record_of_an_action_taken_elsewhere_is_stored(self, backend: Backend) -> None:
        done = AuditRecord("a1", instant(backend), "requeue_dead", None, BY, {"moved": 2})
        backend.record_audit(done)
        assert backend.audit() == [done]

    def test_trim_audit_deletes_records_older_than_max_age(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.pause(["e", "f"], "r", None, BY)
        advance(2 * unit)
        [kept] = backend.resume(["e"], BY)
        assert backend.trim_audit(timedelta(seconds=1 * unit), limit=1) == 1
        assert backend.trim_audit(timedelta(seconds=1 * unit)) == 1
        assert backend.audit() == [kept]
        assert backend.trim_audit(timedelta(seconds=1 * unit)) == 0

    # --- copies (beatd migrate) -------------------------------------------------------------------

    def test_trigger_keys_are_every_remembered_key_and_request_id(self, backend: Backend) -> None:
        with window(backend) as bounds:
            result = backend.trigger(trigger("e", "r1", key="k"))
        keys = sorted(backend.trigger_keys())
        assert [(k.key, k.entry, k.result) for k in keys] == [
            ("key:k", "e", result),
            ("request:r1", "e", result),
        ]
        assert all(within(k.at, bounds) for k in keys)

    def test_import_controls_stores_them_as_they_are_once(self, backend: Backend) -> None:
        at = instant(backend)
        control = EntryControl(Pause(at, None, "r", BY), Busy("e@1", at), held("e", 2))
        audit = AuditRecord("a1", at, "pause", "e", BY, {}, pause_json(None), {"pause": None})
        done = TriggerResult(TriggerStatus.PUBLISHED, "e@manual-k", "", "a0")
        key = TriggerKey("key:k", "e", done, at)
        assert backend.import_controls({"e": control}, [audit], [key]) == 3
        assert backend.import_controls({"e": control}, [audit], [key]) == 0
        assert backend.load_controls() == {"e": control}
        assert backend.audit() == [audit]
        assert backend.trigger_keys() == [key]
        dup = backend.trigger(trigger("e", "r9", key="k", run_id="e@other"))
        assert (dup.status, dup.run_id) == (TriggerStatus.DUPLICATE, "e@manual-k")

    def test_an_entry_with_a_control_here_is_not_replaced_by_an_import(
        self, backend: Backend
    ) -> None:
        backend.pause(["e"], "mine", None, BY)
        mine = backend.load_controls()["e"]
        other = EntryControl(Pause(instant(backend), None, "theirs", BY))
        assert backend.import_controls({"e": other}) == 0
        assert backend.load_controls() == {"e": mine}
