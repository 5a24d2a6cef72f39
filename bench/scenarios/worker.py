"""Scenario 5: no-op tasks per second with `--concurrency 2`, beatd's worker and Celery's.

`tool=beatd` (the default) runs `beatd worker` on N beatd run messages, on SQLite or Redis.
`tool=celery` runs a real `celery worker` (the peers' Celery, prefork pool) on N Celery protocol
messages in the bench's Redis: envelopes from beatd's own encoder (`beatd.celery_protocol`),
pushed onto the list `beatd run` commits a `protocol: celery` entry's runs to, oldest first.

The messages of `bench.noop` are queued first; the worker is then started and the queue depth
sampled until it is empty. Then, with the worker idle, single runs are queued one at a time after
a random idle gap (0.2 to 1.2 s, so a polling worker is caught at every point of its interval)
and the time from queueing to the run's count going up is taken: the queue-to-start latency,
p50, p90, p99 and the worst (the count is read every millisecond). It starts as the queueing call
does, so it includes that call's own round trip and commit (`enqueue_p50_ms`: on PostgreSQL a
durable commit, on Redis one script). With 100 samples p99 is the worst of them: one stall of
the machine decides it, so the worst and p90 are given beside it.

The rate is taken between 90 % and 10 % remaining, so process start-up and the last stragglers
are left out; so is the CPU per task, of the main process and of the pool (every descendant
process), read from /proc at those two marks, and on Redis the server's (`INFO cpu`, which counts
every client's commands: the bench's own depth samples too), which the worker waits for on each
claim and ack: a figure the machine's load bends less than the rate. Every run of the task
counts itself (bench/taskcount.py), and the result says how many executed: N when every message
ran.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import daemons, peers, taskcount
from bench.common import open_backend, proc_cpu, queued_count, reset_backend, wait_until
from bench.workload import TASK

QUEUE = "default"  # beatd's
CELERY_QUEUE = "celery"  # Celery's default queue, where `beatd run` sends an entry without one
BATCH = 1000

# monotonic time, CPU s of the main process, of the pool, and of the Redis server (0 on others)
Mark = tuple[float, float, float, float]


def run(params: dict[str, Any]) -> dict[str, Any]:
    tool = params.get("tool", "beatd")
    url, count = params["url"], params["count"]
    concurrency = params.get("concurrency", 2)
    work = Path(params["workdir"])
    kind = url.split(":", 1)[0]
    if tool == "celery" and kind != "redis":
        raise ValueError(f"a Celery worker needs the Redis broker, not {url}")
    counts = work / f"executed-{tool}-{kind}"
    counts.mkdir(parents=True)
    reset_backend(url)
    log = work / f"worker-{tool}-{kind}.log"
    extra: dict[str, Any] = {}
    if tool == "celery":
        _fill_celery(url, count)
        depth = _celery_depth(url)
        server_cpu = _server_cpu(url)
        extra["celery"] = peers.versions()["celery"]
        spawned = time.monotonic()
        process = _celery_worker(url, concurrency, counts, log)
    else:
        _fill(url, count)
        depth = lambda: queued_count(url)  # noqa: E731
        server_cpu = _server_cpu(url)
        spawned = time.monotonic()
        process = _beatd_worker(url, concurrency, counts, log, params.get("log_level", "info"))
    try:
        marks = _drain(process, depth, server_cpu, count, params.get("timeout", 240), log)
        # Celery's queue empties as its last tasks are taken, not finished: wait for them
        wait_until(lambda: taskcount.executed(counts) >= count, 30, 0.05)
        main_cpu, pool_cpu = _tree_cpu(process.pid)
        latencies, queueing = _latencies(url, tool, counts, params.get("latency_samples", 30))
    finally:
        daemons.stop(process)
    done = "p10" in marks and "p90" in marks
    per_task = 0.8 * count
    rate = per_task / (marks["p10"][0] - marks["p90"][0]) if done else None
    return {
        "tool": tool,
        "backend": kind,
        "tasks": count,
        "concurrency": concurrency,
        "tasks_per_s": round(rate, 1) if rate else None,
        "drained": "empty" in marks,
        "executed": taskcount.executed(counts),
        "seconds_to_empty": round(marks["empty"][0] - spawned, 2) if "empty" in marks else None,
        "worker_main_cpu_s": round(main_cpu, 2),
        "worker_pool_cpu_s": round(pool_cpu, 2),
        "main_cpu_us_per_task": (
            round(1e6 * (marks["p10"][1] - marks["p90"][1]) / per_task, 1) if done else None
        ),
        "pool_cpu_us_per_task": (
            round(1e6 * (marks["p10"][2] - marks["p90"][2]) / per_task, 1) if done else None
        ),
        "server_cpu_us_per_task": (
            round(1e6 * (marks["p10"][3] - marks["p90"][3]) / per_task, 1)
            if done and kind == "redis"
            else None
        ),
        "latency_samples": len(latencies),
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p90_ms": _percentile(latencies, 90),
        "latency_p99_ms": _percentile(latencies, 99),
        "latency_max_ms": _percentile(latencies, 100),
        "enqueue_p50_ms": _percentile(queueing, 50),
        **extra,
    }


def _latencies(url: str, tool: str, counts: Path, samples: int) -> tuple[list[float], list[float]]:
    """Seconds from queueing one run to its execution, for `samples` runs queued one by one,
    and the seconds each queueing call took (part of the former)."""
    queue_one = _celery_queue_one(url) if tool == "celery" else _beatd_queue_one(url)
    gaps = random.Random(5)
    found: list[float] = []
    queueing: list[float] = []
    for n in range(samples):
        time.sleep(gaps.uniform(0.2, 1.2))
        before = taskcount.executed(counts)
        queued_at = time.monotonic()
        queue_one(n)
        queueing.append(time.monotonic() - queued_at)
        if not wait_until(lambda b=before: taskcount.executed(counts) > b, 10, 0.001):
            raise RuntimeError(f"a run queued to an idle {tool} worker did not start in 10 s")
        found.append(time.monotonic() - queued_at)
    return found, queueing


def _percentile(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, len(ordered) * p // 100)], 1)


def _beatd_queue_one(url: str) -> Callable[[int], None]:
    from beatd.backends.base import BeatdQueue, Outgoing
    from beatd.message import RunMessage

    backend = open_backend(url)

    def queue_one(n: int) -> None:
        now = datetime.now(UTC)
        message = RunMessage(
            id=f"latency@{n}",
            task=TASK,
            entry="latency",
            scheduled_for=now,
            published_at=now,
            queue=QUEUE,
        )
        backend.enqueue([Outgoing("latency", message.id, BeatdQueue(QUEUE), message.to_json())])

    return queue_one


def _celery_queue_one(url: str) -> Callable[[int], None]:
    import redis

    from beatd import celery_protocol
    from beatd.message import RunMessage

    client = redis.Redis.from_url(url)
    key = celery_protocol.list_name(CELERY_QUEUE, None)
    origin = f"beatd@{socket.gethostname()}"

    def queue_one(n: int) -> None:
        now = datetime.now(UTC)
        message = RunMessage(
            id=f"latency@{n}",
            task=TASK,
            entry="latency",
            scheduled_for=now,
            published_at=now,
            queue=CELERY_QUEUE,
        )
        client.lpush(key, celery_protocol.encode(message, origin))

    return queue_one


def _drain(
    process: subprocess.Popen[bytes],
    depth: Callable[[], int],
    server_cpu: Callable[[], float],
    count: int,
    timeout: float,
    log: Path,
) -> dict[str, Mark]:
    """Sample the queue depth until it is empty: when 90 % and 10 % remained, and when none."""
    marks: dict[str, Mark] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        remaining = depth()
        now = time.monotonic()
        if remaining <= 0.9 * count and "p90" not in marks:
            marks["p90"] = (now, *_tree_cpu(process.pid), server_cpu())
        if remaining <= 0.1 * count and "p10" not in marks:
            marks["p10"] = (now, *_tree_cpu(process.pid), server_cpu())
        if remaining == 0:
            marks["empty"] = (now, 0.0, 0.0, 0.0)
            break
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}; see {log}")
        time.sleep(0.05)
    return marks


def _tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a live process and, together, of its live descendants: the pool, which
    for beatd hangs off a forkserver process, for Celery off the main process itself."""
    descendants = 0.0
    pending = _children(pid)
    while pending:
        child = pending.pop()
        try:
            descendants += proc_cpu(child)
        except OSError:  # it exited since the listing
            continue
        pending += _children(child)
    return proc_cpu(pid), descendants


