"""The worker's triage of a claimed delivery: pure table tests, no backend and no pool."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from beatd.backends.base import Delivery
from beatd.message import MessageError, RunMessage
from beatd.tasks import Registry, Task
from beatd.triage import Decision, Expired, Rejected, Run, triage

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
BUDGET = 5


def add(a: int, b: int) -> int:
    return a + b


ADD = Task("jobs.add", add)
REGISTRY = Registry()
REGISTRY.register(ADD)
MESSAGE = RunMessage("sum@1", "jobs.add", "sum", NOW, NOW, "default", (1, 2))


def delivery(
    message: RunMessage | None = MESSAGE,
    *,
    body: str | None = None,
    id: str = "sum@1",
    deliveries: int = 1,
    unreadable: str = "",
) -> Delivery:
    text = body if body is not None else message.to_json() if message else ""
    return Delivery(id, "default", text, deliveries, "receipt", unreadable)


def undecodable(body: str) -> str:
    """The reason for a body that is no run message, built from the message module's words."""
    with pytest.raises(MessageError) as caught:
        RunMessage.from_json(body)
    return f"unreadable run message: {caught.value}"


UNKNOWN = replace(MESSAGE, task="jobs.nowhere")
EXPIRED = replace(MESSAGE, expires_at=NOW)
LATER = replace(MESSAGE, expires_at=NOW + timedelta(seconds=1))
CASES: list[tuple[str, Delivery, Decision]] = [
    ("runs", delivery(), Run(MESSAGE, ADD)),
    ("runs_on_its_last_delivery", delivery(deliveries=BUDGET), Run(MESSAGE, ADD)),
    ("runs_before_it_expires", delivery(LATER), Run(LATER, ADD)),
    (
        "unreadable_entry",
        delivery(None, unreadable="the queue entry has no body field"),
        Rejected(None, "the queue entry has no body field"),
    ),
    ("body_not_json", delivery(body="{nope"), Rejected(None, undecodable("{nope"))),
    ("body_not_a_message", delivery(body="[1, 2]"), Rejected(None, undecodable("[1, 2]"))),
    (
        "id_mismatch",
        delivery(id="other@1"),
        Rejected(MESSAGE, "the queue entry's id 'other@1' differs from its body's id 'sum@1'"),
    ),
    (
        "over_delivery_budget",
        delivery(deliveries=BUDGET + 1),
        Rejected(
            MESSAGE,
            "delivered 6 times without finishing (max-deliveries 5): each worker or child "
            "that took it died",
        ),
    ),
    (
        "unknown_task",
        delivery(UNKNOWN),
        Rejected(
            UNKNOWN,
            "no task named 'jobs.nowhere' is registered in this worker: import the module that "
            "defines it with -A/--app or list it under imports: in a schedule file",
        ),
    ),
    ("expired_at_now", delivery(EXPIRED), Expired(EXPIRED)),
    (
        "over_budget_before_unknown_task",
        delivery(UNKNOWN, deliveries=BUDGET + 1),
        Rejected(
            UNKNOWN,
            "delivered 6 times without finishing (max-deliveries 5): each worker or child "
            "that took it died",
        ),
    ),
    (
        "unknown_task_before_expired",
        delivery(replace(EXPIRED, task="jobs.nowhere")),
        Rejected(
            replace(EXPIRED, task="jobs.nowhere"),
            "no task named 'jobs.nowhere' is registered in this worker: import the module that "
            "defines it with -A/--app or list it under imports: in a schedule file",
        ),
    ),
]


@pytest.mark.parametrize(("given", "decided"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_triage(given: Delivery, decided: Decision) -> None:
    assert triage(given, REGISTRY, BUDGET, NOW) == decided


def test_only_the_given_registry_counts() -> None:
    assert triage(delivery(), Registry(), BUDGET, NOW) == Rejected(
        MESSAGE,
        "no task named 'jobs.add' is registered in this worker: import the module that "
        "defines it with -A/--app or list it under imports: in a schedule file",
    )
