"""beatd's cron evaluator against the brute-force oracle in `tests.cron_reference`.

Two kinds of check, both comparing every fire in a window: hypothesis-generated expressions,
zones and start instants (biased to a day or two around each zone's offset changes), and a
deterministic sweep of a few everyday expressions across one offset change of every kind
that 39 zones went through between 1970 and 2040.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from beatd.errors import ScheduleError
from beatd.schedules.cron import CronSchedule
from tests.cron_reference import reference_fires

ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # "negative DST": winter time is the daylight-saving offset
    "Europe/Moscow",  # permanent summer time 2011, back to +3 in 2014
    "Europe/Lisbon",
    "Europe/Chisinau",
    "America/New_York",
    "America/St_Johns",  # -3:30, and a two-hour "double daylight" year (1988)
    "America/Santiago",  # changes at midnight
    "America/Havana",  # changes at midnight
    "America/Sao_Paulo",  # changed at midnight until 2019
    "America/Asuncion",
    "America/Nuuk",
    "America/Caracas",  # -4:30 from 2007 to 2016
    "America/Scoresbysund",
    "Asia/Kolkata",  # +5:30, no changes since 1945
    "Asia/Kathmandu",  # +5:30 to +5:45 in 1986
    "Asia/Tehran",  # +3:30, changes at midnight
    "Asia/Gaza",
    "Asia/Jerusalem",
    "Asia/Beirut",  # changes at midnight
    "Asia/Amman",
    "Asia/Pyongyang",  # +9 to +8:30 and back
    "Asia/Dhaka",  # one summer (2009) that started at 23:00
    "Africa/Casablanca",  # daylight saving suspended every Ramadan
    "Africa/Cairo",
    "Africa/Monrovia",  # -0:44:30 until 1972: wall minutes are not UTC minutes
    "Australia/Lord_Howe",  # a 30-minute daylight-saving shift
    "Australia/Sydney",
    "Australia/Adelaide",
    "Pacific/Chatham",  # +12:45 / +13:45
    "Pacific/Apia",  # skipped 30 December 2011 (a 24-hour clock correction)
    "Pacific/Auckland",
    "Pacific/Kiritimati",  # skipped 31 December 1994
    "Antarctica/Troll",  # a two-hour daylight-saving shift
    "Antarctica/Casey",  # three-hour changes, forward and back: clock corrections
    "Antarctica/Rothera",  # one three-hour step back (1976): a correction
    "Antarctica/Vostok",  # seven hours back and forward again in 1994: corrections
)
FIRST = datetime(1970, 1, 1, tzinfo=UTC)
LAST = datetime(2040, 12, 31, tzinfo=UTC)


def beatd_fires(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire in (start, end], by calling next_after from `start` and from each fire."""
    schedule = CronSchedule.parse(expr, zone)
    fires: list[datetime] = []
    t = start
    while (t := schedule.next_after(t)) is not None and t <= end:
        fires.append(t)
    return fires


