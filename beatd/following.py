"""The loop's part that follows the runtime entries' change feed (issue 18): each change read
(`RuntimeView`) is taken into what is planned (`PlannedEntries`) and, while leading, into the
planner one entry at a time (`Adoption.apply`), with the baselines of entries that start from
now persisted in the same step."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from beatd.adoption import Adoption
from beatd.backends.base import Lease
from beatd.clock import Clock
from beatd.config.model import Entry
from beatd.core import Planner
from beatd.entry_feed import EntryApplied, PlannedEntries, RuntimeView, file_paths, name_clashes
from beatd.errors import ConfigError
from beatd.staging import Stages, staged_change


class FeedFollower:
    def __init__(
        self,
        view: RuntimeView,
        planned: PlannedEntries,
        adoption: Adoption,
        clock: Clock,
        stages: Stages,
        keep_alive: Callable[[], None] = lambda: None,
    ) -> None:
        self.view = view
        self.stages = stages  # an adoption in stages under way: its changes go there
        self.keep_alive = keep_alive  # renews the lease, if held, between a reload's pages
        self.planned = planned
        self.adoption = adoption
        self.clock = clock
        # the changes taken into the planner under a lease, for the loop to tell (`taken`)
        self._taken: list[EntryApplied] = []

    def follow(
        self, planner: Planner, lease: Lease | None, files: Mapping[str, Entry], checked: bool
    ) -> bool:
        """Read the feed to its head; apply each change to what is planned and, under `lease`
        (leading, adopted or adopting in stages: `staging`), to `planner`: during a staging,
        only the changes of entries staged (the others are staged later, as they are then).
        True when every runtime entry was read again (the plan must be adopted again).
        `checked` False (at start): a file entry named like a runtime entry raises the
        ConfigError naming both. LeaseLost: the lease is gone.

        Under `lease`, one page of changes at most (`RuntimeView.changes_page`): the rest is
        read at the loop's next step, at once, after the due slots are published, so that a
        bulk import neither delays slots nor outlasts the lease. Otherwise (standby, or not
        adopted yet) the feed is read to its head, the lease renewed between pages."""
        replan = False
        self._taken = []  # those of a round a lost lease ended are not told
        while True:
            feed = self.view.poll(self.keep_alive)
            if feed.reloaded:
                if not checked and (clash := self.planned.clash(files)) is not None:
                    raise clash
                self.planned.use(files)
                replan = True
            changes = [c for c in feed.changes if self.planned.apply(c)]
            staging = self.stages.staging
            if staging is not None and lease is not None:
                changes = staged_change(staging, planner, changes)
            if changes and lease is not None and (not replan or staging is not None):
                now = self.clock.now()
                baselines = [b for c in changes if (b := self.adoption.apply(planner, c, now))]
                self.adoption.baseline(planner, lease, baselines)
                self._taken += changes
            if not feed.more or lease is not None:
                return replan
            self.keep_alive()

    def taken(self) -> dict[str, Entry | None]:
        """The runtime entries the last `follow` took into the planner: each name with its entry
        now (None: gone), for the observers (`beatd.events.EntriesChanged`)."""
        taken, self._taken = self._taken, []
        return {change.name: change.entry for change in taken}

    def register(self, lease: Lease, files: Mapping[str, Entry]) -> ConfigError | None:
        """Register the file entries' names in the backend, so that no runtime entry takes
        one; the configuration error of those runtime entries have already (none written)."""
        clashes = self.view.store.register_file_entries(lease, file_paths(files))
        return name_clashes(files, clashes) if clashes else None
