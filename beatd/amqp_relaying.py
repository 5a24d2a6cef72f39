"""Which AMQP destinations the leader leads, and when its relay (beatd.amqp_relay) runs: an
observer of the scheduler loop."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable

from beatd.amqp_link import parse_amqp_url
from beatd.amqp_relay import AmqpRelay
from beatd.backends.base import QueueAdmin
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.config import Config, Entry
from beatd.errors import BackendError
from beatd.events import Adopted, EntriesChanged, Event, Stepped, SteppedDown, Stopped

log = logging.getLogger(__name__)


def relay_targets(config: Config) -> dict[str, set[tuple[str, str]]]:
    """Per broker (its URL without password), the (exchange, queue) pairs its entries use."""
    return grouped(t for entry in config.entries.values() if (t := entry_target(entry)))


Target = tuple[str, tuple[str, str]]  # a broker (URL without password), (exchange, queue)


def entry_target(entry: Entry) -> Target | None:
    """Where the relay publishes `entry`'s runs; None: it has no AMQP destination."""
    if entry.amqp is None:
        return None
    broker = parse_amqp_url(entry.amqp.url).shown
    return broker, (entry.amqp.exchange_for(entry.queue), entry.queue)


def grouped(targets: Iterable[Target]) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for broker, pair in targets:
        found.setdefault(broker, set()).add(pair)
    return found


class AmqpRelaying:
    """An observer of the scheduler loop: the relay runs while this node leads entries with
    AMQP destinations, from the files or at runtime (from each adoption, or the runtime change
    that brings the first, until it steps down or stops). Leading none, it relays the runs left
    in the outbox (each carries its broker) and stops once the outbox is empty; the leader
    looks again at each adoption and every `look_every` seconds (a trigger's or a migration's
    runs). With `outbox` (the scheduler's own backend, read on its thread), it looks there
    first, so a leader that never uses RabbitMQ opens no handle of the relay's."""

    def __init__(
        self, relay: AmqpRelay, outbox: QueueAdmin | None = None, look_every: float = 60.0
    ) -> None:
        self.relay = relay
        self.outbox = outbox
        self.look_every = look_every
        self._looked = -math.inf  # when it last looked while leading none (the relay's clock)
        self._targets: dict[str, Target] = {}  # per entry led with an AMQP destination
        self._uses: Counter[Target] = Counter()  # how many of those entries use each target

    def notify(self, event: Event) -> None:
        if isinstance(event, Adopted) and event.config is not None:
            led = event.led().items()
            self._targets = {name: t for name, entry in led if (t := entry_target(entry))}
            self._uses = Counter(self._targets.values())
            self._relay()
        elif isinstance(event, EntriesChanged):
            # a change costs work in proportion to it: the relay is told only of new targets
            # or targets no entry uses any more
            changed = [self._take(name, entry) for name, entry in event.changed.items()]
            if any(changed):
                self._relay()
        elif isinstance(event, Stepped):
            if event.status.leader and not self.relay.running and self._look_due():
                self._drain()
        elif isinstance(event, SteppedDown):
            self.relay.stop()
        elif isinstance(event, Stopped):  # done before the daemon closes the backend
            self.relay.stop(wait=self.relay.settings.timeout * 3)

    def _take(self, name: str, entry: Entry | None) -> bool:
        """Follow entry `name`'s target; whether a target came or went."""
        target = None if entry is None else entry_target(entry)
        old = self._targets.pop(name, None)
        if old is not None:
            self._uses[old] -= 1
        if target is not None:
            self._targets[name] = target
            self._uses[target] += 1
        if old is not None and self._uses[old] == 0:
            del self._uses[old]
            return True
        return target is not None and self._uses[target] == 1

    def _look_due(self) -> bool:
        now = self.relay.clock.monotonic()
        if now - self._looked < self.look_every:
            return False
        self._looked = now
        return True

    def _relay(self) -> None:
        if self._uses:
            self.relay.start(grouped(self._uses))
        else:
            self._looked = self.relay.clock.monotonic()
            self._drain()

    def _drain(self) -> None:
        """Relay the runs left in the outbox, if it holds any (one read)."""
        if self.outbox is not None:
            try:
                if not self.outbox.queue_depths().get(OUTBOX_QUEUE, 0):
                    self.relay.stop()
                    return
            except BackendError as exc:  # looked at again in `look_every`
                log.debug("cannot read the outbox's depth: %s", exc)
                return
        self.relay.start({}, drain=True)
