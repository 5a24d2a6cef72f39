"""Active windows (`start:`, `end:`): the planner under a made-up clock, the reader, `check`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from beatd.clock import FakeClock
from beatd.config import load_config
from beatd.config.model import Entry, MissedPolicy
from beatd.schedules import IntervalSchedule
from beatd.schedules.window import WindowedSchedule
from tests.test_cli import beatd
from tests.test_core import T0, Store, run_until, start, tick

MINUTE = timedelta(minutes=1)


def windowed(name: str, start_at: datetime | None, end_at: datetime | None) -> Entry:
    schedule = WindowedSchedule(IntervalSchedule(MINUTE), start_at, end_at)
    return Entry(name=name, task="t.task", schedule=schedule, missed=MissedPolicy.CATCH_UP)


def test_slots_before_start_and_from_end_on_do_not_exist() -> None:
    store = Store()
    entry = windowed("a", T0 + 5 * MINUTE, T0 + 8 * MINUTE)
    planner = start([entry], store, T0)
    run_until(planner, store, T0, T0 + 20 * MINUTE)
    assert [s for _, s, _ in store.published] == [T0 + m * MINUTE for m in (5, 6, 7)]
    assert not store.missed
    assert planner.next_wake() is None


def test_a_restart_after_the_window_publishes_nothing_and_misses_nothing() -> None:
    store = Store()
    entry = windowed("a", None, T0 + 3 * MINUTE)
    start([entry], store, T0)
    planner = start([entry], store, T0 + 10 * MINUTE)  # down through the end of the window
    run_until(planner, store, T0 + 10 * MINUTE, T0 + 20 * MINUTE)
    # Caught up: the two slots inside the window; from 12:03 on there are none to miss.
    assert [s for _, s, _ in store.published] == [T0 + MINUTE, T0 + 2 * MINUTE]
    assert all(late for *_, late in store.published)
    assert not store.missed
    assert planner.next_wake() is None


def test_a_changed_window_resets_the_horizon_to_now() -> None:
    store = Store()
    start([windowed("a", None, T0 + 60 * MINUTE)], store, T0)
    later = T0 + 10 * MINUTE
    planner = start([windowed("a", None, T0 + 90 * MINUTE)], store, later)
    assert store.states["a"].last_slot == later
    run_until(planner, store, later, later + 2 * MINUTE)
    assert [s for _, s, _ in store.published] == [later + MINUTE, later + 2 * MINUTE]
    assert not store.missed


def test_the_window_is_part_of_the_identity() -> None:
    plain = Entry(name="a", task="t", schedule=IntervalSchedule(MINUTE))
    bounded = windowed("a", T0, None)
    assert plain.identity == "every 60s anchor 1970-01-01T00:00:00+00:00"
    assert bounded.identity == f"{plain.identity} start 2026-03-01T12:00:00+00:00"


WINDOWS = """\
entries:
  campaign:
    task: t.mail
    cron: "30 2 * * *"
    timezone: Europe/Berlin
    start: "2026-10-25T02:30:00"
    end: 2026-11-01T00:00:00+01:00
