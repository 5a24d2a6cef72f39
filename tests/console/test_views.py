"""The console's view models: the API's JSON as the pages show it, in beatd's words."""

from __future__ import annotations

from datetime import UTC, datetime

from beatd.console.chart import ChartRun
from beatd.console.views import (
    HistoryRow,
    Moment,
    NextRun,
    Page,
    PauseNote,
    chart_runs,
    errors_by_field,
    history_rows,
    next_run_rows,
    paging,
    pause_note,
    relative_text,
    seconds_text,
)

NOW = datetime(2026, 12, 5, 1, 30, tzinfo=UTC)
RUN = {
    "type": "run",
    "slot": "2026-12-05T01:00:00Z",
    "status": "failed",
    "kind": "scheduled",
    "duration_seconds": 4.2,
    "delay_seconds": 0.412,
    "attempts": [
        {"error_type": None, "error": None, "reason": None},
        {"error_type": "ValueError", "error": "bad row 7", "reason": None},
    ],
}
MISSED = {
    "type": "missed",
    "reason": "paused",
    "first_slot": "2026-12-05T00:00:00Z",
    "last_slot": "2026-12-05T00:20:00Z",
    "slots": 3,
    "pause": {"by": "ops", "reason": "db migration"},
}


def test_times_are_absolute_and_relative() -> None:
    assert Moment.of("2026-12-05T01:34:10Z", NOW) == Moment("2026-12-05T01:34:10Z", "in 4 min")
    assert Moment.of("2026-12-04T22:30:00+00:00", NOW) == Moment("2026-12-04T22:30:00Z", "3 h ago")
    assert Moment.of(None, NOW) is None
    assert relative_text(None, NOW) == "-"
    assert seconds_text(252) == "4 min 12 s"
    assert seconds_text(None) == "-"


def test_history_rows_show_outcomes_durations_delays_and_missed_ranges() -> None:
    assert history_rows([RUN, MISSED]) == [
        HistoryRow(
            "run", "2026-12-05T01:00:00Z", "failed", "scheduled", "4.2 s", "412 ms", 2,
            "ValueError bad row 7", True,
        ),
        HistoryRow(
            "missed", "2026-12-05T00:00:00Z … 2026-12-05T00:20:00Z", "missed (paused)", "3 slots",
            "-", "-", 0, "paused by ops: db migration", True,
        ),
    ]  # fmt: skip


def test_the_chart_takes_the_runs_oldest_first() -> None:
    newer = {**RUN, "slot": "2026-12-05T01:10:00Z", "status": "running", "duration_seconds": None}
    assert chart_runs([newer, MISSED, RUN]) == [
        ChartRun("2026-12-05T01:00:00Z", "failed", 4.2, 0.412),
        ChartRun("2026-12-05T01:10:00Z", "running", None, 0.412),
    ]


def test_next_runs_carry_their_dst_marks() -> None:
    slots = [
        {"slot": "2026-12-05T02:00:00Z", "dst": None},
        {"slot": "2026-12-06T02:00:00Z", "dst": {"rule": "spring_gap_fixed_time", "note": "moved"}},
        "2026-12-07T02:00:00Z",
    ]
    assert next_run_rows(slots, NOW) == [
        NextRun("2026-12-05T02:00:00Z", "in 30 min", None, None),
        NextRun("2026-12-06T02:00:00Z", "in 1 d", "spring_gap_fixed_time", "moved"),
        NextRun("2026-12-07T02:00:00Z", "in 2 d", None, None),
    ]


def audit(action: str, pause: dict[str, str | None] | None = None) -> dict[str, object]:
    after = {} if action == "trigger" else {"pause": pause}
    return {"action": action, "by": "ops", "at": "2026-12-05T01:00:00Z", "after": after}


def test_the_pause_note_is_the_newest_pause_unless_resumed_or_ended() -> None:
    pause = {"at": "2026-12-05T01:00:00Z", "until": None, "reason": "db migration", "by": "ops"}
    assert pause_note([audit("trigger"), audit("pause", pause)], NOW) == PauseNote(
        "db migration", "ops", "2026-12-05T01:00:00Z", None
    )
    assert pause_note([audit("resume"), audit("pause", pause)], NOW) is None
    later = {**pause, "at": "2026-12-05T01:00:00.5+00:00", "until": "2026-12-05T03:00:00+00:00"}
    assert pause_note([audit("pause", later)], NOW) == PauseNote(
        "db migration", "ops", "2026-12-05T01:00:00Z", "2026-12-05T03:00:00Z"
    )
    ended = {**pause, "until": "2026-12-05T01:20:00Z"}
    assert pause_note([audit("pause", ended)], NOW) is None
    assert pause_note([], NOW) is None


def test_paging_offers_first_previous_next_and_last() -> None:
    assert paging(120, 0, 50) == Page(None, None, 50, 100, 1, 50, 120)
    assert paging(120, 50, 50) == Page(0, 0, 100, 100, 51, 100, 120)
    assert paging(120, 100, 50) == Page(0, 50, None, None, 101, 120, 120)
    assert paging(0, 0, 50) == Page(None, None, None, None, 0, 0, 0)
    assert paging(100, 0, 50) == Page(None, None, 50, 50, 1, 50, 100)


def test_a_page_past_the_end_shows_no_rows_and_leads_back() -> None:
    assert paging(8, 50, 20) == Page(0, 0, None, 0, 0, 0, 8)
    assert paging(120, 200, 50) == Page(0, 100, None, 100, 0, 0, 120)


def test_errors_are_grouped_by_field() -> None:
    errors: list[dict[str, str | None]] = [
        {"field": "cron", "message": "a"},
        {"field": None, "message": "b"},
        {"field": "cron", "message": "c"},
    ]
    assert errors_by_field(errors) == {"cron": ["a", "c"], "": ["b"]}
