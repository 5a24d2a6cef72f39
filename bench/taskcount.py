"""Counting the runs a worker executed without timing the counting.

A no-op task that made a Redis round trip or appended to a shared file per run would add that to
what is measured. Instead each process that runs tasks keeps its own count and overwrites a small
file named by its pid in `$BENCH_COUNT_DIR` with it: one `pwrite` per run, no flush, no network.
The harness adds the files up. beatd's no-op (`bench/tasks.py`) and Celery's
(`bench/drivers/celery_worker.py`) both count this way, so both pay the same few microseconds.
Imports nothing but the standard library: the peers' Python imports it too.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BENCH_COUNT_DIR"
WIDTH = 20

_pid = 0
_fd = -1
_count = 0


def count_one() -> None:
    """Add one executed run to this process's count; a no-op when `$BENCH_COUNT_DIR` is unset."""
    global _pid, _fd, _count
    directory = os.environ.get(ENV)
    if not directory:
        return
    if _pid != os.getpid():  # first run in this process, or a fork inherited the parent's state
        _pid, _count = os.getpid(), 0
        _fd = os.open(os.path.join(directory, str(_pid)), os.O_WRONLY | os.O_CREAT, 0o644)
    _count += 1
    os.pwrite(_fd, str(_count).rjust(WIDTH).encode(), 0)


def executed(directory: Path) -> int:
    """Runs counted so far by every process that wrote to `directory`."""
    total = 0
    for path in directory.iterdir():
        text = path.read_text().strip()
        try:
            total += int(text or 0)
        except ValueError:  # read halfway through a pwrite: this poll undercounts, the next won't
            continue
    return total