def _server_cpu(url: str) -> Callable[[], float]:
    """CPU seconds (user + system) the Redis server at `url` has used, from `INFO cpu`; 0 for
    another backend (SQLite runs in the worker's own process)."""
    if not url.startswith("redis"):
        return lambda: 0.0
    import redis

    client = redis.Redis.from_url(url)

    def cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    return cpu


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # it exited
        return out
    for thread in threads:
        try:
            out += [int(child) for child in (thread / "children").read_text().split()]
        except OSError:  # the thread ended since the listing
            continue
    return out


# --- beatd -------------------------------------------------------------------------------------


def _beatd_worker(
    url: str, concurrency: int, counts: Path, log: Path, log_level: str
) -> subprocess.Popen[bytes]:
    schedule = log.with_suffix(".yaml")
    schedule.write_text("entries: {}\n")
    return daemons.beatd(
        [
            "worker",
            "--broker",
            url,
            "-A",
            "bench.tasks",
            "-Q",
            QUEUE,
            "-s",
            str(schedule),
            "--concurrency",
            str(concurrency),
            "--log-level",
            log_level,
        ],
        log,
        env={taskcount.ENV: str(counts)},
    )


def _messages(count: int, queue: str):
    from beatd.message import RunMessage, run_id

    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(count):
        entry = f"noop-{i:06d}"
        yield RunMessage(
            id=run_id(entry, now),
            task=TASK,
            entry=entry,
            scheduled_for=now,
            published_at=now,
            queue=queue,
        )


