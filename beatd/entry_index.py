"""A node's index of every entry, for the console's entries page (`GET /v1/entry-index`, issue
19): the file entries of the configuration it runs and the runtime entries, each with its
schedule in words, its next due time, how its last run ended and whether it is paused, kept in
memory so that a filtered, sorted page of 100,000 entries costs one pass over them.

What it holds comes from three places, each read as cheaply as it changes:
- the file entries from the running configuration, taken again whenever it is replaced (SIGHUP);
- the runtime entries from the view of them this node's scheduler holds (`beatd run`: the
  scheduler's `beatd.entry_feed.RuntimeView`, followed through a `ViewReader`, so that no
  entry is read or built twice), or, without a scheduler (tools, tests), from a view of its own
  that follows the backend's change feed: one read per change, every entry read again only on
  `reload`;
- the persisted horizons, the runs' summaries and the controls, read by `refresh` in pieces of
  REFRESH_PIECE entries, each after a gap in the scheduling loop's rounds (`beatd.turns`), at
  most every `interval` seconds and never more than a fifth of the time (a refresh that took
  1 s waits 4 s): a row's next due time is recomputed only when its horizon or definition
  changed, so a refresh costs a schedule step per entry that moved, not per entry.

Between refreshes a next due time may have passed while the leader has published it: the page
shows it until the next refresh. The orders by next due and by last status are computed by the
refresh (one sort each); entries added since are merged into them at the page's time.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from beatd.backends import Backend
from beatd.clock import Clock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.controls import EntryControl
from beatd.entry_feed import RuntimeView, Taken, ViewReader
from beatd.errors import BeatdError
from beatd.history import FAILED_FINALLY, EntrySummary
from beatd.runtime_entries import API_SOURCE
from beatd.schedules import Schedule
from beatd.state import EntryState
from beatd.turns import LoopTurns

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 5.0  # seconds between two bulk reads of horizons, summaries and controls
REFRESH_SHARE = 0.2  # at most this share of the time spent refreshing
REFRESH_PIECE = 500  # entries read and refreshed at a time: a few ms of the GIL
FEED_INTERVAL = 1.0  # seconds between two reads of the change feed
SORTS = ("name", "next_due", "last_status")
_LAST = "\U0010ffff"  # sorts after every status
# An IndexRow's fields set from its entry (a changed entry makes a new row), and those a
# refresh moves that pages group the rows by (the overview's paused and failing entries)
ENTRY_FIELDS = frozenset({"name", "source", "task", "queue", "version"})
REFRESHED_GROUPS = ("paused", "last_status")
_NEVER = float("inf")


@dataclass(slots=True)
class IndexRow:
    """One entry as the index shows it."""

    name: str
    source: str  # "api" or "file"
    entry: Entry
    schedule: str  # in words
    version: int | None  # a runtime entry's; None for a file entry
    task: str = ""  # the entry's, held flat: a filter reads one attribute per row
    queue: str = ""
    horizon: datetime | None = None  # the persisted last slot its next due was computed from
    computed: bool = False  # whether next_due was computed from `horizon`
    next_due: datetime | None = None
    due_ts: float = _NEVER  # next_due as a POSIX time (inf: none), the next_due order's key
    last_status: str | None = None
    last_duration_s: float | None = None
    failures: int = 0  # consecutive final failures (the history's summary)
    paused: bool = False

    @property
    def failing(self) -> bool:
        threshold = self.entry.alert_after_failures or 1
        return self.last_status in FAILED_FINALLY and self.failures >= threshold

    def overdue(self, now: datetime) -> bool:
        """Its next due time passed more than its misfire grace ago, and it is not paused."""
        due = self.next_due
        return not self.paused and due is not None and now - due > self.entry.misfire_grace

    def as_json(self) -> dict[str, Any]:
        due = self.next_due
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "queue": self.queue,
            "schedule": self.schedule,
            "timezone": self.entry.timezone,
            "next_due": None if due is None else due.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "last_status": self.last_status,
            "last_duration_s": self.last_duration_s,
            "paused": self.paused,
            "version": self.version,
        }


class IndexQuery(NamedTuple):
    """A page: the filters (None: any), the order, and where it starts."""

    name: str = ""  # a substring of the name
    task: str | None = None
    queue: str | None = None
    source: str | None = None  # "api" or "file"
    status: str | None = None  # the last run's status
    paused: bool | None = None
    sort: str = "name"
    offset: int = 0
    limit: int = 50
    exact: str = ""  # the whole name: one look-up (an entry's page), the other filters too


class IndexPage(NamedTuple):
    total: int  # rows matching the filters
    rows: list[IndexRow]
    tag: str = ""  # the index's tag when it was read (EntryIndex.tag)


def _due_key(row: IndexRow) -> float:
    return row.due_ts


def _status_key(row: IndexRow) -> str:
    return row.last_status or _LAST


# Each order sorts rows already in name order, and Python's sort is stable: ties stay by name.
KEYS: dict[str, Callable[[IndexRow], Any]] = {"next_due": _due_key, "last_status": _status_key}


class IndexNotReady(BeatdError):
    """The index is still being built (GET /v1/entry-index answers 503)."""


def _refuse_unless(ready: threading.Event) -> None:
    if not ready.is_set():
        raise IndexNotReady(
            "this node's entry index is still being built (it reads every entry once at "
            "start); try again in a few seconds"
        )


class EntryIndex:
    """Every entry as `IndexRow`s, by name; `page` answers a query. Fed by `run` (a thread of
    its own, with its own backend connection) or, in tests, by `build`, `follow` and
    `refresh` called in turn. `view`: the runtime entries' view this node's scheduler holds
    (followed, never polled here); None: the index reads them with a view of its own."""

    def __init__(
        self,
        open_backend: Callable[[], Backend],
        config: Callable[[], Config | None],
        clock: Clock,
        interval: float = REFRESH_INTERVAL,
        feed_interval: float = FEED_INTERVAL,
        view: RuntimeView | None = None,
        turns: LoopTurns | None = None,
    ) -> None:
        self._open_backend = open_backend
        # each piece of a refresh waits for a gap in the scheduling loop's rounds
        self._wait_gap: Callable[[], float] = turns.wait_gap if turns is not None else _no_wait
        self._config = config
        self.clock = clock
        self.interval = interval
        self.feed_interval = feed_interval
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._rows: dict[str, IndexRow] = {}
        self._names: list[str] = []  # sorted
        self._files: dict[str, Entry] = {}
        self._orders: dict[str, list[IndexRow]] = {key: [] for key in KEYS}
        self._fresh: set[str] = set()  # names added since the orders were computed
        self._generation = 0  # moves at every change of the rows held (the caches' key)
        self._changes = 0  # moves at every row added, replaced or removed (not at a refresh)
        self._orders_at = -1  # `_changes` when `_orders` were computed: exact while it stays
        self._by_name: tuple[int, list[IndexRow]] = (-1, [])  # (`_changes`, rows by name)
        self._instance = secrets.token_hex(4)  # a tag of this index is no other index's
        self._cache: dict[str, tuple[int, Ordered]] = {}
        self._config_seen: Config | None = None
        self._store: Backend | None = None
        self._view: RuntimeView | None = None  # its own, polled by `follow` (no `view` given)
        self._reader: ViewReader | None = view.reader() if view is not None else None
        self._next_refresh = float("-inf")  # monotonic
        self.refreshed_in = 0.0  # seconds the last refresh took
        self._feeding = threading.Lock()  # one feeder at a time (`run`'s thread, or `catch_up`)

    # --- feeding --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Build, then follow the feed and refresh until `stop` is set (backend errors are
        logged and retried at the next turn)."""
        while not stop.is_set():
            try:
                self.catch_up()
            except BeatdError as exc:
                log.warning("entry index: cannot read the backend, will retry: %s", exc)
            self.clock.sleep(self.feed_interval, stop)
        self.close()

    def start(self) -> threading.Event:
        """Run `run` in a thread of its own (a daemon thread); set the event returned to stop."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="entry-index", daemon=True).start()
        return stop

    def catch_up(self) -> None:
        """Build (the first time), follow the feed to its head, and refresh when due: what a
        caller without `run`'s thread does before it reads."""
        with self._feeding:
            if not self.ready.is_set():
                self.build()
                return
            self.follow()
            if self.clock.monotonic() >= self._next_refresh:
                self.refresh()

    def build(self) -> None:
        """Take every runtime entry (from the scheduler's view, else read by a view of its own)
        and the configuration's file entries, then refresh. Not ready while the scheduler's
        view has not read the entries yet: the next call tries again."""
        if self._reader is None:
            self._view = RuntimeView(self.store(), self.clock)
            self._view.read_all()
            self._reader = self._view.reader()
        taken = self._reader.take()
        if taken is None:
            return
        self._take_files(self._config())
        self._rebuild(taken)
        self.refresh()
        self.ready.set()
        log.info("entry index built: %d entries", len(self._rows))

    def follow(self) -> None:
        """Apply the runtime entries changed since the last call, and a replaced configuration
        (only the file entries' rows are looked at)."""
        config = self._config()
        if config is not self._config_seen:
            before = self._files
            self._take_files(config)
            self._files_changed(before)
        if self._view is not None:  # its own view: the feed read to its head
            while self._view.poll().more:
                pass
        taken = self._reader.take() if self._reader is not None else None
        if taken is None:
            return
        if taken.reloaded:
            self._rebuild(taken)
            return
        for name, entry in taken.entries.items():
            self._replace(name, entry, taken.versions[name])
        for name in taken.gone:
            self._replace(name, None, None)

    def refresh(self) -> None:
        """Read the horizons, summaries and controls of every entry, and recompute the next
        due times that moved and the orders, a piece at a time (`_refresh_pieces`)."""
        started, gaps = self.clock.monotonic(), Gaps(self._wait_gap)
        with self._lock:
            rows, changes = self._ordered("name").rows, self._changes
        moved, shown = _refresh_pieces(self.store(), rows, self.clock.now, gaps)
        with self._lock:
            stale = self._fresh or any(len(o) != len(rows) for o in self._orders.values())
        if moved or stale:
            orders = _sorted_orders(rows, gaps)
            taken = {row.name: row for row in rows}
            with self._lock:
                self._orders = orders  # rows added or replaced since the snapshot stay fresh
                self._orders_at = changes
                held = self._rows
                self._fresh = {n for n in self._fresh if n in held and taken.get(n) is not held[n]}
                self._generation += 1
        elif shown:  # a figure pages show moved, no order did: a cached page is stale
            with self._lock:
                self._generation += 1
        gaps()
        self._prepare()
        ended = self.clock.monotonic()
        self.refreshed_in = max(0.0, ended - started - gaps.waited)  # its work, not its waits
        rest = self.refreshed_in * (1 - REFRESH_SHARE) / REFRESH_SHARE
        self._next_refresh = max(started + self.interval, ended + rest)

    def _prepare(self) -> None:
        """Make here, in the index's thread, what the first page after a refresh would
        otherwise make in its request: the orders, and the name order's grouping by the
        figures a refresh moves (the overview's paused and failing entries)."""
        with self._lock:
            ordered = {sort: self._ordered(sort) for sort in SORTS}
        for field in REFRESHED_GROUPS:
            ordered["name"].having(field, None)

    def store(self) -> Backend:
        if self._store is None:
            self._store = self._open_backend()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _take_files(self, config: Config | None) -> None:
        self._config_seen = config
        self._files = dict(config.entries) if config is not None else {}

    def _rebuild(self, taken: Taken) -> None:
        """Rows for every entry held now: the files' and the runtime entries (`taken`, all of
        them) of other names (a row whose entry is unchanged is kept as it is)."""
        runtime, versions = taken.entries, taken.versions
        names = {*runtime, *self._files}
        with self._lock:
            for name in [n for n in self._rows if n not in names]:
                del self._rows[name]
                self._changes += 1
        now, nexts, words = self.clock.now(), NextDues(), ScheduleWords()
        for name in names:
            held, version = runtime.get(name), versions.get(name)
            self._replace(name, held, version, bulk=True, now=now, nexts=nexts, words=words)
        with self._lock:
            self._names = sorted(self._rows)
            self._generation += 1
            self._changes += 1

    def _files_changed(self, before: dict[str, Entry]) -> None:
        """The rows of the names the files held before or hold now follow the entry of the name
        now (a runtime entry's again where a file's left): work in proportion to the files."""
        reader, now, nexts = self._reader, self.clock.now(), NextDues()
        moved = False
        for name in {*before, *self._files}:
            held = reader.get(name) if reader is not None and name not in self._files else None
            entry, version = held if held is not None else (None, None)
            moved |= self._replace(name, entry, version, bulk=True, now=now, nexts=nexts)
        with self._lock:
            if moved:  # a name came or went: sorted again (a reload's rare cost)
                self._names = sorted(self._rows)
                self._changes += 1
            self._generation += 1

    def _replace(
        self,
        name: str,
        runtime: Entry | None,
        version: int | None,
        *,
        bulk: bool = False,
        now: datetime | None = None,
        nexts: NextDues | None = None,
        words: ScheduleWords | None = None,
    ) -> bool:
        """Make `name`'s row follow the entry held now: the files' of that name, else `runtime`
        at `version` (neither: the row goes). `bulk`: the caller sorts the names afterwards.
        True when the row came or went."""
        entry = self._files.get(name) or runtime
        if name in self._files:
            version = None
        with self._lock:
            row = self._rows.get(name)
            if entry is None:
                if row is not None:
                    self._generation += 1
                    self._changes += 1
                    del self._rows[name]
                    if not bulk:
                        del self._names[bisect_left(self._names, name)]
                return row is not None
            if row is not None and row.entry is entry and row.version == version:
                return False
            if row is None and not bulk:
                insort(self._names, name)
            fresh = _new_row(name, entry, version, row, words or ScheduleWords())
            _next_due(fresh, fresh.horizon, now or self.clock.now(), nexts)
            self._rows[name] = fresh
            self._fresh.add(name)
            self._generation += 1
            self._changes += 1
            return row is None

    # --- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def tag(self) -> str:
        """Moves whenever anything a page shows may have changed, and no index has another's:
        an answer kept under a tag is good while the tag stays (a refresh under way shows its
        changes under the next one). IndexNotReady."""
        _refuse_unless(self.ready)
        with self._lock:
            return f"{self._instance}-{self._generation}"

    def page(self, query: IndexQuery) -> IndexPage:
        """The rows `query` asks for, how many match its filters, and the tag read with them;
        IndexNotReady."""
        _refuse_unless(self.ready)
        with self._lock:
            tag = f"{self._instance}-{self._generation}"
            by_name = None
            if query.exact:
                row = self._rows.get(query.exact)
                ordered = Ordered([] if row is None else [row])
            else:  # nobody changes it: filtered without the lock
                ordered = self._ordered(query.sort)
                by_name = self._ordered("name") if query.name else None
        found = filtered(ordered, query, by_name)
        return IndexPage(len(found), found[query.offset : query.offset + query.limit], tag)

    def overdue(self, now: datetime) -> list[IndexRow]:
        """The rows overdue at `now` (IndexRow.overdue), by next due."""
        with self._lock:
            ordered = self._ordered("next_due")
        return _overdue_in(ordered, now)

    def failing(self) -> list[IndexRow]:
        """The rows failing (IndexRow.failing), by name."""
        with self._lock:
            ordered = self._ordered("name")
        return _failing_in(ordered)

    def rows(self) -> list[IndexRow]:
        """Every row, by name."""
        with self._lock:
            return self._ordered("name").rows

    def _ordered(self, sort: str) -> Ordered:
        """Every row in the order `sort` names (call with the lock held): made once per change
        of the rows, then shared (a change makes a new one); after a refresh that moved figures
        only, the refresh's orders and the name order are taken as they are."""
        cached = self._cache.get(sort)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        rows = self._rows
        if sort == "name":
            if self._by_name[0] != self._changes:
                self._by_name = (self._changes, _held(rows, self._names))
            ordered = self._by_name[1]
        elif self._orders_at == self._changes:  # the refresh's order holds exactly these rows
            ordered = self._orders[sort]
        else:
            ordered = _with_fresh(self._orders[sort], rows, self._fresh, KEYS[sort])
        self._cache[sort] = (self._generation, Ordered(ordered, cached[1] if cached else None))
        return self._cache[sort][1]


