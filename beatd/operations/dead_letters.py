"""Dead letters as both ways in show and requeue them: one JSON object per letter (what
`beatd dead list --json` prints and `GET /v1/dead-letters` returns), and a requeue that the
audit log records under who asked."""

from __future__ import annotations

import json
from typing import Any

from beatd.backends import Backend, DeadLetter
from beatd.controls import AuditRecord, new_audit_id
from beatd.operations.controls import backend_now
from beatd.timetext import stamp


def dead_letter_object(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter: its run id, task, queue, when it failed, how often it was delivered,
    why, and its message (the JSON, or the text when it is not JSON)."""
    try:
        message: Any = json.loads(letter.body)
    except ValueError:
        message = letter.body
    task = message.get("task", "?") if isinstance(message, dict) else "?"
    return {
        "id": letter.id,
        "task": task,
        "queue": letter.queue,
        "failed_at": stamp(letter.failed_at.replace(microsecond=0)),
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "message": message,
    }


def requeue_dead(store: Backend, run_id: str | None, by: str) -> int:
    """Put one dead letter (`run_id`) or all of them (None) back on their queues; how many
    went. Each requeued run is recorded in the audit log under `by` and its entry, after its
    requeue (a crash between the two leaves one run requeued with no record); all of them are
    requeued one by one, so `beatd audit ENTRY` shows each entry's requeue and a letter that
    arrives meanwhile is left for the next retry rather than requeued unrecorded."""
    if run_id is not None:
        return requeue_one(store, run_id, by)
    return sum(requeue_one(store, letter.id, by) for letter in store.dead_letters())


def requeue_one(store: Backend, run_id: str, by: str) -> int:
    moved = store.requeue_dead(run_id)
    if moved:
        store.record_audit(requeue_record(store, run_id, moved, by))
    return moved


def requeue_record(store: Backend, run_id: str, moved: int, by: str) -> AuditRecord:
    """The audit record of a dead letter's requeue, under the entry its run id names."""
    return AuditRecord(
        id=new_audit_id(),
        at=backend_now(store),
        action="requeue_dead",
        entry=run_id.rpartition("@")[0] or None,
        by=by,
        detail={"run_id": run_id, "requeued": moved},
    )
