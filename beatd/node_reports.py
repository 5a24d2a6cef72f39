"""Each `beatd run` writes its node record (beatd.nodes) at every lease renewal or standby
attempt, and the leader compares the others' timezone databases with its own.

A node with another timezone database computes other slots for the same local-time entry (a
zone's rules changed between the versions), so the leader says so as it says configuration
drift: a gauge (`Totals.tz_drift`), a log line once per change, and `beatd status`'s
`same_tz`. A write that fails is counted and logged; it never stops leading.
"""

from __future__ import annotations

import logging
import zoneinfo
from dataclasses import dataclass, replace
from importlib import metadata

from beatd.backends.base import Nodes, StorageFailed
from beatd.errors import BackendError
from beatd.events import Totals
from beatd.nodes import NodeRecord, NodeRole, TzDatabase, tz_database, tz_drift

log = logging.getLogger("beatd.scheduler")

KEEP_TTLS = 3  # a record outlives its node's last write by this many lease TTLs


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a node says of itself besides its role and configuration."""

    version: str  # beatd's
    tz: TzDatabase
    api_addr: str | None  # None: it serves no HTTP API


def beatd_version() -> str:
    try:
        return metadata.version("beatd")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "unknown"


def tzdata_version() -> str | None:
    """The IANA release the tzdata package holds, or None when it is not installed."""
    try:
        import tzdata  # type: ignore[import-untyped]
    except ImportError:
        return None
    version = getattr(tzdata, "IANA_VERSION", None)
    return version if isinstance(version, str) else None


def this_process(api_addr: str | None) -> NodeIdentity:
    """This process's identity: zoneinfo's search path as it was set at start (PYTHONTZPATH),
    so a timezone update takes effect at restart, as zoneinfo's does."""
    return NodeIdentity(beatd_version(), tz_database(zoneinfo.TZPATH, tzdata_version), api_addr)


class NodeReports:
    """Writes this node's record and, leading, judges the others' timezone databases."""

    def __init__(
        self, nodes: Nodes, node: str, identity: NodeIdentity, lease_ttl: float, totals: Totals
    ) -> None:
        self.nodes = nodes
        self.node = node
        self.identity = identity
        self.keep = KEEP_TTLS * lease_ttl
        self.totals = totals
        self._drifting: dict[str, str] = {}  # node -> its tz version, as last said
        self._failing = False

    def serving(self, api_addr: str | None) -> None:
        """Say from the next record on that this node's HTTP API answers at `api_addr` (the
        address it bound, known once the server started) or nowhere (None)."""
        self.identity = replace(self.identity, api_addr=api_addr)

    def report(self, leading: bool, fingerprint: str) -> bool:
        """Write this node's record (and, leading, compare the others'); True when the backend
        answered. StorageFailed is raised: the storage is gone."""
        me = self.identity
        role = NodeRole.LEADER if leading else NodeRole.STANDBY
        tz = me.tz
        record = NodeRecord(
            self.node, role, me.version, fingerprint, tz.version, tz.source, me.api_addr
        )
        try:
            self.nodes.write_node(record, self.keep)
            others = self.nodes.nodes() if leading else None
        except StorageFailed:
            raise
        except BackendError as exc:
            self.totals.node_records_failed += 1
            if not self._failing:
                log.warning(
                    "cannot write the node record node=%s (leading goes on): %s", self.node, exc
                )
            self._failing = True
            return False
        self._failing = False
        self._judge(record, others)
        return True

    def _judge(self, own: NodeRecord, others: list[NodeRecord] | None) -> None:
        drifting = {} if others is None else {r.node: r.tz_version for r in tz_drift(own, others)}
        if drifting != self._drifting:
            if drifting:
                listed = " ".join(f"{n}={v}" for n, v in sorted(drifting.items()))
                log.warning(
                    "timezone database drift: leader node=%s has tz=%s (%s), other nodes have "
                    "%s; nodes with other tz data compute other slots for local-time entries: "
                    "update tzdata on every node together and restart them",
                    own.node,
                    own.tz_version,
                    own.tz_source,
                    listed,
                )
            elif others is not None:
                log.info("timezone database drift over: every node has tz=%s", own.tz_version)
        self._drifting = drifting
        self.totals.tz_drift = bool(drifting)
