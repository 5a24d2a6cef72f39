"""The `beatd` command line. Every daemon setting is a flag with a `BEATD_*` variable."""

from beatd.cli import (
    admin,
    api,
    backfill,
    controls,
    database,
    diff,
    entries,
    history,
    migrate,
    run,
    schedules,
    status,
    workers,
)
from beatd.cli.common import main

__all__ = [
    "admin",
    "api",
    "backfill",
    "controls",
    "database",
    "diff",
    "entries",
    "history",
    "main",
    "migrate",
    "run",
    "schedules",
    "status",
    "workers",
]
