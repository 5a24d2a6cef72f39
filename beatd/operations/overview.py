"""The overview the console's first page shows (`GET /v1/overview`, issue 19): the leader, the
nodes, the queues with their depth and how long their oldest run has waited, the dead letters,
the runs late, missed and failed in the last hour, and the entries overdue or failing.

The last hour's figures come from the run history by the backend's clock, so every node shows
the same numbers; they read at most `HISTORY_CAP` run and missed-slot records (bounded work on
every backend), and say `complete: false` when the hour held more. The overdue and failing
entries come from the node's entry index (beatd.entry_index)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from beatd.backends import Backend
from beatd.entry_index import EntryIndex
from beatd.history import FAILED_FINALLY, HistoryQuery, RunKind
from beatd.operations.controls import backend_now
from beatd.operations.status import node_rows
from beatd.timetext import stamp

LIST_CAP = 100  # names listed as overdue or failing, at most
HISTORY_CAP = 5000  # run records, and missed-slot records, read for the last hour at most
HOUR = timedelta(hours=1)


def overview(store: Backend, index: EntryIndex, now: datetime) -> dict[str, Any]:
    """The overview; the overdue and failing entries from `index` (none while it is built)."""
    info = store.leader()
    warnings: list[str] = []
    nodes = node_rows(store, info, warnings)
    server_now = backend_now(store)
    ready = index.ready.is_set()
    overdue = index.overdue(now) if ready else []
    failing = index.failing() if ready else []
    return {
        "now": stamp(now.replace(microsecond=0)),
        "leader": None if info is None else {"node": info.node, "epoch": info.epoch},
        "nodes": nodes if nodes is not None else [],
        "queues": queue_rows(store, server_now),
        "dead_letters": store.count_dead_letters(),
        "last_hour": last_hour(store, server_now),
        "index_ready": ready,
        "overdue": [r.name for r in overdue[:LIST_CAP]],
        "overdue_total": len(overdue),
        "failing": [r.name for r in failing[:LIST_CAP]],
        "failing_total": len(failing),
        "warnings": warnings,
    }


def queue_rows(store: Backend, server_now: datetime) -> list[dict[str, Any]]:
    """Each queue with messages: its depth (waiting or in flight) and the seconds its oldest
    waiting run has waited (None: none waits, all are in flight or delayed)."""
    depths = store.queue_depths()
    oldest = store.oldest_waiting()
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
