"""`H` in cron fields: pinned values, the ranges, the DST rule for `H/n`, and the errors.

The vectors below pin the hash: if one changes, every deployed `H` entry moves to another time.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from beatd.errors import ScheduleError
from beatd.schedules.cron import CronSchedule
from beatd.schedules.hashed import hashed_value

# (entry name, expression, the expression it resolves to)
VECTORS = [
    ("nightly-report", "H H * * *", "7 10 * * *"),
    ("backup", "H H * * *", "29 3 * * *"),
    ("sync:eu", "H H * * *", "24 16 * * *"),
    ("invoices.send", "H H * * *", "59 13 * * *"),
    ("cleanup/tmp", "H H * * *", "8 9 * * *"),
    ("metrics-rollup", "H H * * *", "32 15 * * *"),
    ("a", "H H * * *", "41 10 * * *"),
    ("b", "H H * * *", "32 20 * * *"),
    ("weekly-digest", "H H * * H", "24 4 * * 6"),
    ("db.vacuum", "H H H * *", "51 20 8 * *"),
    ("cache:warm", "H/15 * * * *", "6-59/15 * * * *"),
    ("mail/queue-flush", "H(8-17) H(9-17) * * 1-5", "15 14 * * 1-5"),
    ("reports.monthly", "H H/6 * * *", "6 3-23/6 * * *"),
    ("audit-export", "30 H(0-5) * * *", "30 3 * * *"),
    ("search.reindex", "H H * H *", "17 20 * 5 *"),
    ("thumbnails", "H(0-29)/30 H * * *", "3-29/30 10 * * *"),
    ("billing:eu-west", "H H H H H", "40 3 11 6 2"),
    ("billing:us-east", "H/20 H/4 * * *", "17-59/20 1-23/4 * * *"),
    ("health", "H H 1 1 *", "14 16 1 1 *"),
    ("ÄÖÜ-münchen", "0 H * * *", "0 5 * * *"),
]


@pytest.mark.parametrize(("entry", "expr", "resolved"), VECTORS, ids=[v[0] for v in VECTORS])
def test_pinned_vectors(entry: str, expr: str, resolved: str) -> None:
    schedule = CronSchedule.parse(expr, "UTC", entry=entry)
    assert schedule.expression.text == resolved
    assert schedule.expression.hashed_from == expr


def test_the_value_is_the_documented_formula() -> None:
    digest = hashlib.blake2b(b"backup#minute", digest_size=8).digest()
    assert hashed_value("backup", "minute", 0, 59) == int.from_bytes(digest, "big") % 60
    assert hashed_value("backup", "minute", 10, 19) == 10 + int.from_bytes(digest, "big") % 10


def test_day_of_month_h_stays_within_1_to_28() -> None:
    days = {
        int(CronSchedule.parse("0 0 H * *", entry=f"e{i}").expression.text.split()[2])
        for i in range(500)
    }
    assert min(days) == 1
    assert max(days) == 28


def test_macros_keep_cronies_meaning_whatever_the_entry() -> None:
    assert CronSchedule.parse("@daily", entry="backup").expression.text == "@daily"
    assert CronSchedule.parse("@daily", entry="backup").next_after(
        datetime(2026, 1, 1, 12, tzinfo=UTC)
    ) == datetime(2026, 1, 2, tzinfo=UTC)


def test_spec_and_description_show_what_was_written_and_what_it_resolves_to() -> None:
    schedule = CronSchedule.parse("H H * * *", "Europe/Berlin", entry="backup")
    assert schedule.spec == "cron H H * * * = 29 3 * * * tz Europe/Berlin"
    assert schedule.describe() == "at 03:29, every day (H: 29 3 * * *)"
    assert CronSchedule.parse("29 3 * * *").spec == "cron 29 3 * * * tz UTC"


# Berlin 2021-03-28: 02:00 CET (+1) jumps to 03:00 CEST (+2) at 01:00Z. Entry "x" resolves
# `0 H/2 * * *` to `0 0-23/2 * * *`, which includes 02:00.
def test_h_step_is_a_wildcard_for_dst_spring_gap_wildcard() -> None:
    hashed = CronSchedule.parse("0 H/2 * * *", "Europe/Berlin", entry="x")
    assert hashed.expression.text == "0 0-23/2 * * *"
    start = datetime(2021, 3, 27, 23, 30, tzinfo=UTC)
    assert hashed.next_after(start) == datetime(2021, 3, 28, 2, tzinfo=UTC)  # 04:00 CEST
    written_out = CronSchedule.parse("0 0-23/2 * * *", "Europe/Berlin")
    assert written_out.next_after(start) == datetime(2021, 3, 28, 1, tzinfo=UTC)  # the jump


# Berlin 2021-10-31: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:xx happens twice.
def test_h_step_is_a_wildcard_for_dst_autumn_repeat_wildcard() -> None:
    hashed = CronSchedule.parse("H/30 2 * * *", "Europe/Berlin", entry="a")
    minute = int(hashed.expression.text.split("-")[0])
    start = datetime(2021, 10, 31, 0, 59, tzinfo=UTC)
    first = hashed.next_after(datetime(2021, 10, 30, 23, 59, tzinfo=UTC))
    assert first == datetime(2021, 10, 31, 0, minute, tzinfo=UTC)
    fires = [hashed.next_after(start)]
    assert fires == [datetime(2021, 10, 31, 1, minute, tzinfo=UTC)]  # the second pass too


ERRORS = {
    "no_entry_name": (
        "H * * * *",
        None,
        "invalid cron expression 'H * * * *': minute field: H is hashed from the entry's name, "
        "and none was given",
    ),
    "backwards_range": (
        "H(5-2) * * * *",
        "e",
        "invalid cron expression 'H(5-2) * * * *': minute field: in 'H(5-2)' the range must run "
        "upwards within 0-59",
    ),
    "range_out_of_field": (
        "0 H(0-24) * * *",
        "e",
        "invalid cron expression '0 H(0-24) * * *': hour field: in 'H(0-24)' the range must run "
        "upwards within 0-23",
    ),
    "not_an_h_item": (
        "Hx * * * *",
        "e",
        "invalid cron expression 'Hx * * * *': minute field: 'Hx' is not H, H(low-high), H/n or "
        "H(low-high)/n",
    ),
    "zero_step": (
        "H/0 * * * *",
        "e",
        "invalid cron expression 'H/0 * * * *': minute field: in 'H/0' the step must be 1-60",
    ),
}


@pytest.mark.parametrize(("expr", "entry", "message"), list(ERRORS.values()), ids=list(ERRORS))
def test_errors(expr: str, entry: str | None, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        CronSchedule.parse(expr, entry=entry)
    assert str(caught.value) == message
