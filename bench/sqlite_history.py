"""What the run history costs the SQLite backend: publish and claim/ack rates with history on
and off, interleaved, and the bytes a record takes on disk. Rates are per CPU second of this
process (the machine may be shared: wall time would measure the neighbours).

    python -m bench.sqlite_history [--rounds 5] [--records 100000]

`commit`: 10,000 runs committed in 10 commits of 1,000 entries (each a state write and a run
with its slot, as the scheduler's burst makes them). `claim/ack`: 2,000 published runs claimed
and acked one by one. Each round runs both, history on and off, on fresh files; the medians and
the min-max of the rates and the on/off ratios are printed. `bytes per record`: `--records` runs
of 1,000 entries committed, each claimed and acked (one ended attempt), the file VACUUMed;
(size with history - size without) / records.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite
from beatd.backends.sqlite import SQLiteBackend
from beatd.message import run_id
from beatd.state import EntryState

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ENTRIES = 1000
QUEUE = BeatdQueue("default")
CONSUMER = "worker-host-12345"


def body(run: str, entry: str, slot: datetime) -> str:
    """About the size of beatd's run message."""
    return (
        f'{{"v": 1, "id": "{run}", "entry": "{entry}", "task": "tasks.{entry}", "args": [], '
        f'"kwargs": {{}}, "scheduled_for": "{slot.isoformat()}", "queue": "default"}}'
    )


def burst(
    states: dict[str, EntryState | None], tick: int
) -> tuple[list[StateWrite], list[Outgoing]]:
    """Every entry's next slot: its state write and its run."""
    slot = T0 + timedelta(seconds=10 * tick)
    writes, messages = [], []
    for entry, held in states.items():
        new = EntryState(entry, slot, slot, "every 10s")
        writes.append(StateWrite(new, None if held is None else held.last_slot))
        run = run_id(entry, slot)
        messages.append(Outgoing(entry, run, QUEUE, body(run, entry, slot), slot=slot, due=slot))
        states[entry] = new
    return writes, messages


def fresh(tmp: Path, name: str, history: bool) -> tuple[SQLiteBackend, Lease]:
    path = tmp / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    backend = SQLiteBackend(path, history=history)
    lease = backend.acquire_lease("bench", 600)
    assert lease is not None
    return backend, lease


def publish(backend: SQLiteBackend, lease: Lease, commits: int, entries: int = ENTRIES) -> float:
    """CPU seconds to commit `commits` bursts of `entries` runs."""
    states: dict[str, EntryState | None] = {f"entry-{i:05d}": None for i in range(entries)}
    spent = 0.0
    for tick in range(1, commits + 1):
        writes, messages = burst(states, tick)
        start = time.process_time()
        backend.commit(lease, writes, messages)
        spent += time.process_time() - start
    return spent


def claim_ack(backend: SQLiteBackend, count: int) -> float:
    """CPU seconds to claim and ack `count` runs one by one."""
    start = time.process_time()
    for _ in range(count):
        delivery = backend.claim(["default"], CONSUMER, 60)
        assert delivery is not None
        backend.ack(delivery)
    return time.process_time() - start


def rates(tmp: Path, history: bool) -> tuple[float, float]:
    backend, lease = fresh(tmp, "rate", history)
    commit_rate = 10 * ENTRIES / publish(backend, lease, 10)
    backend.close()
    backend, lease = fresh(tmp, "cycle", history)
    publish(backend, lease, 2)
    cycle_rate = 2 * ENTRIES / claim_ack(backend, 2 * ENTRIES)
    backend.close()
    return commit_rate, cycle_rate


def size(tmp: Path, records: int, history: bool) -> int:
    backend, lease = fresh(tmp, f"size-{history}", history)
    for batch in range(records // (10 * ENTRIES)):  # in slices, so the queue stays short
        _publish_ticks(backend, lease, batch * 10, 10)
        claim_ack(backend, 10 * ENTRIES)
    if history:
        assert backend.history_size()[0] == records
    backend.close()
    path = tmp / f"size-{history}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # VACUUM wrote the smaller file to the WAL
    db.close()
    return os.path.getsize(path)


def _publish_ticks(backend: SQLiteBackend, lease: Lease, first: int, ticks: int) -> None:
    states = backend.load_states()
    held = {f"entry-{i:05d}": states.get(f"entry-{i:05d}") for i in range(ENTRIES)}
    for tick in range(first + 1, first + ticks + 1):
        writes, messages = burst(held, tick)
        backend.commit(lease, writes, messages)


def summary(name: str, on: list[float], off: list[float]) -> str:
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return (
        f"{name}: on {statistics.median(on):,.0f}/s ({min(on):,.0f}-{max(on):,.0f}), "
        f"off {statistics.median(off):,.0f}/s ({min(off):,.0f}-{max(off):,.0f}), "
        f"on/off median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f}), ratio of medians "
        f"{statistics.median(on) / statistics.median(off):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        commits: dict[bool, list[float]] = {True: [], False: []}
        cycles: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for history in (True, False) if round_ % 2 == 0 else (False, True):
                commit_rate, cycle_rate = rates(tmp, history)
                commits[history].append(commit_rate)
                cycles[history].append(cycle_rate)
        print(summary("commit (runs/s)", commits[True], commits[False]))
        print(summary("claim/ack (cycles/s)", cycles[True], cycles[False]))
        if args.records:
            on, off = size(tmp, args.records, True), size(tmp, args.records, False)
            print(
                f"bytes per record ({args.records:,} runs, one ended attempt each, VACUUMed): "
                f"{(on - off) / args.records:.0f} (file {on:,} bytes with history, "
                f"{off:,} without)"
            )


if __name__ == "__main__":
    main()
