"""The runtime entries a node holds (issue 18), kept by following the backend's change feed.

Every node, leader and standby, holds every runtime entry built (`RuntimeView.entries`), so a
standby taking over plans them without reading them all again. `RuntimeView.poll` reads the
feed after its cursor and applies each change by reading the entry's current value, so the
order in which changes are seen never matters: a page of changes costs one read (`get_entries`)
and a build per entry changed. A feed
that says `reload` (this node was further behind than the feed keeps, or the storage was
replaced) is answered by reading every entry again.

The first read of every entry (at start) goes a page a poll, the feed followed beside it from
its head at the read's start, so that a leader can publish (and adopt in stages,
beatd.staging) while a million entries are read: each page's entries are held as read, and the
names read are told to whoever follows them (`follow_reads`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    ValuesView,
)
from datetime import datetime
from typing import NamedTuple

from beatd.backends.base import RuntimeEntries
from beatd.clock import Clock
from beatd.config.model import Entry
from beatd.config.resolved import EntryBuilder
from beatd.errors import ConfigError, Problem
from beatd.runtime_entries import EntryChange, RuntimeEntry

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2  # seconds between two reads of the feed (a change reaches the plan in 1 s)
PAGE = 1000  # entries of a reload read at a time
# change records read and applied at a time: the leader applies one such page per step of its
# loop, publishing due slots in between, so that a bulk import (10,000 entries) never holds the
# loop longer than a page's reads and builds (tens of ms) however big it is
CHANGES_PAGE = 250


class EntryApplied(NamedTuple):
    """One runtime entry as a change left it: `entry` None when it is gone."""

    name: str
    entry: Entry | None
    written_at: datetime | None  # the write's time by the backend's clock (None: removed)


class FeedRound(NamedTuple):
    """What one poll found: the entries changed, or `reloaded` (every entry read again); `more`:
    the feed holds more after these (poll again); `reading`: the first read of every entry is
    under way (the next poll reads its next page)."""

    changes: tuple[EntryApplied, ...] = ()
    reloaded: bool = False
    more: bool = False
    reading: bool = False


class Taken(NamedTuple):
    """What a `ViewReader` took: every entry held (`reloaded`: the reader starts again from
    these), or the entries changed since its last take: `entries` those held now, with their
    `versions`, `gone` the names no longer held."""

    reloaded: bool
    entries: dict[str, Entry]
    versions: dict[str, int]
    gone: tuple[str, ...] = ()


class ViewReader:
    """Another thread's way to follow what a `RuntimeView` holds without reading or building
    any entry again (the HTTP API's entry index beside the scheduler's view): the names changed
    since its last `take` are noted as the view applies them, under the view's lock. Until its
    first `take` after the view loaded, and after each reload, it takes every entry."""

    def __init__(self, view: RuntimeView) -> None:
        self.view = view
        self.reload = True
        self.changed: set[str] = set()

    def take(self) -> Taken | None:
        """The entries held or changed since the last take; None while the view has not read
        the entries yet."""
        return self.view.taken_by(self)

    def get(self, name: str) -> tuple[Entry, int] | None:
        """Runtime entry `name` held now, and its version (None: none held)."""
        return self.view.held(name)


class RuntimeView:
    """The runtime entries by name, as built entries, and where this node is in the feed.
    Changed by one thread (the loop's); other threads follow it through a `ViewReader`."""

    def __init__(
        self,
        store: RuntimeEntries,
        clock: Clock,
        interval: float = POLL_INTERVAL,
        page: int = PAGE,
        changes_page: int = CHANGES_PAGE,
    ) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.page = page
        self.changes_page = changes_page
        self.entries: dict[str, Entry] = {}
        self.cursor: int | None = None  # None: nothing read yet (the first poll reads all)
        self._versions: dict[str, int] = {}
        self.builder = EntryBuilder()  # shares equal schedules between the entries held
        self._next_at = float("-inf")  # monotonic
        self.applied = 0  # changes applied since start
        self.lag: float | None = None  # seconds from the last put applied to its application
        self._lock = threading.Lock()  # held while the entries change and while a reader takes
        self._readers: list[ViewReader] = []
        self._first: _FirstRead | None = None  # the first read of every entry, under way
        self._reads: list[str] | None = None  # names read since `take_reads` (None: not told)
        self.reloads = 0  # whole reads of every entry after the first (`_load_all`)

    @property
    def loaded(self) -> bool:
        return self.cursor is not None and self._first is None

    @property
    def reading(self) -> bool:
        """Whether the first read of every entry is under way."""
        return self._first is not None

    def follow_reads(self) -> list[str]:
        """Every name held now; from now on the names the first read brings are kept for
        `take_reads` (until `stop_reads`)."""
        self._reads = []
        return list(self.entries)

    def take_reads(self) -> list[str]:
        """The names the first read brought since the last call (see `follow_reads`)."""
        if self._reads is None:
            return []
        reads, self._reads = self._reads, []
        return reads

    def stop_reads(self) -> None:
        self._reads = None

    @property
    def next_at(self) -> float:
        """When (monotonic) the next poll is due."""
        return self._next_at

    def due(self) -> bool:
        return self.clock.monotonic() >= self._next_at

    def version_of(self, name: str) -> int | None:
        """The version of runtime entry `name` held (None: none held)."""
        return self._versions.get(name)

    def reader(self) -> ViewReader:
        """A new reader of the entries held (`ViewReader`)."""
        reader = ViewReader(self)
        with self._lock:
            self._readers.append(reader)
        return reader

    def held(self, name: str) -> tuple[Entry, int] | None:
        """`ViewReader.get`: entry `name` and its version, read under the lock."""
        with self._lock:
            entry = self.entries.get(name)
            return None if entry is None else (entry, self._versions[name])

    def taken_by(self, reader: ViewReader) -> Taken | None:
        """`ViewReader.take`: copies made under the lock, the entries themselves shared."""
        with self._lock:
            if not self.loaded:
                return None
            if reader.reload:
                reader.reload, reader.changed = False, set()
                return Taken(True, dict(self.entries), dict(self._versions))
            changed, reader.changed = reader.changed, set()
            held = {n: e for n in changed if (e := self.entries.get(n)) is not None}
            versions = {n: self._versions[n] for n in held}
            return Taken(False, held, versions, tuple(n for n in changed if n not in held))

    def poll(self, pace: Callable[[], None] | None = None) -> FeedRound:
        """Read one page of the feed after the cursor and apply it: all of it, or (a backend
        error) none of it. `pace` is called between the pages of a reload of every entry (the
        leader renews its lease there). When the feed holds more, the next poll is due at
        once."""
        self._next_at = self.clock.monotonic() + self.interval
        page = self.store.entry_changes(self.cursor, self.changes_page)
        if page.reload and self._first is None and self.cursor is None and not self.entries:
            self._first, self.cursor = _FirstRead(), page.cursor  # followed from here
            return self._read_page(())
        if page.reload and self._first is None:
            self._load_all(pace)
            self.cursor = page.cursor
            return FeedRound(reloaded=True)
        if page.reload:  # the feed moved on past what it keeps during the first read
            self._first = None
            return self.poll(pace)  # read again, at once
        applied = self._apply(page.changes)
        self.cursor = page.cursor
        more = len(page.changes) >= self.changes_page
        if self._first is not None:
            return self._read_page(tuple(applied))
        if more:
            self._next_at = self.clock.monotonic()
        return FeedRound(tuple(applied), more=more)

    def read_all(self) -> None:
        """Poll until every entry is held (the first read at once, not a page a round)."""
        while not self.loaded:
            self.poll()

    def _read_page(self, applied: tuple[EntryApplied, ...]) -> FeedRound:
        """The first read's next page, held as read: an entry the feed brought already is held
        at the newer of the two versions."""
        first = self._first
        assert first is not None
        stored = self.store.list_entries(first.after, self.page)
        built = [(one, entry) for one in stored if (entry := _built(one, self.builder))]
        with self._lock:
            for one, entry in built:
                if self._versions.get(one.name, 0) < one.version:
                    self.entries[one.name], self._versions[one.name] = entry, one.version
        if self._reads is not None:
            self._reads += [one.name for one, _ in built]
        if len(stored) == self.page:
            first.after = stored[-1].name
            self._next_at = self.clock.monotonic()  # the next page at once
            return FeedRound(applied, reading=True)
        self._first = None
        with self._lock:
            for reader in self._readers:
                reader.reload, reader.changed = True, set()
        log.info("read %d runtime entries", len(self.entries))
        return FeedRound(applied, reloaded=True)

    def _apply(self, changes: Sequence[EntryChange]) -> list[EntryApplied]:
        latest = {change.name: change for change in changes}  # each name's last change
        wanted = [name for name, change in latest.items() if self._changes(change)]
        stored = self.store.get_entries(wanted) if wanted else {}  # read all, then hold
        applied = [a for n in wanted if (a := self._hold(n, stored.get(n)))]
        self.applied += len(applied)
        return applied

    def _changes(self, change: EntryChange) -> bool:
        """Whether the record may change what this node holds (else: seen, or never held)."""
        held = self._versions.get(change.name)
        if change.version is None:
            return held is not None
        return held is None or held < change.version

    def _hold(self, name: str, stored: RuntimeEntry | None) -> EntryApplied | None:
        """Hold `stored` (None: no entry) as `name`'s current value; what changed, if anything."""
        entry = _built(stored, self.builder) if stored is not None else None
        if entry is None or stored is None:
            if name not in self._versions:
                return None
            with self._lock:
                del self._versions[name]
                self.entries.pop(name, None)
                self._noted(name)
            return EntryApplied(name, None, None)
        if self._versions.get(name) == stored.version:
            return None
        with self._lock:
            self._versions[name] = stored.version
            self.entries[name] = entry
            self._noted(name)
        self.lag = max(0.0, (self.clock.now() - stored.updated_at).total_seconds())
        return EntryApplied(name, entry, stored.updated_at)

    def _noted(self, name: str) -> None:
        """Note a change of `name` for the readers (call with the lock held). A reader that
        has not taken for most entries' changes takes them all again (the set stays bounded
        when none takes: an API that failed to start)."""
        for reader in self._readers:
            if reader.reload:
                continue
            reader.changed.add(name)
            if len(reader.changed) > max(1000, len(self.entries) // 2):
                reader.reload, reader.changed = True, set()

    def _load_all(self, pace: Callable[[], None] | None) -> None:
        """Read every entry, a page at a time (a page's definitions are dropped once built)."""
        entries: dict[str, Entry] = {}
        versions: dict[str, int] = {}
        builder = EntryBuilder()  # what the entries held before share is let go with them
        after = ""
        while True:
            stored = self.store.list_entries(after, self.page)
            for one in stored:
                entry = _built(one, builder)
                if entry is not None:
                    entries[one.name], versions[one.name] = entry, one.version
            if len(stored) < self.page:
                break
            after = stored[-1].name
            if pace is not None:
                pace()
        with self._lock:
            self.entries, self._versions, self.builder = entries, versions, builder
            for reader in self._readers:
                reader.reload, reader.changed = True, set()
        self.reloads += 1
        log.info("read %d runtime entries", len(entries))


class _FirstRead:
    """Where the first read of every entry is: the last name read."""

    def __init__(self) -> None:
        self.after = ""


def _built(stored: RuntimeEntry, builder: EntryBuilder) -> Entry | None:
    """The entry a stored definition schedules: built as resolved when it has the resolved
    form (`beatd.config.resolved`), else validated as written; None (logged) when this version
    of beatd cannot build it (a definition written by a newer one)."""
    entry = builder.build(stored.name, stored.definition)
    if entry is not None:
        return entry
    try:
        return stored.entry()
    except ConfigError as exc:
        log.error(
            "runtime entry %s (version %d) cannot be scheduled by this beatd and is left out: %s",
            stored.name,
            stored.version,
            exc,
        )
        return None


def name_clashes(files: Mapping[str, Entry], names: Iterable[str]) -> ConfigError | None:
    """The configuration error of file entries whose names runtime entries have (`names`),
    located in their files; None when there is none."""
    problems = []
    for name in sorted(names):
        entry = files.get(name)
        if entry is None:
            continue
        path, _, line = entry.source.rpartition(":")
        problems.append(
            Problem(
                path or entry.source,
                int(line) if line.isdigit() else 1,
                1,
                "the name is taken by a runtime entry (source api); names are unique across "
                "schedule files and runtime entries: rename the entry in this file, or remove "
                "the runtime entry first",
                name,
            )
        )
    return ConfigError(problems) if problems else None


def file_paths(entries: Mapping[str, Entry]) -> dict[str, str]:
    """Each file entry's name and the file that defines it (`register_file_entries`)."""
    return {
        name: entry.source.rpartition(":")[0] or entry.source for name, entry in entries.items()
    }


class PlannedEntries:
    """What the leader plans: the files' entries, and the runtime entries (`view`) of other
    names. A runtime entry named like a file entry is left out (logged): the file wins, and
    a file that brings such a name is refused (`clash`)."""

    def __init__(self, view: RuntimeView, files: Mapping[str, Entry]) -> None:
        self.view = view
        self.files = files
        self.entries = Planned(view, files)

    def use(self, files: Mapping[str, Entry]) -> None:
        """Plan these file entries with the runtime entries held now."""
        self.files = files
        self.entries = Planned(self.view, files)

    def clash(self, files: Mapping[str, Entry]) -> ConfigError | None:
        """The configuration error of file entries named like runtime entries held now."""
        return name_clashes(files, self.view.entries.keys()) if self.view.loaded else None

    def apply(self, change: EntryApplied) -> bool:
        """Take one runtime entry's change (the view holds it already); False when it is left
        out (a file's name)."""
        name = change.name
        if name in self.files and change.entry is None:
            return False  # it was left out
        if name in self.files:
            log.error(
                "runtime entry %s is left out: %s defines an entry of that name; names are "
                "unique across schedule files and runtime entries",
                name,
                self.files[name].source,
            )
            return False
        return True


class Planned(Mapping[str, Entry]):
    """The files' entries, then the runtime entries the view holds of other names: read
    through, not copied (a dict of a million names is about 40 MB), so it follows the view's
    changes as they are applied."""

    def __init__(self, view: RuntimeView, files: Mapping[str, Entry]) -> None:
        self.view = view
        self.files = files

    def __getitem__(self, name: str) -> Entry:
        entry = self.files.get(name)
        return self.view.entries[name] if entry is None else entry

    def __contains__(self, name: object) -> bool:
        return name in self.files or name in self.view.entries

    def __iter__(self) -> Iterator[str]:
        files = self.files
        yield from files
        yield from (name for name in self.view.entries if name not in files)

    def __len__(self) -> int:
        runtime = self.view.entries
        return len(self.files) + len(runtime) - sum(1 for name in self.files if name in runtime)

    def items(self) -> ItemsView[str, Entry]:
        return _Items(self)

    def values(self) -> ValuesView[Entry]:
        return _Values(self)


class _Items(ItemsView[str, Entry]):
    """`Planned.items()` walked at the speed of the dicts' own (a pass of a million entries
    through `__getitem__` takes 0.6 s)."""

    _mapping: Planned

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        files = self._mapping.files
        yield from files.items()
        yield from ((n, e) for n, e in self._mapping.view.entries.items() if n not in files)


class _Values(ValuesView[Entry]):
    _mapping: Planned

    def __iter__(self) -> Iterator[Entry]:
        files = self._mapping.files
        yield from files.values()
        yield from (e for n, e in self._mapping.view.entries.items() if n not in files)
