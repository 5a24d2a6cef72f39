"""The scheduler core: pure, clock-free decisions about which runs are due.

Given the entries, the persisted state of each entry and "now", `Planner.tick(now)` says what to
publish and what was missed, and `Planner.next_wake()` when to look again. Nothing here reads a
clock, sleeps or touches a backend: the loop in `beatd.scheduler` does, and tests drive this
object directly with made-up times.

A heap holds one item per entry, its next due time, so a tick costs work in proportion to the
runs that are due, not to the number of entries.

Every slot of every entry ends exactly once: published on time, published late (more than
`misfire_grace` after it was due), or missed with a reason from `MissReason`. Missed slots are
handed on as ranges (`beatd.history.MissedSlots`: first, last, how many), one per entry and
reason in a decision, never one per slot: a catch-up after a year of downtime is one record.

Operator controls (beatd.controls) are the planner's too: it holds each entry's `EntryControl`
(loaded at adoption, refreshed after a commit returned the entry and every few seconds). A slot
whose due time a pause covers ends missed (`paused`) under every `missed:` policy, and the
entry wakes when the pause ends; under `overlap: skip` a slot due while the entry's previous run
is busy ends missed (`overlap`), under `buffer_one` the newest is held (`Decision.hold`). Each
decision says what it assumed (`busy`), and the backend's commit refuses it if that was wrong;
the entry is then resynced and decided again. Entries without a control and with `overlap:
allow` take the same path as before, at the cost of one attribute test.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from beatd.config.model import Entry, MissedPolicy
from beatd.controls import NO_CONTROL, Busy, EntryControl, Guard, HeldRun, Pause
from beatd.history import MissedSlots, RunKind
from beatd.message import run_id
from beatd.schedules import IntervalSchedule, Schedule
from beatd.schedules.window import WindowedSchedule
from beatd.state import EntryState

_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)
_JUST_BEFORE = timedelta(microseconds=1)
PACE = 10_000  # entries `Planner.load` takes between two calls of its `pace`


class MissReason(StrEnum):
    SKIPPED = "skipped"  # missed while nobody published, and the policy does not run it
    BEYOND_CATCH_UP = "beyond_catch_up"  # catch_up, but older than the newest max_catch_up
    DISABLED = "disabled"  # the entry was disabled when the slot came
    STATE_LOST = "state_lost"  # the backend lost the entry's position (Redis restarted empty)
    PAUSED = "paused"  # an operator's pause covered its due time (`beatd pause`)
    OVERLAP = "overlap"  # due while the previous run was busy (overlap: skip, or held and replaced)


# Run and Decision are made for every run published, so they are named tuples:
# immutable like frozen dataclasses, at a third of the cost to create.


class Run(NamedTuple):
    """One slot to publish."""

    entry: Entry
    slot: datetime
    due: datetime  # the slot plus its jitter
    late: bool


class Decision(NamedTuple):
    """What to write for one entry, all or nothing: its runs and its new state.

    `previous` is the state this decision was computed from; a backend applies the decision only
    while the persisted state still matches it (a compare-and-set on the horizon).
    """

    entry: Entry
    previous: EntryState | None
    state: EntryState
    runs: tuple[Run, ...] = ()
    missed: tuple[MissedSlots, ...] = ()  # at most one range per reason
    following: datetime | None = None  # the entry's first slot after this decision
    # operator controls: the overlap rule, whether the entry was taken for busy, the run held
    # back (buffer_one), the stale busy mark published over, and when it was decided (set,
    # and only then, under a guard: one test tells a plain decision)
    guard: Guard | None = None
    busy: bool = False
    hold: Run | None = None
    stale: Busy | None = None
    at: datetime | None = None

    @property
    def due_count(self) -> int:
        return len(self.runs) + sum(m.total for m in self.missed)

    @property
    def previous_published(self) -> datetime | None:
        return self.previous.last_published if self.previous is not None else None


class Baseline(NamedTuple):
    """A state to persist before an entry's first decision (`Planner.put`), over `previous`."""

    state: EntryState
    previous: EntryState | None


