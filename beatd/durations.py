"""Durations as users write them: `30s`, `5m`, `1h30m`, `1d`, `250ms`, or a number of seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> timedelta:
    """Read a duration; raise ValueError with a message fit for the user."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h30m, got {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h30m, got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if text and _is_number(text):
        return timedelta(seconds=float(text))
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
    return timedelta(seconds=sign * total)


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
