"""The `beatd` command line. Every daemon setting is a flag with a `BEATD_*` variable."""

from beatd.cli import admin, diff, migrate, run, schedules, status, workers
from beatd.cli.common import main

__all__ = ["admin", "diff", "main", "migrate", "run", "schedules", "status", "workers"]
