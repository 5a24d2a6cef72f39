"""The leader's ear for Celery's task events: the outcomes of the runs beatd published in
Celery's protocol, recorded in the run history as stock Celery workers report them.

`CeleryEventListener` is a thread that reads the events from a source that hears them
(`HearsCeleryEvents`: a Redis backend, or RabbitMQ's event exchange), decodes them
(beatd.celery_events) and writes each one for a run beatd published to the `RunHistory`:
task-received -> `run_received`, task-started -> `attempt_started` (consumer: the worker's node
name, its host and pid), task-succeeded, -failed, -retried and -revoked -> `attempt_ended`.
The times are the events' own (the worker's clock). Events for task ids beatd did not publish
write nothing: ids that cannot be beatd's (Celery's UUIDs) are not even looked up, and the
history ignores the others.

Events are pub/sub: those sent while no leader listens are lost, so such runs stay `unknown`
(docs/history.md). An outage of the source or of the history is waited out with backoff (the
subscription made again after the source's), logged once when it begins and once when it ends,
and counted (`CeleryEventStats.interruptions`). The source is read during the history's: events
heard but not yet written wait (up to `PENDING_LIMIT`) and are written on recovery, since every
history write is idempotent.

`CeleryEvents` is the scheduler loop's observer that runs the listener while this node leads a
configuration with Celery entries, and counts their published runs for the alert on workers
that send no events.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

from beatd.backends.base import CeleryQueue, HearsCeleryEvents, RunHistory, destination_kind
from beatd.backoff import Backoff
from beatd.celery_events import (
    RECEIVED,
    STARTED,
    CeleryEventStats,
    Payload,
    TaskEvent,
    Undecodable,
    decode,
    ending_of,
    may_be_beatds,
)
from beatd.clock import Clock
from beatd.config import Entry
from beatd.errors import BackendError, TransientBackendError
from beatd.events import Adopted, EntriesChanged, Event, Published, SteppedDown, Stopped

log = logging.getLogger(__name__)

PENDING_LIMIT = 10_000  # events heard and not yet written (an outage): beyond, the oldest go
SEEN_LIMIT = 10_000  # runs whose last attempt event is remembered, to drop repeats
STOP_WAIT = 10.0  # seconds to wait for a stopping listener before starting it again


class CeleryEventListener:
    """Reads Celery's task events in a thread of its own and records them (module doc)."""

    def __init__(
        self,
        source: HearsCeleryEvents,
        history: RunHistory,
        clock: Clock,
        *,
        poll: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.source = source
        self.history = history
        self.clock = clock
        self.poll = poll
        self.max_backoff = max_backoff
        self.stats = CeleryEventStats()
        self._pending: deque[TaskEvent] = deque()
        # per run, its last start or end heard: (ended, (type, hostname, timestamp))
        self._last: OrderedDict[str, tuple[bool, tuple[str, str, float]]] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said = ""  # the permanent error last logged in this outage

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Listen, unless already listening (idempotent)."""
        if self.running:
            return
        if self._thread is not None and self._thread.is_alive():  # stopping: let it finish
            self._thread.join(STOP_WAIT)
            if self._thread.is_alive():
                log.warning("the Celery event listener did not stop in time; not listening")
                return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="beatd-celery-events", daemon=True
        )
        self._thread.start()
        log.info("listening to Celery's task events on %s", self.source.url)

    def stop(self, wait: float = 0.0) -> None:
        """Stop listening (idempotent); `wait` seconds at most for the thread to end."""
        if self._thread is None:
            return
        if not self._stop.is_set():
            self._stop.set()
            log.info("stopped listening to Celery's task events")
        if wait > 0:
            self._thread.join(wait)

    def _run(self, stop: threading.Event) -> None:
        backoff = Backoff(maximum=self.max_backoff)
        try:
            while not stop.is_set():
                try:
                    self._listen_once()
                except BackendError as exc:
                    self._interrupted(backoff)
                    self._failed(exc, began=not backoff.failing)
                    stop.wait(backoff.failed())
                    continue
                except Exception:  # a bug must not silence the listener for good: say it, go on
                    self._interrupted(backoff)
                    log.exception("Celery task events: unexpected error; listening again")
                    self.source.stop_celery_events()
                    self.stats.listening = False
                    stop.wait(backoff.failed())
                    continue
                if backoff.failing:
                    log.info("hearing Celery's task events again on %s", self.source.url)
                    self._said = ""
                backoff.succeeded()
        finally:
            self.stats.listening = False
            self.source.stop_celery_events()

    def _listen_once(self) -> None:
        """Read what the source heard, then write it. The source is read even while the history
        fails (what was read waits), so that a subscription is not dropped for going unread: a
        RabbitMQ connection that misses its heartbeats, a Redis subscriber's output buffer."""
        try:
            payloads = self.source.celery_events(self.poll)
        except BaseException:
            self.stats.listening = False
            raise
        self.stats.listening = True
        self.handle(payloads)

    def _interrupted(self, backoff: Backoff) -> None:
        if not backoff.failing:
            self.stats.interruptions += 1

    def _failed(self, exc: BackendError, *, began: bool) -> None:
        """Log an outage once, when it begins; while it lasts, only a permanent error not said
        yet (what was found on trying again may need a fix)."""
        transient = isinstance(exc, TransientBackendError)
        if not began and (transient or str(exc) == self._said):
            log.debug("Celery task events: still failing: %s", exc)
            return
        if transient:
            log.warning(
                "Celery task events: unavailable, listening again with backoff (events sent "
                "meanwhile are lost: their runs stay unknown): %s",
                exc,
            )
        else:
            self._said = str(exc)
            log.error("Celery task events: %s", exc)

    def handle(self, payloads: Sequence[Payload]) -> None:
        """Decode what was heard and record the events of beatd's runs (raises the history's
        TransientBackendError; what was not written waits for the next `flush`)."""
        for payload in payloads:
            try:
                events = decode(payload)
            except Undecodable as exc:
                self.stats.undecodable += 1
                level = logging.WARNING if self.stats.undecodable == 1 else logging.DEBUG
                log.log(level, "ignored a message on Celery's event channels: %s", exc)
                continue
            if events:
                self.stats.last_received_at = self.clock.now()
            for event in events:
                self.stats.events[event.type] += 1
                if may_be_beatds(event.uuid) and self._first_time(event):
                    if len(self._pending) >= PENDING_LIMIT:
                        self._pending.popleft()
                        self.stats.write_errors += 1
                    self._pending.append(event)
        self.flush()

    def _first_time(self, event: TaskEvent) -> bool:
        """Whether the event says something new of its run: not a repeat of the run's last
        start or end (kombu may publish one twice), not older than it, nor a second end of an
        attempt (a worker reports a time-limit kill twice), which would otherwise be recorded
        as another attempt."""
        if event.type == RECEIVED:  # the history keeps the first one
            return True
        stamp = event.at.timestamp()
        key = (event.type, event.hostname, stamp)
        ended = event.type != STARTED
        last = self._last.get(event.uuid)
        if last is not None:
            last_ended, last_key = last
            if last_key == key or stamp < last_key[2] or (ended and last_ended):
                return False
        self._last[event.uuid] = (ended, key)
        self._last.move_to_end(event.uuid)
        if len(self._last) > SEEN_LIMIT:
            self._last.popitem(last=False)
        return True

    def flush(self) -> None:
        """Write the events waiting, oldest first; a transient error leaves the rest waiting."""
        while self._pending:
            event = self._pending[0]
            try:
                wrote = self._write(event)
            except TransientBackendError:
                raise
            except BackendError as exc:  # permanent: this event cannot be written
                self.stats.write_errors += 1
                log.error(
                    "Celery task event %s of %s not recorded: %s", event.type, event.uuid, exc
                )
                wrote = False
            self._pending.popleft()
            if wrote:
                self.stats.recorded += 1
                log.debug("recorded Celery %s of run %s", event.type, event.uuid)

    def _write(self, event: TaskEvent) -> bool:
        if event.type == RECEIVED:
            return self.history.run_received(event.uuid, event.hostname, event.at)
        if event.type == STARTED:
            return self.history.attempt_started(
                event.uuid, event.hostname, event.host, event.pid, event.at
            )
        ending = ending_of(event)
        assert ending is not None  # every other task event ends an attempt
        return self.history.attempt_ended(event.uuid, ending, event.at)


def is_celerys(entry: Entry) -> bool:
    """Whether `entry` is published in Celery's protocol, to Redis or (through the outbox) to
    RabbitMQ."""
    return destination_kind(entry.protocol) is CeleryQueue


def celery_entries(entries: Mapping[str, Entry]) -> set[str]:
    """The names of `entries` published in Celery's protocol."""
    return {name for name, entry in entries.items() if is_celerys(entry)}


class CeleryEvents:
    """An observer of the scheduler loop: the listener runs while this node leads Celery
    entries, from the files or at runtime (from each adoption, or the runtime change that brings
    the first, until it steps down, stops, or leads none), and the runs those entries publish
    are counted for the alert on workers that send no events."""

    def __init__(self, listener: CeleryEventListener) -> None:
        self.listener = listener
        self._entries: set[str] = set()

    def notify(self, event: Event) -> None:
        if isinstance(event, Adopted) and event.config is not None:
            self._entries = celery_entries(event.led())
            self._listen()
        elif isinstance(event, EntriesChanged):
            for name, entry in event.changed.items():
                if entry is not None and is_celerys(entry):
                    self._entries.add(name)
                else:
                    self._entries.discard(name)
            self._listen()
        elif isinstance(event, SteppedDown):
            self.listener.stop()
        elif isinstance(event, Stopped):  # unsubscribed before the daemon closes the backend
            self.listener.stop(wait=STOP_WAIT)
        elif isinstance(event, Published) and self._entries:
            entries = self._entries
            self.listener.stats.published += sum(
                len(d.runs) for d in event.decisions if d.entry.name in entries
            )

    def _listen(self) -> None:
        if self._entries:
            self.listener.start()  # idempotent
        else:
            self.listener.stop()
