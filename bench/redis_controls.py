"""The operator controls' cost on Redis where no entry has a control: a 10,000-run commit (the
second run of each entry: states and indexes exist) and 2,000 claims and acks, each round on a
fresh namespace; the medians of 5 rounds of wall time, this process's CPU and Redis's (INFO cpu).
Run it on two checkouts to compare:

    PYTHONPATH=CHECKOUT python -m bench.redis_controls
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite
from beatd.backends.redis import RedisBackend
from beatd.state import EntryState
from tests.redis_server import RedisServer

T0 = datetime(2026, 12, 5, tzinfo=UTC)
ENTRIES = 10_000
CLAIMS = 2_000
Figures = tuple[float, float, float]  # wall, client CPU, Redis CPU (seconds)


def redis_cpu(admin: redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(step: Callable[[], object], admin: redis.Redis) -> Figures:
    wall, cpu, server = time.perf_counter(), time.process_time(), redis_cpu(admin)
    step()
    return time.perf_counter() - wall, time.process_time() - cpu, redis_cpu(admin) - server


def commit_run(backend: RedisBackend, lease: Lease, run: int) -> Callable[[], object]:
    slot = T0 + timedelta(minutes=run)
    expected = None if run == 0 else T0 + timedelta(minutes=run - 1)
    names = [f"e{i:05d}" for i in range(ENTRIES)]
    writes = [StateWrite(EntryState(n, slot, slot, "x"), expected) for n in names]
    runs = [Outgoing(n, f"{n}@{run}", BeatdQueue("q"), '{"a":1}', slot, slot) for n in names]
    return lambda: backend.commit(lease, writes, runs)


def claim_ack(backend: RedisBackend) -> None:
    for _ in range(CLAIMS):
        delivery = backend.claim(["q"], "w", 60)
        assert delivery is not None
        backend.ack(delivery)


def round_(server: RedisServer, admin: redis.Redis) -> tuple[Figures, Figures]:
    admin.flushall()
    backend = RedisBackend(server.url)
    lease = backend.acquire_lease("n", 600)
    assert lease is not None
    commit_run(backend, lease, 0)()
    commit = measure(commit_run(backend, lease, 1), admin)
    settle = measure(lambda: claim_ack(backend), admin)
    backend.close()
    return commit, settle


def main() -> None:
    server = RedisServer(Path(tempfile.mkdtemp())).start()
    admin = server.client()
    try:
        rounds = [round_(server, admin) for _ in range(5)]
    finally:
        server.stop()
    for name, k in (("commit of 10,000 runs", 0), ("2,000 claims and acks", 1)):
        wall, cpu, server_cpu = (statistics.median(r[k][i] for r in rounds) for i in range(3))
        print(
            f"{name}: wall {wall * 1000:.1f} ms, client CPU {cpu * 1000:.1f} ms, "
            f"Redis CPU {server_cpu * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
