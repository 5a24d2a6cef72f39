"""Scenario 7: beatd and its peers, one after another, on the same Redis and the same workload.

`steady`: N entries every 1-60 s for a window — share of the expected runs that landed, delay,
CPU per run. `burst`: N daily cron entries due at the same minute — how long until all are queued,
and what share within the cap. Delay for beatd is the broker's arrival time minus the slot; for
APScheduler the send time minus the slot; celery beat and RedBeat do not anchor intervals (each
run is due `every` after the previous one), so their delay is the send time minus the previous
send plus the interval.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import daemons, tools
from bench.common import percentiles, proc_cpu, proc_hwm_mb, reset_backend, thin, utc, wait_until
from bench.workload import at_minute, expected_slots, mixed_intervals


def run(params: dict[str, Any]) -> dict[str, Any]:
    tool, url, count = params["tool"], params["url"], params["count"]
    work = Path(params["workdir"]) / f"{tool}-{params['mode']}-{count}"
    reset_backend(url)
    if params["mode"] == "burst":
        result = burst(tool, url, count, work, params["cap"], params.get("margin", 20))
    else:
        result = steady(tool, url, count, work, params["window"])
    reset_backend(url)
    return {"tool": tool, "mode": params["mode"], "entries": count, **result}


def steady(tool: str, url: str, count: int, work: Path, window: float) -> dict[str, Any]:
    spec = mixed_intervals(count)
    process = tools.start(tool, spec, url, work)
    try:
        started = wait_until(lambda: tools.count(tool, url) > 0, timeout=120, interval=0.1)
        if not started:
            return {"error": f"published nothing within 120 s; see {work}/{tool}.log"}
        start = float(int(time.time()) + 2)
        end = start + window
        time.sleep(max(0.0, start - time.time()))
        cpu0 = proc_cpu(process.pid)
        time.sleep(max(0.0, end - time.time()))
        cpu1 = proc_cpu(process.pid)
        rss = proc_hwm_mb(process.pid)
        time.sleep(1.0)
    finally:
        daemons.stop(process, timeout=10)
    messages = tools.sent(tool, url)
    expected_total = sum(window / item["every"] for item in spec)
    anchored = tool in ("beatd", "apscheduler")
    if anchored:
        in_window = [m for m in messages if m.slot is not None and start <= m.slot < end]
        delays = [m.at - m.slot for m in in_window]
        expected = {(i["name"], s) for i in spec for s in expected_slots(i, start, end)}
        landed = len({(m.entry, m.slot) for m in in_window} & expected)
        lost = len(expected) - landed
        expected_total = len(expected)
    else:
        in_window = [m for m in messages if start <= m.at < end]
        delays = _drift(messages, spec, start, end)
        landed, lost = len(in_window), None
    cpu = cpu1 - cpu0
    return {
        "window_s": window,
        "expected_runs": round(expected_total),
        "published_runs": len(in_window),
        "landed_pct": round(100 * min(landed, expected_total) / max(1, expected_total), 2),
        "lost": lost,
        "delay_s": percentiles(delays),
        "cpu_s": round(cpu, 3),
        "cpu_share_of_core": round(cpu / window, 3),
        "cpu_us_per_run": round(cpu / max(1, len(in_window)) * 1e6, 1),
        "peak_rss_mb": round(rss, 1),
        "samples": {"delay_s": thin(delays, 2000)},
    }


def _drift(messages: list[tools.Sent], spec, start: float, end: float) -> list[float]:
    """Per entry, each send minus (the previous send + the interval), in the window."""
    every = {item["name"]: item["every"] for item in spec}
    by_entry: dict[str, list[float]] = defaultdict(list)
    for m in messages:
        by_entry[m.entry].append(m.at)
    out = []
    for entry, times in by_entry.items():
        times.sort()
        out += [b - (a + every[entry]) for a, b in itertools.pairwise(times) if start <= b < end]
    return out


def burst(tool: str, url: str, count: int, work: Path, cap: float, margin: float) -> dict[str, Any]:
    minute = math.ceil((time.time() + margin) / 60) * 60
    spec = at_minute(count, utc(minute))
    process = tools.start(tool, spec, url, work)
    try:
        time.sleep(max(0.0, minute - time.time()))
        cpu0 = proc_cpu(process.pid)
        wait_until(
            lambda: tools.count(tool, url) >= count,
            timeout=minute + cap - time.time(),
            interval=0.05,
        )
        cpu1 = proc_cpu(process.pid)
        rss = proc_hwm_mb(process.pid)
    finally:
        daemons.stop(process, timeout=10)
    delays = sorted(m.at - minute for m in tools.sent(tool, url) if m.at >= minute - 1)
    within = [d for d in delays if d <= cap]
    return {
        "cap_s": cap,
        "queued_within_cap": len(within),
        "queued_pct": round(100 * len(within) / count, 2),
        "all_queued_s": round(within[-1], 3) if len(within) >= count else None,
        "delay_s": percentiles(within),
        "cpu_s": round(cpu1 - cpu0, 3),
        "peak_rss_mb": round(rss, 1),
        "samples": {"delay_s": thin(within, 2000)},
    }
