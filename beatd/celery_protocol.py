"""A run as Celery task message protocol 2, laid out as kombu's Redis transport stores it.

The same `RunMessage` that beatd's own worker reads is encoded here for an unmodified Celery
worker (verified against Celery 5.7.0 / kombu 5.7.0 on Redis 7.0; docs/celery.md has the
field-by-field table). Nothing here imports celery or kombu: the format is written as documented.

Where it goes: kombu keeps a queue `Q` on Redis as lists, pushed at the left (LPUSH) and popped
at the right (BRPOP). Celery's priorities 0-9 are folded into four lists by kombu's default
`priority_steps` [0, 3, 6, 9]: 0-2 live in `Q` itself, 3-5 in `Q\\x06\\x163`, 6-8 in
`Q\\x06\\x166`, 9 in `Q\\x06\\x169`, and a worker asks them in that order, so on Redis 0 is the
highest priority. beatd's 0-9 runs the other way (9 highest): Celery priority = 9 - beatd
priority. A run without a priority is sent without one, which kombu reads as 0 (the queue's
own list), exactly as `celery beat` sends an entry without a priority option.
"""

from __future__ import annotations

import base64
import json
import uuid
from bisect import bisect
from datetime import UTC
from typing import Any

from beatd.message import RunMessage, format_time

SEPARATOR = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
BODY_ENCODING = "base64"  # kombu.transport.virtual.Channel.body_encoding
DEFAULT_QUEUE = "celery"  # Celery's task_default_queue
# headers Celery's protocol defines: a schedule's own headers cannot replace them
RESERVED_HEADERS = frozenset(
    (
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    )
)


def celery_priority(priority: int | None) -> int | None:
    """beatd's 0-9 (9 highest) as Celery's on Redis (0 highest); None stays unset."""
    return None if priority is None else 9 - priority


def from_celery_priority(priority: int) -> int:
    """A Celery priority (Redis: 0 highest) as beatd's; the mapping is its own inverse."""
    return 9 - priority


def list_name(queue: str, priority: int | None) -> str:
    """The Redis list kombu keeps messages of this beatd priority in (`_q_for_pri`)."""
    pri = celery_priority(priority) or 0
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, pri) - 1]
    return f"{queue}{SEPARATOR}{step}" if step else queue


def task_body(message: RunMessage) -> str:
    """Protocol 2's body, as JSON text: [args, kwargs, embed]."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([list(message.args), dict(message.kwargs), embed], ensure_ascii=False)


def task_headers(message: RunMessage, origin: str) -> dict[str, Any]:
    """Protocol 2's headers, with the schedule's own (which cannot replace Celery's) and
    beatd's (`beatd_entry`, `beatd_scheduled_for`, `beatd_published_at`, `beatd_kind`)."""
    expires = message.expires_at.astimezone(UTC).isoformat() if message.expires_at else None
    headers = {k: v for k, v in message.headers.items() if k not in RESERVED_HEADERS}
    headers.update(
        {
            "lang": "py",
            "task": message.task,
            "id": message.id,
            "shadow": None,
            "eta": None,
            "expires": expires,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": message.id,
            "parent_id": None,
            "argsrepr": repr(tuple(message.args)),
            "kwargsrepr": repr(dict(message.kwargs)),
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            "beatd_entry": message.entry,
            "beatd_scheduled_for": message.to_dict()["scheduled_for"],
            "beatd_published_at": format_time(message.published_at),
        }
    )
    if message.kind is not None:
        headers["beatd_kind"] = message.kind
    return headers


def envelope(message: RunMessage, origin: str) -> dict[str, Any]:
    """The JSON object kombu's Redis transport stores for one Celery task message."""
    body = task_body(message)
    headers = task_headers(message, origin)
    properties: dict[str, Any] = {
        "correlation_id": message.id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": message.queue},
        "priority": celery_priority(message.priority) or 0,
        "body_encoding": BODY_ENCODING,
        "delivery_tag": str(uuid.uuid4()),
    }
    if message.expires_at:
        ttl_ms = (message.expires_at - message.published_at).total_seconds() * 1000
        properties["expiration"] = str(max(0, round(ttl_ms)))
    return {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": headers,
        "properties": properties,
    }


def encode(message: RunMessage, origin: str) -> str:
    return json.dumps(envelope(message, origin), separators=(",", ":"), ensure_ascii=False)