def state_lost(entry: Entry, since: datetime, now: datetime, limit: int) -> Decision | None:
    """The slots of an entry in (since, now] that no node can account for any more: its
    position was lost with the backend's data. Counted as missed, never published (the old
    leader may have published some of them). At most `limit` are counted."""
    state = EntryState(entry.name, now, None, entry.identity)
    count, first = 0, entry.schedule.next_after(since)
    last = slot = first
    while slot is not None and slot <= now and count < limit:
        count += 1
        last, slot = slot, entry.schedule.next_after(slot)
    if not count:
        return None
    assert first is not None and last is not None
    missed = MissedSlots(entry.name, MissReason.STATE_LOST, first, last, count)
    return Decision(entry, None, state, missed=(missed,))


@dataclass(slots=True)
class _Gate:
    """An entry's control as the planner knows it, and the pauses lifted since: ended when the
    lift was seen, their slots stay paused (a resume publishes none of them)."""

    control: EntryControl = NO_CONTROL
    lifted: tuple[Pause, ...] = ()


@dataclass(slots=True)
class _Slot:
    entry: Entry
    state: EntryState
    next_slot: datetime | None = None
    # (next due time, name): this very tuple is in the heap; any other for the entry is stale
    item: tuple[datetime, str] | None = None
    # a control or a guard (decided by `_decide_gated`); None for the many entries with
    # neither, which stay as small and as fast as before
    gate: _Gate | None = None

    @property
    def control(self) -> EntryControl:
        return self.gate.control if self.gate is not None else NO_CONTROL

    @property
    def lifted(self) -> tuple[Pause, ...]:
        """The pauses lifted: as persisted (the backend's, kept while no leader ran) and as
        seen by this planner."""
        if self.gate is None:
            return ()
        return (*self.gate.control.lifted, *self.gate.lifted)

    def set_control(
        self, control: EntryControl, now: datetime | None, lifts: Sequence[datetime] = ()
    ) -> HeldRun | None:
        """Take `control` as the entry's; the held slot it no longer holds, if one left.
        `lifts`: when pauses were lifted, if known (a lifted pause ends at the first of them
        after it began, else `now`)."""
        old, lifted = self.control.pause, self.gate.lifted if self.gate is not None else ()
        held = self.control.held
        if old is not None and old != control.pause and now is not None:
            # it ended when it was lifted, if the caller knows when (a resume's audit record);
            # else when the change was seen
            end = min((t for t in lifts if old.at < t < now), default=now)
            if old.until is not None:
                end = min(old.until, end)
            if end > old.at:
                lifted = (*lifted, old._replace(until=end))
        gated = control != NO_CONTROL or bool(lifted) or self.entry.guard is not None
        self.gate = _Gate(control, lifted) if gated else None
        if held is None or held.kind == RunKind.MANUAL:  # a manual run is counted as triggered
            return None
        return held if control.held is None or control.held.run_id != held.run_id else None

    def forget_lifted(self, past: datetime) -> None:
        """Forget the lifted pauses that end at or before `past` (the entry is beyond them)."""
        if self.gate is not None and self.gate.lifted:
            self.gate.lifted = tuple(
                p for p in self.gate.lifted if p.until is None or p.until > past
            )

    def covering(self, due: datetime) -> Pause | None:
        """The pause (current or lifted) that covers a slot due then, if any."""
        pause = self.control.pause
        if pause is not None and pause.covers(due):
            return pause
        for lifted in self.lifted:
            if lifted.covers(due):
                return lifted
        return None

    @property
    def next_due(self) -> datetime | None:
        return self.item[0] if self.item is not None else None


class Departed(NamedTuple):
    """A slot `buffer_one` held that left its entry's control: published by a run's final
    outcome, or missed (replaced, or dropped under a pause). Its end is in the run history."""

    entry: Entry
    held: HeldRun


NextFires = dict[tuple[int, datetime], datetime | None]  # (id(schedule), after) -> next fire
Lifts = Sequence[datetime]  # when an entry's pauses were lifted (resume records' times)
LiftsByEntry = Mapping[str, Lifts]
NO_LIFTS: LiftsByEntry = MappingProxyType({})


