from __future__ import annotations

from datetime import timedelta

import pytest

from beatd.durations import format_duration, parse_duration


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
