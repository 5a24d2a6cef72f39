"""The planner's one-entry changes (runtime entries, issue 18): `Planner.put` and `drop` touch
the entry changed and no other, and a changed schedule starts from now, as on a reload."""

from __future__ import annotations

from datetime import timedelta

from beatd.config.model import Entry
from beatd.core import Baseline, Planner
from beatd.state import EntryState
from tests.test_core import T0, Store, cron, every, run_until, start, tick


def test_an_entry_put_starts_from_now_and_touches_no_other() -> None:
    store = Store()
    planner = start([every(f"e{i}", 60) for i in range(1000)], store, T0)
    before = planner.next_fire_computations
    later = T0 + timedelta(seconds=30)
    new = every("new", 60)
    baseline = planner.put(new, later)
    assert baseline == Baseline(EntryState("new", later, None, new.identity), None)
    assert planner.next_fire_computations - before == 1
    assert planner.next_due("new") == T0 + timedelta(minutes=1)
    assert len(planner) == 1001


def test_an_entry_put_again_with_its_schedule_keeps_its_position() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    tick(planner, store, T0 + timedelta(minutes=1))
    assert planner.put(every("a", 60, queue="reports"), T0 + timedelta(seconds=90)) is None
    assert planner.entries["a"].queue == "reports"
    assert planner.state("a") == store.states["a"]
    assert planner.next_due("a") == T0 + timedelta(minutes=2)


def test_an_unchanged_entry_put_again_changes_nothing() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    before = planner.next_fire_computations
    assert planner.put(every("a", 60), T0 + timedelta(seconds=5)) is None
    assert planner.next_fire_computations == before


def test_a_rescheduled_entry_starts_from_now_over_the_state_held() -> None:
    store = Store()
    planner = start([every("a", 3600)], store, T0)
    later = T0 + timedelta(minutes=30)
    rescheduled = cron("a", "*/5 * * * *")
    baseline = planner.put(rescheduled, later)
    assert baseline == Baseline(
        EntryState("a", later, None, rescheduled.identity), store.states["a"]
    )
    store.baseline([baseline.state])
    run_until(planner, store, later, later + timedelta(minutes=10))
    assert [s for _, s, _ in store.published] == [
        T0 + timedelta(minutes=35),
        T0 + timedelta(minutes=40),
    ]


def test_a_dropped_entry_publishes_nothing_more_and_others_go_on() -> None:
    store = Store()
    planner = start([every("a", 60), every("b", 60)], store, T0)
    assert planner.drop("b") == store.states["b"]
    assert planner.drop("b") is None
    run_until(planner, store, T0, T0 + timedelta(minutes=3))
    assert [n for n, _, _ in store.published] == ["a", "a", "a"]
    assert list(planner.entries) == ["a"]


def test_an_entry_dropped_and_put_again_starts_from_now() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    planner.drop("a")
    later = T0 + timedelta(minutes=5, seconds=1)
    again = every("a", 60)
    assert planner.put(again, later) == Baseline(EntryState("a", later, None, again.identity), None)
    assert planner.next_due("a") == T0 + timedelta(minutes=6)


def test_an_entry_put_again_with_its_persisted_state_resumes_where_it_was() -> None:
    store = Store()
    planner = start([every("a", 60)], store, T0)
    tick(planner, store, T0 + timedelta(minutes=1))
    kept = planner.drop("a")
    assert planner.put(every("a", 60), T0 + timedelta(minutes=1, seconds=30), kept) is None
    assert planner.next_due("a") == T0 + timedelta(minutes=2)


def test_entries_sharing_a_schedule_and_a_horizon_cost_one_next_fire_computation_at_load() -> None:
    daily = cron("d0", "30 9 * * *", "Europe/Paris").schedule  # one object, as EntryBuilder makes
    hourly = every("h0", 3600).schedule
    paris = "Europe/Paris"
    entries = [
        *(Entry(name=f"d{i}", task="t.task", schedule=daily, timezone=paris) for i in range(500)),
        *(Entry(name=f"h{i}", task="t.task", schedule=hourly) for i in range(500)),
        every("other", 60),
    ]
    store = Store()
    planner = start(entries, store, T0)
    assert planner.next_fire_computations == 3
    alike = cron("paris", "30 9 * * *", paris).schedule  # an equal schedule of its own
    assert {planner.next_due(f"d{i}") for i in range(500)} == {alike.next_after(T0)}
    assert {planner.next_due(f"h{i}") for i in range(500)} == {T0 + timedelta(hours=1)}
    tick(planner, store, T0 + timedelta(hours=1))  # the hourly ones move on, each on its own
    assert planner.next_due("h7") == T0 + timedelta(hours=2)
    again = Planner()
    again.load({e.name: e for e in entries}, store.states, T0 + timedelta(hours=1, seconds=1))
    assert again.next_fire_computations == 3  # their horizons equal again: still one each
    assert again.next_due("h7") == T0 + timedelta(hours=2)
