"""The frozen values a loaded configuration is made of."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from beatd.controls import DEFAULT_OVERLAP_TIMEOUT, Guard, Overlap
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule
from beatd.schedules.window import WindowedSchedule


class MissedPolicy(StrEnum):
    """What to publish for slots that passed while nobody could publish them."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


# The kwargs and headers of the many entries that have none: one read-only empty mapping, not an
# empty dict each (12 MB for 100,000 entries).
NO_ITEMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AmqpTarget:
    """Where a Celery entry's runs go on an AMQP broker (RabbitMQ): the broker's URL, never
    with a password (beatd.amqp_link tells where that comes from), an exchange and a routing
    key. Unset, both are the entry's queue name, as Celery routes a task to a queue by
    default (a direct exchange named as the queue, bound with the queue's name)."""

    url: str
    exchange: str | None = None
    routing_key: str | None = None

    def exchange_for(self, queue: str) -> str:
        return queue if self.exchange is None else self.exchange

    def routing_key_for(self, queue: str) -> str:
        return queue if self.routing_key is None else self.routing_key


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    task: str
    schedule: Schedule
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: NO_ITEMS)
    queue: str = "default"
    protocol: str | None = None  # beatd or celery; None: the queue's (beatd unless configured)
    priority: int | None = None
    headers: Mapping[str, Any] = field(default_factory=lambda: NO_ITEMS)
    description: str = ""
    enabled: bool = True
    jitter: timedelta = timedelta(0)
    expires: timedelta | None = None
    missed: MissedPolicy = MissedPolicy.RUN_ONCE
    max_catch_up: int = 100
    misfire_grace: timedelta = timedelta(seconds=60)
    deadline: timedelta | None = None  # a run unfinished this long after its due time: overdue
    alert_after_failures: int | None = None  # consecutive final failures that make it failing
    overlap: Overlap = Overlap.ALLOW  # a slot due while the previous run is busy (beatd.controls)
    overlap_timeout: timedelta | None = None  # None: `expires`, else DEFAULT_OVERLAP_TIMEOUT
    pause_after_failures: int | None = None  # consecutive final failures that pause the entry
    amqp: AmqpTarget | None = None  # with protocol celery: published to RabbitMQ, not --broker
    source: str = ""  # "path:line", for log lines and `beatd check`

    @property
    def guard(self) -> Guard | None:
        """The overlap rule its commits apply; None under `overlap: allow`."""
        if self.overlap is Overlap.ALLOW:
            return None
        timeout = self.overlap_timeout or self.expires or DEFAULT_OVERLAP_TIMEOUT
        return Guard(self.overlap, timeout.total_seconds())

    @property
    def identity(self) -> str:
        """What makes slots comparable: a changed identity means history is not replayed."""
        return self.schedule.spec

    def due_for(self, slot: datetime) -> datetime:
        """When a slot's run is due: the slot plus its jitter (the slot itself without one)."""
        return slot + self.jitter_for(slot) if self.jitter else slot

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
    amqp: AmqpTarget | None = None  # the AMQP destination of its entries that name none


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
        encode = _FINGERPRINT_JSON.encode
        for entry in sorted(self.entries.values(), key=attrgetter("name")):
            digest.update(encode(_entry_fields(entry)).encode())
        for queue in sorted(self.queues.values(), key=lambda q: q.name):
            amqp = f":{queue.amqp}" if queue.amqp else ""  # unset: hashed as it always was
            digest.update(f"{queue.name}:{queue.protocol}{amqp}".encode())
        object.__setattr__(self, "fingerprint", digest.hexdigest()[:16])


# json.dumps(..., sort_keys=True, default=str), without making an encoder per entry
_FINGERPRINT_JSON = json.JSONEncoder(sort_keys=True, default=str)


def _entry_fields(entry: Entry) -> dict[str, Any]:
    fields = {
        "name": entry.name,
        "task": entry.task,
        "schedule": entry.schedule.spec,
        "args": entry.args,
        "kwargs": dict(entry.kwargs),  # as JSON writes a dict, whatever the mapping
        "queue": entry.queue,
        "priority": entry.priority,
        "headers": dict(entry.headers),
        "enabled": entry.enabled,
        "jitter": entry.jitter.total_seconds(),
        "expires": entry.expires.total_seconds() if entry.expires else None,
        "missed": entry.missed.value,
        "max_catch_up": entry.max_catch_up,
        "misfire_grace": entry.misfire_grace.total_seconds(),
    }
    if entry.protocol not in (None, "beatd"):  # beatd's own format hashes as it always did
        fields["protocol"] = entry.protocol
    # the leader judges deadlines and failures: nodes that disagree on them should say so
    if entry.deadline is not None:  # unset, an entry hashes as it always did
        fields["deadline"] = entry.deadline.total_seconds()
    if entry.alert_after_failures is not None:
        fields["alert_after_failures"] = entry.alert_after_failures
    # the leader applies overlap and pauses after failures: unset, an entry hashes as before
    if entry.overlap is not Overlap.ALLOW:
        fields["overlap"] = entry.overlap.value
    if entry.overlap_timeout is not None:
        fields["overlap_timeout"] = entry.overlap_timeout.total_seconds()
    if entry.pause_after_failures is not None:
        fields["pause_after_failures"] = entry.pause_after_failures
    if entry.amqp is not None:  # where the runs go: nodes must agree on it
        fields["amqp"] = f"{entry.amqp.url} {entry.amqp.exchange} {entry.amqp.routing_key}"
    return fields


_PERIOD_PROBE = datetime(2001, 1, 1, tzinfo=UTC)


def nominal_period(schedule: Schedule) -> timedelta | None:
    """The shortest gap between runs, for defaults and sanity checks; None for a one-off."""
    if isinstance(schedule, WindowedSchedule):
        schedule = schedule.inner
    if isinstance(schedule, IntervalSchedule):
        return schedule.every
    if isinstance(schedule, OnceSchedule):
        return None
    assert isinstance(schedule, CronSchedule)
    fires = _first_fires(schedule, 8)
    return min((b - a for a, b in pairwise(fires)), default=None)


_MINUTE = timedelta(minutes=1)


def period_floor(schedule: Schedule) -> timedelta:
    """A bound `nominal_period` is never below (when not None), known without searching for
    fires. A cron expression without seconds fires at whole minutes of wall time, and every
    zone's offsets and transitions from 2001 (where `nominal_period` probes) are whole minutes
    too (tests/config/test_period_floor.py checks the installed tz database), so its fires are
    a minute apart or more."""
    if isinstance(schedule, WindowedSchedule):
        schedule = schedule.inner
    if isinstance(schedule, IntervalSchedule):
        return schedule.every
    if isinstance(schedule, CronSchedule) and not schedule.expression.has_seconds:
        return _MINUTE
    return timedelta(0)


def _first_fires(schedule: Schedule, count: int) -> list[datetime]:
    fires: list[datetime] = []
    t: datetime | None = _PERIOD_PROBE
    while t is not None and len(fires) < count:
        t = schedule.next_after(t)
        if t is not None:
            fires.append(t)
    return fires
