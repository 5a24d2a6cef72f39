"""What the HTTP API's handlers reach: the backend (one connection per server thread, apart
from the scheduler's), the configuration the daemon runs now, and the clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from beatd.backends import Backend
from beatd.clock import WallClock
from beatd.config import Config
from beatd.entry_index import EntryIndex
from beatd.operations.status import RunTotals


class ApiContext:
    def __init__(
        self,
        open_backend: Callable[[], Backend],
        config: Callable[[], Config | None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        counts: Callable[[], dict[str, RunTotals] | None] = lambda: None,
        node: str = "",
        history_max_age: timedelta = timedelta(days=30),
        entry_index: EntryIndex | None = None,
    ) -> None:
        self._open_backend = open_backend
        self.config = config
        self.now = now
        self.counts = counts  # this node's own run counts since it started (None: not known)
        self.node = node
        self.history_max_age = history_max_age  # the run history's retention: backfill's bound
        # fed by a thread of its own (`beatd run` starts it); without one, each read catches up
        self.entry_index = entry_index
        self._inline = entry_index is None
        self._local = threading.local()
        self._opened: list[Backend] = []
        self._lock = threading.Lock()

    def backend(self) -> Backend:
        """This thread's own backend connection, opened on first use."""
        store: Backend | None = getattr(self._local, "backend", None)
        if store is None:
            store = self._open_backend()
            self._local.backend = store
            with self._lock:
                self._opened.append(store)
        return store

    def index(self) -> EntryIndex:
        """The node's entry index; one built here, and caught up at each read, when none was
        given (a server without a feeding thread: tests, tools)."""
        with self._lock:
            if self.entry_index is None:
                self.entry_index = EntryIndex(self._open_backend, self.config, WallClock(self.now))
            index = self.entry_index
        if self._inline:
            index.catch_up()
        return index

    def zones(self) -> dict[str, str]:
        """Each configured entry's timezone."""
        config = self.config()
        if config is None:
            return {}
        return {name: entry.timezone for name, entry in config.entries.items()}

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for store in opened:
            store.close()
        if self._inline and self.entry_index is not None:
            self.entry_index.close()
