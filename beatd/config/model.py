"""The frozen values a loaded configuration is made of."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule


class MissedPolicy(StrEnum):
    """What to publish for slots that passed while nobody could publish them."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    task: str
    schedule: Schedule
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    protocol: str | None = None  # beatd or celery; None: the queue's (beatd unless configured)
    priority: int | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    enabled: bool = True
    jitter: timedelta = timedelta(0)
    expires: timedelta | None = None
    missed: MissedPolicy = MissedPolicy.RUN_ONCE
    max_catch_up: int = 100
    misfire_grace: timedelta = timedelta(seconds=60)
    source: str = ""  # "path:line", for log lines and `beatd check`

    @property
    def identity(self) -> str:
        """What makes slots comparable: a changed identity means history is not replayed."""
        return self.schedule.spec

    def jitter_for(self, slot: datetime) -> timedelta:
        """A delay in [0, jitter) every node derives alike from the entry and the slot."""
        if not self.jitter:
            return timedelta(0)
        digest = hashlib.blake2b(f"{self.name}@{slot.timestamp():.0f}".encode(), digest_size=8)
        fraction = int.from_bytes(digest.digest(), "big") / 2**64
        return timedelta(seconds=round(self.jitter.total_seconds() * fraction, 3))


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str
    protocol: str = "beatd"


@dataclass(frozen=True, slots=True)
class Config:
    entries: Mapping[str, Entry]
    queues: Mapping[str, QueueSettings] = field(default_factory=dict)
    imports: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    # A short hash of everything that decides what is published, equal on agreeing nodes;
    # computed once, since a standby announces it every second.
    fingerprint: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for entry in sorted(self.entries.values(), key=lambda e: e.name):
            digest.update(json.dumps(_entry_fields(entry), sort_keys=True, default=str).encode())
        for queue in sorted(self.queues.values(), key=lambda q: q.name):
            digest.update(f"{queue.name}:{queue.protocol}".encode())
        object.__setattr__(self, "fingerprint", digest.hexdigest()[:16])


def _entry_fields(entry: Entry) -> dict[str, Any]:
    fields = {
        "name": entry.name,
        "task": entry.task,
        "schedule": entry.schedule.spec,
        "args": entry.args,
        "kwargs": entry.kwargs,
        "queue": entry.queue,
        "priority": entry.priority,
        "headers": entry.headers,
        "enabled": entry.enabled,
        "jitter": entry.jitter.total_seconds(),
        "expires": entry.expires.total_seconds() if entry.expires else None,
        "missed": entry.missed.value,
        "max_catch_up": entry.max_catch_up,
        "misfire_grace": entry.misfire_grace.total_seconds(),
    }
    if entry.protocol not in (None, "beatd"):  # beatd's own format hashes as it always did
        fields["protocol"] = entry.protocol
    return fields


_PERIOD_PROBE = datetime(2001, 1, 1, tzinfo=UTC)


def nominal_period(schedule: Schedule) -> timedelta | None:
    """The shortest gap between runs, for defaults and sanity checks; None for a one-off."""
    if isinstance(schedule, IntervalSchedule):
        return schedule.every
    if isinstance(schedule, OnceSchedule):
        return None
    assert isinstance(schedule, CronSchedule)
    fires = _first_fires(schedule, 8)
    return min((b - a for a, b in pairwise(fires)), default=None)


def _first_fires(schedule: Schedule, count: int) -> list[datetime]:
    fires: list[datetime] = []
    t: datetime | None = _PERIOD_PROBE
    while t is not None and len(fires) < count:
        t = schedule.next_after(t)
        if t is not None:
            fires.append(t)
    return fires
