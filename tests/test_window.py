"""Active windows (`start:`, `end:`): the planner under a made-up clock, the reader, `check`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from beatd.config import load_config
from beatd.config.model import Entry, MissedPolicy
from beatd.schedules import IntervalSchedule
from beatd.schedules.window import WindowedSchedule
from tests.test_cli import beatd
from tests.test_core import T0, Store, run_until, start

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