class Planner:
    """Decides, tick by tick, what each entry publishes and misses."""

    def __init__(self, tick_budget: int | None = None, walk_limit: int | None = None) -> None:
        self._slots: dict[str, _Slot] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._departed: list[Departed] = []  # held slots that left a control, since last taken
        self.next_fire_computations = 0  # counted so tests can check a tick's cost
        # A tick stops taking entries once it has spent this many next-fire computations (about
        # 1.5 s), so catching up after long downtime never holds the loop past a lease renewal:
        # what is left is still due and is taken at the next tick.
        self.tick_budget = tick_budget or TICK_BUDGET
        self.walk_limit = walk_limit or WALK_LIMIT

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def entries(self) -> dict[str, Entry]:
        return {name: s.entry for name, s in self._slots.items()}

    def state(self, name: str) -> EntryState | None:
        slot = self._slots.get(name)
        return slot.state if slot else None

    def next_due(self, name: str) -> datetime | None:
        slot = self._slots.get(name)
        return slot.next_due if slot else None

    def load(
        self,
        entries: Mapping[str, Entry],
        states: Mapping[str, EntryState],
        now: datetime,
        controls: Mapping[str, EntryControl] | None = None,
        pace: Callable[[], None] | None = None,
    ) -> tuple[list[EntryState], list[str]]:
        """Take a (new) configuration, with every entry's state as persisted now.

        Returns the baseline states to persist, each over the state in `states` (entries new or
        with a changed schedule start from `now`, so history is not replayed), and the names of
        entries that were removed. `controls`: each entry's control as persisted (None: keep
        the ones known; an entry missing from it has none). `pace` is called every
        `PACE` entries (the loop renews its lease there).
        """
        baselines = self.take(entries.values(), states, now, controls, pace)
        removed = [name for name in self._slots if name not in entries]
        for name in removed:
            del self._slots[name]
        return baselines, removed

    def take(
        self,
        entries: Iterable[Entry],
        states: Mapping[str, EntryState],
        now: datetime,
        controls: Mapping[str, EntryControl] | None = None,
        pace: Callable[[], None] | None = None,
    ) -> list[EntryState]:
        """`load` without removing the entries not in `entries`: a part of a configuration
        (an adoption in stages, beatd.staging). The baselines to persist, as `load`'s."""
        baselines: list[EntryState] = []
        times: dict[datetime, datetime] = {}  # one object per equal time of the states
        nexts: NextFires = {}  # entries sharing a schedule and a horizon: one computation
        for count, entry in enumerate(entries, 1):
            if pace is not None and count % PACE == 0:
                pace()
            current = self._slots.get(entry.name)
            # persisted: a baseline not yet written is redone
            state, fresh = _continued(entry, states.get(entry.name), now, times)
            if fresh:
                baselines.append(state)
            control = current.control if current is not None else NO_CONTROL
            if controls is not None:
                control = controls.get(entry.name, NO_CONTROL)
            same = (entry, state, control)
            if current is not None and (current.entry, current.state, current.control) == same:
                continue
            self._track(entry, state, control, now, nexts)
        return baselines

    def put(
        self, entry: Entry, now: datetime, persisted: EntryState | None = None
    ) -> Baseline | None:
        """Add one entry, or replace the one of its name, touching no other (a runtime entry's
        change). Its state (the one the planner holds, else `persisted`) continues when its
        schedule is the same; otherwise it starts from `now`, as on a reload, and the baseline
        to persist over that state is returned."""
        current = self._slots.get(entry.name)
        control = current.control if current is not None else NO_CONTROL
        held = current.state if current is not None else persisted
        if held is not None and held.identity == entry.identity:
            if current is None or current.entry != entry:
                self._track(entry, held, control, now)
            return None
        published = held.last_published if held is not None else None
        fresh = EntryState(entry.name, now, published, entry.identity)
        self._track(entry, fresh, control, now)
        return Baseline(fresh, held)

    def drop(self, name: str) -> EntryState | None:
        """Remove one entry, touching no other; its state as held (None: no such entry)."""
        slot = self._slots.pop(name, None)  # its heap item goes stale and is skipped
        return slot.state if slot is not None else None

    def _track(
        self,
        entry: Entry,
        state: EntryState,
        control: EntryControl,
        now: datetime,
        nexts: NextFires | None = None,
    ) -> None:
        old = self._slots.get(entry.name)
        slot = _Slot(entry, state, gate=old.gate if old is not None else None)
        if old is not None or control is not NO_CONTROL or entry.guard is not None:
            self._set_control(slot, control, now)  # else: nothing to gate, nothing held before
        self._slots[entry.name] = slot
        self._schedule_next(slot, state.last_slot, nexts)

    def _set_control(
        self, slot: _Slot, control: EntryControl, now: datetime | None, lifts: Lifts = ()
    ) -> None:
        departed = slot.set_control(control, now, lifts)
        if departed is not None:
            self._departed.append(Departed(slot.entry, departed))

    def take_departed(self) -> list[Departed]:
        """The held slots that left their entry's control since the last call."""
        departed, self._departed = self._departed, []
        return departed

    def published_elsewhere(self, name: str, slot: datetime) -> None:
        """A held slot of `name` was published by a run's final outcome: it is the entry's last
        published slot (persisted with the entry's next write) unless a newer one is."""
        tracked = self._slots.get(name)
        if tracked is None:
            return
        last = tracked.state.last_published
        if last is None or slot > last:
            tracked.state = tracked.state._replace(last_published=slot)

    def control(self, name: str) -> EntryControl | None:
        slot = self._slots.get(name)
        return slot.control if slot else None

    def paused(self, now: datetime | None = None) -> list[str]:
        """The entries with a pause as the planner knows (for `beatd_entry_paused`): in force
        at `now`, if given."""
        return [n for n, s in self._slots.items() if pause_in_force(s.control.pause, now)]

    def refresh_controls(
        self, controls: Mapping[str, EntryControl], now: datetime, lifts: LiftsByEntry = NO_LIFTS
    ) -> int:
        """Every entry's control as persisted now (an entry missing has none): a pause set or
        lifted, a busy mark cleared, a held run published elsewhere. How many changed.
        `lifts`: per entry, when pauses were lifted since the last refresh, if known (a pause
        lifted at no time known ends `now`)."""
        changed = 0
        for name, slot in self._slots.items():
            control = controls.get(name, NO_CONTROL)
            if control != slot.control:
                changed += 1
                self._set_control(slot, control, now, lifts.get(name, ()))
                if slot.next_slot is not None:
                    self._set_next(slot, slot.next_slot)
        return changed

    def _schedule_next(self, slot: _Slot, after: datetime, nexts: NextFires | None = None) -> None:
        """`nexts`: the next fires computed so far in one `load`, by schedule object and
        horizon (the schedules are alive for its length: their ids stay theirs). A million
        runtime entries share about 160,000 schedules (issue 18's mix) and, at a start,
        most of their horizons: one computation answers thousands of entries."""
        schedule = slot.entry.schedule
        key = (id(schedule), after)
        if nexts is not None and key in nexts:
            nxt = nexts[key]
        else:
            self.next_fire_computations += 1
            nxt = schedule.next_after(after)
            if nexts is not None:
                nexts[key] = nxt
        self._set_next(slot, nxt)

    def _set_next(self, slot: _Slot, nxt: datetime | None) -> None:
        slot.next_slot = nxt
        if nxt is None:
            slot.item = None
            return
        entry = slot.entry
        due = entry.due_for(nxt)
        if slot.gate is not None and (pause := slot.covering(due)) is not None:
            if pause.until is None:  # paused till resumed: a refresh of the controls wakes it
                slot.item = None
                return
            due = max(due, pause.until)  # all the slots it covers, in one decision
        slot.item = (due, entry.name)
        heapq.heappush(self._heap, slot.item)

    def next_wake(self) -> datetime | None:
        """When the earliest pending run is due; None when nothing will ever be due."""
        heap = self._heap
        while heap:
            item = heap[0]
            slot = self._slots.get(item[1])
            if slot is not None and slot.item is item:
                return item[0]
            heapq.heappop(heap)
        return None

    def tick(self, now: datetime) -> list[Decision]:
        """Everything due at `now`. Nothing changes until `settle` (or `release`) is called."""
        return list(self.decide_due(now))

    def decide_due(self, now: datetime) -> Iterator[Decision]:
        """The decisions due at `now`, one entry at a time, taken from the heap as they are
        asked for: a caller can persist and `settle` the first batch while the rest wait.
        Stopping early leaves the entries not yet taken due for the next call. An entry settled
        meanwhile whose next slot is due too is taken again, from its settled state."""
        heap, slots = self._heap, self._slots
        spent = self.next_fire_computations
        while heap and heap[0][0] <= now:
            if self.next_fire_computations - spent >= self.tick_budget:
                return
            item = heapq.heappop(heap)
            slot = slots.get(item[1])
            if slot is None or slot.item is not item:
                continue
            if slot.gate is not None:
                yield self._decide_gated(slot, now)
            else:
                yield self._decide(slot, now)

    def settle(self, decisions: Iterable[Decision]) -> None:
        """The decisions were persisted: move each entry on to its next slot."""
        for decision in decisions:
            slot = self._slots.get(decision.entry.name)
            if slot is None or slot.entry is not decision.entry:
                continue
            slot.state = decision.state
            if decision.at is not None:  # decided under a guard
                self._set_control(slot, _after(slot.control, decision), None)
            if decision.runs or decision.missed or decision.hold:
                self._set_next(slot, decision.following)

    def release(self, decisions: Iterable[Decision]) -> None:
        """The decisions were not persisted: they will be decided again at the next tick."""
        for decision in decisions:
            slot = self._slots.get(decision.entry.name)
            if slot is not None and slot.item is not None:
                heapq.heappush(self._heap, slot.item)

    def resync(
        self,
        state: EntryState | None,
        name: str,
        control: EntryControl | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Another writer moved this entry on: continue from what is persisted.

        False when the persisted state cannot be continued from (missing, or for another
        schedule): the caller must `load` the configuration again to write a baseline.
        """
        slot = self._slots.get(name)
        if slot is None:
            return True
        if state is None or state.identity != slot.entry.identity:
            return False
        slot.state = state
        if control is not None:
            self._set_control(slot, control, now)
        self._schedule_next(slot, state.last_slot)
        return True

    def _decide_gated(self, slot: _Slot, now: datetime) -> Decision:
        """An entry with a control or a guard: its paused slots, or the slots before the next
        pause under its `missed:` policy, then its overlap rule."""
        assert slot.next_slot is not None
        due = slot.entry.due_for(slot.next_slot)  # the item's time is a pause's end
        pause = slot.covering(due)
        if pause is not None:
            decision, count = _paused(slot, now, self.walk_limit)
            self.next_fire_computations += count
            return decision
        bound: datetime | None = None
        for p in (slot.control.pause, *slot.lifted):
            if p is not None and due < p.at <= now:  # decide only the slots before it
                bound = min(bound or now, p.at - _JUST_BEFORE)
        return _overlap(self._decide(slot, now, bound), slot.control, now)

    def _decide(self, slot: _Slot, now: datetime, stop: datetime | None = None) -> Decision:
        """The entry's due slots (up to `stop`): on time without a walk when it can be (and
        no `stop`), else walked; the next-fire computations counted."""
        if stop is None and (decision := _on_time(slot, now)) is not None:
            self.next_fire_computations += 1
            return decision
        decision, steps = _walked(slot, now, self.walk_limit, stop)
        self.next_fire_computations += steps
        return decision


def _on_time(slot: _Slot, now: datetime) -> Decision | None:
    """The steady state, without a walk: one slot due, on time, and the next not yet due.

    None when that is not the case; `_walked` then walks from the same slot, and repeats the
    next-fire computation made here (the caller counts one when it returns a decision).
    """
    entry, due = slot.entry, slot.next_due
    assert due is not None and slot.next_slot is not None
    if not entry.enabled or now - due > entry.misfire_grace:
        return None
    current = slot.next_slot
    following = entry.schedule.next_after(current)
    if following is not None and entry.due_for(following) <= now:
        return None
    state = EntryState(entry.name, current, current, entry.identity)
    run = Run(entry, current, due, False)
    return Decision(entry, slot.state, state, (run,), following=following)


def _walked(
    slot: _Slot, now: datetime, walk_limit: int, stop: datetime | None
) -> tuple[Decision, int]:
    """The entry's due slots, walked (`_walk`); with the next-fire computations it made."""
    entry, state = slot.entry, slot.state
    keep = _KEEP[entry.missed] if entry.enabled else 0
    if keep is None:
        keep = entry.max_catch_up
    walk = _walk(slot, now, keep, stop or now, walk_limit)
    reason = MissReason.SKIPPED
    if not entry.enabled:
        reason = MissReason.DISABLED
    elif entry.missed is MissedPolicy.CATCH_UP:
        reason = MissReason.BEYOND_CATCH_UP
    dropped = walk.overdue_count - len(walk.overdue)
    missed: tuple[MissedSlots, ...] = ()
    if dropped:
        assert walk.first_dropped is not None and walk.last_dropped is not None
        missed = (MissedSlots(entry.name, reason, walk.first_dropped, walk.last_dropped, dropped),)
    if not walk.done:
        # As far as one tick goes: account for the slots known to be too old to publish,
        # and leave the newest `keep` overdue ones to be walked again at the next tick.
        assert walk.last_dropped is not None  # a walk stops only after dropping
        new_state = EntryState(entry.name, walk.last_dropped, state.last_published, entry.identity)
        resume = walk.overdue[0][0] if walk.overdue else walk.following
        return Decision(entry, state, new_state, (), missed, resume), walk.steps
    runs: list[Run] = []
    if not entry.enabled:
        total = walk.overdue_count + len(walk.timely)
        missed = (MissedSlots(entry.name, reason, walk.first, walk.newest, total),)
    else:
        runs = [Run(entry, s, d, late=True) for s, d in walk.overdue]
        runs += [Run(entry, s, d, late=False) for s, d in walk.timely]
    published = runs[-1].slot if runs else state.last_published
    new_state = EntryState(entry.name, walk.newest, published, entry.identity)
    return Decision(entry, state, new_state, tuple(runs), missed, walk.following), walk.steps