def _held(rows: dict[str, IndexRow], names: list[str]) -> list[IndexRow]:
    """The rows of `names` that are held. A reload sorts the names once at its end: until then
    a row it removed may still be named (and one it added not yet named), so a page asked in
    between shows the rows that are there."""
    named = (rows.get(name) for name in names)
    return [row for row in named if row is not None]


def _with_fresh(
    order: list[IndexRow],
    rows: dict[str, IndexRow],
    fresh: set[str],
    key: Callable[[IndexRow], Any],
) -> list[IndexRow]:
    """`order`, a refresh's, without the rows replaced or removed since, and with the rows
    added or replaced since (`fresh`) merged in by `key`."""
    known = (row for row in order if rows.get(row.name) is row)
    added = sorted((rows[name] for name in sorted(fresh) if name in rows), key=key)
    return list(_merged(known, added, key)) if added else list(known)


def _new_row(
    name: str, entry: Entry, version: int | None, before: IndexRow | None, words: ScheduleWords
) -> IndexRow:
    """`name`'s row for `entry`: the figures of the row `before` it stay (the next due is the
    caller's to compute, from the new definition)."""
    source = API_SOURCE if entry.source == API_SOURCE else "file"
    row = IndexRow(name, source, entry, words.of(entry.schedule), version, entry.task, entry.queue)
    if before is not None:
        row.last_status, row.last_duration_s = before.last_status, before.last_duration_s
        row.failures, row.paused, row.horizon = before.failures, before.paused, before.horizon
    return row


