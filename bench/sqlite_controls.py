"""What the operator controls cost the SQLite backend's commit and claim/ack (per CPU second of
this process, history on), as `bench.sqlite_history` measures them:

    python -m bench.sqlite_controls [--rounds 5]

`plain`: no entry has a control and no write a guard (what every scheduler without `overlap:`
pays: the controls must cost it nothing). `paused`: 100 other entries paused. `guarded`: every
write under an overlap guard (timeout 0, so each busy mark is stale and replaced: the most a
commit writes), and every claimed run holding its entry's busy mark, cleared by its ack.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from beatd.backends.base import Lease
from beatd.backends.sqlite import SQLiteBackend
from beatd.controls import Guard, Overlap
from beatd.state import EntryState
from bench.sqlite_history import ENTRIES, burst, claim_ack, fresh

STALE = Guard(Overlap.SKIP, 0.0)  # every busy mark already stale: the write passes, busy=False


def publish(backend: SQLiteBackend, lease: Lease, commits: int, guarded: bool) -> float:
    """CPU seconds to commit `commits` bursts of ENTRIES runs."""
    states: dict[str, EntryState | None] = {f"entry-{i:05d}": None for i in range(ENTRIES)}
    spent = 0.0
    for tick in range(1, commits + 1):
        writes, messages = burst(states, tick)
        if guarded:
            writes = [w._replace(guard=STALE) for w in writes]
        start = time.process_time()
        assert backend.commit(lease, writes, messages) == set()
        spent += time.process_time() - start
    return spent


def rates(tmp: Path, mode: str) -> tuple[float, float]:
    guarded = mode == "guarded"
    result = []
    for name, commits in (("rate", 10), ("cycle", 2)):
        backend, lease = fresh(tmp, name, True)
        if mode == "paused":
            backend.pause([f"other-{i}" for i in range(100)], "bench", timedelta(days=1), "b")
        spent = publish(backend, lease, commits, guarded)
        result.append(
            10 * ENTRIES / spent
            if name == "rate"
            else 2 * ENTRIES / claim_ack(backend, 2 * ENTRIES)
        )
        backend.close()
    return result[0], result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    modes = ("plain", "paused", "guarded")
    found: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            for mode in modes:  # interleaved, so the neighbours' load falls on each alike
                found[mode].append(rates(Path(directory), mode))
    for mode in modes:
        commit = statistics.median(r[0] for r in found[mode])
        cycle = statistics.median(r[1] for r in found[mode])
        print(f"{mode}: commit {commit:,.0f} runs/s, claim/ack {cycle:,.0f} cycles/s")


if __name__ == "__main__":
    main()