def _walk(slot: _Slot, now: datetime, keep: int, stop: datetime, walk_limit: int) -> _Walk:
    """Walk the due slots of one entry, from its next slot towards `now`.

    One next-fire computation per due slot (`steps`); long interval gaps are skipped arithmetically,
    and a walk through more than `walk_limit` overdue slots stops early (`done` False). It
    takes no slot due after `stop` (the start of a pause; else `now`).
    """
    entry, schedule, grace = slot.entry, slot.entry.schedule, slot.entry.misfire_grace
    current, due = slot.next_slot, slot.next_due
    assert current is not None and due is not None
    walk = _Walk(deque(maxlen=keep), first=current, newest=current)
    limit = max(walk_limit, 2 * keep + 2)
    arithmetic = _arithmetic_interval(schedule)
    while True:
        if now - due > grace:
            if len(walk.overdue) == keep:
                walk.dropped(walk.overdue[0][0] if keep else current)
            walk.overdue.append((current, due))
            walk.overdue_count += 1
        else:
            walk.timely.append((current, due))
        walk.newest = current
        if arithmetic is not None:
            interval, last = arithmetic
            end = min(now - grace - interval.every, last, stop)
            skip = interval.count_between(current, end)
            skip -= keep
            if skip > 0:
                walk.dropped(walk.overdue[0][0] if walk.overdue else current + interval.every)
                walk.overdue_count += skip
                current += interval.every * skip
                walk.newest = walk.last_dropped = current
                walk.overdue.clear()
        walk.steps += 1
        walk.following = schedule.next_after(current)
        if walk.following is None:
            return walk
        due = entry.due_for(walk.following)
        if due > stop:
            return walk
        if walk.steps >= limit and now - due > grace:
            walk.done = False
            return walk
        current = walk.following