def _overdue_in(ordered: Ordered, now: datetime) -> list[IndexRow]:
    """The rows of `ordered` (by next due) overdue at `now`: only those whose next due has
    passed are looked at."""
    limit, found = now.timestamp(), []
    for row in ordered.rows:
        if row.due_ts > limit:
            break
        if row.overdue(now):
            found.append(row)
    return found


def _failing_in(ordered: Ordered) -> list[IndexRow]:
    """The rows of `ordered` failing, by name: only those whose last run ended failed or
    dead-lettered are looked at."""
    ended = (
        row for status in sorted(FAILED_FINALLY) for row in ordered.having("last_status", status)
    )
    return sorted((row for row in ended if row.failing), key=lambda row: row.name)


class ScheduleWords:
    """Each schedule's words in one pass over the rows: one text per schedule object (runtime
    entries share their equal schedules: one text for thousands of rows)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Schedule, str]] = {}  # by the schedule's id

    def of(self, schedule: Schedule) -> str:
        known = self._known.get(id(schedule))
        if known is not None and known[0] is schedule:
            return known[1]
        words = schedule.describe()
        self._known[id(schedule)] = (schedule, words)
        return words


class Ordered:
    """Rows in one order, and (made at the first search) their names as one text, one a line,
    so that a name's substring is found by the text's own search rather than row by row.
    `before`: the order it follows; of the same rows list, what it made that a refresh cannot
    move (the names' text, the groupings by the entry's own fields) is taken over."""

    def __init__(self, rows: list[IndexRow], before: Ordered | None = None) -> None:
        self.rows = rows
        self._text: tuple[str, list[int]] | None = None
        self._groups: dict[str, dict[Any, list[IndexRow]]] = {}
        if before is not None and before.rows is rows:
            self._text = before._text
            self._groups = {f: g for f, g in before._groups.items() if f in ENTRY_FIELDS}

    def having(self, field: str, value: object) -> list[IndexRow]:
        """The rows whose `field` is `value`, in order (the rows grouped by that field at the
        first ask: later asks are one look-up)."""
        groups = self._groups.get(field)
        if groups is None:  # two threads may both make it: the same value
            groups = {}
            for row in self.rows:
                groups.setdefault(getattr(row, field), []).append(row)
            self._groups[field] = groups
        return groups.get(value, [])

    def text(self) -> tuple[str, list[int]]:
        """The names joined by newlines, and where each starts."""
        if self._text is None:  # two threads may both make it: the same value
            starts, at = [], 0
            for row in self.rows:
                starts.append(at)
                at += len(row.name) + 1
            self._text = ("\n".join(row.name for row in self.rows), starts)
        return self._text

    def containing(self, part: str) -> list[IndexRow] | None:
        """The rows whose name contains `part`, in order; None when a row-by-row pass is as
        cheap (`part` matches an eighth of the rows or more, or holds a newline)."""
        if "\n" in part:
            return None
        text, starts = self.text()
        if text.count(part) * 8 >= len(self.rows):
            return None
        found: list[IndexRow] = []
        at = text.find(part)
        while at >= 0:
            index = bisect_right(starts, at) - 1
            found.append(self.rows[index])
            after = starts[index + 1] if index + 1 < len(starts) else len(text)
            at = text.find(part, after)
        return found


def filtered(ordered: Ordered, query: IndexQuery, by_name: Ordered | None = None) -> list[IndexRow]:
    """The rows that match `query`'s filters, in their order: a name's substring first when
    few rows hold it, else the rows of the narrowest exact filter (a look-up), then one pass
    per filter left. `by_name`: the same rows by name, whose names' text outlives the other
    orders (a refresh makes those again): a name's few rows are found there, then put in
    `ordered`'s order."""
    exact = [
        (field, value)
        for field, value in (
            ("task", query.task),
            ("queue", query.queue),
            ("last_status", query.status),
            ("source", query.source),
            ("paused", query.paused),
        )
        if value is not None
    ]
    part = query.name
    searched = by_name if by_name is not None and query.sort in KEYS else ordered
    narrowed = searched.containing(part) if part else None
    if narrowed is not None:
        rows, part = narrowed, ""
        if searched is not ordered:  # by name; each order keeps ties by name (a stable sort)
            rows.sort(key=KEYS[query.sort])
    elif exact:
        groups = [(ordered.having(field, value), field) for field, value in exact]
        rows, first = min(groups, key=lambda group: len(group[0]))
        exact = [(field, value) for field, value in exact if field != first]
    else:
        rows = ordered.rows
    for field, value in exact:
        rows = [r for r in rows if getattr(r, field) == value]
    if part:
        rows = [r for r in rows if part in r.name]
    return rows


