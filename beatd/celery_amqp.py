"""A run as a Celery task message (protocol 2) over AMQP, kept in beatd's outbox until the
leader's relay (beatd.amqp_relay) has RabbitMQ's confirm for it.

Celery's AMQP form is the Redis one (beatd.celery_protocol) without kombu's Redis envelope: the
same headers and body, the body sent as it is (JSON, utf-8), and AMQP properties for the rest:
`correlation_id` (the task id), `content_type`, `content_encoding`, `reply_to`, `priority` and
`delivery_mode` 2 (persistent). Expiry is as Celery sends it over AMQP: the `expires`
header, which a worker checks (it revokes a run received after it), and the `expiration`
property, the milliseconds left until then, computed when the relay publishes (0 once past:
RabbitMQ then drops the run at the queue unless a consumer takes it at once, and Celery's
worker revokes it if one does).

Priorities: AMQP's run the way beatd's do (higher is more urgent), so a beatd priority is sent
as it is; RabbitMQ caps it at the queue's `x-max-priority` (a queue without one ignores it), so
no two priorities swap places. A run without a priority is sent without one, as Celery does.

What the outbox holds is `OutboxRun` as JSON: the broker (its URL without password), the
exchange and routing key, and the message. `published_at` is when the run was committed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from beatd.celery_protocol import CONTENT_ENCODING, CONTENT_TYPE, task_body, task_headers
from beatd.message import RunMessage, format_time, parse_time

OUTBOX_QUEUE = "amqp.outbox"  # the beatd work queue the relay claims from
FORMAT = 1


@dataclass
class RelayStats:
    """What the relay did, for the metrics (beatd.metrics); beatd.amqp_relay keeps it."""

    published: int = 0  # runs RabbitMQ confirmed
    republished: int = 0  # of those, ones that may have been published before
    unroutable: Counter[str] = field(default_factory=Counter)  # returned runs, by queue
    unreadable: int = 0  # outbox messages dead-lettered unread
    connected: bool = False
    oldest_age: float = 0.0  # seconds since the last claimed run was committed; 0: empty


class UnreadableOutboxRun(ValueError):
    """An outbox message this beatd cannot read (another format, damaged)."""


@dataclass(frozen=True, slots=True)
class OutboxRun:
    """One run waiting in the outbox for its confirm."""

    id: str
    entry: str
    queue: str  # Celery's queue the route names (for logs and the unroutable counter)
    broker: str  # the broker's URL, no password (the relay's key to its connection)
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: str
    priority: int | None
    published_at: datetime

    def properties(self, now: datetime) -> dict[str, Any]:
        """The AMQP basic properties, by their pika names, for a publish at `now`."""
        properties: dict[str, Any] = {
            "content_type": CONTENT_TYPE,
            "content_encoding": CONTENT_ENCODING,
            "correlation_id": self.id,
            "reply_to": "",
            "delivery_mode": 2,
            "headers": self.headers,
        }
        if self.priority is not None:
            properties["priority"] = self.priority
        expires = self.headers.get("expires")
        if isinstance(expires, str):  # kombu's form: whole milliseconds, as text
            left = (datetime.fromisoformat(expires) - now).total_seconds()
            properties["expiration"] = str(int(max(0.0, left) * 1000))
        return properties

    def encode(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "id": self.id,
                "entry": self.entry,
                "queue": self.queue,
                "broker": self.broker,
                "exchange": self.exchange,
                "routing_key": self.routing_key,
                "headers": self.headers,
                "body": self.body,
                "priority": self.priority,
                "published_at": format_time(self.published_at),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


def outbox_run(
    message: RunMessage, origin: str, broker: str, exchange: str, routing_key: str
) -> OutboxRun:
    """The outbox form of `message`, to be published to `exchange` with `routing_key`."""
    return OutboxRun(
        id=message.id,
        entry=message.entry,
        queue=message.queue,
        broker=broker,
        exchange=exchange,
        routing_key=routing_key,
        headers=task_headers(message, origin),
        body=task_body(message),
        priority=message.priority,
        published_at=message.published_at,
    )


def decode(text: str) -> OutboxRun:
    """The outbox run `text` holds; UnreadableOutboxRun saying why it cannot be read."""
    try:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise UnreadableOutboxRun(
                f"outbox format {raw.get('format')!r}, this beatd reads {FORMAT}"
            )
        return OutboxRun(
            id=str(raw["id"]),
            entry=str(raw["entry"]),
            queue=str(raw["queue"]),
            broker=str(raw["broker"]),
            exchange=str(raw["exchange"]),
            routing_key=str(raw["routing_key"]),
            headers=dict(raw["headers"]),
            body=str(raw["body"]),
            priority=None if raw["priority"] is None else int(raw["priority"]),
            published_at=parse_time(raw["published_at"]),
        )
    except UnreadableOutboxRun:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableOutboxRun(f"not an outbox run: {type(exc).__name__}: {exc}") from None