"""


def test_naive_bounds_are_read_in_the_entry_zone_with_fold_0(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(WINDOWS)
    schedule = load_config([str(path)]).entries["campaign"].schedule
    assert isinstance(schedule, WindowedSchedule)
    assert schedule.start is not None and schedule.start.fold == 0
    # 02:30 on the fall-back day, first pass: CEST, 00:30Z; its slot is included.
    assert schedule.next_after(datetime(2026, 10, 1, tzinfo=UTC)) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )
    assert schedule.next_after(datetime(2026, 10, 31, 2, tzinfo=UTC)) is None


def test_window_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  once: {task: t.a, at: '2030-01-01T00:00:00', end: '2031-01-01T00:00:00'}\n"
        "  backwards: {task: t.a, every: 1m, start: '2030-01-02T00:00:00Z',"
        " end: '2030-01-01T00:00:00Z'}\n"
        "  garbled: {task: t.a, every: 1m, start: soon}\n"
    )
    code, _, err = beatd("check", str(path))
    assert code == 2
    assert err.splitlines() == [
        f"{path}:2:48: entry once: field end: end only applies to every: and cron:",
        f"{path}:3:73: entry backwards: field end: the window ends (2030-01-01T00:00:00+00:00) "
        "before it starts (2030-01-02T00:00:00+00:00); end must be later than start",
        f"{path}:4:42: entry garbled: field start: 'soon' is not an ISO date and time such as "
        "2026-12-24T18:00:00",
    ]


def test_check_warns_of_a_window_that_has_ended(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(WINDOWS)
    code, out, err = beatd("check", str(path))
    assert (code, err) == (
        0,
        f"{path}:7:10: entry campaign: field end: warning: the window ended at "
        "2026-11-01T00:00:00+01:00, so this entry will never run again; move end: into the "
        "future or remove the entry\n",
    )
    assert "at 02:30, every day, from 2026-10-25T02:30:00+01:00" not in out
    assert "at 02:30, every day, from 2026-10-25T02:30:00+02:00 until" in out


def test_next_does_not_blame_dst_for_slots_before_the_window(tmp_path: Path) -> None:
    # Berlin springs forward at 2026-03-29T01:00Z (02:30 does not exist that day), but this
    # entry's window only opens at 05:00 CEST: its first run is not one DST moved or skipped past.
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  w: {task: t.a, cron: '30 * * * *', timezone: Europe/Berlin,"
        " start: '2026-03-29T05:00:00'}\n"
    )
    code, out, _ = beatd("next", "w", "-s", str(path), "--after", "2026-03-28T23:00:00Z", "-n", "1")
    assert (code, out.splitlines()[1]) == (
        0,
        "  2026-03-29T03:30:00Z  2026-03-29T05:30:00+02:00",
    )


def test_next_still_marks_a_dst_move_inside_the_window(tmp_path: Path) -> None:
    # The window opens at midnight before the spring gap: the 02:30 run moved to the jump is one
    # DST moved, and keeps its mark.
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  w: {task: t.a, cron: '30 2 * * *', timezone: Europe/Berlin,"
        " start: '2026-03-29T00:00:00'}\n"
    )
    code, out, _ = beatd("next", "w", "-s", str(path), "--after", "2026-03-01T00:00:00Z", "-n", "1")
    assert (code, out.splitlines()[1]) == (
        0,
        "  2026-03-29T01:00:00Z  2026-03-29T03:00:00+02:00  DST spring_gap_fixed_time: for "
        "02:30:00, which does not exist (clocks go forward, 02:00-03:00): a fixed-time job runs "
        "at the jump",
    )


def test_a_window_keeps_the_arithmetic_skip_over_a_long_outage() -> None:
    # every 1s, down for a week: the planner skips the missed slots of an interval by arithmetic,
    # and a window around the interval must not turn that into 604,800 next-fire computations.
    second = timedelta(seconds=1)
    plain = IntervalSchedule(second)
    bounded = WindowedSchedule(plain, T0 - timedelta(days=1), T0 + timedelta(days=30))
    counts, outcomes = [], []
    for schedule in (plain, bounded):
        entry = Entry(name="a", task="t.task", schedule=schedule)
        store, clock = Store(), FakeClock(T0)
        start([entry], store, clock.now())
        clock.advance(timedelta(weeks=1).total_seconds())
        planner = start([entry], store, clock.now())
        before = planner.next_fire_computations
        while planner.next_wake() is not None and planner.next_wake() <= clock.now():
            tick(planner, store, clock.now())
        counts.append(planner.next_fire_computations - before)
        outcomes.append((store.published, dict(store.missed), store.states["a"].last_slot))
    assert outcomes[0] == outcomes[1]
    assert counts[0] == counts[1] < 100


def test_the_arithmetic_skip_stops_at_the_end_of_the_window() -> None:
    # The window ends three days into a week's outage: the slots counted as missed are those in
    # (T0, end), not the week's, and the walk is still short.
    bounded = WindowedSchedule(IntervalSchedule(timedelta(seconds=1)), None, T0 + timedelta(days=3))
    entry = Entry(name="a", task="t.task", schedule=bounded)
    store, clock = Store(), FakeClock(T0)
    start([entry], store, clock.now())
    clock.advance(timedelta(weeks=1).total_seconds())
    planner = start([entry], store, clock.now())
    before = planner.next_fire_computations
    while planner.next_wake() is not None and planner.next_wake() <= clock.now():
        tick(planner, store, clock.now())
    assert len(store.published) + sum(store.missed.values()) == 3 * 86_400 - 1
    assert planner.next_fire_computations - before < 100
    assert planner.next_wake() is None


def test_check_warns_that_overlap_on_a_celery_entry_needs_events(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  a: {task: t.a, every: 1m, protocol: celery, overlap: skip}\n"
        "  b: {task: t.b, every: 1m, overlap: skip}\n"
        "  c: {task: t.c, every: 1m, protocol: celery}\n"
    )
    code, _, err = beatd("check", str(path))
    assert (code, err) == (
        0,
        f"{path}:2:56: entry a: field overlap: warning: overlap: skip on a Celery-protocol "
        "entry sees a run end only through Celery's events, so its workers must be started "
        "with -E (else each run counts as busy until overlap_timeout)\n",
    )
