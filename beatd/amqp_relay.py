"""The leader's relay from beatd's outbox to RabbitMQ: each run a Celery entry with an AMQP
destination published (beatd.celery_amqp) reaches RabbitMQ at least once.

The scheduler commits a run to the outbox (the work queue `amqp.outbox` of `--broker`) in the
same atomic step as its slot. The relay, a thread of the leader, claims the runs one at a time,
publishes each persistent (delivery mode 2) with `mandatory` on a channel in confirm mode, and
acknowledges (removes) it only after RabbitMQ's confirm. So:

- RabbitMQ unreachable: the claimed run is given back untouched and that broker is waited out
  with a backoff of its own; the outage is logged once per broker when it begins and once when
  it ends. Nothing is lost. Meanwhile the runs to other brokers go on: a run to a broker being
  waited out is set aside (given back after the pass; `skip_limit` claims per pass at most),
  so the relay reaches the runs behind it; when only such runs are ready, the oldest one's broker is
  tried again. A login RabbitMQ refuses (a wrong user, password or virtual host) is said as
  such, at ERROR, with what to fix; it is tried again the same way.
- Returned (no queue bound to the route, `mandatory`): the run stays in the outbox and is
  tried again after `unroutable_delay`, logged once per queue and counted; the runs of other
  queues go on meanwhile.
- The relay dies between the confirm and the removal (a crash, a lost leadership, a backend
  that failed the removal): the claim lapses after `visibility` and a relay publishes the run
  again, with the same task id (the run id). Such a second publish is counted
  (`beatd_amqp_republished_total`); a Celery worker runs it twice unless the task is
  idempotent. A publish whose connection was lost before its confirm counts the same way.
  `RelaySettings.stop_after_confirm` (BEATD_FAULT_POINT=relay-after-confirm, for tests) stops
  the process right there (SIGSTOP), once, so that a test can kill it at that very point.

beatd declares no queue or exchange: at each connection it checks the destinations passively
and warns of one that is missing (runs to it stay in the outbox until it exists).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from beatd.amqp_link import AmqpLink, AmqpUrlError, connect
from beatd.backends.base import Delivery, QueueAdmin, WorkQueue
from beatd.backoff import Backoff
from beatd.celery_amqp import OUTBOX_QUEUE, OutboxRun, RelayStats, UnreadableOutboxRun, decode
from beatd.clock import Clock
from beatd.errors import BackendError

log = logging.getLogger(__name__)

OUTAGE = "RabbitMQ at %s unreachable; runs wait in the outbox, retrying with backoff: %s"
REFUSED = (
    "RabbitMQ at %s refused the %s of user %r: runs to it wait in the outbox, tried again with "
    "backoff; fix the user, the password (--amqp-password, BEATD_AMQP_PASSWORD or the Celery "
    "config's broker_url) or the virtual host and its permissions (docs/celery.md)"
)
RECOVERED = "RabbitMQ at %s reachable again; relaying the outbox"
UNROUTABLE = (
    "run %s to queue %s returned by RabbitMQ at %s (exchange %r, routing key %r): no queue is "
    "bound to that route; it stays in the outbox and is tried again every %.0f s (said once "
    "per queue)"
)
DRAINED = (
    "relayed the %d run(s) left in the outbox (no entry this node leads sends to RabbitMQ); "
    "the outbox is empty, stopped relaying"
)
REPUBLISHED = "run %s published to RabbitMQ again (a claim lapsed before its removal)"
FAULT_POINT = (
    "fault point relay-after-confirm: run %s confirmed by RabbitMQ and not removed from the "
    "outbox yet; this process stops itself here (SIGSTOP)"
)
MISSING = (
    "%s %r does not exist on RabbitMQ at %s: beatd declares none, so runs to it stay in the "
    "outbox until the Celery workers (or the app) declare it"
)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    consumer: str = "amqp-relay"
    visibility: float = 30.0  # a claim lapses (and the run is published again) after this
    poll: float = 0.5  # how often an empty outbox is looked at again
    timeout: float = 5.0  # each socket step to RabbitMQ
    unroutable_delay: float = 10.0
    max_backoff: float = 5.0
    skip_limit: int = 100  # claims per pass at most (runs to brokers waited out set aside)
    # a fault point for tests: stop the process (SIGSTOP) after the first confirm, before the
    # removal, so a test kills it exactly there (BEATD_FAULT_POINT=relay-after-confirm)
    stop_after_confirm: bool = False


class Outbox(WorkQueue, QueueAdmin, Protocol):
    """What the relay needs of the backend holding the outbox."""


class _Unreachable(Exception):
    """The broker cannot be talked to now: give the run back and wait."""


class _Outages:
    """The brokers being waited out, each with a backoff of its own (said once per outage)."""

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum
        self._down: dict[str, tuple[Backoff, float]] = {}  # broker -> (backoff, next try)

    def __bool__(self) -> bool:
        return bool(self._down)

    def waiting(self, broker: str) -> bool:
        """Whether runs to `broker` are set aside now (down, its next try not yet due)."""
        down = self._down.get(broker)
        return down is not None and time.monotonic() < down[1]

    def failed(self, broker: str) -> bool:
        """Note a failure; whether it begins an outage."""
        backoff, _ = self._down.get(broker) or (Backoff(maximum=self.maximum), 0.0)
        began = not backoff.failing
        self._down[broker] = (backoff, time.monotonic() + backoff.failed())
        return began

    def ended(self, broker: str) -> bool:
        """Note a confirm; whether it ends an outage."""
        return self._down.pop(broker, None) is not None

    def clear(self) -> None:
        self._down.clear()


class _Link:
    """One broker's connection and confirm-mode channel, opened on first use."""

    def __init__(self, link: AmqpLink, timeout: float, targets: Iterable[tuple[str, str]]):
        self.link = link
        self.timeout = timeout
        self.targets = tuple(targets)  # (exchange, queue) to check passively
        self._connection: Any = None
        self._channel: Any = None

    def channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            self._connection = connect(self.link, timeout=self.timeout)
            self._check_destinations()
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _check_destinations(self) -> None:
        """Warn of each exchange and queue of the configuration the broker lacks (a passive
        declare: a missing one closes the channel it was asked on, so each gets its own)."""
        import pika.exceptions

        for kind, name in self._checked_names():
            channel = self._connection.channel()
            try:
                if kind == "exchange":
                    channel.exchange_declare(name, passive=True)
                else:
                    channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                log.warning(MISSING, kind, name, self.link.shown)
                continue
            channel.close()

    def _checked_names(self) -> list[tuple[str, str]]:
        names = {("exchange", e) for e, _ in self.targets if e}
        names |= {("queue", q) for _, q in self.targets}
        return sorted(names)

    def idle(self) -> None:
        """Let the connection answer heartbeats while there is nothing to publish."""
        if self._connection is not None and self._connection.is_open:
            self._connection.process_data_events(0)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:  # closing a broken connection: nothing left to save
                log.debug("closing the AMQP connection to %s: %s", self.link.shown, exc)