def assert_same_fires(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    expected = reference_fires(expr, zone, start, end)
    actual = beatd_fires(expr, zone, start, end)
    if actual != expected:
        only_beatd = sorted(set(actual) - set(expected))[:5]
        only_reference = sorted(set(expected) - set(actual))[:5]
        pytest.fail(
            f"{expr!r} in {zone} from {start.isoformat()} to {end.isoformat()}: "
            f"beatd alone fires at {[t.isoformat() for t in only_beatd]}, "
            f"the reference alone at {[t.isoformat() for t in only_reference]}"
        )
    return expected


def assert_next_after(
    expr: str, zone: str, probes: list[datetime], fires: list[datetime], end: datetime
) -> None:
    """next_after from any instant in the window, not just from a fire, gives the next fire."""
    schedule = CronSchedule.parse(expr, zone)
    for probe in probes:
        expected = next((f for f in fires if f > probe), None)
        actual = schedule.next_after(probe)
        if expected is None:
            assert actual is None or actual > end, (expr, zone, probe.isoformat())
        else:
            assert actual == expected, (expr, zone, probe.isoformat())


@cache
def offset_changes(zone: str) -> tuple[datetime, ...]:
    """The instants in 1970-2040 at which the zone's UTC offset changes (to the second).

    Sampled every 12 hours, so two changes within 12 hours count as one; good enough to aim
    start instants at, which is all this is for.
    """
    tz = ZoneInfo(zone)

    def offset(seconds: int) -> timedelta | None:
        return datetime.fromtimestamp(seconds, tz).utcoffset()

    step = 12 * 3600
    changes = []
    low = int(FIRST.timestamp())
    while low < LAST.timestamp():
        high = low + step
        if offset(low) != offset(high):
            before, lo, hi = offset(low), low, high
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == before else (lo, mid)
            changes.append(datetime.fromtimestamp(hi, UTC))
        low = high
    return tuple(changes)


# -- Expressions ---------------------------------------------------------------------------------

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def spelled(value: int, names: list[str] | None = None, first: int = 0) -> st.SearchStrategy[str]:
    """A field value as a number, or for months and weekdays also as its name in any case."""
    if names is None or value - first >= len(names):
        return st.just(str(value))
    name = names[value - first]
    return st.sampled_from([str(value), name, name.lower(), name.title()])


@st.composite
def field_item(draw: st.DrawFn, low: int, high: int, names: list[str] | None = None) -> str:
    """One comma-separated item: `a`, `a-b`, `a-b/n`, `a/n` or `*/n`."""
    kind = draw(st.sampled_from(["value", "range", "range_step", "start_step", "star_step"]))
    first = draw(st.integers(low, high))
    last = draw(st.integers(first, high))
    step = draw(st.integers(1, high - low + 1))
    a, b = draw(spelled(first, names, low)), draw(spelled(last, names, low))
    return {
        "value": a,
        "range": f"{a}-{b}",
        "range_step": f"{a}-{b}/{step}",
        "start_step": f"{a}/{step}",
        "star_step": f"*/{step}",
    }[kind]


def plain_field(low: int, high: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    items = st.lists(field_item(low, high, names), min_size=1, max_size=3).map(",".join)
    return st.one_of(st.just("*"), items)


# Hours near the usual change times (midnight to 03:00) and minutes on the hour or half hour
# make the interesting cases (a job in a gap or a repeat) common.
HOURS = st.one_of(
    plain_field(0, 23), st.sampled_from(["0", "1", "2", "3", "23", "1-3", "0,2", "2,3"])
)
MINUTES = st.one_of(plain_field(0, 59), st.sampled_from(["0", "30", "15,45", "0-59/20", "59"]))
MONTH_FIELD = st.one_of(st.just("*"), st.just("*"), st.just("*"), plain_field(1, 12, MONTHS))
DAY_OF_MONTH_EXTRAS = st.one_of(
    st.just("L"), st.just("LW"), st.integers(1, 31).map(lambda d: f"{d}W")
)
DAY_OF_MONTH = st.one_of(
    st.just("*"),
    plain_field(1, 31),
    st.lists(st.one_of(DAY_OF_MONTH_EXTRAS, field_item(1, 31)), min_size=1, max_size=3).map(
        ",".join
    ),
)


@st.composite
def weekday_item(draw: st.DrawFn) -> str:
    """A day-of-week item: `a`, `a-b` (maybe ending on Sunday, as 0 or 7), steps, `5L`, `5#3`.

    `a/n` is left out: beatd reads it as a-6/n, but with Sunday also 7 it could as well mean
    a-7/n, and cron has no answer.
    """
    kind = draw(st.sampled_from(["value", "range", "to_sunday", "star_step", "last", "nth"]))
    first = draw(st.integers(0, 7))
    a = draw(spelled(first, WEEKDAYS))
    step = draw(st.sampled_from(["", "", f"/{draw(st.integers(1, 7))}"]))
    if kind == "range":
        return f"{a}-{draw(spelled(draw(st.integers(first, 7)), WEEKDAYS))}{step}"
    if kind == "to_sunday":  # FRI-SUN
        a = draw(spelled(draw(st.integers(1, 6)), WEEKDAYS))
        return f"{a}-{draw(st.sampled_from(['0', '7', 'SUN', 'sun']))}{step}"
    return {
        "value": a,
        "star_step": f"*/{draw(st.integers(1, 7))}",
        "last": f"{first}L",
        "nth": f"{a}#{draw(st.integers(1, 5))}",
    }[kind]


DAY_OF_WEEK = st.one_of(
    st.just("*"),
    st.just("*"),
    st.lists(weekday_item(), min_size=1, max_size=3).map(",".join),
)
MACROS = st.sampled_from(["@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly"])


@st.composite
def five_fields(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 19)) == 0:
        return draw(MACROS)
    fields = [MINUTES, HOURS, DAY_OF_MONTH, MONTH_FIELD, DAY_OF_WEEK]
    return " ".join(draw(f) for f in fields)


@st.composite
def six_fields(draw: st.DrawFn) -> str:
    seconds = draw(st.one_of(plain_field(0, 59), st.sampled_from(["0", "30", "*/10", "59"])))
    minutes = draw(st.one_of(MINUTES, st.sampled_from(["*", "*/5", "0-2", "59"])))
    return f"{seconds} {minutes} {draw(HOURS)} {draw(DAY_OF_MONTH)} * {draw(DAY_OF_WEEK)}"


@st.composite
def start_near_change(draw: st.DrawFn, zone: str, before: timedelta, after: timedelta) -> datetime:
    """Mostly an instant from `before` ahead of to `after` past one of the zone's offset
    changes; sometimes any second of 1970-2040."""
    changes = offset_changes(zone)
    if changes and draw(st.integers(0, 9)) > 0:
        change = draw(st.sampled_from(changes))
        seconds = draw(st.integers(-int(before.total_seconds()), int(after.total_seconds())))
        start = change + timedelta(seconds=seconds)
    else:
        start = draw(st.datetimes(FIRST.replace(tzinfo=None), LAST.replace(tzinfo=None)))
        start = start.replace(tzinfo=UTC)
    if draw(st.booleans()):
        start = start.replace(microsecond=0)
    return start


def check_window(
    expr: str, zone: str, start: datetime, window: timedelta, probes: list[int]
) -> None:
    try:
        CronSchedule.parse(expr, zone)
    except ScheduleError as error:
        if "it can never fire" not in str(error):
            raise
        reject()  # such as "* * 31 FEB *": no fires to compare
    end = start + window
    fires = assert_same_fires(expr, zone, start, end)
    span = int(window.total_seconds())
    probe_times = [start + timedelta(seconds=p % span) for p in probes]
    assert_next_after(expr, zone, probe_times, fires, end)


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(data=st.data(), expr=five_fields(), zone=st.sampled_from(ZONES))
def test_five_field_expressions_match_the_reference(
    data: st.DataObject, expr: str, zone: str
) -> None:
    start = data.draw(start_near_change(zone, timedelta(days=2), timedelta(days=1)))
    probes = data.draw(st.lists(st.integers(0, 10**9), max_size=4))
    check_window(expr, zone, start, timedelta(days=3), probes)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(data=st.data(), expr=six_fields(), zone=st.sampled_from(ZONES))
def test_six_field_expressions_match_the_reference(
    data: st.DataObject, expr: str, zone: str
) -> None:
    start = data.draw(start_near_change(zone, timedelta(hours=2), timedelta(hours=1)))
    probes = data.draw(st.lists(st.integers(0, 10**9), max_size=4))
    check_window(expr, zone, start, timedelta(hours=3), probes)


# -- The sweep -----------------------------------------------------------------------------------

SWEEP_EXPRESSIONS = (
    "30 2 * * *",
    "0 0 * * *",
    "*/15 * * * *",
    "30 * * * *",
    "0 */2 * * *",
    "0 0-23/2 * * *",
    "45 1 * * *",
    "0,30 2,3 * * *",
)
SWEEP_WINDOW = timedelta(hours=4)


def distinct_changes(zone: str) -> list[datetime]:
    """One offset change of each kind the zone had: these expressions fire on every day, so a
    change with the same offsets at the same wall-clock time of day behaves the same."""
    tz = ZoneInfo(zone)
    seen: dict[tuple[timedelta | None, timedelta | None, object], datetime] = {}
    for change in offset_changes(zone):
        before = (change - timedelta(seconds=1)).astimezone(tz)
        key = (before.utcoffset(), change.astimezone(tz).utcoffset(), before.time())
        seen.setdefault(key, change)
    return sorted(seen.values())


UNCHANGING_ZONES = {"UTC", "Asia/Kolkata"}  # no offset change in the window: nothing to sweep


@pytest.mark.parametrize("zone", ZONES)
def test_sweep_offset_changes(zone: str) -> None:
    changes = distinct_changes(zone)
    assert bool(changes) == (zone not in UNCHANGING_ZONES), "the sweep would check nothing"
    for change in changes:
        start, end = change - SWEEP_WINDOW, change + SWEEP_WINDOW
        probes = [change + timedelta(seconds=s) for s in (-3601, -1801, -1, 0, 1, 1799, 3599)]
        for expr in SWEEP_EXPRESSIONS:
            fires = assert_same_fires(expr, zone, start, end)
            assert_next_after(expr, zone, probes, fires, end)