def _merged(
    known: Iterator[IndexRow], fresh: list[IndexRow], key: Callable[[IndexRow], Any]
) -> Iterable[IndexRow]:
    """Both in one order, ties by name (each is in order, ties by name)."""
    seen = {row.name for row in fresh}
    rest = (r for r in known if r.name not in seen)
    return heapq.merge(rest, fresh, key=lambda r: (key(r), r.name))


class Gaps:
    """Waits for gaps in the scheduling loop's rounds (`beatd.turns`) before each piece of a
    refresh, adding up the seconds waited, which the refresh's share of the time leaves out."""

    def __init__(self, wait_gap: Callable[[], float]) -> None:
        self._wait_gap = wait_gap
        self.waited = 0.0

    def __call__(self) -> None:
        self.waited += self._wait_gap()


def _refresh_pieces(
    store: Backend, rows: list[IndexRow], now: Callable[[], datetime], gap: Gaps
) -> tuple[bool, bool]:
    """`_refresh_rows` of REFRESH_PIECE rows at a time, each after a gap, with the states and
    summaries of its rows (every entry has them) and its own now (pieces may span seconds);
    the controls, which few entries have, read at once (asked by name, they cost three times a
    state on Redis)."""
    moved = shown = False
    controls, nexts = store.load_controls(None), NextDues()
    for at in range(0, len(rows), REFRESH_PIECE):
        gap()
        piece = rows[at : at + REFRESH_PIECE]
        names = [row.name for row in piece]
        read = (store.states_of(names), store.summaries(names))
        piece_moved, piece_shown = _refresh_rows(piece, *read, controls, now(), nexts)
        moved, shown = moved or piece_moved, shown or piece_shown
    return moved, shown


