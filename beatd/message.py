"""The run message: one documented JSON object per published run (format version `v`).

Readers ignore fields they do not know, so a newer publisher and an older worker can coexist
during a rolling upgrade; unknown fields are kept and written back unchanged. `kind` (why the run
was published: scheduled, caught_up, manual, backfill) was added within v 1: a message written
before it has none, and is read with `kind` None and written back without one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

VERSION = 1
_FIELDS = (
    "v",
    "id",
    "task",
    "args",
    "kwargs",
    "entry",
    "scheduled_for",
    "published_at",
    "expires_at",
    "queue",
    "priority",
    "headers",
    "attempt",
    "kind",
)


class MessageError(ValueError):
    """A message that cannot be read: not JSON, or a required field missing or mistyped."""


@lru_cache(maxsize=4096)  # every run of a burst shares its slot, and formats it twice
def format_slot(moment: datetime) -> str:
    """A slot as `YYYY-MM-DDTHH:MM:SSZ`, the form used in run ids."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(moment: datetime) -> str:
    """A publish or expiry time, to the millisecond, in UTC."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return moment.astimezone(UTC)


def run_id(entry: str, slot: datetime) -> str:
    """The deterministic id of a run, so a repeat is recognisable everywhere."""
    return f"{entry}@{format_slot(slot)}"


@dataclass(frozen=True, slots=True)
class RunMessage:
    id: str
    task: str
    entry: str
    scheduled_for: datetime
    published_at: datetime
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    priority: int | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    kind: str | None = None  # a beatd.history.RunKind value; None in a message from before it
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            **self.extra,
            "v": VERSION,
            "id": self.id,
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "entry": self.entry,
            "scheduled_for": format_slot(self.scheduled_for),
            "published_at": format_time(self.published_at),
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
            "queue": self.queue,
            "priority": self.priority,
            "headers": dict(self.headers),
            "attempt": self.attempt,
        }
        if self.kind is not None:
            data["kind"] = self.kind
        return data

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    def next_attempt(self) -> RunMessage:
        return replace(self, attempt=self.attempt + 1)

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @classmethod
    def from_json(cls, text: str | bytes) -> RunMessage:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MessageError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MessageError("a run message is a JSON object")
        try:
            return cls(
                id=_typed(data, "id", str),
                task=_typed(data, "task", str),
                entry=_typed(data, "entry", str),
                scheduled_for=parse_time(_typed(data, "scheduled_for", str)),
                published_at=parse_time(_typed(data, "published_at", str)),
                queue=_typed(data, "queue", str),
                args=tuple(_typed(data, "args", list, [])),
                kwargs=_typed(data, "kwargs", dict, {}),
                expires_at=(
                    parse_time(data["expires_at"]) if data.get("expires_at") is not None else None
                ),
                priority=data.get("priority"),
                headers=_typed(data, "headers", dict, {}),
                attempt=_typed(data, "attempt", int, 1),
                kind=_typed(data, "kind", str, None),
                extra={k: v for k, v in data.items() if k not in _FIELDS},
            )
        except (TypeError, ValueError) as exc:
            raise MessageError(str(exc)) from None


class RunTemplate:
    """One entry's run messages with the per-run parts left open.

    `render` writes exactly the text `RunMessage(...).to_json()` would for a first attempt, with
    a few string joins instead of a dict and an encoder per run: the JSON of everything an entry
    fixes (task, args, kwargs, queue, ...) is made once.
    """

    __slots__ = ("_id_head", "_tail", "_to_slot")

    def __init__(
        self,
        entry: str,
        task: str,
        queue: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        name = _string(entry)
        self._id_head = f'{{"v":{VERSION},"id":{name[:-1]}@'
        self._to_slot = (
            f'","task":{_string(task)},"args":{_array(args)},'
            f'"kwargs":{_dumps(dict(kwargs)) if kwargs else "{}"},"entry":{name},'
            '"scheduled_for":"'
        )
        rank = "null" if priority is None else _dumps(priority)
        # usually the same for every entry of a queue: one copy, however many entries
        self._tail = sys.intern(
            f',"queue":{_string(queue)},"priority":{rank},'
            f'"headers":{_dumps(dict(headers)) if headers else "{}"},"attempt":1,"kind":"'
        )

    def render(
        self,
        slot: str,
        published_at: str,
        expires_at: str | None = None,
        kind: str = "scheduled",
    ) -> str:
        """The message for a run; arguments as `format_slot` and `format_time` write them,
        `kind` a beatd.history.RunKind value (plain letters: written as it is)."""
        expires = "null" if expires_at is None else f'"{expires_at}"'
        return (
            f'{self._id_head}{slot}{self._to_slot}{slot}","published_at":"{published_at}",'
            f'"expires_at":{expires}{self._tail}{kind}"}}'
        )


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_string: Callable[[str], str] = json.encoder.encode_basestring  # what _dumps does to a str


def _array(values: tuple[Any, ...]) -> str:
    if all(type(value) is str for value in values):  # the usual args: no encoder set up for them
        return "[" + ",".join(map(_string, values)) + "]"
    return _dumps(list(values))


_REQUIRED = object()


def _typed(data: dict[str, Any], key: str, kind: type, default: Any = _REQUIRED) -> Any:
    if key not in data:
        if default is _REQUIRED:
            raise MessageError(f"missing field {key!r}")
        return default
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MessageError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value
