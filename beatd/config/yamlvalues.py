"""Values read from YAML: scalars typed by the YAML 1.2 core schema, and mappings and lists that
know where they and their items came from.

A position is PyYAML's 0-based (line, column) packed into one int, `line << 32 | column`, and a
mapping item's two positions into one, `key << 64 | value`. Ints are not tracked by the cyclic
collector, so a large document costs it nothing; a `Mark` is made only when asked for: a
100,000-entry file has well over a million positions and most are never looked at.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in the source file, both numbers 1-based."""

    line: int
    column: int


FILE_START = Mark(1, 1)


_LOW_32 = (1 << 32) - 1
_LOW_64 = (1 << 64) - 1


def mark_at(position: int) -> Mark:
    return Mark((position >> 32) + 1, (position & _LOW_32) + 1)


class YamlMap(dict[str, Any]):
    """A mapping read from YAML: a plain dict that also knows where it and its items are."""

    __slots__ = ("_positions", "_start")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = 0
        self._positions: dict[str, int] = {}

    @property
    def mark(self) -> Mark:
        """Where the mapping starts (its first key for a block mapping)."""
        return mark_at(self._start)

    def key_mark(self, key: str) -> Mark:
        """Where `key` is (KeyError for a key not read from YAML); a key merged in by `<<` is
        where the anchored mapping has it."""
        return mark_at(self._positions[key] >> 64)

    def value_mark(self, key: str) -> Mark:
        """Where the value of `key` starts; for a key merged in by `<<`, in the anchored mapping."""
        return mark_at(self._positions[key] & _LOW_64)

    @property
    def key_marks(self) -> dict[str, Mark]:
        """`key_mark` of every key read from YAML."""
        return {key: self.key_mark(key) for key in self._positions}

    @property
    def value_marks(self) -> dict[str, Mark]:
        """`value_mark` of every key read from YAML."""
        return {key: self.value_mark(key) for key in self._positions}


class YamlList(list[Any]):
    """A sequence read from YAML: a plain list that also knows where it and its items are."""

    __slots__ = ("_positions", "_start")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._start = 0
        self._positions: list[int] = []

    @property
    def mark(self) -> Mark:
        """Where the sequence starts (its first `-` for a block sequence)."""
        return mark_at(self._start)

    @property
    def item_marks(self) -> list[Mark]:
        """Where each item starts."""
        return [mark_at(at) for at in self._positions]


def yaml_mark(raw: Any) -> Mark:
    """A PyYAML mark (0-based `line` and `column`, or None) as a `Mark`."""
    return FILE_START if raw is None else Mark(raw.line + 1, raw.column + 1)


# --- the YAML 1.2 core schema -------------------------------------------------------------------

YAML_TAG = "tag:yaml.org,2002:"
STR_TAG = YAML_TAG + "str"
MAP_TAG = YAML_TAG + "map"
SEQ_TAG = YAML_TAG + "seq"

_INF, _NAN = math.inf, math.nan
SPECIAL_PLAIN: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("null", "Null", "NULL", "~", ""), None),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), _INF),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -_INF),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), _NAN),
}
NUMBER_START = frozenset("0123456789+-.")
_NUMBER = re.compile(  # the first that matches the whole text wins
    r"(?P<decimal>[-+]?[0-9]+)"
    r"|(?P<float>[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)"
    r"|0o(?P<octal>[0-7]+)"
    r"|0x(?P<hex>[0-9a-fA-F]+)"
)


def plain_number(text: str) -> int | float | str:
    """`text` as the core schema reads a plain scalar starting like a number; else `text`."""
    found = _NUMBER.fullmatch(text)
    if found is None:
        return text
    kind = found.lastgroup
    if kind == "decimal":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "octal":
        return int(found["octal"], 8)
    return int(found["hex"], 16)


SCALAR_TAGS = frozenset(YAML_TAG + t for t in ("str", "int", "float", "bool", "null"))
STANDARD_TAGS = SCALAR_TAGS | {MAP_TAG, SEQ_TAG}


def tagged_scalar(tag: str, text: str) -> Any:
    """The value of a scalar with an explicit tag; ValueError if the tag or the text is wrong."""
    if tag not in SCALAR_TAGS:
        raise ValueError(
            f"{short_tag(tag)} cannot tag a scalar"
            if tag in STANDARD_TAGS
            else unsupported_tag(tag)
        )
    special = SPECIAL_PLAIN.get(text, text)
    if tag == STR_TAG:
        return text
    if tag == YAML_TAG + "bool" and isinstance(special, bool):
        return special
    if tag == YAML_TAG + "null" and special is None:
        return None
    if tag == YAML_TAG + "int" and special is text:
        value = plain_number(text)
        if isinstance(value, int):
            return value
    if tag == YAML_TAG + "float" and (special is text or isinstance(special, float)):
        value = special if special is not text else plain_number(text)
        if isinstance(value, int | float):
            return float(value)
    raise ValueError(f"{short_tag(tag)} {text!r} is not a valid {tag[len(YAML_TAG) :]}")


# YAML reads a plain value starting with `*` as an alias: an unquoted cron expression.
QUOTE_HINT = (
    "a value starting with * is read as an alias; if it is text, such as a cron expression, "
    'quote it: cron: "*/15 * * * *"'
)


def short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG) :] if tag.startswith(YAML_TAG) else tag


def unsupported_tag(tag: str) -> str:
    return (
        f"unsupported tag {short_tag(tag)}: schedule files hold plain data only (strings, "
        "numbers, booleans, null, lists and mappings); remove the tag"
    )