def _sorted_orders(rows: list[IndexRow], gap: Gaps) -> dict[str, list[IndexRow]]:
    """Each order, sorted after a gap (at 1,000,000 entries a sort holds the GIL for about a
    second: one piece)."""
    orders = {}
    for key, sort_key in KEYS.items():
        gap()
        orders[key] = sorted(rows, key=sort_key)
    return orders


def _no_wait() -> float:
    return 0.0


def _refresh_rows(
    rows: list[IndexRow],
    states: dict[str, EntryState],
    summaries: dict[str, EntrySummary],
    controls: dict[str, EntryControl],
    now: datetime,
    nexts: NextDues,
) -> tuple[bool, bool]:
    """Each row refreshed (`_refreshed`, `_paused`); whether an order's key moved, and whether
    anything else a page shows did (a last duration)."""
    moved = shown = False
    for row in rows:
        before = (row.due_ts, row.last_status, row.paused)
        duration = row.last_duration_s
        _refreshed(row, states.get(row.name), summaries.get(row.name), now, nexts)
        _paused(row, controls.get(row.name), now)
        moved = moved or before != (row.due_ts, row.last_status, row.paused)
        shown = shown or duration != row.last_duration_s
    return moved, shown


def _refreshed(
    row: IndexRow,
    state: EntryState | None,
    summary: EntrySummary | None,
    now: datetime,
    nexts: NextDues,
) -> None:
    """Take the row's persisted horizon (its next due recomputed when it moved; without one,
    when it has passed: a leader starts such an entry from now, as `beatd status` says) and its
    summary."""
    adopted = state is not None and state.identity == row.entry.identity
    horizon = nexts.shared(state.last_slot) if state is not None and adopted else None
    passed = horizon is None and row.next_due is not None and row.next_due <= now
    if not row.computed or horizon != row.horizon or passed:
        _next_due(row, horizon, now, nexts)
    row.last_status = summary.last_status if summary is not None else None
    duration = summary.last_duration if summary is not None else None
    row.last_duration_s = None if duration is None else round(duration.total_seconds(), 3)
    row.failures = summary.consecutive_failures if summary is not None else 0


