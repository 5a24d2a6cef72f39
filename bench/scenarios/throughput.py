"""Scenario 1: N entries all due at one instant — how long until every run is in the queue.

The real loop (`Scheduler.step`) publishes through the real backend; only the wall clock the
planner reads is a `FakeClock`, parked one second before the shared slot and then moved onto
it, so the step that publishes is timed alone (real wall and CPU seconds). Adopting the entries
(the baseline state write on becoming leader) is timed separately.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from bench import pgdatabase
from bench.common import (
    arrivals,
    beatd_scheduler,
    is_postgres,
    measure,
    open_backend,
    peak_rss_mb,
    proc_cpu,
    reset_backend,
    utc,
)
from bench.workload import config, same_instant

EVERY = 3600


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, count = params["url"], params["count"]
    redis_pid = params.get("redis_pid")
    reset_backend(url)
    cfg = config(same_instant(count, EVERY))
    from beatd.clock import FakeClock

    slot = math.ceil(time.time() / EVERY) * EVERY  # the next shared slot, in real time terms
    clock = FakeClock(utc(slot) - timedelta(seconds=1))
    backend = open_backend(url)
    scheduler = beatd_scheduler(
        backend, cfg, clock, node="bench", lease_ttl=600.0, max_clock_skew=1e9
    )

    with measure() as adopt:
        scheduler.step()  # lease, then the baseline state of every entry
    assert scheduler.is_leader, "the bench scheduler did not become leader"
    clock.advance(1.0)
    redis_before = proc_cpu(redis_pid) if redis_pid else None
    postgres_before = pgdatabase.server_cpu(url) if is_postgres(url) else None
    with measure() as publish:
        scheduler.step()
    redis_cpu = proc_cpu(redis_pid) - redis_before if redis_pid else None
    postgres_cpu = (
        pgdatabase.cpu_between(postgres_before, pgdatabase.server_cpu(url))
        if postgres_before is not None
        else None
    )
    queued = len({a.id for a in arrivals(url)})  # distinct runs whose message reads back
    backend.close()
    return {
        "backend": url.split(":", 1)[0],
        "entries": count,
        "queued": queued,
        "all_queued": queued == count,
        "publish_wall_s": round(publish.wall, 4),
        "publish_cpu_s": round(publish.cpu, 4),
        "runs_per_s": round(count / publish.wall, 1),
        "cpu_us_per_run": round(publish.cpu / count * 1e6, 2),
        "redis_cpu_s": round(redis_cpu, 3) if redis_cpu is not None else None,
        "postgres_cpu_s": round(postgres_cpu, 3) if postgres_cpu is not None else None,
        "adopt_wall_s": round(adopt.wall, 3),
        "adopt_cpu_s": round(adopt.cpu, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
