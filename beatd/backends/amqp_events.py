"""Hearing Celery's task events on RabbitMQ (`HearsCeleryEvents`), with pika (the `amqp` extra).

As Celery's own `EventReceiver` does, the listener declares a queue of its own, exclusive,
auto-delete and not durable (RabbitMQ removes it with the connection), binds it to the topic
exchange `celeryev` with `task.#` (every task event, batches included) and consumes it without
acknowledgements. The exchange is declared as Celery's workers declare it (a durable topic
exchange), so the listener can bind before any worker has started; an exchange of that name
with other settings is refused by RabbitMQ and reported. The queue holds at most `QUEUE_LIMIT`
messages (the oldest are dropped): a listener that stops reading, while the history cannot be
written, does not grow the broker's memory without bound.

The connection is used from the listener's thread only. A read waits at most the caller's
timeout; AMQP heartbeats (`HEARTBEAT` seconds unless the URL's `heartbeat` says otherwise) find
a broker that froze or vanished without closing the connection. Any error drops the
connection: the next call connects, declares and binds again.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from beatd.celery_events import EXCHANGE, TASK_ROUTING_KEY, AmqpMessage
from beatd.errors import BackendError, BeatdError, NotApplied

HEARTBEAT = 10  # seconds: a silent broker is given up after about twice this
CONNECT_TIMEOUT = 5.0  # seconds for the TCP connect, and for each socket operation
QUEUE_LIMIT = 10_000  # messages the listener's queue keeps; beyond, RabbitMQ drops the oldest
MAX_BATCH = 1000  # messages handed back by one call at most
QUEUE_PREFIX = "beatd.celeryev"  # the listener's queue: QUEUE_PREFIX.<random>

T = TypeVar("T")


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class AmqpCeleryEvents:
    """Celery's task events from RabbitMQ's event exchange (see the module doc)."""

    def __init__(self, url: str, *, exchange: str = EXCHANGE) -> None:
        self.parameters = _parameters(url)
        self.url = redact(url)
        self.exchange = exchange
        self.queue = ""  # the queue bound now ("" while not connected)
        self._connection: BlockingConnection | None = None
        self._heard: list[AmqpMessage] = []
        self._cancelled = False  # RabbitMQ cancelled the consumer (its queue was deleted)

    def celery_events(self, timeout: float) -> list[AmqpMessage]:
        if self._connection is None:
            self._connection = self._step("connect", self._subscribe)
        connection = self._connection
        try:
            return self._read(connection, time.monotonic() + timeout)
        except BackendError:
            self.stop_celery_events()
            raise

    def stop_celery_events(self) -> None:
        connection, self._connection = self._connection, None
        self.queue = ""
        self._heard = []
        self._cancelled = False
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    def _subscribe(self) -> BlockingConnection:
        """Connect, declare the exchange as Celery does and a queue of our own, bind, consume."""
        connection = pika.BlockingConnection(self.parameters)
        try:
            channel = connection.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True)
            queue = f"{QUEUE_PREFIX}.{uuid.uuid4().hex}"
            arguments = {"x-max-length": QUEUE_LIMIT}
            channel.queue_declare(
                queue, durable=False, exclusive=True, auto_delete=True, arguments=arguments
            )
            channel.queue_bind(queue, self.exchange, routing_key=TASK_ROUTING_KEY)
            channel.add_on_cancel_callback(self._on_cancel)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
        except BaseException:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
            raise
        self.queue = queue
        return connection

    def _on_message(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        self._heard.append(AmqpMessage(body, properties.content_type, properties.content_encoding))

    def _on_cancel(self, method: pika.frame.Method) -> None:
        self._cancelled = True

    def _read(self, connection: BlockingConnection, deadline: float) -> list[AmqpMessage]:
        """What arrives before `deadline` (returning at the first), then what is already there."""
        while not self._heard:
            if self._cancelled:
                raise NotApplied(f"{self.url}: celery events: queue {self.queue} was deleted")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._step("read", partial(connection.process_data_events, time_limit=left))
        while 0 < len(self._heard) < MAX_BATCH:
            before = len(self._heard)
            self._step("read", partial(connection.process_data_events, time_limit=0))
            if len(self._heard) == before:
                break
        found, self._heard = self._heard[:MAX_BATCH], self._heard[MAX_BATCH:]
        return found

    def _step(self, what: str, call: Callable[[], T]) -> T:
        """Run one pika call; its failure as beatd's: permanent when RabbitMQ refused what was
        asked (retrying cannot help until the setup is fixed), else transient."""
        try:
            return call()
        except pika.exceptions.ProbableAuthenticationError:
            raise BackendError(self._refused("refused the login")) from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise BackendError(self._refused("refused access to the virtual host")) from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise BackendError(self._channel_refused(exc.reply_code)) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise NotApplied(f"{self.url}: celery events: {what}: {_said(exc)}") from exc

    def _refused(self, what: str) -> str:
        return (
            f"{self.url}: RabbitMQ {what} of user {self.parameters.credentials.username!r}: "
            "Celery's task events are not heard and Celery runs stay unknown in the history; "
            "fix the user, password or virtual host in the AMQP URL (docs/celery.md)"
        )

    def _channel_refused(self, code: int) -> str:
        if code == 406:  # PRECONDITION_FAILED: an exchange of that name, declared otherwise
            return (
                f"{self.url}: the exchange {self.exchange!r} exists, but not as Celery declares "
                "it (a durable topic exchange): Celery's task events are not heard and Celery "
                "runs stay unknown in the history; delete it, or set Celery's event_exchange "
                "and beatd's to another name (docs/celery.md)"
            )
        return (
            f"{self.url}: RabbitMQ refused ({code}) to let user "
            f"{self.parameters.credentials.username!r} declare, bind and read a queue "
            f"{QUEUE_PREFIX}.* on the exchange {self.exchange!r}: Celery's task events are not "
            "heard and Celery runs stay unknown in the history; grant it configure, write and "
            f"read on '^({re.escape(QUEUE_PREFIX)}\\..*|{re.escape(self.exchange)})$' "
            "(docs/celery.md)"
        )


def _parameters(url: str) -> pika.URLParameters:
    """pika's connection settings from the URL, with beatd's timeouts where it names none."""
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise BeatdError(
            f"cannot hear Celery's task events at {redact(url)!r}: not an AMQP URL; use "
            "amqp://user:password@host:5672/vhost or amqps://..."
        )
    try:
        parameters = pika.URLParameters(url)
    except ValueError as exc:
        raise BeatdError(f"cannot read AMQP URL {redact(url)!r}: {exc}") from None
    named = parse_qs(urlsplit(url).query)
    if "heartbeat" not in named:
        parameters.heartbeat = HEARTBEAT
    if "socket_timeout" not in named:
        parameters.socket_timeout = CONNECT_TIMEOUT
    if "blocked_connection_timeout" not in named:
        parameters.blocked_connection_timeout = 2 * HEARTBEAT
    parameters.connection_attempts = 1  # the listener's backoff tries again
    return parameters


def _said(exc: BaseException) -> str:
    """What an error says, never empty: pika raises some without a message."""
    return str(exc) or type(exc).__name__