def _paused(slot: _Slot, now: datetime, limit: int) -> tuple[Decision, int]:
    """The due slots a pause covers, from the entry's next: missed (`paused`); with the
    next-fire computations it made."""
    entry, state = slot.entry, slot.state
    current = first = last = slot.next_slot
    count = 0
    while current is not None and count < limit:
        due = entry.due_for(current)
        if due > now or slot.covering(due) is None:
            break
        count += 1
        last = current
        current = entry.schedule.next_after(current)
    assert first is not None and last is not None and count
    slot.forget_lifted(last)
    new_state = EntryState(entry.name, last, state.last_published, entry.identity)
    missed = (MissedSlots(entry.name, MissReason.PAUSED, first, last, count),)
    return Decision(entry, state, new_state, (), missed, current), count


def _overlap(decision: Decision, control: EntryControl, now: datetime) -> Decision:
    """A decision under its entry's overlap rule: at most one run published, and none while
    the previous is busy (skip: missed `overlap`; buffer_one: the newest held)."""
    guard = decision.entry.guard
    if guard is None:
        return decision
    busy = control.busy
    fresh = busy is not None and (now - busy.since).total_seconds() < guard.timeout
    stale = busy if busy is not None and not fresh else None
    runs = decision.runs
    if not runs:
        return decision._replace(guard=guard, busy=fresh, at=now)
    keep: tuple[Run, ...] = () if fresh else runs[:1]
    hold: Run | None = None
    if guard.overlap == "buffer_one" and (fresh or len(runs) > 1):
        hold = runs[-1]
    # a held run this one replaces is recorded missed by the commit: a worker's final outcome
    # may have published it since the planner last knew
    over = [r.slot for r in runs if r not in keep and r is not hold]
    missed = decision.missed
    if over:
        name = decision.entry.name
        missed = (*missed, MissedSlots(name, MissReason.OVERLAP, min(over), max(over), len(over)))
    published = keep[-1].slot if keep else decision.previous_published
    state = decision.state._replace(last_published=published)
    return decision._replace(
        state=state,
        runs=keep,
        missed=missed,
        guard=guard,
        busy=fresh,
        hold=hold,
        stale=stale if keep else None,
        at=now,
    )


