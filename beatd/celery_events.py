"""Celery's task events as they travel on kombu's Redis transport, decoded, and what each one
means for beatd's run history. Nothing here imports celery or kombu: the format is written as
observed from Celery 5.7.0 / kombu 5.7.0 workers started with `-E` (docs/celery.md).

How they travel: a worker publishes its events to the exchange `celeryev`, which kombu's Redis
transport makes a fanout exchange on Redis pub/sub. With kombu's defaults (`fanout_prefix` and
`fanout_patterns` on) an event of type `task-started` goes to the channel
`/{db}.celeryev/task.started` (`{db}`: the broker URL's database number, since pub/sub channels
are not per database); with `fanout_patterns` off, to `/{db}.celeryev`. A worker whose event
loop buffers task events (the prefork pool, the default) sends them in batches to
`/{db}.celeryev/task.multi`.

What travels: the PUBLISH payload is kombu's message envelope, JSON: `body` (the event,
base64-encoded since `properties.body_encoding` is `base64`), `content-type`
(`application/json` with Celery's default `event_serializer`), `content-encoding` (`utf-8`),
`headers` and `properties`. The body is one event (a JSON object) or, for `task.multi`, a list
of them. An event carries `type`, `uuid` (the task id: beatd's run id), `hostname` (the
worker's node name, `celery@host`), `pid`, `timestamp` (the worker's clock, Unix time), and per
type: `exception` (task-failed, task-retried: the exception's repr), `expired` and `terminated`
(task-revoked).

On RabbitMQ (AMQP) `celeryev` is a topic exchange, and an event of type `task-started` is
published with the routing key `task.started` (`task.multi` for a batch). A receiver binds a
queue of its own with `task.#`, as Celery's `EventReceiver` binds one (with `#`), and each
message's body is the event (or the batch) itself, as JSON: its `content_type` property is
`application/json`, its `content_encoding` `utf-8` (`AmqpMessage`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from beatd.history import TIME_LIMIT, Ending
from beatd.outcomes import Outcome

EXCHANGE = "celeryev"  # Celery's event_exchange
TASK_ROUTING_KEY = "task.#"  # on AMQP: every task event, batches (`task.multi`) included
JSON = "application/json"  # Celery's default event_serializer
# The task events beatd records; a worker's own events (worker-heartbeat...) are not read.
RECEIVED, STARTED, SUCCEEDED = "task-received", "task-started", "task-succeeded"
FAILED, RETRIED, REVOKED = "task-failed", "task-retried", "task-revoked"
TASK_EVENTS = (RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REVOKED)
# Celery's time-limit exceptions: their failure is recorded with reason `time_limit`
TIME_LIMIT_ERRORS = frozenset({"TimeLimitExceeded", "SoftTimeLimitExceeded"})
REVOKED_REASON, EXPIRED_REASON = "revoked", "expired"  # the reason of an expired attempt
_REPR = re.compile(r"^([A-Za-z_][\w.]*)\((.*)\)$", re.DOTALL)
_RAISED = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Exceeded|Retry|Exit|Interrupt|Lost)): ?(.*)$"
)
_RETRY_OF = re.compile(r": ([A-Za-z_][\w.]*)\((.*)\)$", re.DOTALL)
# what Celery's events may name instead of the task's exception; the traceback says more
WRAPPERS = frozenset({"ExceptionWithTraceback", "Retry"})


def channel_patterns(db: int, exchange: str = EXCHANGE) -> tuple[str, ...]:
    """The pub/sub patterns (PSUBSCRIBE) that receive the task events of a kombu Redis broker on
    database `db`: the task channels of kombu's default layout, and the one channel of its
    layout without `fanout_patterns`. No message reaches both, so none arrives twice."""
    head = f"/{db}.{_glob_escape(exchange)}"
    return (f"{head}/task.*", head)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class Undecodable(ValueError):
    """A message on Celery's event channels that is not an event beatd can read."""


class TaskEvent(NamedTuple):
    """One Celery task event: the fields beatd records, never the task's arguments or result."""

    type: str  # one of TASK_EVENTS
    uuid: str  # the task id (beatd's run id for the runs it published)
    hostname: str  # the worker's node name, celery@host
    pid: int | None
    at: datetime  # the event's timestamp: the worker's clock
    exception: str = ""  # task-failed, task-retried: the exception's repr
    traceback: str = ""  # task-failed, task-retried: read for the type only, never kept
    expired: bool = False  # task-revoked: it came after its `expires`
    terminated: bool = False  # task-revoked: it was killed while running

    @property
    def host(self) -> str:
        """The host part of the worker's node name (`celery@host` -> `host`)."""
        return self.hostname.rpartition("@")[2]


class AmqpMessage(NamedTuple):
    """A message from Celery's event exchange on AMQP: its body as delivered and the two
    properties that say how to read it."""

    body: bytes
    content_type: str | None
    content_encoding: str | None


# What an event source hands over: a kombu envelope (Redis pub/sub) or an AMQP message.
Payload = bytes | str | AmqpMessage


