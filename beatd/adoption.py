"""Adopting a configuration: the planner brought in line with the entries and the persisted
state, when this node becomes leader and after every reload.

Entries new to the backend, or whose schedule changed, start from now; entries no longer
configured are forgotten once removed for the grace (`RemovedEntries`); after the backend lost
its data, the positions this node held are written back and the slots nobody held are counted
as missed (`DataLossRecovery`). Retried at the next step if the backend fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from beatd.backends.base import Lease, StateStore, StateWrite
from beatd.clock import Clock
from beatd.config.model import Entry
from beatd.core import Baseline, Planner, RemovedEntries
from beatd.dataloss import DataLossRecovery
from beatd.durations import format_duration
from beatd.entry_feed import EntryApplied, PlannedEntries
from beatd.history import MissedSlots
from beatd.publisher import Publisher, chunks, horizon
from beatd.state import EntryState

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")


class Adoption:
    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        publisher: Publisher,
        data_loss: DataLossRecovery,
        removed_grace: float,
        keep_alive: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        # renews the lease when due (`Leadership.keep_alive`; LeaseLost when gone), called
        # between the parts of work in proportion to the entries, which may outlast the lease
        self.keep_alive = keep_alive
        self.clock = clock
        self.publisher = publisher
        self.data_loss = data_loss
        self.removed = RemovedEntries(timedelta(seconds=removed_grace))
        self.kept: dict[str, EntryState] = {}  # the removed entries' states, while kept

    # --- one runtime entry at a time (beatd.entry_feed) ----------------------------------

    def apply(self, planner: Planner, change: EntryApplied, now: datetime) -> Baseline | None:
        """One runtime entry changed: put it in the plan or take it out (its state kept for the
        grace, as a removed file entry's); the baseline to persist when it starts from now."""
        name = change.name
        if change.entry is None:
            state = planner.drop(name)
            if state is not None:
                self.kept[name] = state
                self.removed.add(name, now)
            return None
        self.removed.discard(name)
        return planner.put(change.entry, now, self.kept.pop(name, None))

    def files_changed(
        self, planner: Planner, lease: Lease, before: Mapping[str, Entry], planned: PlannedEntries
    ) -> None:
        """A reload while leading: the file entries that changed are put in the plan, those
        that left the files taken out (their state kept for the grace), at a cost in proportion
        to the file entries: the runtime entries are neither read nor compared again."""
        files, now = planned.files, self.clock.now()
        gone = [EntryApplied(n, planned.entries.get(n), None) for n in before if n not in files]
        changed = [EntryApplied(n, e, None) for n, e in files.items() if before.get(n) != e]
        baselines = [b for c in (*gone, *changed) if (b := self.apply(planner, c, now))]
        self.baseline(planner, lease, baselines)
        removed = [c.name for c in gone if c.entry is None]
        if removed:
            log.info(
                "keeping the state of %d entries removed from the configuration for %s "
                "(--removed-grace): re-added in time, each resumes where it was: %s",
                len(removed),
                format_duration(self.removed.grace),
                _some(removed),
            )
        self.publisher.readopt = False

    def baseline(self, planner: Planner, lease: Lease, baselines: Sequence[Baseline]) -> None:
        """Persist the baselines of entries put in the plan one at a time; resync those
        another write moved on (LeaseLost when the lease is gone)."""
        writes = (StateWrite(b.state, horizon(b.previous)) for b in baselines)
        for batch in chunks(writes, self.publisher.batch_size):
            self.keep_alive()
            rejected = self.store.commit(lease, batch, [])
            if rejected:
                self.publisher.resync(planner, rejected)

    def adopt(self, entries: Mapping[str, Entry], planner: Planner, lease: Lease) -> None:
        """Load `entries` (the files' and the runtime entries) into `planner` against the
        persisted state, under `lease`."""
        batch_size = self.publisher.batch_size
        states = self.store.load_states(self.keep_alive)
        self.keep_alive()
        now = self.clock.now()
        lost: dict[str, tuple[MissedSlots, ...]] = {}
        if self.data_loss.pending:
            states, lost = self._recover(entries, planner, lease, states, now)
        controls = self.publisher.controls
        found = controls.load_controls() if controls is not None else None
        baselines, _ = planner.load(entries, states, now, found, self.keep_alive)
        absent = [name for name in states if name not in entries]
        self._forget_removed(lease, absent, now)
        self.kept = {name: states[name] for name in self.removed.absent}
        for batch in chunks(iter(baselines), batch_size):
            self.keep_alive()
            # an entry whose position was lost starts from now: its lost slots go into the
            # history as missed (state_lost) with its new baseline
            writes = [
                StateWrite(state, horizon(states.get(state.entry)), lost.get(state.entry, ()))
                for state in batch
            ]
            rejected = self.store.commit(lease, writes, [])
            if rejected:
                self.publisher.resync(planner, rejected)
        self.publisher.resolve_doubts(states, list(self.publisher.in_doubt))
        self.publisher.readopt = False

    def absent_found(self, lease: Lease, absent: Mapping[str, EntryState], now: datetime) -> None:
        """An adoption in stages (beatd.staging) passed over the persisted states and found
        `absent` (no entry configured has them): as `adopt` does, forget those removed for the
        grace and keep the others' states, with those of entries the feed removed meanwhile."""
        found = {**absent, **self.kept}
        self._forget_removed(lease, list(found), now)
        self.kept = {name: found[name] for name in self.removed.absent if name in found}

    def forget_expired(self, lease: Lease) -> bool:
        """Forget removed entries whose grace ran out since the adoption; True when the backend
        was asked."""
        expiry = self.removed.next_expiry()
        now = self.clock.now()
        if expiry is None or expiry > now:
            return False
        self._forget_removed(lease, self.removed.absent, now)
        return True

    def _forget_removed(self, lease: Lease, absent: list[str], now: datetime) -> None:
        """Forget the state of the entries in `absent` (persisted, not configured) that were
        removed at least the grace ago; keep the others' for now."""
        kept_before = set(self.removed.absent)
        expired = self.removed.expired(absent, now, lease.epoch)
        grace = format_duration(self.removed.grace)
        if expired:
            self.store.forget(lease, expired)
            self.removed.forgotten(expired)
            for name in expired:
                self.kept.pop(name, None)
            log.info(
                "forgot %d entries removed from the configuration for %s: %s",
                len(expired),
                grace,
                _some(expired),
            )
        newly = [name for name in self.removed.absent if name not in kept_before]
        if newly:
            log.info(
                "keeping the state of %d entries removed from the configuration for %s "
                "(--removed-grace): re-added in time, each resumes where it was: %s",
                len(newly),
                grace,
                _some(newly),
            )

    def _recover(
        self,
        entries: Mapping[str, Entry],
        planner: Planner,
        lease: Lease,
        states: dict[str, EntryState],
        now: datetime,
    ) -> tuple[dict[str, EntryState], dict[str, tuple[MissedSlots, ...]]]:
        """After a data loss: write back the positions this node holds; count the lost slots of
        the entries nobody held (see DataLossRecovery.recover). The states as they are now,
        and the lost slots of each entry, for its baseline write."""
        restore, lost = self.data_loss.recover(states, entries, now, planner.walk_limit)
        for batch in chunks(iter(restore), self.publisher.batch_size):
            self.store.commit(lease, [StateWrite(p, None) for p in batch], [])
        for decision in lost:
            self.publisher.account([decision], now)
        missed = {d.entry.name: d.missed for d in lost}
        return {**states, **{p.entry: p for p in restore}}, missed


def _some(names: list[str], shown: int = 5) -> str:
    """The first few of many names, for a log line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "entries=" + ",".join(names[:shown]) + more
