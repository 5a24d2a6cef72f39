"""The planner under operator controls (beatd.controls): pauses and overlap, with made-up times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from beatd.config.model import Entry, MissedPolicy
from beatd.controls import Busy, EntryControl, Guard, HeldRun, Overlap, Pause
from beatd.core import Decision, MissReason, Planner
from beatd.history import MissedSlots
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def every_minute(name: str = "a", **kw: object) -> Entry:
    return Entry(name=name, task="t.task", schedule=IntervalSchedule(M), **kw)  # type: ignore[arg-type]


def planner_for(
    entry: Entry, control: EntryControl | None = None, at: datetime = T0
) -> tuple[Planner, dict[str, EntryState]]:
    planner = Planner()
    states = {entry.name: EntryState(entry.name, at, None, entry.identity)}
    planner.load({entry.name: entry}, states, at, {entry.name: control} if control else {})
    return planner, states


def decide(planner: Planner, now: datetime) -> list[Decision]:
    decisions = planner.tick(now)
    planner.settle(decisions)
    return decisions


def until_quiet(planner: Planner, now: datetime) -> list[Decision]:
    """Tick at every wake up to `now`, as the loop does."""
    out: list[Decision] = []
    while (wake := planner.next_wake()) is not None and wake <= now:
        out += decide(planner, wake)
    return out


def missed(decisions: list[Decision]) -> list[MissedSlots]:
    return [m for d in decisions for m in d.missed]


def published(decisions: list[Decision]) -> list[datetime]:
    return [r.slot for d in decisions for r in d.runs]


PAUSE = Pause(T0 + 2 * M + timedelta(seconds=30), T0 + 6 * M, "db migration", "ann@ops")


def test_a_pause_misses_its_slots_under_every_policy_and_wakes_at_until() -> None:
    for policy in MissedPolicy:
        planner, _ = planner_for(every_minute(missed=policy), EntryControl(pause=PAUSE))
        decisions = until_quiet(planner, T0 + 8 * M)
        assert published(decisions) == [T0 + M, T0 + 2 * M, T0 + 6 * M, T0 + 7 * M, T0 + 8 * M]
        assert missed(decisions) == [MissedSlots("a", MissReason.PAUSED, T0 + 3 * M, T0 + 5 * M, 3)]


def test_the_paused_slots_are_one_decision_at_until() -> None:
    planner, _ = planner_for(every_minute(), EntryControl(pause=PAUSE))
    until_quiet(planner, T0 + 2 * M)
    assert planner.next_wake() == T0 + 6 * M
    (paused, *_rest) = decide(planner, T0 + 6 * M)
    assert paused.missed == (MissedSlots("a", MissReason.PAUSED, T0 + 3 * M, T0 + 5 * M, 3),)


def test_downtime_across_a_pause_pauses_its_slots_and_applies_missed_to_the_others() -> None:
    planner, _ = planner_for(every_minute(missed=MissedPolicy.RUN_ONCE), EntryControl(pause=PAUSE))
    decisions = decide(planner, T0 + 10 * M)  # nobody published from 12:00 to 12:10
    decisions += decide(planner, T0 + 10 * M)
    decisions += decide(planner, T0 + 10 * M)
    # run_once before and after the pause (the newest overdue slot, and those within grace)
    assert published(decisions) == [T0 + 2 * M, T0 + 8 * M, T0 + 9 * M, T0 + 10 * M]
    assert missed(decisions) == [
        MissedSlots("a", MissReason.SKIPPED, T0 + M, T0 + M, 1),
        MissedSlots("a", MissReason.PAUSED, T0 + 3 * M, T0 + 5 * M, 3),
        MissedSlots("a", MissReason.SKIPPED, T0 + 6 * M, T0 + 7 * M, 2),
    ]


def test_a_pause_till_resumed_sleeps_and_a_resume_never_publishes_its_slots() -> None:
    forever = PAUSE._replace(until=None)
    planner, _ = planner_for(every_minute(), EntryControl(pause=forever))
    until_quiet(planner, T0 + 20 * M)
    assert planner.next_wake() is None
    assert planner.paused() == ["a"]
    assert planner.refresh_controls({}, T0 + 20 * M + timedelta(seconds=10)) == 1
    decisions = until_quiet(planner, T0 + 21 * M)
    assert missed(decisions) == [MissedSlots("a", MissReason.PAUSED, T0 + 3 * M, T0 + 20 * M, 18)]
    assert published(decisions) == [T0 + 21 * M]
    assert planner.paused() == []


def test_a_resync_after_a_refused_commit_brings_the_pause_in() -> None:
    entry = every_minute()
    planner, _ = planner_for(entry)
    (refused,) = planner.tick(T0 + M)
    planner.release([refused])  # the commit was refused: a pause covers 12:01
    pause = Pause(T0 + timedelta(seconds=50), None, "stop", "bob@ops")
    state = EntryState("a", T0, None, entry.identity)
    assert planner.resync(state, "a", EntryControl(pause=pause), T0 + M)
    assert planner.tick(T0 + M) == []  # paused till resumed: asleep


def test_overlap_skip_misses_a_slot_due_while_busy_and_says_what_it_assumed() -> None:
    entry = every_minute(overlap=Overlap.SKIP, overlap_timeout=timedelta(minutes=30))
    planner, _ = planner_for(entry)
    (first,) = decide(planner, T0 + M)
    assert (first.guard, first.busy, len(first.runs)) == (Guard(Overlap.SKIP, 1800.0), False, 1)
    (second,) = decide(planner, T0 + 2 * M)  # the first run is still busy (as we know)
    assert (second.runs, second.busy) == ((), True)
    assert second.missed == (MissedSlots("a", MissReason.OVERLAP, T0 + 2 * M, T0 + 2 * M, 1),)
    # the run ended: a refresh (or a refused commit's resync) says so
    planner.refresh_controls({}, T0 + 2 * M)
    (third,) = decide(planner, T0 + 3 * M)
    assert (published([third]), third.busy) == ([T0 + 3 * M], False)


def test_overlap_buffer_one_holds_the_newest_and_misses_the_older_held() -> None:
    entry = every_minute(overlap=Overlap.BUFFER_ONE)
    busy = Busy("a@2026-03-01T12:00:00Z", T0)
    planner, _ = planner_for(entry, EntryControl(busy=busy))
    (first,) = decide(planner, T0 + M)
    assert first.runs == () and first.busy and first.hold is not None
    assert first.hold.slot == T0 + M and first.missed == ()
    (second,) = decide(planner, T0 + 2 * M)
    assert second.hold is not None and second.hold.slot == T0 + 2 * M
    assert second.missed == (MissedSlots("a", MissReason.OVERLAP, T0 + M, T0 + M, 1),)
    control = planner.control("a")
    assert control is not None and control.held is not None
    assert control.held.run_id == "a@2026-03-01T12:02:00Z"


def test_a_stale_busy_mark_is_published_over_and_reported() -> None:
    entry = every_minute(overlap=Overlap.SKIP, expires=timedelta(minutes=5))
    old = Busy("a@2026-03-01T11:50:00Z", T0 - 10 * M)
    planner, _ = planner_for(entry, EntryControl(busy=old))
    (decision,) = decide(planner, T0 + M)
    assert published([decision]) == [T0 + M] and decision.stale == old
    assert decision.guard == Guard(Overlap.SKIP, 300.0)  # overlap_timeout defaults to expires


def test_under_a_guard_a_catch_up_publishes_one_and_holds_the_newest() -> None:
    entry = every_minute(
        overlap=Overlap.BUFFER_ONE, missed=MissedPolicy.CATCH_UP, misfire_grace=timedelta(seconds=5)
    )
    planner, _ = planner_for(entry)
    (decision,) = decide(planner, T0 + 4 * M)
    assert published([decision]) == [T0 + M]
    assert decision.hold is not None and decision.hold.slot == T0 + 4 * M
    assert decision.missed == (MissedSlots("a", MissReason.OVERLAP, T0 + 2 * M, T0 + 3 * M, 2),)
    assert decision.state.last_published == T0 + M


def test_an_entry_without_controls_takes_the_plain_path() -> None:
    planner, _ = planner_for(every_minute())
    (decision,) = decide(planner, T0 + M)
    assert (decision.guard, decision.busy, decision.hold, decision.at) == (None, False, None, None)


def test_a_held_run_value_keeps_its_kind() -> None:
    held = HeldRun("a@x", T0, T0, "scheduled", "q", "{}")
    assert held.kind == "scheduled"