def decode(payload: Payload) -> list[TaskEvent]:
    """The task events of one message on Celery's event channels, in the order the worker sent
    them; other events (worker-heartbeat...) are left out. Raises `Undecodable` (with what was
    wrong) for a message that is not a kombu envelope (Redis) or an AMQP message of JSON
    events."""
    if isinstance(payload, AmqpMessage):
        body = _amqp_body(payload)
    else:
        try:
            envelope = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Undecodable(f"the message is not a JSON kombu envelope ({exc})") from None
        body = _body(envelope)
    items = body if isinstance(body, list) else [body]
    return [event for item in items if (event := _event(item)) is not None]


def _body(envelope: Any) -> Any:
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        raise Undecodable("the message is not a kombu envelope (no `body` text)")
    _must_be_json(envelope.get("content-type"))
    raw: str = envelope["body"]
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    try:
        text = base64.b64decode(raw, validate=True).decode() if encoding == "base64" else raw
        return json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Undecodable(f"the event body is not {encoding or 'plain'} JSON ({exc})") from None


def _amqp_body(message: AmqpMessage) -> Any:
    _must_be_json(message.content_type)
    charset = message.content_encoding or "utf-8"
    try:
        return json.loads(message.body.decode(charset))
    except (LookupError, UnicodeDecodeError, ValueError) as exc:
        raise Undecodable(f"the event body is not {charset} JSON ({exc})") from None


def _must_be_json(content_type: object) -> None:
    if content_type != JSON:
        raise Undecodable(
            f"the event is encoded as {content_type!r}, not {JSON}: set Celery's "
            "event_serializer to json (its default)"
        )


def _event(item: Any) -> TaskEvent | None:
    if not isinstance(item, dict) or item.get("type") not in TASK_EVENTS:
        return None
    uuid, hostname, stamp = item.get("uuid"), item.get("hostname"), item.get("timestamp")
    if not isinstance(uuid, str) or not isinstance(hostname, str):
        raise Undecodable(f"a {item['type']} event without its uuid or hostname")
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        raise Undecodable(f"a {item['type']} event of task {uuid} without its timestamp")
    pid = item.get("pid")
    exception, traceback = item.get("exception"), item.get("traceback")
    return TaskEvent(
        item["type"],
        uuid,
        hostname,
        pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        datetime.fromtimestamp(stamp, UTC),
        exception if isinstance(exception, str) else "",
        traceback if isinstance(traceback, str) else "",
        item.get("expired") is True,
        item.get("terminated") is True,
    )


def split_exception(text: str, traceback: str = "") -> tuple[str, str]:
    """The failure an event reports as its exception's type name and message: from the
    exception's repr (`ValueError('boom')` -> `ValueError`, `boom`) or, when that names only
    Celery's wrapper (a time-limit kill, a retry in the solo pool), from the traceback's last
    `Type: message` line, and a retry's from what Celery's `Retry` says it retries for. A repr
    of another form is all message."""
    match = _REPR.match(text.strip())
    name, message = (match.group(1), _message(match.group(2))) if match else ("", text)
    if name.rpartition(".")[2] in WRAPPERS:
        found = _last_raised(traceback)
        if found is not None:
            name, message = found
    retried = _RETRY_OF.search(message) if name.rpartition(".")[2] == "Retry" else None
    if retried is not None:  # `Retry in 5s: KeyError('x')`: the task's own exception
        name, message = retried.group(1), _message(retried.group(2))
    return name.rpartition(".")[2], message


def _message(inner: str) -> str:
    """The message of a repr's arguments: a lone string as it reads, anything else as written."""
    try:
        value = ast.literal_eval(inner) if inner else ""
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return inner
    return value if isinstance(value, str) else inner


def _last_raised(traceback: str) -> tuple[str, str] | None:
    """The exception a Python traceback ends with: its header line's type and what follows."""
    lines = traceback.rstrip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _RAISED.match(lines[index])
        if match is not None:
            rest = [match.group(2), *lines[index + 1 :]]
            return match.group(1), "\n".join(rest).strip()
    return None


def ending_of(event: TaskEvent) -> Ending | None:
    """How an attempt ended, by the event that says so; None for received and started."""
    if event.type == SUCCEEDED:
        return Ending(Outcome.SUCCEEDED)
    if event.type in (FAILED, RETRIED):
        outcome = Outcome.FAILED if event.type == FAILED else Outcome.RETRIED
        error_type, message = split_exception(event.exception, event.traceback)
        reason = TIME_LIMIT if error_type in TIME_LIMIT_ERRORS else ""
        return Ending.failure(outcome, error_type, message, reason)
    if event.type == REVOKED:
        return Ending(Outcome.EXPIRED, EXPIRED_REASON if event.expired else REVOKED_REASON)
    return None


def may_be_beatds(task_id: str) -> bool:
    """Whether a task id can be one of beatd's run ids (`entry@slot`): Celery's own ids are
    UUIDs, which never hold an `@`, and are ignored without asking the backend."""
    return "@" in task_id


@dataclass
class CeleryEventStats:
    """What the leader's listener heard and did, since start, for metrics (beatd_celery_*)."""

    events: Counter[str] = field(default_factory=Counter)  # task events received, by type
    last_received_at: datetime | None = None  # when the last task event was received
    undecodable: int = 0  # messages on the event channels that could not be read
    recorded: int = 0  # events that changed the history
    write_errors: int = 0  # events lost because the history could not be written
    published: int = 0  # runs published in Celery's protocol while leading
    listening: bool = False  # subscribed now
    interruptions: int = 0  # times the source or the history failed and listening resumed