def _after(control: EntryControl, decision: Decision) -> EntryControl:
    """The control a settled decision left: the busy mark of its last run, its held run."""
    if decision.runs and decision.at is not None:
        last = decision.runs[-1]
        control = control._replace(busy=Busy(run_id(last.entry.name, last.slot), decision.at))
    hold = decision.hold
    if hold is not None:
        name = hold.entry.name
        kind = RunKind.CAUGHT_UP if hold.late else RunKind.SCHEDULED
        held = HeldRun(run_id(name, hold.slot), hold.slot, hold.due, kind, "", "")
        control = control._replace(held=held)
    return control


def _arithmetic_interval(schedule: Schedule) -> tuple[IntervalSchedule, datetime] | None:
    """The interval whose missed slots can be counted rather than walked, with the last instant
    a slot may have: an interval's, also inside a window (whose slots stop before its end)."""
    if isinstance(schedule, WindowedSchedule) and isinstance(schedule.inner, IntervalSchedule):
        end = schedule.end
        return schedule.inner, _LAST_INSTANT if end is None else end - _JUST_BEFORE
    if isinstance(schedule, IntervalSchedule):
        return schedule, _LAST_INSTANT
    return None


class RemovedEntries:
    """Entries whose persisted state outlives their removal from the configuration by `grace`,
    so that a removal undone in time (a file half written by an editor, a deploy rolled back)
    resumes where the entry was, under its `missed:` policy, instead of starting from now.

    Nothing about a removal is persisted: each one's clock starts when the leader first sees the
    entry's state without its entry, and a new leadership (another lease `epoch`) starts every
    clock again at its adoption.
    """

    def __init__(self, grace: timedelta) -> None:
        self.grace = grace
        self._absent_since: dict[str, datetime] = {}
        self._epoch: int | None = None
        self._first: datetime | None = None  # the earliest of _absent_since, asked every step

    def expired(self, absent: Iterable[str], now: datetime, epoch: int) -> list[str]:
        """Note the entries absent now (and no others); return those absent for the whole
        grace, which the caller forgets and then reports with `forgotten`."""
        if epoch != self._epoch:
            self._absent_since.clear()
            self._epoch = epoch
        since = self._absent_since
        self._absent_since = {name: since.get(name, now) for name in absent}
        self._first = min(self._absent_since.values(), default=None)
        return sorted(n for n, t in self._absent_since.items() if now - t >= self.grace)

    def add(self, name: str, now: datetime) -> None:
        """Note one entry removed now (a runtime entry's removal), touching no other."""
        self._absent_since.setdefault(name, now)
        self._first = now if self._first is None else min(self._first, now)

    def discard(self, name: str) -> bool:
        """The entry is back (re-added in time); whether its state was kept."""
        if self._absent_since.pop(name, None) is None:
            return False
        if not self._absent_since:
            self._first = None
        return True

    def forgotten(self, names: Iterable[str]) -> None:
        for name in names:
            self._absent_since.pop(name, None)
        self._first = min(self._absent_since.values(), default=None)

    @property
    def absent(self) -> list[str]:
        """The removed entries whose state is kept for now."""
        return sorted(self._absent_since)

    def next_expiry(self) -> datetime | None:
        """When the first kept state is due to be forgotten; None when none is kept."""
        return None if self._first is None else self._first + self.grace


