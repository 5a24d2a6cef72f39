"""Which scenario runs with which parameters, in the full run and in `--quick`.

Each job is (group, scenario module, parameters); `url` of "sqlite", "redis" or "postgresql" is
filled in by `bench.run` with a fresh SQLite file, the bench's own redis-server or its scratch
PostgreSQL database. PostgreSQL runs the scenarios issue 20 sets targets for: throughput,
steady load (delay, with its tables' sizes) and the worker.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

Job = tuple[str, str, dict[str, Any]]
BACKENDS = ("sqlite", "redis")
BACKENDS_ALL = (*BACKENDS, "postgresql")
TOOLS = ("beatd", "celery-beat", "redbeat", "apscheduler")


def jobs(quick: bool) -> list[Job]:
    counts = (1_000,) if quick else (1_000, 10_000, 100_000)
    out: list[Job] = []
    for backend in BACKENDS_ALL:
        for n in counts:
            out.append(("throughput", "throughput", {"url": backend, "count": n}))
    for backend in BACKENDS_ALL:
        out.append(
            (
                "delay",
                "delay",
                {"url": backend, "count": 2_000 if quick else 10_000, "window": 2 if quick else 60},
            )
        )
    for backend in BACKENDS:
        for n in counts:
            out.append(
                (
                    "cost",
                    "cost",
                    {
                        "url": backend,
                        "count": n,
                        "mode": "steady",
                        "runs": 5_000 if quick else 200_000,
                    },
                )
            )
        out.append(
            (
                "idle",
                "cost",
                {
                    "url": backend,
                    "count": 2_000 if quick else 100_000,
                    "mode": "idle",
                    "window": 2 if quick else 30,
                },
            )
        )
    for n in (2_000,) if quick else (1_000, 10_000, 100_000):
        out.append(
            (
                "startup",
                "startup",
                {"url": "sqlite", "count": n, "standby_window": 0 if quick or n < 100_000 else 5},
            )
        )
    if not quick:
        out.append(("startup", "startup", {"url": "redis", "count": 100_000}))
    tasks = 500 if quick else 20_000
    for backend in BACKENDS:
        out.append(("worker", "worker", {"url": backend, "count": tasks}))
    # PostgreSQL's queue-to-start p99 is a target of its own (issue 20): 100 samples in the
    # full run; the smoke run keeps its added time small
    out.append(
        (
            "worker",
            "worker",
            {
                "url": "postgresql",
                "count": 100 if quick else tasks,
                "latency_samples": 10 if quick else 100,
            },
        )
    )
    # the same no-op tasks for a real Celery worker, in beatd's Celery-protocol messages
    out.append(("worker", "worker", {"url": "redis", "count": tasks, "tool": "celery"}))
    # issue 15: Redis's used_memory with the history on at 100,000 entries (2,000 in --quick)
    entries = 2_000 if quick else 100_000
    out.append(("history_memory", "history_memory", {"url": "redis", "entries": entries}))
    for backend in BACKENDS:
        out.append(
            (
                "failover",
                "failover",
                {"url": backend, "kills": 1 if quick else 20, "lease_ttl": 2 if quick else 5},
            )
        )
    out += scale(quick)
    out += console(quick)
    steady = ((1_000, 3),) if quick else ((10_000, 40), (1_000, 20))
    for n, window in steady:
        for tool in TOOLS:
            out.append(
                (
                    "compare",
                    "compare",
                    {"url": "redis", "tool": tool, "mode": "steady", "count": n, "window": window},
                )
            )
    if not quick:
        for tool in TOOLS:
            out.append(
                (
                    "burst",
                    "compare",
                    {
                        "url": "redis",
                        "tool": tool,
                        "mode": "burst",
                        "count": 10_000,
                        "cap": 60,
                        "margin": 15,
                    },
                )
            )
    return out


def scale(quick: bool) -> list[Job]:
    """Issue 18's runtime entries: 100,000 imported over each way into a backend holding 0 or
    200,000 already (1,000,000 is beyond this shared machine: the report extrapolates), and
    RedBeat holding the same entries; `--quick` imports 2,000 into an empty one."""
    counts = (2_000,) if quick else (100_000, 300_000)
    out: list[Job] = []
    for count in counts:
        batch = min(count, 100_000)
        for backend in BACKENDS:
            for way in ("backend", "http"):
                params = {"url": backend, "way": way, "count": count, "batch": batch}
                out.append(("scale", "scale", params))
        out.append(("scale", "scale", {"url": "redis", "way": "redbeat", "count": count}))
    if not quick and find_spec("beatd.entry_feed") is not None:  # the leader loads them
        for backend in BACKENDS:
            out.append(("scale", "scale", {"url": backend, "way": "leader", "count": 100_000}))
    return out


def console(quick: bool) -> list[Job]:
    """Issue 19's console: each page's p95 over `requests` GETs with `count` runtime entries
    (100,000 and issue 18's 1,000,000 in the full run), and the steady load's p99 publish
    delay with the entries page fetched 10 times a second against the console idle (`runs` of
    each, interleaved)."""
    out: list[Job] = []
    for count in (2_000,) if quick else (100_000, 1_000_000):
        for backend in BACKENDS:
            params = {"url": backend, "mode": "pages", "count": count}
            if count > 100_000:  # seeding 1,000,000 took 2-7 min here, the index 1-1.5 min
                params["timeout_s"] = 2_400
            out.append(("console", "console", {**params, "requests": 20 if quick else 100}))
    for backend in BACKENDS:
        steady = {"count": 1_000, "window": 4, "runs": 1} if quick else {
            "count": 10_000, "window": 20, "runs": 5}  # fmt: skip
        out.append(("console", "console", {"url": backend, "mode": "load", **steady}))
    return out


def for_backends(jobs: list[Job], backends: list[str]) -> list[Job]:
    """The jobs on one of `backends`; refused when one is not a backend the bench knows."""
    unknown = sorted(set(backends) - set(BACKENDS_ALL))
    if unknown:
        raise SystemExit(
            f"bench: unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS_ALL)}"
        )
    return [job for job in jobs if job[2].get("url") in backends]
