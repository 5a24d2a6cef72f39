"""Publishing: the planner's decisions to the backend, a batch at a time, each batch's state
writes and messages in one compare-and-set commit.

One commit is in flight while the next batch is decided, so the first runs of a burst go out
before the rest is decided. A commit the backend refused (`NotApplied`, `LeaseLost`) wrote
nothing: its slots are decided again. A commit whose outcome is unknown (`OutcomeUnknown`)
may have been applied: its runs are held in doubt and counted only once the persisted state
shows them applied; deciding the same slots again is safe, because the backend's
compare-and-set refuses them if the lost commit was applied after all. Messages are made by
one encoder per kind of destination (chosen by the destination's type), which makes one for
each entry at its first run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import NamedTuple, Protocol, TypeVar

from beatd import celery_protocol
from beatd.amqp_link import parse_amqp_url
from beatd.backends.base import (
    BeatdQueue,
    CeleryQueue,
    Controls,
    Destination,
    Lease,
    Outgoing,
    StateStore,
    StateWrite,
    destination_kind,
)
from beatd.celery_amqp import OUTBOX_QUEUE, outbox_run
from beatd.clock import Clock
from beatd.config import Entry
from beatd.controls import NO_CONTROL, EntryControl, HeldRun
from beatd.core import Decision, Planner, RunCounts
from beatd.errors import BackendError, LeaseLost, NotApplied
from beatd.events import Event, Published
from beatd.history import RunKind
from beatd.message import RunMessage, RunTemplate, format_slot, format_time, run_id
from beatd.state import EntryState

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")
T = TypeVar("T")
# a run published late was kept by its entry's `missed:` policy (run_once, catch_up): the
# history says it was caught up, not published on its schedule
SCHEDULED, CAUGHT_UP = RunKind.SCHEDULED, RunKind.CAUGHT_UP


class EntryEncoder(Protocol):
    """Makes one entry's run messages for its destination; made once per loaded entry, so
    that what is the same for every run (destination, template) is not looked up per run."""

    @property
    def entry(self) -> Entry:
        """The entry it was made for (a reloaded entry gets a new one)."""

    def encode(
        self, decision: Decision, published_at: datetime, stamp: str, into: list[Outgoing]
    ) -> None:
        """Append one `Outgoing` per run of `decision` to `into`; `stamp` is `published_at`
        formatted as messages carry it."""


class Encoder(Protocol):
    """Makes the messages for one kind of destination."""

    def for_entry(self, entry: Entry) -> EntryEncoder:
        """The encoder of `entry`'s runs, with its destination of this encoder's kind."""


class BeatdEncoder:
    """beatd's run message, rendered from a template made at an entry's first run and kept
    while the entry is loaded."""

    def for_entry(self, entry: Entry) -> EntryEncoder:
        template = RunTemplate(
            entry.name,
            entry.task,
            entry.queue,
            entry.args,
            entry.kwargs,
            entry.priority,
            entry.headers,
        )
        return _BeatdRuns(entry, BeatdQueue(entry.queue, entry.priority), template)


class _BeatdRuns(NamedTuple):
    entry: Entry
    destination: BeatdQueue
    template: RunTemplate

    def encode(
        self, decision: Decision, published_at: datetime, stamp: str, into: list[Outgoing]
    ) -> None:
        name, expires_after = self.entry.name, self.entry.expires
        expires = format_time(published_at + expires_after) if expires_after else None
        render, destination = self.template.render, self.destination
        for run in decision.runs:
            slot = run.slot
            kind = CAUGHT_UP if run.late else SCHEDULED
            body = render(format_slot(slot), stamp, expires, kind)
            into.append(Outgoing(name, run_id(name, slot), destination, body, slot, run.due, kind))


class CeleryEncoder:
    """Celery's kombu envelope, for Celery's own workers."""

    def __init__(self, node: str) -> None:
        self._origin = f"beatd@{node}"

    def for_entry(self, entry: Entry) -> EntryEncoder:
        return _CeleryRuns(entry, CeleryQueue(entry.queue, entry.priority), self._origin)


class _CeleryRuns(NamedTuple):
    entry: Entry
    destination: CeleryQueue
    origin: str

    def encode(
        self, decision: Decision, published_at: datetime, stamp: str, into: list[Outgoing]
    ) -> None:
        entry = self.entry
        for run in decision.runs:
            kind = CAUGHT_UP if run.late else SCHEDULED
            message = celery_message(
                entry, run_id(entry.name, run.slot), run.slot, published_at, kind
            )
            body = celery_protocol.encode(message, origin=self.origin)
            outgoing = Outgoing(
                entry.name, message.id, self.destination, body, run.slot, run.due, kind
            )
            into.append(outgoing)


class AmqpEncoder:
    """Celery's AMQP message, kept in the outbox for the leader's relay (beatd.amqp_relay)."""

    def __init__(self, node: str) -> None:
        self._origin = f"beatd@{node}"

    def for_entry(self, entry: Entry) -> EntryEncoder:
        return _AmqpRuns(entry, BeatdQueue(OUTBOX_QUEUE, entry.priority), self._origin)


class _AmqpRuns(NamedTuple):
    entry: Entry
    destination: BeatdQueue
    origin: str

    def encode(
        self, decision: Decision, published_at: datetime, stamp: str, into: list[Outgoing]
    ) -> None:
        for run in decision.runs:
            kind = CAUGHT_UP if run.late else SCHEDULED
            message = celery_message(
                self.entry, run_id(self.entry.name, run.slot), run.slot, published_at, kind
            )
            body = amqp_body(self.entry, message, self.origin)
            into.append(
                Outgoing(
                    self.entry.name, message.id, self.destination, body, run.slot, run.due, kind
                )
            )


def celery_message(
    entry: Entry, id: str, slot: datetime, published_at: datetime, kind: RunKind
) -> RunMessage:
    """The message of one run of `entry`, as Celery's encoders read it."""
    return RunMessage(
        id=id,
        task=entry.task,
        entry=entry.name,
        scheduled_for=slot,
        published_at=published_at,
        queue=entry.queue,
        args=entry.args,
        kwargs=entry.kwargs,
        expires_at=published_at + entry.expires if entry.expires else None,
        priority=entry.priority,
        headers=entry.headers,
        kind=kind,
    )


