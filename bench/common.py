"""What every scenario shares: meters, percentiles, a scenario's entry point, queue readers.

A scenario is a module under `bench/scenarios/` with `run(params) -> dict`. `bench.run` starts
each one in its own process (`python -m bench.common MODULE PARAMS_JSON`) so that its peak RSS
is its own; the child prints one JSON line with the figures and its peak RSS.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import resource
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULT_MARK = "BENCH-RESULT "


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Span:
    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def measure() -> Iterator[Span]:
    """Wall and CPU seconds (this process, all threads) of the block."""
    span = Span()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield span
    finally:
        span.wall = time.perf_counter() - wall
        span.cpu = time.process_time() - cpu


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


_CLK_TCK = __import__("os").sysconf("SC_CLK_TCK")


def percentiles(samples: Sequence[float], points: Iterable[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus max and count; NaN-free (empty gives None)."""
    data = sorted(samples)
    out: dict[str, Any] = {"n": len(data)}
    for p in points:
        key = f"p{p:g}"
        out[key] = (
            data[min(len(data) - 1, max(0, math.ceil(p / 100 * len(data)) - 1))] if data else None
        )
    out["max"] = data[-1] if data else None
    out["mean"] = sum(data) / len(data) if data else None
    return out


def thin(samples: Sequence[float], limit: int = 5000) -> list[float]:
    """At most `limit` evenly spaced samples of the sorted data (raw figures for the JSON)."""
    data = sorted(samples)
    if len(data) <= limit:
        return [round(x, 6) for x in data]
    step = len(data) / limit
    return [round(data[int(i * step)], 6) for i in range(limit)]


def wait_until(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# --- beatd objects -------------------------------------------------------------------------------


def beatd_scheduler(backend: Any, cfg: Any, clock: Any, **settings: Any):
    """A `Scheduler` on `cfg`, set up as `beatd run` sets one up (its garbage-collector tuning
    included); `settings` this beatd does not have yet are skipped."""
    from beatd.scheduler import Scheduler, SchedulerSettings

    known = {f.name for f in dataclasses.fields(SchedulerSettings)}
    chosen = SchedulerSettings(**{k: v for k, v in settings.items() if k in known})
    try:
        from beatd.assemble import build_scheduler
    except ImportError:  # a beatd from before beatd.assemble (an A/B run's baseline)
        from beatd.service import tune_collector

        scheduler = Scheduler(backend, lambda: cfg, clock, chosen, config=cfg)
        scheduler.on_event = tune_collector(scheduler.on_event)
        return scheduler
    return build_scheduler(backend, cfg, lambda: cfg, clock, chosen)


def open_backend(url: str):
    """The backend `url` names, with the run history off when BEATD_HISTORY says so (as
    `beatd run` reads it), so `bench.ab --head-env BEATD_HISTORY=0` compares on and off."""
    from beatd.backends import open_backend as open_

    if os.environ.get("BEATD_HISTORY", "").lower() in ("0", "false", "no", "off"):
        return open_(url, history=False)
    return open_(url)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def reset_backend(url: str) -> None:
    """An empty backend: delete the SQLite file, flush the Redis database, or drop beatd's
    schema from the bench's PostgreSQL database."""
    if is_postgres(url):
        from bench import pgdatabase

        pgdatabase.reset(url)
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        import redis

        # a flush of 300,000 entries can take longer than redis-py's 5 s on a loaded host
        redis.Redis.from_url(url, socket_timeout=120).flushdb()


# --- reading what reached the queue --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message found in a queue: its run id, slot, and when it reached the broker."""

    id: str
    entry: str
    slot: float  # epoch seconds
    arrived: float  # epoch seconds, the broker's record (SQLite ready_at, Redis stream id)
    published: float  # the message's own published_at


def _parse(body: str, arrived: float) -> Arrival:
    data = json.loads(body)
    slot = datetime.fromisoformat(data["scheduled_for"].replace("Z", "+00:00")).timestamp()
    published = datetime.fromisoformat(data["published_at"].replace("Z", "+00:00")).timestamp()
    return Arrival(data["id"], data["entry"], slot, arrived, published)


def arrivals(url: str, since: float = 0.0) -> list[Arrival]:
    """Every beatd run message in the backend's queues that arrived after `since`."""
    if is_postgres(url):
        return [_parse(body, ready) for body, ready in _postgres_rows(url, since)]
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :], timeout=30)
        try:
            rows = db.execute(
                "SELECT body, ready_at FROM message WHERE ready_at > ? ORDER BY seq", (since,)
            ).fetchall()
        finally:
            db.close()
        return [_parse(body, ready) for body, ready in rows]
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    out = []
    start = f"{int(since * 1000)}-0" if since else "-"
    for key in redis_queue_keys(client):  # not a SCAN: millions of keys at 1,000,000 entries
        for stream_id, fields in _xrange(client, key, start):
            out.append(_parse(fields["body"], int(stream_id.split("-")[0]) / 1000))
    client.close()
    return out


def _xrange(client, key: str, start: str, page: int = 20000):
    while True:
        rows = client.xrange(key, min=start, count=page)
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1][0]
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def queued_count(url: str) -> int:
    """How many messages the backend's queues hold."""
    if is_postgres(url):
        return _postgres_count(url)
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :], timeout=30)
        try:
            return db.execute("SELECT COUNT(*) FROM message").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        keys = redis_queue_keys(client)
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xlen(key)
            return sum(pipe.execute())
    finally:
        client.close()


def redis_queue_keys(client: Any) -> list[str]:
    """The streams of the queues named in `beatd:queues` (every script that adds a run adds its
    queue there), one round trip. Not a SCAN of `beatd:queue:*`: that walks the whole keyspace
    ten keys a call, and the run history's keys (one per run) made the worker scenario's depth
    sampling take hundreds of round trips a sample with the history on, which slowed the worker
    it measured (issue 15). A beatd from before that set is scanned instead."""
    from beatd.backends.redis_link import BANDS

    queues = client.smembers("beatd:queues")
    if not queues:
        return list(client.scan_iter("beatd:queue:*", count=10_000))
    return [f"beatd:queue:{q}:{b}" for q in sorted(queues) for b in BANDS]


def _postgres_rows(url: str, since: float) -> list[tuple[str, float]]:
    """The message table's bodies and `ready_at` (the database's clock at the insert, for a
    message nobody claimed), oldest first."""
    import psycopg

    from bench.pgdatabase import SCHEMA

    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(
            f"SELECT body, ready_at FROM {SCHEMA}.message WHERE ready_at > %s ORDER BY seq",
            (since,),
        ).fetchall()


def _postgres_count(url: str) -> int:
    import psycopg

    from bench.pgdatabase import SCHEMA

    with psycopg.connect(url, autocommit=True) as db:
        try:
            row = db.execute(f"SELECT COUNT(*) FROM {SCHEMA}.message").fetchone()
        except psycopg.errors.UndefinedTable:  # beatd has not created its schema yet
            return 0
    return int(row[0]) if row else 0


# --- the child-process entry point ---------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    module, params = argv[0], json.loads(argv[1])
    scenario = importlib.import_module(f"bench.scenarios.{module}")
    result = scenario.run(params)
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
