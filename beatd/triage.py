"""What the worker does with a claimed delivery, decided before anything runs.

Pure: `triage` takes the delivery, the registry, the delivery budget and `now`, and returns a
plain decision. It calls no backend and touches no pool, so every case has a table test. The
checks run in a fixed order, and the first that applies decides:

    unreadable      the backend could not decode the entry        -> Rejected (no message)
    undecodable     the body is not a valid run message           -> Rejected (no message)
    id mismatch     the entry's id differs from the body's id     -> Rejected
    over budget     delivered more often than max-deliveries      -> Rejected
    unknown task    no task of that name in this worker           -> Rejected
    expired         past its `expires_at`                         -> Expired
    otherwise                                                     -> Run
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beatd.backends.base import Delivery
from beatd.message import MessageError, RunMessage
from beatd.tasks import Registry, Task


@dataclass(frozen=True, slots=True)
class Run:
    """Start the task."""

    message: RunMessage
    task: Task[..., Any]


@dataclass(frozen=True, slots=True)
class Expired:
    """Acknowledge without running: nobody wants the run any more."""

    message: RunMessage


@dataclass(frozen=True, slots=True)
class Rejected:
    """Move to the dead-letter queue without running; `message` is None when unreadable."""

    message: RunMessage | None
    reason: str


Decision = Run | Expired | Rejected


def triage(delivery: Delivery, registry: Registry, max_deliveries: int, now: datetime) -> Decision:
    """Decide what to do with a claimed delivery (see the module docstring for the order)."""
    if delivery.unreadable:
        return Rejected(None, delivery.unreadable)
    try:
        message = RunMessage.from_json(delivery.body)
    except MessageError as exc:
        return Rejected(None, f"unreadable run message: {exc}")
    if message.id != delivery.id:  # which one would the logs, the task, a retry believe?
        reason = f"the queue entry's id {delivery.id!r} differs from its body's id {message.id!r}"
        return Rejected(message, reason)
    if delivery.deliveries > max_deliveries:
        reason = (
            f"delivered {delivery.deliveries} times without finishing (max-deliveries "
            f"{max_deliveries}): each worker or child that took it died"
        )
        return Rejected(message, reason)
    task = registry.get(message.task)
    if task is None:
        reason = (
            f"no task named {message.task!r} is registered in this worker: import the module "
            "that defines it with -A/--app or list it under imports: in a schedule file"
        )
        return Rejected(message, reason)
    if message.is_expired(now):
        return Expired(message)
    return Run(message, task)
