from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.cli import main
from beatd.durations import MAX_DURATION, format_duration, parse_duration, read_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d", 86400),
        ("250ms", 0.25),
        (45, 45),
        (1.5, 1.5),
        ("90", 90),
        ("2w", 1_209_600),
        ("1h 30m", 5400),
        ("-5s", -5),
    ],
    ids=[
        "seconds",
        "minutes",
        "compound",
        "day",
        "millis",
        "int",
        "float",
        "numeric_string",
        "weeks",
        "spaces",
        "negative",
    ],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["12:30", "soon", "5x", "", "m5", True, None, [1]])
def test_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_message_names_the_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("12:30")
    assert str(info.value) == (
        "cannot read '12:30' as a duration: use a number of seconds or units ms, s, m, h, d, w "
        "(for example 30s, 5m, 1h30m, 1d)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (5400, "1h30m"), (86401, "1d1s"), (0.5, "0.5s")]
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


BOUND = "must be finite and at most 100 years (36525d)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        ("inf", "'inf'"),
        ("nan", "'nan'"),
        (1e20, "1e+20"),
        ("1e400", "'1e400'"),
        (10**40, str(10**40)),
        ("36526d", "'36526d'"),
        ("99999999999999999999w", "'99999999999999999999w'"),
        (-1e20, "-1e+20"),
    ],
    ids=[
        "infinity",
        "minus_infinity",
        "nan",
        "inf_text",
        "nan_text",
        "huge_float",
        "overflowing_text",
        "huge_int",
        "a_day_over",
        "huge_units",
        "huge_negative",
    ],
)
def test_durations_are_finite_and_at_most_a_century(value: object, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == f"{BOUND}, got {shown}"


def test_a_century_is_allowed() -> None:
    assert read_duration("36525d") == MAX_DURATION == timedelta(days=36525)
    assert parse_duration(-36525 * 86400) == -MAX_DURATION


@pytest.mark.parametrize(
    ("value", "zero_ok", "message"),
    [
        ("0s", False, "must be positive, got '0s'"),
        ("-1s", True, "must be zero or positive, got '-1s'"),
        (-math.inf, False, f"{BOUND}, got -inf"),
    ],
    ids=["zero", "negative", "minus_infinity"],
)
def test_read_duration_wants_a_sign(value: object, zero_ok: bool, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        read_duration(value, zero_ok=zero_ok)
    assert str(caught.value) == message


# Every duration flag of every command: each refuses what is not a finite duration up to a
# century, naming the flag, before doing anything else.
DURATION_FLAGS = [
    ["run", "--lease-ttl"],
    ["run", "--max-clock-skew"],
    ["run", "--removed-grace"],
    ["run", "--with-worker", "--visibility-timeout"],
    ["run", "--with-worker", "--drain-timeout"],
    ["worker", "--visibility-timeout"],
    ["worker", "--drain-timeout"],
    ["next", "--every"],
]


@pytest.mark.parametrize(
    ("value", "shown"),
    [("inf", "'inf'"), ("nan", "'nan'"), ("1e20", "'1e20'"), ("36526d", "'36526d'")],
)
@pytest.mark.parametrize("flag", DURATION_FLAGS, ids=" ".join)
def test_every_duration_flag_is_bounded(
    flag: list[str], value: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./schedules: the worker needs none
    (tmp_path / "tasks_here.py").write_text(
        "import beatd\n\n@beatd.task\ndef ping() -> None: ...\n"
    )
    schedule = tmp_path / "s.yaml"
    schedule.write_text(
        "imports: [tasks_here]\nentries:\n  a: {task: tasks_here.ping, every: 1h}\n"
    )
    broker = f"sqlite:///{tmp_path / 'beatd.db'}"
    command, option = flag[:-1], flag[-1]
    extra = [] if command == ["next"] else ["-s", str(schedule), "--broker", broker]
    result = CliRunner().invoke(main, [*command, *extra, option, value])
    last_line = result.stderr.splitlines()[-1]  # `run` may have logged its start
    assert (result.exit_code, last_line) == (2, f"beatd: {option}: {BOUND}, got {shown}")
