"""Converters: a raw value from a schedule file (or a flag) to the checked value an `Entry` holds,
or ValueError with the message the user reads (located by the caller).
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import types
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from beatd.amqp_link import AmqpUrlError, has_password, parse_amqp_url
from beatd.config.model import AmqpTarget, MissedPolicy
from beatd.controls import Overlap
from beatd.durations import read_duration

# no empty, "." or ".." part between slashes: the console's URLs and any HTTP client would
# resolve such a name's URL to another one (`x/../../dead`), or merge its slashes
ENTRY_NAME = re.compile(r"(?!.*/\.{0,2}(?:/|$))[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")
ENTRY_NAME_RULE = (
    "entry names use letters, digits and _ . : / -, with no empty, '.' or '..' part between "
    "slashes (a run's id is NAME@SLOT)"
)
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
PROTOCOLS = ("beatd", "celery")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


_KINDS: tuple[tuple[type | types.UnionType, str], ...] = (
    (bool, "boolean"),
    (int | float, "number"),
    (str, "string"),
)


def describe_value(value: object) -> str:
    """How a wrong value is named in a message: its kind, and the value when it is short."""
    if value is None:
        return "null"
    for kind, word in _KINDS:
        if isinstance(value, kind):
            return f"{word} {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# --- converters: value -> converted value, or ValueError with the user's message ---------------
# Names that many entries repeat (task, queue, timezone) are interned: one string each, not one
# per entry.


def to_string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe_value(value)}")
    return value


def to_task_name(value: object) -> str:
    text = to_string(value)
    if not TASK_NAME.match(text):
        raise ValueError(f"{text!r} is not a dotted task name such as 'reports.nightly'")
    return sys.intern(text)


def to_queue_name(value: object) -> str:
    text = to_string(value)
    if not QUEUE_NAME.match(text):
        raise ValueError(f"{text!r} is not a queue name (letters, digits and _ . : -)")
    return sys.intern(text)


def to_protocol(value: object) -> str:
    if value not in PROTOCOLS:
        hint = suggest(value, PROTOCOLS) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}, got {value!r}{hint}")
    assert isinstance(value, str)
    return value


AMQP_KEYS = ("url", "exchange", "routing_key")
NO_PASSWORD = (
    "must not hold a password (a schedule file is no place for one): give it with "
    "--amqp-password or BEATD_AMQP_PASSWORD, or in the Celery config's broker_url"
)


def to_amqp(value: object) -> AmqpTarget:
    """An AMQP destination: its URL alone, or a mapping of url, exchange and routing_key."""
    raw: Mapping[str, Any] = {"url": value} if isinstance(value, str) else _amqp_mapping(value)
    url = raw.get("url")
    if not isinstance(url, str):
        raise ValueError(f"url: expected an amqp:// URL, got {describe_value(url)}")
    if has_password(url):
        raise ValueError(f"url {NO_PASSWORD}")
    try:
        parse_amqp_url(url)
    except AmqpUrlError as exc:
        raise ValueError(str(exc)) from None
    names = {key: raw.get(key) for key in ("exchange", "routing_key")}
    for key, name in names.items():
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{key}: expected a string, got {describe_value(name)}")
    return AmqpTarget(url, names["exchange"], names["routing_key"])


def _amqp_mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected an amqp:// URL or a mapping of {', '.join(AMQP_KEYS)}, got "
            f"{describe_value(value)}"
        )
    unknown = [k for k in value if k not in AMQP_KEYS]
    if unknown:
        word = str(unknown[0])
        raise ValueError(
            f"unknown key {word!r}: expected {', '.join(AMQP_KEYS)}{suggest(word, AMQP_KEYS)}"
        )
    return value


def to_json(value: object) -> Any:
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()  # as messages carry it
    except UnicodeEncodeError as exc:
        raise ValueError(f"must be valid Unicode text, got {exc.object[exc.start]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable: {exc}") from None
    return value


_JSON_AS_IS = frozenset({str, int, bool, type(None)})  # no NaN or infinity, nothing to nest


def to_args(value: object) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, got {describe_value(value)}")
    if all(type(item) in _JSON_AS_IS for item in value) and not any(
        type(item) is str and not item.isascii() for item in value
    ):  # the usual args, checked cheaply
        return tuple(value)
    return tuple(to_json(list(value)))


def to_mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {describe_value(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"keys must be strings, got {bad[0]!r}")
    return dict(to_json(dict(value)))


def to_priority(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ValueError(f"expected a whole number 0-9 (9 highest), got {describe_value(value)}")
    return value


def to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe_value(value)}")
    return value


to_duration = read_duration


def to_jitter(value: object) -> timedelta:
    return read_duration(value, zero_ok=True)


def to_optional_duration(value: object) -> timedelta | None:
    return None if value is None else read_duration(value)


def to_missed(value: object) -> MissedPolicy:
    choices = [p.value for p in MissedPolicy]
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(choices)}, got {describe_value(value)}{hint}")
    return MissedPolicy(value)


def to_overlap(value: object) -> Overlap:
    choices = [o.value for o in Overlap]
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(choices)}, got {describe_value(value)}{hint}")
    return Overlap(value)


def to_max_catch_up(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {describe_value(value)}")
    return value


def to_alert_after_failures(value: object) -> int | None:
    if value is None:
        return None
    return to_max_catch_up(value)


@cache
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def to_timezone(value: object) -> str:
    name = to_string(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}{suggest(name, _zone_names())}") from None
    return sys.intern(name)


def to_datetime(value: object, zone: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO date and time such as 2026-12-24T18:00:00"
            ) from None
    else:
        raise ValueError(f"expected an ISO date and time, got {describe_value(value)}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment


def to_every(value: object) -> timedelta:
    delta = to_duration(value)
    if delta.total_seconds() != int(delta.total_seconds()):
        raise ValueError(f"must be a whole number of seconds, got {value!r}")
    return delta
