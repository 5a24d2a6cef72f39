"""The Redis run history's cost, measured on a redis-server of its own (docs/history.md quotes
it): memory per record, memory at many entries, and commit and claim/ack rates with history on
against off (interleaved rounds, medians).

    python -m bench.redis_history [--records 100000] [--entries 100000] [--runs 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import redis

from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite, to_micros
from beatd.backends.redis import SCRIPTS, RedisBackend
from beatd.backends.redis_queue import HOST
from beatd.state import EntryState
from bench.common import proc_cpu
from tests.redis_server import RedisServer

T0 = datetime(2026, 12, 5, tzinfo=UTC)
BATCH = 1000  # messages per commit


def entry_name(i: int) -> str:
    return f"report-{i:06d}"


def publish(backend: RedisBackend, lease: Lease, entries: range, run: int) -> None:
    """One run of each of `entries` at slot `run` (minutes), committed BATCH at a time."""
    slot = T0 + timedelta(minutes=run)
    expected = None if run == 0 else T0 + timedelta(minutes=run - 1)
    for start in range(entries.start, entries.stop, BATCH):
        names = [entry_name(i) for i in range(start, min(start + BATCH, entries.stop))]
        writes = [StateWrite(EntryState(n, slot, slot, "every 60s"), expected) for n in names]
        messages = [
            Outgoing(n, f"{n}@{slot:%Y-%m-%dT%H:%M:%SZ}", BeatdQueue("q"), '{"task":"t"}', slot)
            for n in names
        ]
        assert backend.commit(lease, writes, messages) == set()


def drain(backend: RedisBackend) -> int:
    done = 0
    while (delivery := backend.claim(["q"], "w", 60)) is not None:
        backend.ack(delivery)
        done += 1
    return done


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def fresh(url: str, history: bool) -> tuple[RedisBackend, Lease]:
    client = connect(url)
    client.flushdb()
    client.close()
    backend = RedisBackend(url, history=history)
    lease = backend.acquire_lease("bench", 3600)
    assert lease is not None
    return backend, lease


def fill_attempts(url: str, backend: RedisBackend, ids: list[str]) -> None:
    """One attempt per run, started and succeeded, written by the same Lua as a claim and an
    ack write (attempt_started, attempt_ended), pipelined: a claim and ack per run through the
    queue would measure the client, not the memory."""
    client = connect(url)
    ns = backend._key("")
    started, ended = SCRIPTS["attempt_started"], SCRIPTS["attempt_ended"]
    client.eval(started.source, 0, ns, "", "", "", "", "0")  # loads both scripts' cache
    client.eval(ended.source, 0, ns, "", "succeeded", "", "", "", "0")
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for run_id in ids[start : start + 5000]:
                at = to_micros(T0)
                pipe.evalsha(started.sha, 0, ns, run_id, "w", HOST, os.getpid(), at)
                pipe.evalsha(ended.sha, 0, ns, run_id, "succeeded", "", "", "", at + 1234)
            pipe.execute()
    client.close()


def memory(url: str, entries: int, runs: int, history: bool) -> int:
    """used_memory after `runs` runs of each of `entries` entries, each run with one attempt
    that succeeded, its queue emptied and the history's log folded."""
    backend, lease = fresh(url, history)
    for run in range(runs):
        publish(backend, lease, range(entries), run)
    backend.history_size()  # folds the log into the records
    client = connect(url)
    client.delete(*client.keys("beatd:queue:*"))
    ids = [m for m in client.zrange("beatd:h:runs", 0, -1)]
    if history:
        assert len(ids) == entries * runs
        fill_attempts(url, backend, ids)
        backend.history_size()
    used = used_memory(client)
    client.close()
    backend.close()
    return used


def script_us(url: str) -> float:
    """Microseconds Redis spent in scripts since the last call (then resets the count)."""
    client = connect(url)
    used = float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
    client.config_resetstat()
    client.close()
    return used


