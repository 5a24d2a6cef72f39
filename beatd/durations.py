"""Durations as users write them: `30s`, `5m`, `1h30m`, `1d`, `250ms`, or a number of seconds.

Every duration beatd reads, from a schedule file or a flag, goes through `read_duration`: it is
finite and at most `MAX_DURATION` long, so that no later arithmetic on it can overflow.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_DURATION = timedelta(days=36525)
MAX_TEXT = "100 years (36525d)"
_MAX_SECONDS = MAX_DURATION.total_seconds()
_ZERO = timedelta(0)


def read_duration(value: object, *, zero_ok: bool = False) -> timedelta:
    """A duration that must be positive (or zero, with `zero_ok`), finite and at most
    `MAX_DURATION`; ValueError with a message fit for the user (without the field's name)."""
    delta = parse_duration(value)
    if delta < _ZERO or (delta == _ZERO and not zero_ok):
        raise ValueError(f"must be {'zero or ' if zero_ok else ''}positive, got {value!r}")
    return delta


def parse_duration(value: object) -> timedelta:
    """Read a duration of either sign, finite and at most `MAX_DURATION` long; raise ValueError
    with a message fit for the user."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h30m, got {value!r}")
    seconds = value if isinstance(value, int | float) else _text_seconds(value)
    if not -_MAX_SECONDS <= seconds <= _MAX_SECONDS:  # false for NaN too
        raise ValueError(f"must be finite and at most {MAX_TEXT}, got {value!r}")
    return timedelta(seconds=seconds)


@lru_cache(maxsize=1024)
def _text_seconds(value: str) -> float:
    """The seconds a text says, remembered: a schedule file repeats a few durations (`every: 1h`)
    over and over. Only results are remembered, never a ValueError."""
    text = value.strip().lower().replace(" ", "")
    if text and _is_number(text):
        return float(text)
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("-")
    total = 0.0
    pos = 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(
            f"cannot read {value!r} as a duration: use a number of seconds or "
            "units ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)"
        )
    return sign * total


def format_duration(delta: timedelta) -> str:
    """The shortest unit form of a whole-second duration, the inverse of parse_duration."""
    if delta < timedelta(0):
        return "-" + format_duration(-delta)
    seconds = int(delta.total_seconds())
    if seconds != delta.total_seconds():
        return f"{delta.total_seconds():g}s"
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
