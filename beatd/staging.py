"""A new leader's adoption in stages (issue 18: a leader that publishes within seconds of its
start, holding a million runtime entries).

`Adoption.adopt` brings every entry into the planner in one step: at a million entries that is
a minute in which nothing is published. A leader whose planner is empty (it has just taken the
lease) adopts in stages instead, while the first read of the runtime entries is under way or
when it holds more than `STAGED_ABOVE` of them, one stage a round of the loop, which publishes
the due slots of what it holds in between:

1. the file entries, with the controls (pauses, busy marks: few, read whole);
2. the runtime entries, `STAGE` at a time in the order they were read: each stage's persisted
   states read by name (`states_of`), planned, and the baselines of the entries new to the
   backend written, so the states are never all held at once;
3. once the view holds every entry: any entry held but not staged (the feed brought it), then a
   pass over the persisted states in pages (`state_page`) for those of entries no longer
   configured, kept for the removal grace as `adopt` keeps them.

A change the feed brings meanwhile goes into the plan at once for an entry already staged, as
after an adoption (`Adoption.apply`), and into a later stage otherwise. A slot of an entry not
yet staged that passes meanwhile is decided when the entry is staged, as after downtime: caught
up or missed as its policy says, late, never silently. Every write is fenced by the lease and
compared with the persisted horizon as ever, so nothing staged is published twice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum

from beatd.adoption import Adoption
from beatd.backends.base import Lease, StateStore
from beatd.clock import Clock
from beatd.config.model import Entry
from beatd.controls import EntryControl
from beatd.core import Baseline, Planner
from beatd.dataloss import DataLossRecovery
from beatd.entry_feed import EntryApplied, PlannedEntries, RuntimeView
from beatd.errors import BackendError
from beatd.state import EntryState

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")

STAGE = 2000  # runtime entries a stage: about 0.1 s of reading, planning and writing
STATE_PAGE = 10_000  # persisted states a page of the last pass
STAGED_ABOVE = 20_000  # runtime entries held: fewer are adopted in one step (about a second)


class Staging:
    """One adoption in stages, from an empty planner; `step` once a round until it is done."""

    def __init__(
        self,
        adoption: Adoption,
        view: RuntimeView,
        files: Mapping[str, Entry],
        stage: int = STAGE,
        state_page: int = STATE_PAGE,
    ) -> None:
        self.adoption = adoption
        self.store: StateStore = adoption.store
        self.clock: Clock = adoption.clock
        self.view = view
        self.files = files
        self.stage = stage
        self.state_page = state_page
        self.pending: deque[str] = deque()  # runtime entries read, not staged yet
        self.controls: Mapping[str, EntryControl] | None = None
        self.reloads = view.reloads  # a whole read again meanwhile: start again (`stale`)
        self._swept = False  # the entries held checked for any not staged
        self._cursor: str | None = None  # the pass over the persisted states (None: not begun)
        self._absent: dict[str, EntryState] = {}  # states of entries no longer configured
        self.staged = 0  # runtime entries staged

    @property
    def stale(self) -> bool:
        """Every entry was read again since the staging began: begin again."""
        return self.view.reloads != self.reloads

    def begin(self, planner: Planner, lease: Lease) -> None:
        """The file entries, and the runtime entries held now into the pending stages."""
        controls = self.adoption.publisher.controls
        self.controls = controls.load_controls() if controls is not None else None
        self.adoption.kept = {}  # a new leadership: removals are timed again (RemovedEntries)
        self._stage(planner, lease, list(self.files.values()))
        self.pending.extend(self.view.follow_reads())
        log.info(
            "adopting in stages: %d file entries now, %d runtime entries held so far, %d a stage%s",
            len(self.files),
            len(self.pending),
            self.stage,
            " (still reading them)" if self.view.reading else "",
        )

    def later(self, name: str) -> None:
        """Runtime entry `name` changed before it was staged: stage it as it is then, at the
        next stage (a change reaches the plan within a second, even while staging)."""
        self.pending.appendleft(name)

    def step(self, planner: Planner, lease: Lease) -> bool:
        """One stage; True when the adoption is done."""
        self.pending.extend(self.view.take_reads())
        if self.pending:
            names = [self.pending.popleft() for _ in range(min(self.stage, len(self.pending)))]
            try:
                self._stage_runtime(planner, lease, names)
            except BackendError:
                self.pending.extendleft(reversed(names))  # staged again at the next step
                raise
            return False
        if not self.view.loaded:
            return False  # the next page of the first read comes at the loop's next poll
        if not self._swept:
            self._swept = True
            self.pending.extend(self._unstaged(planner))
            return not self.pending and self._pass(planner, lease)
        return self._pass(planner, lease)

    def _unstaged(self, planner: Planner) -> list[str]:
        """Runtime entries held and not staged: brought by a whole read while the first was
        under way, say; none as a rule."""
        files = self.files
        return [n for n in self.view.entries if n not in files and planner.state(n) is None]

    def _stage_runtime(self, planner: Planner, lease: Lease, names: Sequence[str]) -> None:
        held, files = self.view.entries, self.files
        entries = [
            e
            for n in dict.fromkeys(names)
            if n not in files and (e := held.get(n)) is not None and planner.state(n) is None
        ]
        for entry in entries:  # removed by the feed meanwhile and added again: back in time
            if self.adoption.removed.discard(entry.name):
                self.adoption.kept.pop(entry.name, None)
        self.staged += len(entries)
        self._stage(planner, lease, entries)

    def _stage(self, planner: Planner, lease: Lease, entries: Sequence[Entry]) -> None:
        """Plan `entries` against their persisted states; write the baselines of the new. A
        backend error takes them out of the plan again (a baseline may not be written)."""
        self.adoption.keep_alive()
        states = self.store.states_of([e.name for e in entries]) if entries else {}
        fresh = planner.take(entries, states, self.clock.now(), self.controls)
        try:
            baselines = [Baseline(state, states.get(state.entry)) for state in fresh]
            self.adoption.baseline(planner, lease, baselines)
        except BackendError:
            for entry in entries:
                planner.drop(entry.name)
            raise

    def _pass(self, planner: Planner, lease: Lease) -> bool:
        """One page of the pass over the persisted states; True when it is over and the states
        of entries no longer configured are kept (or forgotten) as `adopt` does."""
        self.adoption.keep_alive()
        page, cursor = self.store.state_page(self._cursor or "", self.state_page)
        self._cursor = cursor
        for name, state in page.items():
            if planner.state(name) is None and name not in self.view.entries:
                self._absent[name] = state
        if cursor:
            return False
        held, now = self.view.entries, self.clock.now()
        gone = {n: s for n, s in self._absent.items() if planner.state(n) is None and n not in held}
        self.adoption.absent_found(lease, gone, now)  # those added again meanwhile left out
        doubts = list(self.adoption.publisher.in_doubt)
        self.adoption.publisher.resolve_doubts(self.store.states_of(doubts), doubts)
        controls = self.adoption.publisher.controls
        if controls is not None:  # those read at the beginning, as they are now
            planner.refresh_controls(controls.load_controls(), now)
        log.info("adopted in stages: %d runtime entries", self.staged)
        return True


class Done(Enum):
    """What a call of `Stages.adopt` did."""

    NOT_YET = "a stage"
    EVERY_ENTRY = "every entry adopted"
    FILES_CHANGED = "the file entries that changed in a reload adopted"


class Stages:
    """The loop's part that adopts in stages: whether to, the staging under way, its end."""

    def __init__(self, adoption: Adoption, view: RuntimeView, data_loss: DataLossRecovery) -> None:
        self.adoption = adoption
        self.view = view
        self.data_loss = data_loss
        self.staging: Staging | None = None
        self.stage = STAGE
        self.state_page = STATE_PAGE
        self.staged_above = STAGED_ABOVE

    def wanted(self, planner: Planner, files_before: object) -> bool:
        """Whether to adopt in stages: a new leader (nothing planned yet) reading the runtime
        entries for the first time or holding many, after no reload (`files_before`), the
        backend's data whole (a recovery needs every state at once)."""
        if self.staging is not None or len(planner) or files_before is not None:
            return False
        if self.adoption.publisher.readopt or self.data_loss.pending:
            return False
        return self.view.reading or len(self.view.entries) > self.staged_above

    def adopt(
        self,
        planner: Planner,
        lease: Lease,
        planned: PlannedEntries,
        before: Mapping[str, Entry] | None,
    ) -> Done:
        """Adopt what is `planned`: begin a staging or do its next stage, or else in one step:
        the file entries that changed since `before` (a reload while leading), or every entry
        (`Adoption.adopt`)."""
        if self.wanted(planner, before):
            staging = Staging(self.adoption, self.view, planned.files, self.stage, self.state_page)
            staging.begin(planner, lease)  # raises: nothing planned, begun again next time
            self.staging = staging
        if self.staging is not None:
            if not self.staging.step(planner, lease):
                return Done.NOT_YET
            self.stop()
            return Done.EVERY_ENTRY
        if before is not None and not self.adoption.publisher.readopt:
            self.adoption.files_changed(planner, lease, before, planned)
            return Done.FILES_CHANGED
        self.adoption.adopt(planned.entries, planner, lease)
        return Done.EVERY_ENTRY

    @property
    def stale(self) -> bool:
        """A staging is under way that must begin again (see `Staging.stale`)."""
        return self.staging is not None and self.staging.stale

    def stop(self) -> None:
        """No staging under way any more (done, or the planner let go)."""
        if self.staging is not None:
            self.view.stop_reads()
        self.staging = None


def staged_change(
    staging: Staging, planner: Planner, changes: Iterable[EntryApplied]
) -> list[EntryApplied]:
    """The feed's changes of entries staged (for `Adoption.apply`); the others go into a later
    stage."""
    now_staged = []
    for change in changes:
        if planner.state(change.name) is not None:
            now_staged.append(change)
        else:
            staging.later(change.name)
    return now_staged