def rate(url: str, pid: int, history: bool, n: int) -> tuple[float, ...]:
    """Messages committed per second, claims with their acks per second, this client's CPU per
    message committed and per run claimed and acked, Redis's script time per message committed
    and per run claimed and acked, what folding the log left after them costs per run, and the
    sum, and the CPU the redis-server process `pid` used for all of it (us, from /proc: less
    moved by other processes than the scripts' wall time), for the second run of each of `n`
    entries. (The worker's
    claims fold a batch of the log now and then: their share is in the claim+ack figure.)"""
    backend, lease = fresh(url, history)
    publish(backend, lease, range(n), 0)  # the entries' states and indexes exist, as they
    backend.history_size()  # do in a scheduler that has run a while (and folded since)
    client = connect(url)
    client.delete(*client.keys("beatd:queue:*"))
    client.close()
    script_us(url)
    server_cpu = proc_cpu(pid)
    start, cpu = time.perf_counter(), time.process_time()
    publish(backend, lease, range(n), 1)
    committed = n / (time.perf_counter() - start)
    commit_cpu = (time.process_time() - cpu) / n * 1e6
    commit_us = script_us(url) / n
    start, cpu = time.perf_counter(), time.process_time()
    assert drain(backend) == n
    settled = n / (time.perf_counter() - start)
    settle_cpu = (time.process_time() - cpu) / n * 1e6
    settle_us = script_us(url) / n
    backend.history_size()
    fold_us = script_us(url) / n
    server_us = (proc_cpu(pid) - server_cpu) / n * 1e6
    backend.close()
    scripts = commit_us + settle_us + fold_us
    return (
        *(committed, settled, commit_cpu, settle_cpu),
        *(commit_us, settle_us, fold_us, scripts, server_us),
    )


def interleaved(rounds: int, measure: Callable[[bool], tuple[float, ...]]) -> None:
    results: dict[bool, list[tuple[float, ...]]] = {True: [], False: []}
    for _ in range(rounds):
        for history in (False, True):
            results[history].append(measure(history))
    whats = (
        "commit (messages/s)",
        "claim+ack (runs/s)",
        "commit: client CPU (us/message)",
        "claim+ack: client CPU (us/run)",
        "commit script (us/message)",
        "claim+ack scripts (us/run)",
        "fold of the rest of the log (us/run)",
        "all scripts (us/run)",
        "redis-server CPU, all of it (us/run)",
    )
    for i, what in enumerate(whats):
        off = [r[i] for r in results[False]]
        on = [r[i] for r in results[True]]
        off_median = statistics.median(off)
        ratio = f"{statistics.median(on) / off_median:.1%}" if off_median else "-"
        print(
            f"{what}: off median {off_median:.1f} (min {min(off):.1f}, max "
            f"{max(off):.1f}); on median {statistics.median(on):.1f} (min {min(on):.1f}, max "
            f"{max(on):.1f}); on/off {ratio}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-runs", type=int, default=20_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-rates", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        assert server.process is not None
        pid = server.process.pid
        try:
            if not args.skip_rates:
                measure = partial(rate, server.url, pid, n=args.rate_runs)
                interleaved(args.rounds, lambda history: measure(history=history))
            if args.skip_memory:
                return
            for entries, runs in ((100, args.records // 100), (args.records, 1)):
                off = memory(server.url, entries, runs, history=False)
                on = memory(server.url, entries, runs, history=True)
                print(
                    f"{entries} entries x {runs} runs: used_memory off {off} on {on}: "
                    f"{(on - off) / (entries * runs):.0f} bytes per record"
                )
            on = memory(server.url, args.entries, args.runs, history=True)
            off = memory(server.url, args.entries, args.runs, history=False)
            print(
                f"{args.entries} entries x {args.runs} runs: used_memory with history "
                f"{on / 2**20:.0f} MiB, without {off / 2**20:.0f} MiB"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