def amqp_body(entry: Entry, message: RunMessage, origin: str) -> str:
    """The outbox text of `message`, routed as `entry.amqp` says."""
    target = entry.amqp
    assert target is not None
    broker = parse_amqp_url(target.url).shown  # one spelling per broker: the relay's key
    exchange, key = target.exchange_for(entry.queue), target.routing_key_for(entry.queue)
    return outbox_run(message, origin, broker, exchange, key).encode()


class Round(NamedTuple):
    """What a round of publishing did: whether the backend was asked, the run counts before
    it (for its log line), and the lost lease that ended it early, if it did."""

    asked: bool
    counts_before: dict[str, int]
    lease_lost: LeaseLost | None


@dataclass(frozen=True, slots=True)
class _Sent:
    batch: list[Decision]
    published_at: datetime
    outcome: Callable[[], set[str]]


class Publisher:
    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        node: str,
        batch_size: int,
        emit: Callable[[Event], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.batch_size = batch_size
        self.counts = RunCounts()
        self._emit = emit
        self._encoders: dict[type[Destination], Encoder] = {
            BeatdQueue: BeatdEncoder(),
            CeleryQueue: CeleryEncoder(node),
        }
        self._amqp = AmqpEncoder(node)
        self._by_entry: dict[str, EntryEncoder] = {}  # made at an entry's first run
        # decisions whose commit's outcome was lost (a timeout after sending): counted once the
        # persisted state shows whether they were applied
        self.in_doubt: dict[str, tuple[Decision, datetime]] = {}
        self.readopt = False  # an entry could not be resynced: adopt the configuration again
        # renews the lease when due (`Leadership.keep_alive`; LeaseLost when gone), called
        # between a round's batches: a restart's catch-up may hold tens of thousands due at once
        self.keep_alive: Callable[[], None] = lambda: None
        # the backend's controls (None: a backend without them); read when resyncing
        self.controls: Controls | None = None
        self.busy_marks_dropped: Counter[str] = Counter()  # stale marks published over

    def publish(self, planner: Planner, lease: Lease) -> Round:
        """Publish what is due, a batch at a time, with one batch's commit in flight: the next
        batch is decided while the backend works on the last. A lost lease ends the round (and
        is in the answer); other backend errors are raised."""
        before = self.counts.totals()
        sent: _Sent | None = None  # committed, outcome not yet read
        batch: list[Decision] = []  # decided, not yet sent
        asked = False
        try:
            for batch in chunks(planner.decide_due(self.clock.now()), self.batch_size):
                asked = True
                published_at = self.clock.now()
                messages = self.messages(batch, published_at)
                writes = [
                    StateWrite(d.state, horizon(d.previous), d.missed)
                    if d.at is None  # no guard: nothing to check or hold
                    else self._guarded(d, published_at)
                    for d in batch
                ]
                if sent is not None:
                    last, sent = sent, None
                    self._conclude(planner, last)
                self.keep_alive()  # nothing in flight here: a LeaseLost releases `batch`
                outcome = self.store.send_commit(lease, writes, messages)
                sent = _Sent(batch, published_at, outcome)
                batch = []
            if sent is not None:
                last, sent = sent, None
                self._conclude(planner, last)
        except LeaseLost as exc:
            planner.release(batch)
            return Round(asked, before, exc)
        except BackendError:
            planner.release(batch)
            raise
        except BaseException:
            if sent is not None:  # a fault of ours while deciding: still read what was sent
                with suppress(BackendError):
                    self._conclude(planner, sent)
            raise
        return Round(asked, before, None)

    def messages(
        self, batch: list[Decision], published_at: datetime, into: list[Outgoing] | None = None
    ) -> list[Outgoing]:
        stamp = format_time(published_at)
        messages: list[Outgoing] = [] if into is None else into
        by_entry = self._by_entry
        for decision in batch:
            if decision.runs:
                entry = decision.entry
                encoder = by_entry.get(entry.name)
                if encoder is None or encoder.entry is not entry:
                    encoder = self._encoder(entry)
                encoder.encode(decision, published_at, stamp, messages)
        return messages

    def _guarded(self, decision: Decision, published_at: datetime) -> StateWrite:
        """The write of a decision under an overlap rule: what it assumed, and its held run
        encoded now (published as it is when the busy run ends)."""
        held: HeldRun | None = None
        if decision.hold is not None:
            run = decision.hold
            outgoing: list[Outgoing] = []
            self.messages([decision._replace(runs=(run,))], published_at, outgoing)
            (message,) = outgoing
            held = HeldRun(
                message.id,
                run.slot,
                run.due,
                CAUGHT_UP,  # published late, when the busy run ends
                message.destination.queue,
                message.body,
                celery=isinstance(message.destination, CeleryQueue),
                priority=message.destination.priority,
            )
        previous = horizon(decision.previous)
        return StateWrite(
            decision.state, previous, decision.missed, decision.guard, decision.busy, held
        )

    def _encoder(self, entry: Entry) -> EntryEncoder:
        """The encoder of the entry's destination kind, for this entry."""
        kind = self._amqp if entry.amqp else self._encoders[destination_kind(entry.protocol)]
        encoder = kind.for_entry(entry)
        self._by_entry[entry.name] = encoder
        return encoder

    def forget(self) -> None:
        """The configuration was reloaded: each entry's encoder is made again."""
        self._by_entry.clear()

    def _conclude(self, planner: Planner, sent: _Sent) -> None:
        """Wait for a batch's commit, then move its entries on (or resync the rejected)."""
        try:
            rejected = sent.outcome()
        except (LeaseLost, NotApplied):
            planner.release(sent.batch)  # refused: nothing was written
            raise
        except BackendError:
            # Maybe applied, maybe not: the same slots are decided again, and the backend's
            # compare-and-set refuses them if the lost commit was applied after all.
            for decision in sent.batch:
                self.in_doubt[decision.entry.name] = (decision, sent.published_at)
            planner.release(sent.batch)
            raise
        done = [d for d in sent.batch if d.entry.name not in rejected] if rejected else sent.batch
        planner.settle(done)
        self.account(done, sent.published_at)
        if self.in_doubt:
            for decision in done:
                self.in_doubt.pop(decision.entry.name, None)
        if rejected:
            try:
                self.resync(planner, rejected)
            except BackendError:
                self.readopt = True  # the rejected entries are read again when adopting
                raise

    def account(self, decisions: list[Decision], published_at: datetime) -> None:
        """Count runs the backend now holds (and missed slots); tell the observers."""
        if not decisions:
            return
        for decision in decisions:
            self.counts.add(decision)
            if decision.stale is not None:
                self._dropped(decision)
        if log.isEnabledFor(logging.DEBUG):
            for decision in decisions:
                _log_decision(decision)
        self._emit(Published(published_at, decisions))

    def _dropped(self, decision: Decision) -> None:
        stale = decision.stale
        assert stale is not None
        name = decision.entry.name
        self.busy_marks_dropped[name] += 1
        fields = {"entry": name, "run": stale.run_id, "since": format_slot(stale.since)}
        log.warning(
            "busy mark dropped entry=%(entry)s run=%(run)s since=%(since)s: older than the "
            "entry's overlap_timeout, so its next run was published beside it",
            fields,
            extra=fields,
        )

    def resync(self, planner: Planner, names: set[str]) -> None:
        """Entries whose persisted state (or control: a pause, a busy mark) was not what a
        decision expected: continue from the backend's, or adopt the configuration again where
        there is none to continue."""
        states = self.store.states_of(sorted(names))
        controls = self.controls.load_controls(sorted(names)) if self.controls else None
        now = self.clock.now()
        ours = {name for name in names if name in self.in_doubt}  # a lost commit of our own
        self.resolve_doubts(states, names)
        for name in sorted(names):
            control = controls.get(name, NO_CONTROL) if controls is not None else None
            if name in ours:
                pass
            elif _busy_run_ended(planner, name, states.get(name), control):
                # the usual end of a run under overlap: its final step cleared the busy mark
                # the planner still held: not trouble, only a decision to make again
                log.debug("entry=%s: its busy run ended; deciding again", name)
            else:
                log.warning(
                    "entry=%s: persisted state or control (a pause, a busy run) differs from "
                    "ours; resyncing",
                    name,
                )
            if not planner.resync(states.get(name), name, control, now):
                self.readopt = True

    def resolve_doubts(self, states: Mapping[str, EntryState], names: Iterable[str]) -> None:
        """Count the runs of a lost commit that the backend shows applied; forget the rest."""
        for name in names:
            doubt = self.in_doubt.pop(name, None)
            if doubt is not None and states.get(name) == doubt[0].state:
                self.account([doubt[0]], doubt[1])

    def log_round(self, planner: Planner, before: dict[str, int]) -> None:
        """One line for a round that had anything due: published, late, missed, next due."""
        after = self.counts.totals()
        if after["due"] == before["due"]:
            return
        nxt = planner.next_wake()
        summary = {
            "published": after["published"] - before["published"],
            "late": after["late"] - before["late"],
            "missed": after["due"] - after["published"] - before["due"] + before["published"],
            "next_due": format_slot(nxt) if nxt else "never",
        }
        log.info(
            "published=%(published)d late=%(late)d missed=%(missed)d next_due=%(next_due)s",
            summary,
            extra=summary,  # as fields of their own, for --log-format json
        )


def _busy_run_ended(
    planner: Planner, name: str, state: EntryState | None, control: EntryControl | None
) -> bool:
    """Whether the only difference from what the planner knows is that the entry's busy run
    ended (its busy mark cleared by the run's final step, or replaced by the held run that step
    published): the horizon and the pause are as the planner has them."""
    known = planner.control(name)
    if control is None or known is None or known.busy is None:
        return False
    same_place = state is not None and state == planner.state(name)
    busy_moved = control.busy is None or control.busy.run_id != known.busy.run_id
    return same_place and busy_moved and control.pause == known.pause


def _log_decision(decision: Decision) -> None:
    for run in decision.runs:
        fields = {
            "entry": run.entry.name,
            "slot": format_slot(run.slot),
            "due": run.due.isoformat(),
            "late": run.late,
        }
        log.debug(
            "publish entry=%(entry)s slot=%(slot)s due=%(due)s late=%(late)s",
            fields,
            extra=fields,
        )
    for missed in decision.missed:
        fields = {"entry": missed.entry, "reason": str(missed.reason), "count": missed.total}
        log.debug("missed entry=%(entry)s reason=%(reason)s count=%(count)d", fields, extra=fields)


def chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(items, size)):
        yield batch


