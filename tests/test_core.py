"""The pure scheduler core under a made-up clock: nothing here sleeps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beatd.config.model import Entry, MissedPolicy
from beatd.core import Decision, MissReason, Planner, RemovedEntries, RunCounts, state_lost
from beatd.history import MissedSlots
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule
from beatd.state import EntryState

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def every(name: str, seconds: int, **kw: object) -> Entry:
    return Entry(
        name=name, task="t.task", schedule=IntervalSchedule(timedelta(seconds=seconds)), **kw
    )  # type: ignore[arg-type]


def cron(name: str, expr: str, tz: str = "UTC", **kw: object) -> Entry:
    return Entry(name=name, task="t.task", schedule=CronSchedule.parse(expr, tz), timezone=tz, **kw)  # type: ignore[arg-type]


@dataclass
class Store:
    """The persisted side, as a backend would keep it, with everything ever published."""

    states: dict[str, EntryState] = field(default_factory=dict)
    published: list[tuple[str, datetime, bool]] = field(default_factory=list)
    missed: Counter[tuple[str, MissReason]] = field(default_factory=Counter)
    ranges: list[MissedSlots] = field(default_factory=list)

    def baseline(self, states: list[EntryState]) -> None:
        self.states.update((state.entry, state) for state in states)

    def commit(self, decisions: list[Decision]) -> None:
        for d in decisions:
            assert self.states.get(d.entry.name) == d.previous
            self.states[d.entry.name] = d.state
            self.published += [(r.entry.name, r.slot, r.late) for r in d.runs]
            assert len({m.reason for m in d.missed}) == len(d.missed), "one range per reason"
            for m in d.missed:
                assert m.entry == d.entry.name
                self.missed[(d.entry.name, MissReason(m.reason))] += m.total
            self.ranges += d.missed


def named(*entries: Entry) -> dict[str, Entry]:
    return {e.name: e for e in entries}


def start(entries: list[Entry], store: Store, now: datetime, limit: int | None = None) -> Planner:
    planner = Planner(tick_budget=limit, walk_limit=limit)
    baselines, _ = planner.load(named(*entries), store.states, now)
    store.baseline(baselines)
    return planner


def tick(planner: Planner, store: Store, now: datetime) -> list[Decision]:
    decisions = planner.tick(now)
    store.commit(decisions)
    planner.settle(decisions)
    return decisions


def run_until(planner: Planner, store: Store, now: datetime, end: datetime) -> datetime:
    """Wake exactly when the planner asks to, as the daemon loop does, until `end`."""
    while True:
        wake = planner.next_wake()
        if wake is None or wake > end:
            return end
        now = max(now, wake)
        tick(planner, store, now)


def test_interval_publishes_each_slot_on_time() -> None:
    store = Store()
    planner = start([every("a", 10)], store, T0)
    run_until(planner, store, T0, T0 + timedelta(seconds=60))
    assert [s for _, s, _ in store.published] == [
        T0 + timedelta(seconds=10 * k) for k in range(1, 7)
    ]
    assert all(not late for *_, late in store.published)


def test_restart_neither_repeats_nor_forgets() -> None:
    store = Store()
    planner = start([every("a", 10)], store, T0)
    run_until(planner, store, T0, T0 + timedelta(seconds=30))
    again = start([every("a", 10)], store, T0 + timedelta(seconds=35))
    run_until(again, store, T0 + timedelta(seconds=35), T0 + timedelta(seconds=50))
    slots = [s for _, s, _ in store.published]
    assert slots == [T0 + timedelta(seconds=10 * k) for k in range(1, 6)]


@pytest.mark.parametrize(
    ("policy", "published", "missed"),
    [
        (MissedPolicy.SKIP, [], {MissReason.SKIPPED: 10}),
        (MissedPolicy.RUN_ONCE, [10], {MissReason.SKIPPED: 9}),
        (MissedPolicy.CATCH_UP, [6, 7, 8, 9, 10], {MissReason.BEYOND_CATCH_UP: 5}),
    ],
    ids=["skip", "run_once", "catch_up_beyond_max"],
)
def test_downtime_by_policy(
    policy: MissedPolicy, published: list[int], missed: dict[MissReason, int]
) -> None:
    entry = every("a", 60, missed=policy, max_catch_up=5, misfire_grace=timedelta(seconds=10))
    store = Store()
    start([entry], store, T0)
    # Down for ten minutes and a half: slots 12:01 ... 12:10 were never published.
    restart = T0 + timedelta(minutes=10, seconds=30)
    planner = start([entry], store, restart)
    decisions = tick(planner, store, restart)
    assert [s for _, s, _ in store.published] == [T0 + timedelta(minutes=m) for m in published]
    assert all(late for *_, late in store.published)
    assert {r: n for (_, r), n in store.missed.items()} == missed
    assert sum(d.due_count for d in decisions) == 10
    assert planner.next_wake() == T0 + timedelta(minutes=11)


def test_catch_up_within_max_publishes_every_missed_slot_oldest_first() -> None:
    entry = every("a", 60, missed=MissedPolicy.CATCH_UP, max_catch_up=100)
    store = Store()
    start([entry], store, T0)
    planner = start([entry], store, T0 + timedelta(hours=1))
    tick(planner, store, T0 + timedelta(hours=1))
    assert [s for _, s, _ in store.published] == [T0 + timedelta(minutes=m) for m in range(1, 61)]
    # 12:59 and 13:00 are within the 60-s grace: on time, not late
    assert [late for *_, late in store.published].count(False) == 2
    assert not store.missed


def test_late_within_running_daemon_is_published_late() -> None:
    store = Store()
    planner = start([every("a", 3600)], store, T0)
    tick(planner, store, T0 + timedelta(hours=1, minutes=5))
    assert store.published == [("a", T0 + timedelta(hours=1), True)]


def test_tick_cost_grows_with_runs_due_not_entries() -> None:
    entries = [every(f"e{i}", 60 * (1 + i % 7)) for i in range(2000)]
    store = Store()
    planner = start(entries, store, T0)
    now = T0
    for _ in range(30):
        now = planner.next_wake() or now
        before = planner.next_fire_computations
        decisions = tick(planner, store, now)
        assert planner.next_fire_computations - before == sum(d.due_count for d in decisions)
        assert sum(d.due_count for d in decisions) == sum(len(d.runs) for d in decisions)


def test_hundred_thousand_entries() -> None:
    entries = [every(f"e{i}", 60 * (1 + i % 60)) for i in range(100_000)]
    store = Store()
    planner = start(entries, store, T0 + timedelta(seconds=1))
    assert len(planner) == 100_000
    wake = planner.next_wake()
    assert wake == T0 + timedelta(minutes=1)
    before = planner.next_fire_computations
    decisions = tick(planner, store, wake)
    # due now: every entry whose period (in minutes) divides the minutes since the epoch
    minute = int(wake.timestamp()) // 60
    expected = sum(1 for i in range(100_000) if minute % (1 + i % 60) == 0)
    assert len(decisions) == expected
    assert planner.next_fire_computations - before == expected


def test_entry_added_later_starts_from_now() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    later = T0 + timedelta(minutes=5, seconds=30)
    baselines, removed = planner.load(named(every("a", 60), every("b", 60)), store.states, later)
    store.baseline(baselines)
    assert [state.entry for state in baselines] == ["b"] and removed == []
    assert store.states["b"].last_slot == later
    assert planner.next_due("b") == T0 + timedelta(minutes=6)


def test_changed_schedule_does_not_replay_history() -> None:
    store = Store()
    start([every("a", 3600)], store, T0)
    later = T0 + timedelta(minutes=30)
    planner = start([every("a", 60)], store, later)
    assert store.states["a"].last_slot == later
    tick(planner, store, later + timedelta(minutes=1))
    assert [s for _, s, _ in store.published] == [T0 + timedelta(minutes=31)]
    assert not store.missed


def test_removed_entry_stops() -> None:
    store = Store()
    planner = start([every("a", 60), every("b", 60)], store, T0)
    _, removed = planner.load(named(every("a", 60)), store.states, T0)
    assert removed == ["b"]
    run_until(planner, store, T0, T0 + timedelta(minutes=3))
    assert {name for name, _, _ in store.published} == {"a"}


def test_disabled_entry_counts_its_slots_as_missed() -> None:
    store = Store()
    planner = start([every("a", 60, enabled=False)], store, T0)
    run_until(planner, store, T0, T0 + timedelta(minutes=5))
    assert store.published == []
    assert store.missed == Counter({("a", MissReason.DISABLED): 5})


def test_released_decisions_are_decided_again() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    decisions = planner.tick(T0 + timedelta(minutes=1))
    planner.release(decisions)
    assert planner.next_wake() == T0 + timedelta(minutes=1)
    tick(planner, store, T0 + timedelta(minutes=1, seconds=5))
    assert store.published == [("a", T0 + timedelta(minutes=1), False)]


def test_jitter_delays_the_due_time_but_not_the_slot() -> None:
    entry = every("a", 60, jitter=timedelta(seconds=30))
    store = Store()
    planner = start([entry], store, T0)
    wake = planner.next_wake()
    assert wake is not None
    slot = T0 + timedelta(minutes=1)
    assert wake == slot + entry.jitter_for(slot) == entry.due_for(slot)
    assert timedelta(0) <= wake - slot < timedelta(seconds=30)
    assert every("b", 60).due_for(slot) is slot  # no jitter: due at the slot itself
    assert planner.tick(wake - timedelta(milliseconds=1)) == []
    tick(planner, store, wake)
    assert store.published == [("a", slot, False)]


def test_one_off_runs_once_then_leaves_the_heap() -> None:
    entry = Entry(name="once", task="t.task", schedule=OnceSchedule(T0 + timedelta(minutes=1)))
    store = Store()
    planner = start([entry], store, T0)
    run_until(planner, store, T0, T0 + timedelta(days=1))
    assert store.published == [("once", T0 + timedelta(minutes=1), False)]
    assert planner.next_wake() is None


def test_spring_forward_day_fixed_time_runs_once() -> None:
    entry = cron("nightly", "30 2 * * *", "Europe/Berlin")
    store = Store()
    planner = start([entry], store, datetime(2026, 3, 28, 12, tzinfo=UTC))
    run_until(planner, store, T0, datetime(2026, 3, 31, tzinfo=UTC))
    assert [s for _, s, _ in store.published] == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 02:30 does not exist: 03:00 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_decision_carries_previous_state_for_compare_and_set() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    (decision,) = planner.tick(T0 + timedelta(minutes=1))
    assert decision.previous == store.states["a"]
    assert decision.previous is not None
    assert decision.state == decision.previous._replace(
        last_slot=T0 + timedelta(minutes=1),
        last_published=T0 + timedelta(minutes=1),
    )


# --- every slot ends exactly once, whatever happens ---------------------------------------------

_entries = st.lists(
    st.one_of(
        st.builds(
            lambda s, p, g: ("every", s, p, g),
            st.sampled_from([1, 5, 7, 60, 90, 3600]),
            st.sampled_from(list(MissedPolicy)),
            st.sampled_from([1, 3, 60]),
        ),
        st.builds(
            lambda e, p, g: ("cron", e, p, g),
            st.sampled_from(["* * * * *", "*/5 * * * *", "0 * * * *", "*/10 * * * * *"]),
            st.sampled_from(list(MissedPolicy)),
            st.sampled_from([1, 3, 60]),
        ),
    ),
    min_size=1,
    max_size=6,
)
_events = st.lists(
    st.tuples(st.sampled_from(["run", "down", "late_tick"]), st.integers(1, 900)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(_entries, _events, st.integers(1, 5), st.sampled_from([None, 1, 3]))
def test_every_slot_ends_exactly_once(
    specs: list, events: list, max_catch_up: int, limit: int | None
) -> None:
    entries = []
    for i, (kind, value, policy, grace) in enumerate(specs):
        options = {
            "missed": policy,
            "max_catch_up": max_catch_up,
            "misfire_grace": timedelta(seconds=grace),
        }
        if kind == "every":
            entries.append(every(f"e{i}", value, **options))
        else:
            entries.append(cron(f"e{i}", value, **options))
    store = Store()
    now = T0
    # small limits make ticks stop early and walks resume at the next tick
    planner = start(entries, store, now, limit)
    for kind, seconds in events:
        end = now + timedelta(seconds=seconds)
        if kind == "run":
            now = run_until(planner, store, now, end)
        elif kind == "late_tick":
            now = end
            run_until(planner, store, now, now)
        else:  # the daemon is down, then restarts from what was persisted
            now = end
            planner = start(entries, store, now, limit)
            run_until(planner, store, now, now)
    for entry in entries:
        horizon = store.states[entry.name].last_slot
        expected = []
        t = T0
        while (t := entry.schedule.next_after(t)) is not None and t <= horizon:  # type: ignore[assignment]
            expected.append(t)
        published = [s for name, s, _ in store.published if name == entry.name]
        missed = sum(n for (name, _), n in store.missed.items() if name == entry.name)
        assert published == sorted(set(published)), "a slot was published twice"
        assert set(published) <= set(expected)
        assert len(published) + missed == len(expected), "a slot was lost or counted twice"
        # each missed range spans exactly its slots, none of them published, none in two ranges
        covered: list[datetime] = []
        for m in (m for m in store.ranges if m.entry == entry.name):
            inside = [t for t in expected if m.first <= t <= m.last]
            assert (inside[0], inside[-1], len(inside)) == (m.first, m.last, m.total)
            covered += inside
        assert sorted(covered + published) == expected


def test_removed_entries_are_kept_for_the_grace_from_when_first_seen_absent() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    removed = RemovedEntries(timedelta(hours=1))
    assert removed.expired(["a"], t0, epoch=1) == []
    assert removed.expired(["a", "b"], t0 + timedelta(minutes=30), epoch=1) == []
    assert removed.next_expiry() == t0 + timedelta(hours=1)
    assert removed.expired(["a", "b"], t0 + timedelta(hours=1), epoch=1) == ["a"]
    removed.forgotten(["a"])
    assert (removed.absent, removed.next_expiry()) == (["b"], t0 + timedelta(minutes=90))
    assert removed.expired([], t0 + timedelta(minutes=80), epoch=1) == []  # b was re-added
    assert (removed.absent, removed.next_expiry()) == ([], None)
    assert removed.expired(["c"], t0, epoch=1) == []
    # a new leadership starts every clock again
    assert removed.expired(["c"], t0 + timedelta(hours=2), epoch=2) == []
    assert removed.next_expiry() == t0 + timedelta(hours=3)


# --- missed slots as ranges: one per entry and reason, never one per slot -----------------------

M = timedelta(minutes=1)
S = timedelta(seconds=1)
G = timedelta(seconds=10)  # the misfire grace: a slot more than this late is overdue


def _down(entry: Entry, downtime: timedelta, walk_limit: int | None = None) -> list[Decision]:
    """Start `entry` at T0, restart it after `downtime` and decide until it is caught up."""
    store = Store()
    start([entry], store, T0)
    now = T0 + downtime
    planner = start([entry], store, now, walk_limit)
    decisions: list[Decision] = []
    while planner.next_wake() is not None and planner.next_wake() <= now:  # type: ignore[operator]
        decisions += tick(planner, store, now)
    return decisions


def _missed(decisions: list[Decision]) -> list[MissedSlots]:
    return [m for d in decisions for m in d.missed]


@pytest.mark.parametrize(
    ("entry", "downtime", "ranges"),
    [
        (
            every("a", 60, missed=MissedPolicy.SKIP, misfire_grace=G),
            10 * M + timedelta(seconds=30),
            [("skipped", T0 + M, T0 + 10 * M, 10)],
        ),
        (
            every("a", 60, missed=MissedPolicy.RUN_ONCE, misfire_grace=G),
            10 * M + timedelta(seconds=30),
            [("skipped", T0 + M, T0 + 9 * M, 9)],
        ),
        (
            every("a", 60, missed=MissedPolicy.CATCH_UP, max_catch_up=5, misfire_grace=G),
            10 * M + timedelta(seconds=30),
            [("beyond_catch_up", T0 + M, T0 + 5 * M, 5)],
        ),
        (
            every("a", 60, missed=MissedPolicy.CATCH_UP, max_catch_up=100, misfire_grace=G),
            10 * M + timedelta(seconds=30),
            [],
        ),
        (
            every("a", 60, enabled=False, misfire_grace=G),
            10 * M + timedelta(seconds=30),
            [("disabled", T0 + M, T0 + 10 * M, 10)],
        ),
        (  # a year of downtime: the gap is counted, not walked, and is still one range
            every("a", 60, missed=MissedPolicy.RUN_ONCE, misfire_grace=G),
            timedelta(days=365, seconds=30),
            [("skipped", T0 + M, T0 + timedelta(days=365) - M, 525_599)],
        ),
        (
            every("a", 60, missed=MissedPolicy.CATCH_UP, max_catch_up=3, misfire_grace=G),
            timedelta(days=365, seconds=30),
            [("beyond_catch_up", T0 + M, T0 + timedelta(days=365) - 3 * M, 525_597)],
        ),
        (
            every("a", 60, enabled=False, misfire_grace=G),
            timedelta(days=365, seconds=30),
            [("disabled", T0 + M, T0 + timedelta(days=365), 525_600)],
        ),
        (
            cron("a", "*/5 * * * *", missed=MissedPolicy.SKIP, misfire_grace=G),
            timedelta(hours=1, seconds=30),
            [("skipped", T0 + 5 * M, T0 + 60 * M, 12)],
        ),
        (  # a misfire grace keeps the newest slot on time: it is published, not missed
            every("a", 60, missed=MissedPolicy.SKIP, misfire_grace=2 * M),
            10 * M + timedelta(seconds=30),
            [("skipped", T0 + M, T0 + 8 * M, 8)],
        ),
    ],
    ids=[
        "skip",
        "run_once",
        "catch_up_beyond_max",
        "catch_up_within_max",
        "disabled",
        "run_once_year_arithmetic",
        "catch_up_year_arithmetic",
        "disabled_year_arithmetic",
        "cron_walked",
        "skip_keeps_the_timely_slots",
    ],
)
def test_missed_slots_are_one_range_per_reason(
    entry: Entry, downtime: timedelta, ranges: list[tuple[str, datetime, datetime, int]]
) -> None:
    missed = _missed(_down(entry, downtime))
    assert missed == [MissedSlots("a", *r) for r in ranges]
    assert all(isinstance(m.reason, MissReason) for m in missed)


def test_a_walk_cut_at_its_limit_misses_adjacent_ranges_tick_after_tick() -> None:
    # a cron entry is walked slot by slot: with a limit of 3 per tick, a 20-minute gap takes
    # several decisions, each one range, together every slot once
    entry = cron("a", "* * * * *", missed=MissedPolicy.SKIP, misfire_grace=G)
    missed = _missed(_down(entry, 20 * M + timedelta(seconds=30), walk_limit=3))
    assert len(missed) > 1
    assert [m.first for m in missed] == [T0 + M, *(m.last + M for m in missed[:-1])]
    assert (missed[-1].last, sum(m.total for m in missed)) == (T0 + 20 * M, 20)
    assert {m.reason for m in missed} == {MissReason.SKIPPED}


def test_lost_state_is_one_range_from_the_last_intact_moment() -> None:
    decision = state_lost(every("a", 60), T0, T0 + 30 * M + timedelta(seconds=5), limit=1000)
    assert decision is not None and decision.runs == ()
    assert decision.missed == (MissedSlots("a", "state_lost", T0 + M, T0 + 30 * M, 30),)
    capped = state_lost(every("a", 60), T0, T0 + 30 * M, limit=7)
    assert capped is not None
    assert capped.missed == (MissedSlots("a", "state_lost", T0 + M, T0 + 7 * M, 7),)
    assert state_lost(every("a", 60), T0, T0 + timedelta(seconds=59), limit=7) is None


def test_run_counts_add_the_ranges_by_reason() -> None:
    counts = RunCounts()
    for decision in _down(
        every("a", 60, missed=MissedPolicy.RUN_ONCE, misfire_grace=G), 10 * M + 30 * S
    ):
        counts.add(decision)
    lost = state_lost(every("a", 60), T0, T0 + 3 * M, limit=100)
    assert lost is not None
    counts.add(lost)
    assert counts.get("a") == {
        "due": 13,
        "published": 1,
        "late": 1,
        "missed_skipped": 9,
        "missed_beyond_catch_up": 0,
        "missed_disabled": 0,
        "missed_state_lost": 3,
        "missed_paused": 0,
        "missed_overlap": 0,
    }
    assert counts.total("missed_skipped") == 9
