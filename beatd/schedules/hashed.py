"""Jenkins' `H` in cron fields: a value spread by a hash of the entry's name.

`H` stands for one value of its field, `H(low-high)` for one value of a range, and `H/n` (or
`H(low-high)/n`) for every n-th value from a start spread in the first n. The value is

    low + int.from_bytes(blake2b(f"{entry}#{field}", digest_size=8), "big") % (high - low + 1)

(UTF-8, big-endian, as the jitter's hash), so it is the same on every host, after every restart
and in every later version: tests/schedules/test_hashed.py pins it. Entries with different names
spread over the range; one entry's minute and hour are hashed apart by the field's key.

`resolve` rewrites the `H` items into plain cron before the expression is parsed, so everything
after it (the DST rules, `describe`) sees ordinary numbers; it only reports which of the minute
and hour fields were `H/n`, because those count as wildcards for the DST rules, like `*/n`.
"""

from __future__ import annotations

import hashlib
import re

# The field keys hashed (in the order of a 6-field expression) and the range of a bare `H`:
# the day of month stops at 28 so that every month has the day.
KEYS = ("second", "minute", "hour", "day_of_month", "month", "day_of_week")
RANGES = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_month": (1, 28),
    "month": (1, 12),
    "day_of_week": (0, 6),
}
LIMITS = {**RANGES, "day_of_month": (1, 31)}  # what an explicit H(low-high) may name
_ITEM = re.compile(r"H(?:\((\d+)-(\d+)\))?(?:/(\d+))?")


class HashError(ValueError):
    """An `H` item that cannot be resolved; the message names the item and the rule."""


def hashed_value(entry: str, key: str, low: int, high: int) -> int:
    """The value of `H(low-high)` in field `key` of entry `entry`."""
    digest = hashlib.blake2b(f"{entry}#{key}".encode(), digest_size=8)
    return low + int.from_bytes(digest.digest(), "big") % (high - low + 1)


def uses_hash(fields: list[str]) -> bool:
    return any(item.startswith("H") for text in fields for item in text.split(","))


def resolve_field(text: str, key: str, entry: str) -> str:
    """One field with its `H` items replaced by plain cron items."""
    return ",".join(_resolve_item(item, key, entry) for item in text.split(","))


def _resolve_item(item: str, key: str, entry: str) -> str:
    if not item.startswith("H"):
        return item
    match = _ITEM.fullmatch(item)
    if match is None:
        raise HashError(f"{item!r} is not H, H(low-high), H/n or H(low-high)/n")
    low_text, high_text, step_text = match.groups()
    low, high = RANGES[key]
    if low_text is not None:
        low, high = int(low_text), int(high_text)
        limit_low, limit_high = LIMITS[key]
        if not limit_low <= low <= high <= limit_high:
            raise HashError(
                f"in {item!r} the range must run upwards within {limit_low}-{limit_high}"
            )
    if step_text is None:
        return str(hashed_value(entry, key, low, high))
    step = int(step_text)
    if not 0 < step <= high - low + 1:
        raise HashError(f"in {item!r} the step must be 1-{high - low + 1}")
    start = hashed_value(entry, key, low, low + step - 1)
    return f"{start}-{high}/{step}"
