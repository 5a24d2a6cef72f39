"""Scenario 2: publish delay under steady load, in real time, from a real `beatd run`.

N entries every 1-60 s (`workload.mixed_intervals`) for a fixed window. Delay is the broker's
arrival time (Redis stream id, SQLite `ready_at`) minus the slot; a run is lost when an expected
(entry, slot) of the window never reached the queue. The daemon's CPU over the window (from
/proc) divided by the runs it published gives the steady-state cost per run.

On PostgreSQL the server's CPU is that of the processes serving the bench's database, and the
size of each of beatd's tables (`pg_total_relation_size`: heap, indexes, TOAST) is read as the
window opens and once its runs have landed: no worker takes the runs, so the queue grows by
every run published, and the history's tables by their records once the backend writes them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import daemons, pgdatabase
from bench.common import (
    arrivals,
    is_postgres,
    percentiles,
    proc_cpu,
    proc_hwm_mb,
    queued_count,
    reset_backend,
    thin,
    wait_until,
)
from bench.workload import expected_slots, mixed_intervals, write_yaml


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, count, window = params["url"], params["count"], params["window"]
    work = Path(params["workdir"])
    redis_pid = params.get("redis_pid")
    reset_backend(url)
    spec = mixed_intervals(count)
    schedule = write_yaml(spec, work / "delay.yaml")
    log = work / f"delay-{url.split(':')[0]}.log"
    process = daemons.run(schedule, url, log)
    try:
        if not wait_until(lambda: queued_count(url) > 0, timeout=120, interval=0.1):
            raise RuntimeError(f"beatd published nothing in 120 s; see {log}")
        start = float(int(time.time()) + 2)
        end = start + window
        time.sleep(max(0.0, start - time.time()))
        cpu0 = proc_cpu(process.pid)
        redis0 = proc_cpu(redis_pid) if redis_pid else None
        postgres0 = pgdatabase.server_cpu(url) if is_postgres(url) else None
        tables0 = _tables(url)
        time.sleep(max(0.0, end - time.time()))
        cpu1 = proc_cpu(process.pid)
        redis1 = proc_cpu(redis_pid) if redis_pid else None
        postgres1 = pgdatabase.server_cpu(url) if is_postgres(url) else None
        time.sleep(2.0)  # the runs of the window's last second land
        rss = proc_hwm_mb(process.pid)
        tables1 = _tables(url)
    finally:
        daemons.stop(process)
    found = arrivals(url, since=start - 5)
    in_window = [a for a in found if start <= a.slot < end]
    ids = Counter(a.id for a in found)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    expected = {(item["name"], slot) for item in spec for slot in expected_slots(item, start, end)}
    published = {(a.entry, a.slot) for a in in_window}
    lost = len(expected - published)
    delays = [a.arrived - a.slot for a in in_window]
    stamped = [a.published - a.slot for a in in_window]
    first_per_slot: dict[float, float] = {}
    for a in in_window:
        first_per_slot[a.slot] = min(first_per_slot.get(a.slot, 1e9), a.arrived - a.slot)
    runs = len(in_window)
    cpu = cpu1 - cpu0
    return {
        "backend": url.split(":", 1)[0],
        "entries": count,
        "window_s": window,
        "expected_runs": len(expected),
        "published_runs": runs,
        "runs_per_s": round(runs / window, 1),
        "lost": lost,
        "duplicates": duplicates,
        "landed_pct": round(100 * len(published & expected) / max(1, len(expected)), 3),
        "delay_s": percentiles(delays),
        "published_at_delay_s": percentiles(stamped),
        "first_of_slot_delay_s": percentiles(list(first_per_slot.values())),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_run": round(cpu / max(1, runs) * 1e6, 1),
        "cpu_share_of_core": round(cpu / window, 3),
        "redis_cpu_s": round(redis1 - redis0, 3) if redis_pid else None,
        "postgres_cpu_s": (
            round(pgdatabase.cpu_between(postgres0, postgres1), 3)
            if postgres0 is not None and postgres1 is not None
            else None
        ),
        **({"tables": {"before": tables0, "after": tables1}} if tables0 and tables1 else {}),
        "daemon_peak_rss_mb": round(rss, 1),
        "samples": {"delay_s": thin(delays)},
    }


def _tables(url: str) -> dict[str, Any] | None:
    """On PostgreSQL, the bytes of each of beatd's tables and the messages queued, now."""
    if not is_postgres(url):
        return None
    return {"bytes": pgdatabase.table_sizes(url), "messages": queued_count(url)}