def horizon(state: EntryState | None) -> datetime | None:
    return state.last_slot if state is not None else None


def encode_run(
    entry: Entry,
    id: str,
    slot: datetime,
    published_at: datetime,
    kind: RunKind,
    node: str,
    audit: str | None = None,
) -> Outgoing:
    """One run of `entry` outside the scheduler's loop (`beatd trigger`, `beatd backfill`),
    encoded as the scheduler's encoder for its destination writes a scheduled one, with its
    own id and kind. A backfilled slot is due at its jitter, as it would have been; a manual run
    (slot: the trigger's second) is due at once."""
    message = celery_message(entry, id, slot, published_at, kind)
    due = entry.due_for(slot) if kind is RunKind.BACKFILL else slot
    if entry.amqp:
        outbox = BeatdQueue(OUTBOX_QUEUE, entry.priority)
        body = amqp_body(entry, message, f"beatd@{node}")
        return Outgoing(entry.name, id, outbox, body, slot, due, kind, audit)
    if destination_kind(entry.protocol) is CeleryQueue:
        body = celery_protocol.encode(message, origin=f"beatd@{node}")
        celery = CeleryQueue(entry.queue, entry.priority)
        return Outgoing(entry.name, id, celery, body, slot, due, kind, audit)
    ours = BeatdQueue(entry.queue, entry.priority)
    return Outgoing(entry.name, id, ours, message.to_json(), slot, due, kind, audit)
