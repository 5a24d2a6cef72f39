"""What `beatd status` and the metrics scrape pay for the dead letters and the entries' states.

    python -m bench.status_reads URL LETTERS ENTRIES [--shown N] [--repeat R]

Seeds the backend at URL with LETTERS dead letters over 8 queues (bodies of 200 bytes, added as
`beatd migrate` adds them) and ENTRIES entry states, then times, best of R: the per-queue
counts read the old way (every letter read, then counted) and by `dead_letter_counts()`; and
the states of N entries read by `load_states()` (every one) and by `states_of()`. Prints one
JSON line (milliseconds, and the ratios old / new). Never flushes the backend: give it a
redis-server or SQLite file of its own, empty.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from beatd.backends import open_backend
from beatd.backends.base import Backend, DeadLetter, StateWrite
from beatd.state import EntryState

T0 = datetime(2026, 12, 6, tzinfo=UTC)


def seed(store: Backend, letters: int, entries: int) -> None:
    body = "{" + '"x": "' + "x" * 190 + '"}'
    for start in range(0, letters, 10_000):
        batch = [
            DeadLetter(f"e{i}@1", f"q{i % 8}", body, "boom", T0, 1)
            for i in range(start, min(letters, start + 10_000))
        ]
        store.add_dead_letters(batch)
    lease = store.acquire_lease("bench", 600)
    assert lease is not None
    for start in range(0, entries, 5_000):
        writes = [
            StateWrite(EntryState(f"entry-{i:07}", T0 + timedelta(minutes=i % 60), T0, ""), None)
            for i in range(start, min(entries, start + 5_000))
        ]
        store.commit(lease, writes, [])
    store.release_lease(lease)


def best_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return round(min(times), 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("letters", type=int)
    parser.add_argument("entries", type=int)
    parser.add_argument("--shown", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    store = open_backend(args.url)
    seed(store, args.letters, args.entries)
    every = Counter(d.queue for d in store.dead_letters())
    assert store.dead_letter_counts() == dict(every)
    names = [f"entry-{i:07}" for i in range(0, args.entries, max(1, args.entries // args.shown))]
    names = names[: args.shown]
    assert store.states_of(names) == {n: s for n, s in store.load_states().items() if n in names}
    read_all = best_ms(lambda: Counter(d.queue for d in store.dead_letters()), args.repeat)
    counted = best_ms(store.dead_letter_counts, args.repeat)
    all_states = best_ms(store.load_states, args.repeat)
    by_name = best_ms(lambda: store.states_of(names), args.repeat)
    out = {
        "url": args.url.split("://")[0],
        "letters": args.letters,
        "entries": args.entries,
        "shown": len(names),
        "load": round(os.getloadavg()[0], 1),
        "dead_read_all_ms": read_all,
        "dead_counted_ms": counted,
        "dead_ratio": round(read_all / max(counted, 0.01)),
        "states_all_ms": all_states,
        "states_of_ms": by_name,
        "states_ratio": round(all_states / max(by_name, 0.01)),
    }
    print(json.dumps(out))
    store.close()
    return out


if __name__ == "__main__":
    main()
