"""The in-memory backend's runtime entries (`RuntimeEntries` in beatd.backends.base): the
entries, the registered file-entry names and the change feed in the store's `Shelf`, changed
under the store's lock together with the audit record in its `Book`."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from operator import attrgetter

from beatd.backends.base import Lease
from beatd.backends.memory_controls import Book
from beatd.controls import new_audit_id
from beatd.runtime_entries import (
    FEED_RETENTION,
    ChangePage,
    EntryChange,
    EntryPut,
    EntryWrites,
    RuntimeEntry,
    check_remove,
    entry_audit,
    page_of,
    plan_puts,
)


@dataclass
class Shelf:
    """One store's runtime entries (and their names in order, for pages), file-entry names and
    change feed."""

    entries: dict[str, RuntimeEntry] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # sorted
    files: dict[str, str] = field(default_factory=dict)
    feed: deque[EntryChange] = field(default_factory=deque)
    head: int = 0  # the last change's seq

    def store(self, entry: RuntimeEntry, retention: int) -> None:
        if entry.name not in self.entries:
            bisect.insort(self.names, entry.name)
        self.entries[entry.name] = entry
        self.changed(entry.name, entry.version, retention)

    def drop(self, name: str, retention: int) -> None:
        del self.entries[name]
        del self.names[bisect.bisect_left(self.names, name)]
        self.changed(name, None, retention)

    def changed(self, name: str, version: int | None, retention: int) -> None:
        self.head += 1
        self.feed.append(EntryChange(self.head, name, version))
        while len(self.feed) > max(retention, 1):
            self.feed.popleft()


class MemoryEntries(EntryWrites):
    """The `RuntimeEntries` role over `_shelf` under `_lock` (audit records into `_book`)."""

    feed_retention: int = FEED_RETENTION
    _lock: threading.Lock
    _shelf: Shelf
    _book: Book
    _now: Callable[[], float]
    _check_lease: Callable[[Lease], None]

    def _put(self, puts: Sequence[EntryPut], by: str, request_id: str | None) -> list[RuntimeEntry]:
        with self._lock:
            shelf, names = self._shelf, [p.entry.name for p in puts]
            at = datetime.fromtimestamp(self._now(), UTC)
            current = [shelf.entries.get(n) for n in names]
            files = [shelf.files.get(n) for n in names]
            outcomes = plan_puts(puts, current, files, at, by, request_id, shelf.head)
            for stored, before, written in outcomes:
                if written:
                    shelf.store(stored, self.feed_retention)
                    record = entry_audit(new_audit_id(), at, by, before, stored, request_id)
                    self._book.audit[record.id] = record
            return [o.stored for o in outcomes]

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        with self._lock:
            shelf = self._shelf
            current = shelf.entries.get(name)
            removed = check_remove(name, current, shelf.files.get(name), expected_version)
            at = datetime.fromtimestamp(self._now(), UTC)
            shelf.drop(name, self.feed_retention)
            record = entry_audit(new_audit_id(), at, by, removed, None, None)
            self._book.audit[record.id] = record
            return removed

    def get_entry(self, name: str) -> RuntimeEntry | None:
        with self._lock:
            return self._shelf.entries.get(name)

    def get_entries(self, names: Sequence[str]) -> dict[str, RuntimeEntry]:
        with self._lock:
            held = self._shelf.entries
            return {n: e for n in names if (e := held.get(n)) is not None}

    def list_entries(self, after: str = "", limit: int = 1000) -> list[RuntimeEntry]:
        with self._lock:
            names = self._shelf.names
            start = bisect.bisect_right(names, after)
            return [self._shelf.entries[n] for n in names[start : start + max(limit, 0)]]

    def entry_changes(self, cursor: int | None, limit: int = 1000) -> ChangePage:
        with self._lock:
            feed, head = self._shelf.feed, self._shelf.head
            oldest = feed[0].seq if feed else head + 1

            def after(seen: int) -> list[EntryChange]:
                start = bisect.bisect_right(feed, seen, key=attrgetter("seq"))
                return list(islice(feed, start, start + max(limit, 0)))

            return page_of(cursor, head, oldest, after)

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        with self._lock:
            self._check_lease(lease)
            colliding = sorted(n for n in files if n in self._shelf.entries)
            if not colliding:
                self._shelf.files = dict(files)
            return colliding

    def file_entries(self) -> dict[str, str]:
        with self._lock:
            return dict(self._shelf.files)

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        with self._lock:
            added = [e for e in entries if e.name not in self._shelf.entries]
            # no entry created later may take a version an imported one has (see `version`)
            self._shelf.head = max([self._shelf.head, *(e.version for e in added)])
            for entry in added:
                self._shelf.store(entry, self.feed_retention)
            return len(added)