def _fill(url: str, count: int) -> None:
    """Commit the runs as a leader does, so each has its published record in the run history
    and the worker's claims and acks write its attempts (a beatd from before the history
    enqueues them)."""
    from beatd.backends.base import BeatdQueue, Outgoing

    backend = open_backend(url)
    publish = _committer(backend)
    batch: list[Any] = []
    for message in _messages(count, QUEUE):
        body, slot = message.to_json(), message.scheduled_for
        batch.append((Outgoing(message.entry, message.id, BeatdQueue(QUEUE), body), slot))
        if len(batch) == BATCH:
            publish(batch)
            batch = []
    if batch:
        publish(batch)
    backend.close()


def _committer(backend: Any) -> Callable[[list[Any]], None]:
    from beatd.backends.base import Outgoing, StateWrite
    from beatd.state import EntryState

    if "slot" not in Outgoing._fields:
        return lambda batch: backend.enqueue([outgoing for outgoing, _ in batch])
    lease = backend.acquire_lease("bench-fill", 600)

    def commit(batch: list[Any]) -> None:
        writes = [StateWrite(EntryState(o.entry, slot, slot, "bench"), None) for o, slot in batch]
        messages = [o._replace(slot=slot, due=slot) for o, slot in batch]
        backend.commit(lease, writes, messages)

    return commit


# --- Celery ------------------------------------------------------------------------------------


def _fill_celery(url: str, count: int) -> None:
    """What `beatd run` commits for `protocol: celery` runs: its envelope, LPUSHed onto the
    queue's kombu list one message at a time, so a worker's BRPOP takes the oldest first."""
    import redis

    from beatd import celery_protocol

    key = celery_protocol.list_name(CELERY_QUEUE, None)
    origin = f"beatd@{socket.gethostname()}"
    client = redis.Redis.from_url(url)
    batch = []
    for message in _messages(count, CELERY_QUEUE):
        batch.append(celery_protocol.encode(message, origin))
        if len(batch) == BATCH:
            client.lpush(key, *batch)
            batch = []
    if batch:
        client.lpush(key, *batch)
    client.close()


def _celery_depth(url: str) -> Callable[[], int]:
    """Messages not yet taken for a task: the queue's four priority lists plus kombu's `unacked`
    hash (prefetched; Celery acknowledges as a pool process accepts the task)."""
    import redis

    from beatd import celery_protocol

    lists = sorted({celery_protocol.list_name(CELERY_QUEUE, p) for p in (None, 6, 3, 0)})
    client = redis.Redis.from_url(url)

    def depth() -> int:
        with client.pipeline(transaction=False) as pipe:
            for key in lists:
                pipe.llen(key)
            pipe.hlen("unacked")
            return sum(pipe.execute())

    return depth


def _celery_worker(url: str, concurrency: int, counts: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [
                str(peers.celery()),
                "-A",
                "bench.drivers.celery_worker",
                "worker",
                "-Q",
                CELERY_QUEUE,
                "--concurrency",
                str(concurrency),
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--logfile",
                str(log),
                "--hostname",
                "bench@%h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=daemons.REPO,
            env={
                **os.environ,
                "PYTHONPATH": str(daemons.REPO),
                "BENCH_REDIS": url,
                taskcount.ENV: str(counts),
            },
        )
    finally:
        out.close()
