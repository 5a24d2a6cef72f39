"""The in-memory backend's node records (`Nodes` in beatd.backends.base), in the store's
`NodeBook`, under the store's lock, kept by the handle's wall clock; and the console's
session key (`SessionKeys`), beside them in the book."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from beatd.backends.base import SESSION_KEY_BYTES
from beatd.nodes import NodeRecord


@dataclass
class NodeBook:
    """Each node's record (with its last_seen) and when it expires (wall-clock seconds)."""

    records: dict[str, tuple[NodeRecord, float]] = field(default_factory=dict)
    session_key: bytes | None = None  # the console's (SessionKeys), made on first use
    session_generations: dict[str, int] = field(default_factory=dict)  # by token digest


class MemoryNodes:
    """The `Nodes` role over `_nodes` under `_lock`."""

    _lock: threading.Lock
    _nodes: NodeBook
    _now: Callable[[], float]

    def write_node(self, record: NodeRecord, keep: float) -> None:
        with self._lock:
            now = self._now()
            seen = replace(record, last_seen=datetime.fromtimestamp(now, UTC))
            live = {n: held for n, held in self._nodes.records.items() if held[1] > now}
            live[record.node] = (seen, now + keep)
            self._nodes.records = live

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            now = self._now()
            held = self._nodes.records
            return [held[n][0] for n in sorted(held) if held[n][1] > now]

    def session_key(self) -> bytes:
        with self._lock:
            if self._nodes.session_key is None:
                self._nodes.session_key = secrets.token_bytes(SESSION_KEY_BYTES)
            return self._nodes.session_key

    def session_generation(self, token: str) -> int:
        with self._lock:
            return self._nodes.session_generations.get(token, 0)

    def end_sessions(self, token: str) -> int:
        with self._lock:
            generation = self._nodes.session_generations.get(token, 0) + 1
            self._nodes.session_generations[token] = generation
            return generation