@dataclass(slots=True)
class _Walk:
    """What walking one entry's due slots found."""

    overdue: deque[tuple[datetime, datetime]]  # the newest `keep` overdue (slot, due) pairs
    first: datetime  # the slot the walk started from
    newest: datetime  # the newest slot walked
    timely: list[tuple[datetime, datetime]] = field(default_factory=list)
    overdue_count: int = 0
    first_dropped: datetime | None = None  # the oldest overdue slot not kept
    last_dropped: datetime | None = None  # the newest overdue slot not kept
    following: datetime | None = None  # the first slot after the walk
    done: bool = True  # False: stopped at the walk limit before reaching now
    steps: int = 0  # next-fire computations made

    def dropped(self, slot: datetime) -> None:
        """`slot` is the newest overdue slot not kept (so far)."""
        self.last_dropped = slot
        if self.first_dropped is None:
            self.first_dropped = slot


def pause_in_force(pause: Pause | None, now: datetime | None) -> bool:
    """Whether there is a pause, in force at `now` if given."""
    if pause is None or now is None:
        return pause is not None
    return pause.at <= now and (pause.until is None or now < pause.until)


def _continued(
    entry: Entry, state: EntryState | None, now: datetime, times: dict[datetime, datetime]
) -> tuple[EntryState, bool]:
    """The state `entry` continues from: the persisted `state` when it measured the same
    schedule (its values shared), else a new one starting from `now`, a baseline to write
    (True)."""
    if state is None or state.identity != entry.identity:
        published = state.last_published if state else None
        return EntryState(entry.name, now, published, entry.identity), True
    if state.entry is not entry.name or state.identity is not entry.identity:
        return _shared(state, entry, times), False
    return state, False


