"""Dead letters as both ways in show, requeue and delete them: one JSON object per letter (what
`beatd dead list --json` prints and `GET /v1/dead-letters` returns), and a requeue or deletion
that the audit log records under who asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def delete_dead(store: Backend, run_ids: Sequence[str] | None, by: str) -> list[str]:
    """Delete the dead letters `run_ids` (all of them for None) for good; the ids deleted, in
    the order asked (an id no dead letter has is left out: the caller says so). Each deletion
    is recorded in the audit log under `by` and its entry, after it (a crash between the two
    leaves one letter deleted with no record). All of them are deleted one by one, as a requeue
    of all is, so a letter that arrives meanwhile is left for the next deletion."""
    asked = [letter.id for letter in store.dead_letters()] if run_ids is None else run_ids
    return [run_id for run_id in dict.fromkeys(asked) if delete_one(store, run_id, by)]


def delete_one(store: Backend, run_id: str, by: str) -> int:
    gone = store.delete_dead(run_id)
    if gone:
        store.record_audit(
            AuditRecord(
                id=new_audit_id(),
                at=backend_now(store),
                action="delete_dead",
                entry=run_id.rpartition("@")[0] or None,
                by=by,
                detail={"run_id": run_id, "deleted": gone},
            )
        )
    return gone
