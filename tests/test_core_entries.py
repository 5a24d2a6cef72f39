"""The planner's one-entry changes (runtime entries, issue 18): `Planner.put` and `drop` touch
the entry changed and no other, and a changed schedule starts from now, as on a reload."""

from __future__ import annotations

from datetime import timedelta

from beatd.core import Baseline
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