def _shared(state: EntryState, entry: Entry, times: dict[datetime, datetime]) -> EntryState:
    """`state` (as read from a backend: every string and time its own copy) holding the entry's
    name and identity, and one object per equal time: a million entries' states add up."""
    last, published = state.last_slot, state.last_published
    last = times.setdefault(last, last)
    if published is not None:
        published = times.setdefault(published, published)
    return EntryState(entry.name, last, published, entry.identity)


WALK_LIMIT = 20_000
TICK_BUDGET = 100_000
_KEEP = {MissedPolicy.SKIP: 0, MissedPolicy.RUN_ONCE: 1, MissedPolicy.CATCH_UP: None}


COUNT_FIELDS = ("due", "published", "late", *(f"missed_{r.value}" for r in MissReason))


class RunCounts:
    """Per-entry counts since start: due, published, late, and missed by reason; and totals.

    One small list per entry, so 100,000 entries cost a few megabytes, read at scrape time.
    """

    def __init__(self) -> None:
        self._by_entry: dict[str, list[int]] = {}
        self._totals = [0] * len(COUNT_FIELDS)

    def add(self, decision: Decision) -> None:
        counts = self._by_entry.get(decision.entry.name)
        if counts is None:
            counts = self._by_entry[decision.entry.name] = [0] * len(COUNT_FIELDS)
        totals, runs = self._totals, len(decision.runs)
        counts[0] += runs
        counts[1] += runs
        totals[0] += runs
        totals[1] += runs
        for run in decision.runs:
            if run.late:
                counts[2] += 1
                totals[2] += 1
        for missed in decision.missed:
            index, count = _MISSED_INDEX[missed.reason], missed.total
            counts[0] += count
            counts[index] += count
            totals[0] += count
            totals[index] += count
        if decision.hold is not None:  # due now; its end is counted by `held_ended`
            counts[0] += 1
            totals[0] += 1

    def held_ended(self, entry: str, missed: str | None, late: bool) -> None:
        """A held slot (counted due when held) ended: published (`missed` None; `late` past
        its misfire_grace) or missed with reason `missed`."""
        counts = self._by_entry.setdefault(entry, [0] * len(COUNT_FIELDS))
        indexes = [1, 2] if missed is None and late else [1] if missed is None else []
        if missed is not None:
            indexes.append(_MISSED_INDEX[missed])
        for index in indexes:
            counts[index] += 1
            self._totals[index] += 1

    def get(self, entry: str) -> dict[str, int]:
        counts = self._by_entry.get(entry, [0] * len(COUNT_FIELDS))
        return dict(zip(COUNT_FIELDS, counts, strict=True))

    def items(self, names: Iterable[str] | None = None) -> Iterable[tuple[str, list[int]]]:
        """Each entry's counts (COUNT_FIELDS' order); only those of `names`, if given."""
        if names is None:
            return self._by_entry.items()
        counts = self._by_entry
        return [(n, c) for n in names if (c := counts.get(n)) is not None]

    def totals(self) -> dict[str, int]:
        return dict(zip(COUNT_FIELDS, self._totals, strict=True))

    def total(self, field: str) -> int:
        return self._totals[COUNT_FIELDS.index(field)]


_MISSED_INDEX: dict[str, int] = {
    reason.value: COUNT_FIELDS.index(f"missed_{reason.value}") for reason in MissReason
}
