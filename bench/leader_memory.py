"""A leader's start-up with many runtime entries, in one process: CPU and bytes per entry.

    python -m bench.leader_memory URL COUNT [--index] [--trace] [--profile FILE]

Seeds the backend at URL with issue 18's mix (`runtime_mix`) up to COUNT runtime entries (over
the backend URL, in `Client.add_many` calls of 20,000, in a process of its own; entries already
there are kept), then
runs a `Scheduler` (no file entries) step by step until it leads and has adopted every entry,
as `beatd run` does at start, and with `--index` builds the HTTP API's entry index beside it
(`beatd.cli.api.start_api` does, in its own thread), from the scheduler's view of the runtime
entries (`--own-view`: reading and building them again, as before issue 18's start-up work).
Prints one JSON line: the CPU seconds and
µs per entry of each part, the peak RSS (`ru_maxrss`) and, with `--trace`, the memory
tracemalloc holds after each part (bytes per entry; tracemalloc slows the CPU figures: run
without it for them). `--profile FILE` writes cProfile's stats of the start-up to FILE.
Never flushes the backend: give it a redis-server or SQLite file of its own.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from beatd.backends import open_backend
from beatd.clock import SystemClock
from beatd.config import Config
from beatd.entry_feed import RuntimeView
from beatd.entry_index import EntryIndex
from beatd.scheduler import Scheduler, SchedulerSettings
from bench.workload import runtime_mix

SEED_CHUNK = 20_000


def seed(url: str, count: int) -> int:
    from beatd import Client

    with Client(url, by="bench", timeout=300) as client:
        held = sum(1 for _ in client.iter())
        for start in range(held, count, SEED_CHUNK):
            client.add_many(runtime_mix(min(SEED_CHUNK, count - start), start=start))
    return held


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--index", action="store_true")
    parser.add_argument("--own-view", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--profile")
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument(
        "--top", type=int, default=0, help="with --trace: the lines allocating most"
    )
    args = parser.parse_args(argv)
    if args.seed_only:
        return {"held": seed(args.url, args.count)}
    # seeded in a process of its own: this one's peak RSS is the leader's
    command = [sys.executable, "-m", "bench.leader_memory", args.url, str(args.count)]
    subprocess.run([*command, "--seed-only"], check=True, stdout=subprocess.DEVNULL)
    out: dict[str, Any] = {"url": args.url.split("://")[0], "count": args.count}
    out["rss_before_mb"] = _rss_mb()
    if args.trace:
        tracemalloc.start()
    profile = cProfile.Profile() if args.profile else None
    backend = open_backend(args.url)
    settings = SchedulerSettings(node="bench-leader", lease_ttl=60)
    scheduler = Scheduler(backend, lambda: Config({}), SystemClock(), settings)
    cpu = time.process_time()
    if profile is not None:
        profile.enable()
    while not (scheduler.is_leader and scheduler._adopted):
        scheduler.step()
    if profile is not None:
        profile.disable()
    out["leader_cpu_s"] = round(time.process_time() - cpu, 3)
    out["planned"] = len(scheduler.planner)
    _measured(out, "leader", args)
    if args.index:
        index = _index(args.url, scheduler, None if args.own_view else scheduler.runtime)
        cpu = time.process_time()
        index.build()
        out["index_cpu_s"] = round(time.process_time() - cpu, 3)
        out["index_rows"] = len(index)
        _measured(out, "index", args)
    if profile is not None:
        profile.dump_stats(args.profile)
    out["peak_rss_mb"] = _rss_mb()
    scheduler.shutdown()
    return out


def _index(url: str, scheduler: Scheduler, view: RuntimeView | None) -> EntryIndex:
    clock = SystemClock()
    if view is None:  # as before the index shared the scheduler's view (runs on older beatd)
        return EntryIndex(lambda: open_backend(url), lambda: scheduler.config, clock)
    return EntryIndex(lambda: open_backend(url), lambda: scheduler.config, clock, view=view)


def _measured(out: dict[str, Any], part: str, args: argparse.Namespace) -> None:
    count = args.count
    if f"{part}_cpu_s" in out:
        out[f"{part}_cpu_us_per_entry"] = round(out[f"{part}_cpu_s"] / count * 1e6, 1)
    if args.trace:
        traced = tracemalloc.get_traced_memory()[0]
        out[f"traced_after_{part}_mb"] = round(traced / 2**20, 1)
        out[f"traced_after_{part}_bytes_per_entry"] = round(traced / count)
        if args.top:
            stats = tracemalloc.take_snapshot().statistics("lineno")[: args.top]
            out[f"top_after_{part}"] = [
                f"{s.size / count:.0f} B/entry {s.traceback}" for s in stats
            ]
    out[f"rss_after_{part}_mb"] = _rss_mb()


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


if __name__ == "__main__":
    json.dump(main(sys.argv[1:]), sys.stdout)
    print()
