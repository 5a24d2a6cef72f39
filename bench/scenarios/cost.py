"""Scenario 3: what publishing costs — CPU per 1,000 runs at N entries, and idle CPU.

`steady`: N entries every 1-60 s driven through the real loop and backend by a `FakeClock`
(`run_for`), so a long stretch of schedule passes in little real time; the process's CPU
seconds over it divided by the runs published. `idle`: N daily entries none of which is due
during a real-time window with the system clock; the CPU the loop uses while it waits.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from bench.common import (
    Span,
    beatd_scheduler,
    measure,
    open_backend,
    peak_rss_mb,
    reset_backend,
    utc,
)
from bench.workload import config, daily, mixed_intervals

RUNS_PER_ENTRY_SECOND = 0.32  # mixed_intervals' rate


def run(params: dict[str, Any]) -> dict[str, Any]:
    if params["mode"] == "idle":
        return idle(params)
    return steady(params)


def steady(params: dict[str, Any]) -> dict[str, Any]:
    from beatd.clock import FakeClock

    url, count = params["url"], params["count"]
    window = min(600.0, max(5.0, params["runs"] / (RUNS_PER_ENTRY_SECOND * count)))
    reset_backend(url)
    cfg = config(mixed_intervals(count))
    clock = FakeClock(utc(float(int(time.time()))))
    backend = open_backend(url)
    scheduler = beatd_scheduler(
        backend, cfg, clock, node="bench", lease_ttl=3600.0, max_clock_skew=1e9
    )
    adopt, span, published = _drive(scheduler, window)
    backend.close()
    return {
        "backend": url.split(":", 1)[0],
        "entries": count,
        "schedule_seconds": round(window, 1),
        "published_runs": published,
        "wall_s": round(span.wall, 3),
        "cpu_s": round(span.cpu, 3),
        "cpu_s_per_1000_runs": round(span.cpu / max(1, published) * 1000, 4),
        "cpu_us_per_run": round(span.cpu / max(1, published) * 1e6, 1),
        "runs_per_cpu_second": round(published / max(span.cpu, 1e-9), 1),
        "adopt_wall_s": round(adopt.wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def idle(params: dict[str, Any]) -> dict[str, Any]:
    from beatd.clock import SystemClock

    url, count, window = params["url"], params["count"], params["window"]
    reset_backend(url)
    cfg = config(daily(count, avoid=utc(time.time()), window=window + 30))
    backend = open_backend(url)
    scheduler = beatd_scheduler(backend, cfg, SystemClock(), node="bench", lease_ttl=10.0)
    adopt, span, published = _drive(scheduler, window)
    backend.close()
    return {
        "backend": url.split(":", 1)[0],
        "entries": count,
        "window_s": window,
        "published_runs": published,
        "cpu_s": round(span.cpu, 4),
        "cpu_ms_per_s": round(span.cpu / window * 1000, 3),
        "adopt_wall_s": round(adopt.wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _drive(scheduler: Any, seconds: float) -> tuple[Span, Span, int]:
    """Adopt (timed), then run the loop for `seconds` of its clock (timed): the two spans and
    the runs published."""
    from beatd.scheduler import run_for

    with measure() as adopt:
        scheduler.step()
    gc.collect()
    with measure() as span:
        run_for(scheduler, seconds)
    return adopt, span, scheduler.counts.total("published")