class NextDues:
    """The next slots computed in one pass over the rows, by schedule object and start: rows
    sharing both (runtime entries share their equal schedules, and most start from the same
    horizon or from now) take one computation, and one time object, between them."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, datetime], tuple[Schedule, datetime | None, float]] = {}
        self._times: dict[datetime, datetime] = {}

    def shared(self, moment: datetime) -> datetime:
        """One object per equal time (a row keeps its horizon: the states read are let go)."""
        return self._times.setdefault(moment, moment)

    def after(self, schedule: Schedule, start: datetime) -> tuple[datetime | None, float]:
        """The schedule's first slot after `start`, and it as a POSIX time (inf: none)."""
        key = (id(schedule), start)
        known = self._known.get(key)
        if known is not None and known[0] is schedule:
            return known[1], known[2]
        slot = schedule.next_after(start)
        stamp = _NEVER if slot is None else slot.timestamp()
        self._known[key] = (schedule, slot, stamp)
        return slot, stamp


def _next_due(
    row: IndexRow, horizon: datetime | None, now: datetime, nexts: NextDues | None = None
) -> None:
    """The first slot after the horizon (after now when there is none: a leader starts an entry
    new to it from now), plus its jitter."""
    entry = row.entry
    slot, stamp = (nexts or NextDues()).after(entry.schedule, horizon or now)
    row.horizon, row.computed = horizon, True
    if slot is not None and entry.jitter:
        row.next_due = entry.due_for(slot)
        row.due_ts = row.next_due.timestamp()
    else:
        row.next_due, row.due_ts = slot, stamp


def _paused(row: IndexRow, control: EntryControl | None, now: datetime) -> None:
    pause = control.pause if control is not None else None
    row.paused = pause is not None and (pause.until is None or pause.until > now)
