"""The scheduler under operator controls, on a fake clock and the in-memory backend: pauses
(also set behind the leader's back, and across a failover), overlap skip and buffer_one against a
slow run, a stale busy mark, and pause_after_failures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from beatd.backends.base import Delivery
from beatd.backends.memory import MemoryBackend
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry, MissedPolicy
from beatd.controls import Guard, Overlap, TriggerStatus
from beatd.history import HistoryQuery, MissedRecord, MissedSlots, RunKind
from beatd.message import run_id
from beatd.metrics import register_scheduler
from beatd.operations.history import read_history, record_object
from beatd.publisher import encode_run
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from tests.in_process import T0, memory_backend, scheduler
from tests.test_metrics import scrape, value

M = timedelta(minutes=1)
NAME = "scheduler-controls"
CATCH_UP = MissedPolicy.CATCH_UP


def every_minute(name: str = "tick", **kw: Any) -> Entry:
    return Entry(name=name, task="t.task", schedule=IntervalSchedule(M), **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend(NAME, clock)


def published(backend: MemoryBackend, entry: str = "tick") -> list[str]:
    runs = backend.runs(HistoryQuery(entry=entry))
    return sorted(r.slot.strftime("%H:%M") for r in runs if r.slot is not None)


def missed(backend: MemoryBackend, entry: str = "tick") -> list[MissedSlots]:
    return sorted((m.slots for m in backend.missed(entry=entry)), key=lambda m: m.first)


def paused(first: int, last: int, count: int) -> MissedSlots:
    return MissedSlots("tick", "paused", T0 + first * M, T0 + last * M, count)


def claim(backend: MemoryBackend) -> Delivery:
    delivery = backend.claim(["default"], "w1", 3600)
    assert delivery is not None
    return delivery


def test_a_pause_behind_the_leaders_back_is_refused_resynced_and_missed(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """The leader does not know of the pause (no refresh): its commit of 12:01 is refused, it
    reads the control, and 12:01-12:02 end missed (paused); the other entry is unaffected."""
    beat = scheduler(backend, clock, every_minute(), every_minute("other"))
    beat.steering.interval = 3600.0  # only a refused commit tells the leader
    run_for(beat, 30)
    backend.pause(["tick"], "db migration", timedelta(seconds=140), "ann@ops")  # to 12:02:50
    run_for(beat, 240)  # to 12:04:30
    assert published(backend) == ["12:03", "12:04"]
    assert published(backend, "other") == ["12:01", "12:02", "12:03", "12:04"]
    assert missed(backend) == [paused(1, 2, 2)]
    assert beat.counts.get("tick")["missed_paused"] == 2


def test_until_expires_under_the_fake_clock(backend: MemoryBackend, clock: FakeClock) -> None:
    beat = scheduler(backend, clock, every_minute())
    backend.pause(["tick"], "until lunch", T0 + timedelta(minutes=2, seconds=30), "ann@ops")
    run_for(beat, 10)
    assert beat.planner.paused() == ["tick"]
    assert beat.planner.next_wake() == T0 + timedelta(minutes=2, seconds=30)  # wakes at until
    run_for(beat, 295)  # to 12:05:05
    assert published(backend) == ["12:03", "12:04", "12:05"]
    assert missed(backend) == [paused(1, 2, 2)]
    assert beat.planner.paused() == ["tick"]  # the lapsed pause stays stored; it covers nothing
    assert beat.paused_entries() == []  # so beatd_entry_paused is gone


def test_a_pause_during_failover_is_honoured_by_the_next_leader(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    first = scheduler(backend, clock, every_minute())
    run_for(first, 70)  # 12:01 published by a
    first.shutdown()  # a leaves; nobody leads while the operator pauses
    backend.pause(["tick"], "incident", None, "ann@ops")
    clock.advance(180)
    second = scheduler(backend, clock, every_minute(), node="b")
    run_for(second, 60)  # 12:04:10 to 12:05:10: b adopts the pause
    assert published(backend) == ["12:01"]
    assert second.planner.paused() == ["tick"]
    backend.resume(["tick"], "ann@ops")
    run_for(second, 60)  # a refresh sees the resume: 12:02..12:05 paused, 12:06 on time
    run_for(second, 60)
    assert published(backend) == ["12:01", "12:06", "12:07"]
    assert missed(backend) == [paused(2, 5, 4)]
    assert second.planner.paused() == []


def test_overlap_skip_misses_slots_while_a_long_run_is_busy(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.SKIP))
    run_for(beat, 65)  # 12:01 published
    run = claim(backend)  # a task that takes two and a half minutes
    run_for(beat, 125)  # 12:02 and 12:03 due while it runs
    backend.ack(run)  # 12:03:10: the leader learns it at its next commit or refresh
    run_for(beat, 60)  # 12:04
    assert published(backend) == ["12:01", "12:04"]
    assert missed(backend) == [
        MissedSlots("tick", "overlap", T0 + 2 * M, T0 + 2 * M, 1),
        MissedSlots("tick", "overlap", T0 + 3 * M, T0 + 3 * M, 1),
    ]
    assert beat.counts.get("tick")["missed_overlap"] == 2


def test_buffer_one_holds_the_newest_slot_and_the_ack_publishes_it(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)
    run = claim(backend)
    run_for(beat, 125)  # 12:02 held, then 12:03 held and 12:02 missed (overlap)
    control = backend.load_controls(["tick"])["tick"]
    assert control.held is not None and control.held.run_id == "tick@2026-03-01T12:03:00Z"
    backend.ack(run)  # the ack step publishes the held run
    held = claim(backend)
    assert held.id == "tick@2026-03-01T12:03:00Z"
    assert missed(backend) == [MissedSlots("tick", "overlap", T0 + 2 * M, T0 + 2 * M, 1)]
    backend.ack(held)
    run_for(beat, 60)  # 12:04 goes out as usual
    assert published(backend) == ["12:01", "12:03", "12:04"]


def test_a_stale_busy_mark_is_dropped_logged_and_counted(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    entry = every_minute(overlap=Overlap.SKIP, overlap_timeout=timedelta(seconds=90))
    beat = scheduler(backend, clock, entry)
    run_for(beat, 65)
    claim(backend)  # never ends: its worker died and nobody acks it
    with caplog.at_level(logging.WARNING, logger="beatd.scheduler"):
        run_for(beat, 125)  # 12:02 skipped (busy 60 s), 12:03 over the 90-s mark
    assert published(backend) == ["12:01", "12:03"]
    assert beat.busy_marks_dropped == {"tick": 1}
    assert (
        "busy mark dropped entry=tick run=tick@2026-03-01T12:01:00Z since=2026-03-01T12:01:00Z: "
        "older than the entry's overlap_timeout, so its next run was published beside it"
    ) in caplog.messages


def test_pause_after_failures_pauses_once(backend: MemoryBackend, clock: FakeClock) -> None:
    beat = scheduler(backend, clock, every_minute(pause_after_failures=2))
    for _ in range(2):
        run_for(beat, 65)
        backend.dead_letter(claim(backend), "boom")
    run_for(beat, 60)  # the summaries are read (every 15 s): paused by the leader
    control = backend.load_controls(["tick"])["tick"]
    assert control.pause is not None
    assert (control.pause.reason, control.pause.by) == (
        "paused after 2 consecutive failures",
        "beatd@a",
    )
    backend.resume(["tick"], "ann@ops")
    run_for(beat, 60)  # still failing in the summaries, but paused once only
    assert [c.pause for c in backend.load_controls(["tick"]).values()] in ([], [None])
    assert [r.action for r in backend.audit("tick")] == ["resume", "pause"]


def test_a_held_run_published_behind_the_leaders_back_is_not_counted_missed(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """The ack publishes the held 12:02 while the leader still believes it held: its next hold
    (12:03) replaces nothing, so 12:02 ends published, never missed as well."""
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    beat.steering.interval = 3600.0  # the leader hears of nothing but refused commits
    run_for(beat, 65)
    run = claim(backend)
    run_for(beat, 60)  # 12:02 held
    backend.ack(run)  # 12:02:05: publishes the held 12:02, now busy
    second = claim(backend)
    run_for(beat, 60)  # 12:03 held behind 12:02's run
    backend.ack(second)
    assert claim(backend).id == "tick@2026-03-01T12:03:00Z"
    assert published(backend) == ["12:01", "12:02", "12:03"]
    assert missed(backend) == []


def test_paused_slots_have_no_deadline(backend: MemoryBackend, clock: FakeClock) -> None:
    beat = scheduler(backend, clock, every_minute(deadline=timedelta(seconds=30)))
    backend.pause(["tick"], "quiet hours", timedelta(seconds=150), "ann@ops")
    run_for(beat, 240)  # 12:01 and 12:02 paused; 12:03 published and never run
    (record,) = backend.missed(entry="tick")
    assert (record.slots, record.overdue_at) == (paused(1, 2, 2), None)
    assert beat.deadlines.overdue == {"tick": 1}  # 12:03's run only


class PausingMidBurst:
    """The memory backend, where an operator pauses `entry` just before the leader's second
    commit of a burst: the batches decided after it are refused for that entry."""

    def __init__(self, inner: MemoryBackend, entry: str) -> None:
        self.inner, self.entry, self.commits = inner, entry, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send_commit(self, lease: Any, writes: Any, messages: Any) -> Any:
        self.commits += 1
        if self.commits == 3:  # the baselines' commit, then the burst's first batch
            self.inner.pause([self.entry], "hurting the db", None, "ann@ops")
        return self.inner.send_commit(lease, writes, messages)


def test_a_pause_taking_effect_mid_burst(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [every_minute(f"e{i:02d}") for i in range(20)]
    config = Config({e.name: e for e in entries})
    settings = SchedulerSettings(node="a", lease_ttl=30, max_clock_skew=3600, batch_size=5)
    wrapped = PausingMidBurst(backend, "e17")
    beat = Scheduler(wrapped, lambda: config, clock, settings)
    beat.steering.interval = 3600.0
    with caplog.at_level(logging.WARNING, logger="beatd.scheduler"):
        run_for(beat, 65)  # the burst of 12:01: four batches of five
    assert wrapped.commits >= 4
    assert published(backend, "e16") == ["12:01"] and published(backend, "e17") == []
    assert beat.planner.paused() == ["e17"]
    assert (
        "entry=e17: persisted state or control (a pause, a busy run) differs from ours; resyncing"
    ) in caplog.messages
    backend.resume(["e17"], "ann@ops")
    beat.steering.read_soon()
    run_for(beat, 60)
    assert missed(backend, "e17") == [MissedSlots("e17", "paused", T0 + M, T0 + M, 1)]
    assert published(backend, "e17") == ["12:02"]


def test_the_paused_gauge_and_the_dropped_marks_counter(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(overlap=Overlap.SKIP, overlap_timeout=timedelta(seconds=90))
    beat = scheduler(backend, clock, entry, every_minute("quiet"))
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    backend.pause(["quiet"], "maintenance", timedelta(minutes=10), "ann@ops")
    run_for(beat, 65)
    claim(backend)
    run_for(beat, 125)  # tick's 12:03 published over the 12:01 mark
    samples = scrape(registry)
    assert value(samples, "beatd_entry_paused", entry="quiet") == 1
    assert ("beatd_entry_paused", (("entry", "tick"),)) not in samples
    assert value(samples, "beatd_busy_marks_dropped_total", entry="tick") == 1
    assert value(samples, "beatd_runs_missed_total", entry="tick", reason="overlap") == 1


def test_buffer_one_on_sqlite_misses_the_replaced_held_slot(
    tmp_path: Any, clock: FakeClock
) -> None:
    """Found with real processes on SQLite (every 5s, a 12 s task, buffer_one): the held slots
    that newer ones replaced left no missed(overlap) record and no count."""
    from beatd.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "b.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)
    run = backend.claim(["default"], "w1", 3600)
    assert run is not None
    run_for(beat, 125)  # 12:02 held, then 12:03 held and 12:02 missed (overlap)
    backend.ack(run)
    held = backend.claim(["default"], "w1", 3600)
    assert held is not None and held.id == "tick@2026-03-01T12:03:00Z"
    slots = sorted((m.slots for m in backend.missed(entry="tick")), key=lambda m: m.first)
    assert slots == [MissedSlots("tick", "overlap", T0 + 2 * M, T0 + 2 * M, 1)]


def test_buffer_one_on_sqlite_counts_the_replaced_slot_missed_and_the_ack_published_one(
    tmp_path: Any, clock: FakeClock
) -> None:
    from beatd.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "b.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)
    run = backend.claim(["default"], "w1", 3600)
    assert run is not None
    run_for(beat, 125)  # 12:02 held, then 12:03 held and 12:02 missed (overlap)
    backend.ack(run)  # publishes 12:03
    run_for(beat, 15)
    counts = beat.counts.get("tick")
    assert (counts["due"], counts["published"], counts["missed_overlap"]) == (3, 2, 1)


def test_buffer_one_a_held_trigger_is_not_lost_to_the_next_held_slot(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """Found with real processes on SQLite: `beatd trigger` of a busy buffer_one entry printed
    `held: ... the run is published when that one ends` (exit 0), then the next slot the leader
    held replaced it: the manual run never ran and nothing recorded it."""
    from tests.backends.controls_contract import BUFFER, trigger

    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)  # 12:01 published, busy
    run = claim(backend)
    result = backend.trigger(trigger("tick", guard=BUFFER))
    assert result.status.name == "HELD"
    run_for(beat, 60)  # 12:02 comes due while 12:01 runs
    backend.ack(run)
    assert backend.run(result.run_id) is not None or any(
        result.run_id in str(m) for m in backend.missed(entry="tick")
    )


def test_buffer_one_a_held_trigger_runs_next_and_the_slot_it_kept_out_is_missed(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """The held manual run stays held; the slot the leader wanted to hold ends missed."""
    from tests.backends.controls_contract import BUFFER, trigger

    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)  # 12:01 published, busy
    run = claim(backend)
    result = backend.trigger(trigger("tick", guard=BUFFER))
    run_for(beat, 60)  # 12:02 comes due while 12:01 runs
    backend.ack(run)
    manual = backend.claim(["q"], "w1", 3600)  # the queue `trigger` names
    assert manual is not None and manual.id == result.run_id
    assert backend.claim(["default"], "w1", 3600) is None
    (kept_out,) = backend.missed(entry="tick")
    assert kept_out.slots == MissedSlots("tick", "overlap", T0 + 2 * M, T0 + 2 * M, 1)


def test_status_last_published_follows_a_held_run_the_ack_published(
    backend: MemoryBackend, clock: FakeClock, tmp_path: Any
) -> None:
    """Found with real processes on SQLite: a buffer_one entry whose held slots went out every
    cycle showed LAST PUBLISHED frozen at its first slot (`2 min ago`), as if it had stopped."""
    import json

    from click.testing import CliRunner

    from beatd.cli import main

    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    run_for(beat, 65)
    run = claim(backend)
    run_for(beat, 60)  # 12:02 held
    backend.ack(run)  # publishes 12:02
    assert claim(backend).id == "tick@2026-03-01T12:02:00Z"
    (tmp_path / "s.yaml").write_text(
        "entries:\n  tick:\n    task: t.task\n    every: 1m\n    overlap: buffer_one\n"
    )
    result = CliRunner().invoke(
        main, ["status", "-s", str(tmp_path), "--broker", f"memory://{NAME}", "--json"]
    )
    rows = {row["entry"]: row for row in json.loads(result.stdout)["entries"]}
    assert rows["tick"]["last_published"] == "2026-03-01T12:02:00Z"


def test_buffer_one_slots_are_counted_due_and_the_replaced_one_missed(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """Found with real processes on SQLite and Redis: a buffer_one entry (every 5s, a 12 s task)
    showed beatd_runs_due_total and beatd_runs_published_total 0 after minutes of runs, and no
    beatd_runs_missed_total{reason="overlap"}, so BeatdRunsMissed never sees its skipped slots."""
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.BUFFER_ONE))
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    run_for(beat, 65)
    run = claim(backend)
    run_for(beat, 125)  # 12:02 held, then 12:03 held and 12:02 missed (overlap)
    samples = scrape(registry)
    assert value(samples, "beatd_runs_missed_total", entry="tick", reason="overlap") == 1
    assert value(samples, "beatd_runs_due_total", entry="tick") == 3
    assert value(samples, "beatd_runs_published_total", entry="tick") == 1
    backend.ack(run)  # 12:03:10: the ack publishes the held 12:03, behind the leader's back
    run_for(beat, 10)  # the leader reads the controls (every 5 s): 12:03 left, published
    samples = scrape(registry)
    assert value(samples, "beatd_runs_published_total", entry="tick") == 2
    assert value(samples, "beatd_runs_late_total", entry="tick") == 0  # within misfire_grace
    assert value(samples, "beatd_runs_due_total", entry="tick") == 3
    last = value(samples, "beatd_last_published_timestamp_seconds", entry="tick")
    assert last == (T0 + 3 * M).timestamp()


def test_buffer_one_a_held_slot_a_trigger_replaced_and_one_published_late_are_counted(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    from tests.backends.controls_contract import BUFFER, trigger

    entry = every_minute(overlap=Overlap.BUFFER_ONE, misfire_grace=timedelta(seconds=30))
    beat = scheduler(backend, clock, entry)
    run_for(beat, 65)  # 12:01 published
    first = claim(backend)
    run_for(beat, 60)  # 12:02 held
    assert backend.trigger(trigger("tick", guard=BUFFER)).status.name == "HELD"  # over 12:02
    run_for(beat, 15)
    backend.ack(first)  # publishes the manual run
    backend.ack(backend.claim(["q"], "w1", 3600) or claim(backend))
    run_for(beat, 45)  # 12:03 published
    third = claim(backend)
    run_for(beat, 60)  # 12:04 held
    run_for(beat, 35)
    backend.ack(third)  # 12:04:40: the held 12:04 goes out 40 s late
    run_for(beat, 15)
    counts = beat.counts.get("tick")
    assert (counts["due"], counts["published"], counts["late"]) == (4, 3, 1)
    assert counts["missed_overlap"] == 1  # 12:02, which the trigger replaced
    assert published(backend) == ["12:01", "12:02", "12:03", "12:04"]  # 12:02: the manual run
    assert missed(backend) == [MissedSlots("tick", "overlap", T0 + 2 * M, T0 + 2 * M, 1)]


def test_overlap_skip_a_run_ending_as_usual_logs_no_warning(
    tmp_path: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Found with real processes on SQLite and Redis: under overlap: skip every run that ended
    within the 5 s before the leader re-read the controls made its next commit fail and log
    `WARNING ... differs from ours; resyncing` (23 times in 7 minutes for an every-5s entry):
    a normal run's end reads as trouble."""
    from beatd.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "b.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, every_minute(overlap=Overlap.SKIP))
    beat.steering.interval = 3600.0  # between two reads of the controls, as most ticks are
    run_for(beat, 65)
    run = backend.claim(["default"], "w1", 3600)
    assert run is not None
    run_for(beat, 60)  # 12:02 missed (overlap)
    backend.ack(run)  # 12:01's run ends before 12:03
    with caplog.at_level(logging.WARNING):
        run_for(beat, 60)
    assert len(backend.runs(HistoryQuery(entry="tick"))) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_metrics_count_runs_triggered_and_backfilled(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """Issue 16 ("Around it"): metrics count runs triggered and backfilled. The commands run in
    their own processes, so the leader counts their audit records (once each, across refreshes)."""
    from tests.backends.controls_contract import trigger

    beat = scheduler(backend, clock, every_minute())
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    run_for(beat, 65)
    backend.trigger(trigger("tick"))
    run_for(beat, 60)
    names = {name for name, _ in scrape(registry)}
    assert any("trigger" in name for name in names), sorted(names)
    assert any("backfill" in name for name in names), sorted(names)
    assert value(scrape(registry), "beatd_runs_triggered_total", entry="tick") == 1
    backend.trigger(trigger("tick", "r2"))
    backend.trigger(trigger("tick", "r3"))
    slots = [T0 - 2 * M, T0 - M, T0 + M]  # 12:01 was published by the scheduler
    runs = [
        encode_run(every_minute(), run_id("tick", s), s, T0, RunKind.BACKFILL, "a") for s in slots
    ]
    backend.backfill("tick", runs[:2], "test", {"slots": 3})  # two steps of one command
    backend.backfill("tick", runs[2:], "test", {"slots": 3})
    run_for(beat, 60)
    samples = scrape(registry)
    assert value(samples, "beatd_runs_triggered_total", entry="tick") == 3
    assert value(samples, "beatd_runs_backfilled_total", entry="tick") == 2


def test_a_new_leader_counts_only_the_commands_after_it_took_over(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """The counts are this process's: a trigger recorded before it led is not counted, one after
    is, once, however many refreshes read it again (a read is from the newest record's time)."""
    from tests.backends.controls_contract import trigger

    backend.trigger(trigger("tick", "before"))
    beat = scheduler(backend, clock, every_minute())
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    run_for(beat, 30)
    assert not any("triggered" in name for name, _ in scrape(registry))
    backend.trigger(trigger("tick", "after"))
    run_for(beat, 30)
    assert value(scrape(registry), "beatd_runs_triggered_total", entry="tick") == 1


def test_a_slot_due_after_the_resume_is_not_missed_as_paused(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """The leader reads the controls every 5 s, so it sees a resume up to 5 s late; the slots
    due between the resume and that read are not paused (`beatd resume`: the next slot after now
    runs as usual): they follow `missed:` like any slot published late."""
    two = timedelta(seconds=2)
    entry = Entry(name="tick", task="t.task", schedule=IntervalSchedule(two), missed=CATCH_UP)
    beat = scheduler(backend, clock, entry)
    run_for(beat, 1)  # leading from 12:00:00; the first slot is 12:00:02
    backend.pause(["tick"], "incident", None, "ann@ops")  # at 12:00:01
    run_for(beat, 10)  # to 12:00:11, the controls last read at 12:00:10
    backend.resume(["tick"], "ann@ops")  # at 12:00:11: 12:00:02..12:00:10 stay paused
    run_for(beat, 10)  # read at 12:00:15: 12:00:12 and 12:00:14 caught up, then on time
    slots = sorted(r.slot for r in backend.runs(HistoryQuery(entry="tick")) if r.slot)
    assert [f"{s:%H:%M:%S}" for s in slots] == [
        "12:00:12", "12:00:14", "12:00:16", "12:00:18", "12:00:20",
    ]  # fmt: skip
    assert missed(backend) == [MissedSlots("tick", "paused", T0 + two, T0 + 5 * two, 5)]


def test_the_leader_counts_the_stale_busy_marks_a_trigger_dropped(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """A trigger runs in its own process: the stale mark it published over is counted by the
    leader from its audit record (`dropped_busy`), as the leader counts the marks it drops."""
    from tests.backends.controls_contract import trigger

    guard = Guard(Overlap.SKIP, 90.0)
    every = IntervalSchedule(10 * M)
    entry = Entry(
        "tick", "t.task", every, overlap=Overlap.SKIP, overlap_timeout=timedelta(seconds=90)
    )
    beat = scheduler(backend, clock, entry)
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    run_for(beat, 605)  # 12:10 published: tick is busy
    run_for(beat, 100)  # its mark is stale now, and the next slot is not due yet
    result = backend.trigger(trigger("tick", guard=guard))
    assert (result.status, result.detail) == (TriggerStatus.PUBLISHED, run_id("tick", T0 + 10 * M))
    beat.steering.read_soon()
    run_for(beat, 1)
    assert value(scrape(registry), "beatd_busy_marks_dropped_total", entry="tick") == 1


def test_the_history_names_the_pause_each_paused_range_was_under(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat = scheduler(backend, clock, every_minute())
    run_for(beat, 65)  # 12:01 published
    [ann] = backend.pause(["tick"], "incident", None, "ann@ops")
    run_for(beat, 120)
    backend.resume(["tick"], "ann@ops")  # 12:02 and 12:03 were paused
    beat.steering.read_soon()
    run_for(beat, 60)  # 12:04 published
    [bob] = backend.pause(["tick"], "deploy", T0 + 7 * M, "bob@ops")
    run_for(beat, 240)  # 12:05 and 12:06 paused, 12:07 published
    page = read_history(backend, HistoryQuery("tick"), frozenset({"missed"}))
    found = {
        record.slots.first.strftime("%H:%M"): record_object(record, {}, page.pauses)["pause"]
        for record in page.records
        if isinstance(record, MissedRecord)
    }
    assert found == {
        "12:02": {
            "at": f"{ann.at:%Y-%m-%dT%H:%M:%SZ}",
            "until": None,
            "reason": "incident",
            "by": "ann@ops",
            "audit": ann.id,
        },
        "12:05": {
            "at": f"{bob.at:%Y-%m-%dT%H:%M:%SZ}",
            "until": "2026-03-01T12:07:00Z",
            "reason": "deploy",
            "by": "bob@ops",
            "audit": bob.id,
        },
    }


@pytest.mark.parametrize("how", ["resumed", "replaced"])
def test_a_pause_lifted_while_no_leader_ran_covers_its_slots_on_sqlite(
    tmp_path: Any, clock: FakeClock, how: str
) -> None:
    """The lifted pause is persisted (beatd.controls.lift): the next leader, which never saw
    it, ends its slots missed (paused) under `missed: catch_up`, publishing none of them."""
    from beatd.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "b.db", wall_clock=lambda: clock.now().timestamp())
    entry = every_minute(missed=MissedPolicy.CATCH_UP)
    first = scheduler(backend, clock, entry)
    run_for(first, 70)  # 12:01 published
    first.shutdown()  # nobody leads from here
    backend.pause(["tick"], "incident", None, "ann@ops")  # 12:01:10
    clock.advance(180)
    if how == "resumed":
        backend.resume(["tick"], "ann@ops")  # 12:04:10
    else:
        backend.pause(
            ["tick"], "later", T0 + 4 * M + timedelta(seconds=20), "bob@ops"
        )  # till 12:04:20
    clock.advance(30)
    second = scheduler(backend, clock, entry, node="b")
    run_for(second, 60)  # 12:04:40 to 12:05:40
    assert published(backend, "tick") == ["12:01", "12:05"]
    assert missed(backend, "tick") == [MissedSlots("tick", "paused", T0 + 2 * M, T0 + 4 * M, 3)]
