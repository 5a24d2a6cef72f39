"""Scenario 5: `beatd worker --concurrency 2` running no-op tasks: tasks per second.

N run messages of `bench.noop` are queued first; the worker is then started and the queue depth
sampled until it is empty. The rate is taken between 90 % and 10 % remaining, so process start-up
and the last stragglers are left out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import daemons
from bench.common import open_backend, proc_cpu, queued_count, reset_backend
from bench.workload import TASK


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, count, concurrency = params["url"], params["count"], params.get("concurrency", 2)
    work = Path(params["workdir"])
    kind = url.split(":", 1)[0]
    reset_backend(url)
    _fill(url, count)
    schedule = work / "worker.yaml"
    schedule.write_text("entries: {}\n")
    log = work / f"worker-{kind}.log"
    spawned = time.monotonic()
    process = daemons.beatd(
        [
            "worker",
            "--broker",
            url,
            "-A",
            "bench.tasks",
            "-Q",
            "default",
            "-s",
            str(schedule),
            "--concurrency",
            str(concurrency),
            "--log-level",
            params.get("log_level", "info"),
        ],
        log,
    )
    marks: dict[str, float] = {}
    try:
        deadline = time.monotonic() + params.get("timeout", 240)
        while time.monotonic() < deadline:
            depth = queued_count(url)
            now = time.monotonic()
            if depth <= 0.9 * count:
                marks.setdefault("p90", now)
            if depth <= 0.1 * count:
                marks.setdefault("p10", now)
            if depth == 0:
                marks["empty"] = now
                break
            if process.poll() is not None:
                raise RuntimeError(f"beatd worker exited with {process.returncode}; see {log}")
            time.sleep(0.05)
        cpu = proc_cpu(process.pid)
    finally:
        daemons.stop(process)
    done = "p10" in marks and "p90" in marks
    rate = 0.8 * count / (marks["p10"] - marks["p90"]) if done else None
    return {
        "backend": kind,
        "tasks": count,
        "concurrency": concurrency,
        "tasks_per_s": round(rate, 1) if rate else None,
        "drained": "empty" in marks,
        "seconds_to_empty": round(marks["empty"] - spawned, 2) if "empty" in marks else None,
        "worker_main_cpu_s": round(cpu, 2),
    }


def _fill(url: str, count: int) -> None:
    from beatd.backends.base import Outgoing
    from beatd.message import RunMessage, run_id

    backend = open_backend(url)
    now = datetime.now(UTC).replace(microsecond=0)
    batch = []
    for i in range(count):
        entry = f"noop-{i:06d}"
        message = RunMessage(
            id=run_id(entry, now),
            task=TASK,
            entry=entry,
            scheduled_for=now,
            published_at=now,
            queue="default",
        )
        batch.append(Outgoing(entry, message.id, "default", None, message.to_json()))
        if len(batch) == 1000:
            backend.enqueue(batch)
            batch = []
    if batch:
        backend.enqueue(batch)
    backend.close()
