"""Node records (issue 18): what each `beatd run` says about itself at every lease renewal or
standby attempt, so that `beatd status` and the API list the nodes and the leader notices one
whose timezone database differs from its own (two such nodes compute different slots for the
same entry). And which timezone database this process uses, found as `zoneinfo` finds it: the
first directory of its search path that holds zone files (the system's), else the `tzdata`
package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

SYSTEM = "system"  # a directory of zoneinfo's search path (TZPATH, PYTHONTZPATH)
PACKAGE = "tzdata"  # the tzdata package, which zoneinfo falls back to
UNKNOWN_VERSION = "unknown"
# What marks a directory of the search path as a zone database zoneinfo reads from.
ZONE_FILES = ("tzdata.zi", "+VERSION", "UTC")


# The fields of a node as `beatd status --json` and GET /v1/nodes show it (`NodeRecord.row`).
NODE_FIELDS = (
    "node",
    "role",
    "version",
    "config",
    "tz_version",
    "tz_source",
    "api_addr",
    "last_seen",
    "same_config",
    "same_tz",
)


class NodeRole(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class TzDatabase:
    """The timezone database a process computes local times with."""

    version: str  # the IANA release, e.g. "2025b"; UNKNOWN_VERSION when nothing says
    source: str  # SYSTEM or PACKAGE
    path: str  # the directory, or "" for the package


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as it last said: `last_seen` is the backend's clock at that write (None
    before it is stored)."""

    node: str
    role: NodeRole
    version: str  # beatd's
    config: str  # the configuration fingerprint this node runs
    tz_version: str
    tz_source: str
    api_addr: str | None  # where its HTTP API answers; None when it serves none
    last_seen: datetime | None = None

    def to_json(self) -> str:
        """The record as stored, without `last_seen` (the backend keeps that beside it)."""
        fields = [self.role.value, self.version, self.config, self.tz_version, self.tz_source]
        return json.dumps([*fields, self.api_addr])

    @classmethod
    def from_json(cls, node: str, text: str, last_seen: datetime | None) -> NodeRecord:
        role, version, config, tz_version, tz_source, api_addr = json.loads(text)
        return cls(
            node, NodeRole(role), version, config, tz_version, tz_source, api_addr, last_seen
        )

    def row(self, leader: NodeRecord | None) -> dict[str, Any]:
        """The record as `beatd status --json` and the API show it; `same_config` and
        `same_tz` compare it with the leader's record (None when no leader wrote one)."""
        return {
            "node": self.node,
            "role": self.role.value,
            "version": self.version,
            "config": self.config or None,
            "tz_version": self.tz_version,
            "tz_source": self.tz_source,
            "api_addr": self.api_addr,
            "last_seen": None,  # filled by the caller, which formats times
            "same_config": None if leader is None else self.config == leader.config,
            "same_tz": None if leader is None else self.tz_version == leader.tz_version,
        }


def tz_drift(own: NodeRecord, others: Sequence[NodeRecord]) -> list[NodeRecord]:
    """The records of `others` (not `own` node) whose timezone database version differs."""
    return [r for r in others if r.node != own.node and r.tz_version != own.tz_version]


def tz_database(tzpath: Sequence[str], package_version: Callable[[], str | None]) -> TzDatabase:
    """The database zoneinfo reads, given its search path (`zoneinfo.TZPATH`, which
    PYTHONTZPATH sets) and the tzdata package's version (None when it is not installed): the
    first directory of the path that holds zone files, its version from the first line of
    `tzdata.zi` (`# version 2025b`) or from `+VERSION`; else the package."""
    for directory in map(Path, tzpath):
        if any((directory / name).is_file() for name in ZONE_FILES):
            return TzDatabase(_system_version(directory), SYSTEM, str(directory))
    return TzDatabase(package_version() or UNKNOWN_VERSION, PACKAGE, "")


def _system_version(directory: Path) -> str:
    try:
        with (directory / "tzdata.zi").open(encoding="utf-8", errors="replace") as zi:
            first = zi.readline().split()
        if first[:2] == ["#", "version"] and len(first) == 3:
            return first[2]
    except OSError:
        pass  # no tzdata.zi: +VERSION may say
    try:
        return (directory / "+VERSION").read_text(encoding="utf-8").strip() or UNKNOWN_VERSION
    except OSError:
        return UNKNOWN_VERSION
