"""The overview the console's first page shows (`GET /v1/overview`, issue 19): the leader, the
nodes, the queues with their depth and how long their oldest run has waited, the dead letters,
the runs late, missed and failed in the last hour, and the entries overdue or failing.

The last hour's figures come from the run history by the backend's clock, so every node shows
the same numbers; they read at most `HISTORY_CAP` run and missed-slot records (bounded work on
every backend), and say `complete: false` when the hour held more. That read is the page's
dearest (a few hundred milliseconds at 100,000 entries), so a node makes it at most once every
`HOUR_FIGURES_TTL` seconds (`Kept`): figures of the last hour may be that much behind. The
queues' depths and oldest waiting runs (a pass over the queued messages on SQLite) are kept
`QUEUES_TTL` seconds; how long the oldest has waited is counted to the moment asked.
The overdue and failing entries come from the node's entry index (beatd.entry_index)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from beatd.backends import Backend
from beatd.entry_index import EntryIndex
from beatd.history import FAILED_FINALLY, HistoryQuery, RunKind
from beatd.operations.controls import backend_now
from beatd.operations.status import node_rows
from beatd.timetext import stamp

LIST_CAP = 100  # names listed as overdue or failing, at most
HISTORY_CAP = 5000  # run records, and missed-slot records, read for the last hour at most
HOUR = timedelta(hours=1)
HOUR_FIGURES_TTL = 10.0  # seconds, by the backend's clock, that the last hour's figures are kept
QUEUES_TTL = 2.0  # seconds, by the backend's clock, that the queues' depths and oldest are kept
T = TypeVar("T")
QueueReads = tuple[dict[str, int], dict[str, datetime]]


class Kept(Generic[T]):
    """What `read(store, server_now)` answers, read again once it is `ttl` seconds old by the
    backend's clock (or that clock went back): one read however often the overview is asked.
    Safe to share between request threads (two may read at once: both are right)."""

    def __init__(self, ttl: float, read: Callable[[Backend, datetime], T]) -> None:
        self.ttl = timedelta(seconds=ttl)
        self._read = read
        self._lock = threading.Lock()
        self._held: tuple[datetime, T] | None = None

    def get(self, store: Backend, server_now: datetime) -> T:
        with self._lock:
            held = self._held
        if held is not None and held[0] <= server_now < held[0] + self.ttl:
            return held[1]
        value = self._read(store, server_now)
        with self._lock:
            self._held = (server_now, value)
        return value


class Overviews:
    """What one API's overview requests share: the last hour's figures and the queues' reads,
    each kept a few seconds (`HOUR_FIGURES_TTL`, `QUEUES_TTL`)."""

    def __init__(self) -> None:
        self.hour: Kept[dict[str, Any]] = Kept(HOUR_FIGURES_TTL, last_hour)
        self.queues: Kept[QueueReads] = Kept(QUEUES_TTL, queue_reads)


def overview(
    store: Backend, index: EntryIndex, now: datetime, kept: Overviews | None = None
) -> dict[str, Any]:
    """The overview; the overdue and failing entries from `index` (none while it is built);
    the last hour's figures and the queues kept by `kept` (read afresh without it)."""
    info = store.leader()
    warnings: list[str] = []
    nodes = node_rows(store, info, warnings)
    server_now = backend_now(store)
    kept = kept or Overviews()
    ready = index.ready.is_set()
    overdue = index.overdue(now) if ready else []
    failing = index.failing() if ready else []
    return {
        "now": stamp(now.replace(microsecond=0)),
        "leader": None if info is None else {"node": info.node, "epoch": info.epoch},
        "nodes": nodes if nodes is not None else [],
        "queues": queue_rows(kept.queues.get(store, server_now), server_now),
        "dead_letters": store.count_dead_letters(),
        "last_hour": dict(kept.hour.get(store, server_now)),
        "index_ready": ready,
        "overdue": [r.name for r in overdue[:LIST_CAP]],
        "overdue_total": len(overdue),
        "failing": [r.name for r in failing[:LIST_CAP]],
        "failing_total": len(failing),
        "warnings": warnings,
    }


def queue_reads(store: Backend, _server_now: datetime) -> QueueReads:
    """Each queue's depth, and when its oldest waiting run became ready."""
    return store.queue_depths(), store.oldest_waiting()


def queue_rows(reads: QueueReads, server_now: datetime) -> list[dict[str, Any]]:
    """Each queue with messages: its depth (waiting or in flight) and the seconds its oldest
    waiting run has waited by `server_now` (None: none waits, all are in flight or delayed)."""
    depths, oldest = reads
    rows = []
    for name in sorted({*depths, *oldest}):
        since = oldest.get(name)
        waited = None if since is None else round(max(0.0, (server_now - since).total_seconds()), 3)
        rows.append({"name": name, "depth": depths.get(name, 0), "oldest_waiting_s": waited})
    return rows


def last_hour(store: Backend, server_now: datetime) -> dict[str, Any]:
    """Runs published in the hour before `server_now` that were late (published after their
    misfire grace: caught up) or ended failed or dead-lettered, and the slots missed in it."""
    since = server_now - HOUR
    runs = store.runs(HistoryQuery(since=since, limit=HISTORY_CAP))
    missed = store.missed(since=since, limit=HISTORY_CAP)
    return {
        "late": sum(1 for r in runs if r.kind == RunKind.CAUGHT_UP),
        "missed": sum(m.slots.total for m in missed),
        "failed": sum(1 for r in runs if r.status in FAILED_FINALLY),
        "complete": len(runs) < HISTORY_CAP and len(missed) < HISTORY_CAP,
    }
