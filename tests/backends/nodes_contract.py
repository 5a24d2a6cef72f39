"""The node records' contract (`Nodes` in beatd/backends/base.py, issue 18).

`NodesContract` is a mixin `BackendContract` includes, so every backend's contract class runs
it. A record's `last_seen` is the backend's clock: it lies between two readings of
`server_time()` taken around the write. Expiry is measured on that clock too (`advance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from beatd.backends.base import Backend, Nodes
from beatd.nodes import NodeRecord, NodeRole
from tests.backends.history_contract import within


def node(name: str, role: NodeRole = NodeRole.STANDBY, tz: str = "2025b") -> NodeRecord:
    return NodeRecord(name, role, "1.2.3", "cfg-a", tz, "system", "127.0.0.1:9479")


def server_now(backend: Backend) -> datetime:
    return datetime.fromtimestamp(backend.server_time(), UTC)


class NodesContract:
    def test_a_written_record_is_listed_as_written_stamped_by_the_backends_clock(
        self, backend: Backend
    ) -> None:
        assert isinstance(backend, Nodes)
        assert backend.nodes() == []
        before = server_now(backend)
        backend.write_node(node("b", tz="2026a"), 60)
        backend.write_node(replace(node("a", NodeRole.LEADER), api_addr=None), 60)
        after = server_now(backend)
        listed = backend.nodes()
        assert [replace(r, last_seen=None) for r in listed] == [
            replace(node("a", NodeRole.LEADER), api_addr=None),
            node("b", tz="2026a"),
        ]
        assert all(within(r.last_seen, [before, after]) for r in listed)

    def test_a_record_replaces_its_nodes_and_moves_its_last_seen(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.write_node(node("a"), 60)
        first = backend.nodes()[0].last_seen
        advance(0.2 * unit)
        backend.write_node(node("a", NodeRole.LEADER, tz="2026a"), 60)
        [again] = backend.nodes()
        assert replace(again, last_seen=None) == node("a", NodeRole.LEADER, tz="2026a")
        assert first is not None and again.last_seen is not None and again.last_seen > first

    def test_a_record_expires_after_keep_by_the_backends_clock(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.write_node(node("short"), 1 * unit)
        backend.write_node(node("long"), 60)
        assert [r.node for r in backend.nodes()] == ["long", "short"]
        advance(1.5 * unit)
        assert [r.node for r in backend.nodes()] == ["long"]
        backend.write_node(node("short"), 1 * unit)  # a node that comes back is listed again
        assert [r.node for r in backend.nodes()] == ["long", "short"]

    def test_another_handle_sees_the_records(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        backend.write_node(node("a"), 60)
        other = backend_factory()
        assert [replace(r, last_seen=None) for r in other.nodes()] == [node("a")]