class AmqpRelay:
    """Publishes the outbox to RabbitMQ in a thread of its own (module doc)."""

    def __init__(
        self,
        open_outbox: Callable[[], Outbox],
        resolve: Callable[[str], AmqpLink],
        clock: Clock,
        settings: RelaySettings | None = None,
    ) -> None:
        # the outbox, opened at first need without run history: the relay's claims are not
        # attempts of the run, which Celery's workers make
        self._open_outbox = open_outbox
        self._outbox: Outbox | None = None
        self.resolve = resolve  # the outbox's broker URL (no password) -> how to log in
        self.clock = clock
        self.settings = settings or RelaySettings()
        self.stats = RelayStats()
        self.targets: dict[str, set[tuple[str, str]]] = {}  # broker -> (exchange, queue)
        self._links: dict[str, _Link] = {}
        self._told_unroutable: set[str] = set()
        self._deferred: dict[str, datetime] = {}  # returned runs waiting: id -> committed at
        self._in_doubt: set[str] = set()  # run ids whose publish lost its connection unconfirmed
        self._down = _Outages(self.settings.max_backoff)  # the brokers being waited out
        self._fault_done = False  # the fault point stops the process once
        self._drain = False  # leading no AMQP destination: stop once the outbox is empty
        self._relayed = 0  # runs confirmed since this start
        self._lock = threading.Lock()  # start() against a draining relay stopping itself
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self, targets: dict[str, set[tuple[str, str]]], *, drain: bool = False) -> None:
        """Relay, unless already relaying (idempotent); `targets` are checked at connection.
        `drain`: no entry led has an AMQP destination; relay the runs left in the outbox (a
        trigger's, a migration's, or those of entries since removed) and stop once it is
        empty."""
        with self._lock:
            self.targets = targets
            self._drain = drain
            if self.running:
                return
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(self.settings.timeout * 3)
            if self._thread.is_alive():
                log.warning("the AMQP relay did not stop in time; not relaying")
                return
        self._stop = threading.Event()
        self._relayed = 0
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="beatd-amqp-relay", daemon=True
        )
        self._thread.start()
        if drain:
            log.debug("looking for runs left in the outbox")
        else:
            log.info("relaying the outbox to RabbitMQ")

    def _still_draining(self) -> bool:
        return self._drain

    def _drained(self, stop: threading.Event) -> bool:
        """Draining and the outbox is empty: stop (said when it relayed any)."""
        if not self._drain or self.outbox.queue_depths().get(OUTBOX_QUEUE, 0):
            return False
        with self._lock:  # start() may have been called meanwhile: then relay on
            if not self._still_draining():
                return False
            stop.set()
        if self._relayed:
            log.info(DRAINED, self._relayed)
        outbox, self._outbox = self._outbox, None  # no handle kept while there is no need
        if outbox is not None:
            outbox.close()
        return True

    def stop(self, wait: float = 0.0) -> None:
        """Stop relaying (idempotent); `wait` seconds at most for the thread to end."""
        if self._thread is None:
            return
        if not self._stop.is_set():
            self._stop.set()
            log.info("stopped relaying the outbox to RabbitMQ")
        if wait > 0:
            self._thread.join(wait)

    def _run(self, stop: threading.Event) -> None:
        backoff = Backoff(maximum=self.settings.max_backoff)
        try:
            while not stop.is_set():
                try:
                    relayed = self.relay_one()
                    if not relayed and self._drained(stop):
                        break
                except (BackendError, _Unreachable):
                    stop.wait(backoff.failed())
                    continue
                except Exception:  # a bug must not stop the relay for good: say it, go on
                    log.exception("AMQP relay: unexpected error; relaying again")
                    self._close_all()
                    stop.wait(backoff.failed())
                    continue
                backoff.succeeded()
                if not relayed:
                    for link in list(self._links.values()):
                        self._idle(link)
                    stop.wait(self.settings.poll)
        finally:
            self._close_all()
            # a node that no longer relays says nothing waits: its last age would keep the
            # outbox alert firing on a follower
            self.stats.oldest_age = 0.0
            self._deferred.clear()
            self._down.clear()

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = self._open_outbox()
        return self._outbox

    def close(self) -> None:
        """Stop, and close the outbox's handle (the daemon ends)."""
        self.stop(wait=self.settings.timeout * 3)
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def relay_one(self) -> bool:
        """Publish one run; False when the outbox had none ready. Runs to brokers being waited
        out are set aside and given back (module doc). Raises BackendError (the outbox) and
        _Unreachable (the broker; the run was given back)."""
        aside: list[tuple[Delivery, OutboxRun]] = []
        failed: _Unreachable | None = None  # a broker that failed in this pass
        try:
            for _ in range(self.settings.skip_limit):  # claims in this pass, at most
                claimed = self._claim()
                if claimed is None:
                    break
                if isinstance(claimed, bool):
                    return claimed
                if self._down.waiting(claimed[1].broker):
                    aside.append(claimed)
                    continue
                try:
                    self._publish(*claimed)
                except _Unreachable as exc:  # given back: set aside when claimed again
                    failed = exc
                    continue
                return True
            if failed is not None:
                raise failed
            if not aside:
                return self._none_ready()
            # only runs to brokers being waited out: try the oldest one's broker again (the
            # relay's loop backs off between such passes)
            self._publish(*aside.pop(0))
            return True
        finally:
            for delivery, _ in aside:
                self.outbox.release(delivery)

    def _claim(self) -> tuple[Delivery, OutboxRun] | bool | None:
        """The next ready run; None: none; True: an unreadable one, dead-lettered."""
        settings = self.settings
        delivery = self.outbox.claim([OUTBOX_QUEUE], settings.consumer, settings.visibility)
        if delivery is None:
            return None
        try:
            run = decode(delivery.body) if not delivery.unreadable else None
        except UnreadableOutboxRun as exc:
            run, reason = None, str(exc)
        else:
            reason = delivery.unreadable
        if run is None:
            self.stats.unreadable += 1
            log.error("outbox message %s dead-lettered unread: %s", delivery.id, reason)
            self.outbox.dead_letter(delivery, reason)
            return True
        self.stats.oldest_age = self._age(run.published_at)
        return delivery, run

    def _none_ready(self) -> bool:
        """None ready: the oldest run is a returned one waiting, if any."""
        oldest = min(self._deferred.values(), default=None)
        self.stats.oldest_age = self._age(oldest) if oldest else 0.0
        return False

    def _age(self, committed: datetime) -> float:
        return max(0.0, (self.clock.now() - committed).total_seconds())

    def _publish(self, delivery: Delivery, run: OutboxRun) -> None:
        import pika
        import pika.exceptions as amqp

        try:
            link = self._link(run.broker)
        except AmqpUrlError as exc:  # a broker no reading of this beatd accepts: never sendable
            self.stats.unreadable += 1
            log.error("outbox run %s dead-lettered: %s", run.id, exc)
            self.outbox.dead_letter(delivery, str(exc))
            return
        sending = False  # once the publish began, a lost connection leaves it in doubt
        try:
            channel = link.channel()
            properties = pika.BasicProperties(**run.properties(self.clock.now()))
            sending = True
            channel.basic_publish(
                run.exchange, run.routing_key, run.body.encode(), properties, mandatory=True
            )
        except amqp.UnroutableError:
            self._unroutable(delivery, run, link)
            return
        except amqp.ChannelClosedByBroker as exc:  # e.g. the exchange does not exist
            if exc.reply_code != 404:
                raise self._unreachable(delivery, run, link, exc, sending) from None
            self._unroutable(delivery, run, link)
            return
        except amqp.NackError as exc:  # refused (e.g. a full queue that rejects): not sent
            raise self._unreachable(delivery, run, link, exc, False) from None
        except (amqp.ProbableAuthenticationError, amqp.ProbableAccessDeniedError) as exc:
            raise self._unreachable(delivery, run, link, exc, False) from None
        except (amqp.AMQPError, OSError) as exc:  # a lost or refused connection
            raise self._unreachable(delivery, run, link, exc, sending) from None
        self._confirmed(delivery, run, link)

    def _confirmed(self, delivery: Delivery, run: OutboxRun, link: _Link) -> None:
        if self._down.ended(run.broker):
            log.info(RECOVERED, link.link.shown)
        self.stats.connected = not self._down
        if delivery.deliveries > 1 or run.id in self._in_doubt:
            self.stats.republished += 1
            self._in_doubt.discard(run.id)
            log.info(REPUBLISHED, run.id)
        self.stats.published += 1
        self._relayed += 1
        self._told_unroutable.discard(run.queue)
        self._deferred.pop(run.id, None)
        if self.settings.stop_after_confirm and not self._fault_done:
            self._fault_done = True
            _stop_here(run)
        self.outbox.ack(delivery)  # a failure: the claim lapses, the run goes again (counted)

    def _unroutable(self, delivery: Delivery, run: OutboxRun, link: _Link) -> None:
        self.stats.unroutable[run.queue] += 1
        self._deferred[run.id] = run.published_at
        level = logging.DEBUG if run.queue in self._told_unroutable else logging.WARNING
        self._told_unroutable.add(run.queue)
        delay = self.settings.unroutable_delay
        log.log(level, UNROUTABLE, run.id, run.queue, link.link.shown, run.exchange,
                run.routing_key, delay)  # fmt: skip
        self.outbox.retry(delivery, delivery.body, delay)

    def _unreachable(
        self, delivery: Delivery, run: OutboxRun, link: _Link, exc: BaseException, sent: bool
    ) -> _Unreachable:
        """Give the run back, drop the connection, say so once per outage of its broker."""
        import pika.exceptions as amqp

        if sent:
            self._in_doubt.add(run.id)
        link.close()
        self.stats.connected = False
        began = self._down.failed(run.broker)
        shown = link.link.shown
        if not began:
            log.debug("RabbitMQ at %s still unreachable: %r", shown, exc)
        elif isinstance(exc, amqp.ProbableAuthenticationError):
            log.error(REFUSED, shown, "login", link.link.user)
        elif isinstance(exc, amqp.ProbableAccessDeniedError):
            log.error(REFUSED, shown, "virtual host access", link.link.user)
        else:
            log.warning(OUTAGE, shown, repr(exc))
        self.outbox.release(delivery)
        return _Unreachable(str(exc))

    def _link(self, broker: str) -> _Link:
        link = self._links.get(broker)
        if link is None:
            targets = self.targets.get(broker, set())
            link = _Link(self.resolve(broker), self.settings.timeout, targets)
            self._links[broker] = link
        return link

    def _idle(self, link: _Link) -> None:
        try:
            link.idle()
        except Exception as exc:  # a dead idle connection: the next publish reconnects
            log.debug("AMQP connection to %s lost while idle: %r", link.link.shown, exc)
            link.close()

    def _close_all(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        self.stats.connected = False


def _stop_here(run: OutboxRun) -> None:
    """The fault point relay-after-confirm: say so, then stop the whole process until a
    SIGCONT (it then goes on and removes the run) or, as tests do, a SIGKILL."""
    log.warning(FAULT_POINT, run.id)
    for handler in logging.getLogger().handlers:
        handler.flush()
    # sent to this thread, which then stops before its next instruction (a signal to the
    # process may be taken by another thread while this one goes on to remove the run)
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
