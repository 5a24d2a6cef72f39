"""Scenario 6: the gap between a leader's kill -9 and the next publish, with losses and repeats.

Two real `beatd run` processes share one backend with 100 entries every second and
`missed: catch_up`. Each round kills the leader with SIGKILL, times the first message that
reaches the broker afterwards (only the new leader can write it), and restarts the killed node as
a standby. At the end every (entry, second) of the measured span is checked: missing is lost,
published twice is a duplicate.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import daemons
from bench.common import (
    arrivals,
    open_backend,
    percentiles,
    queued_count,
    reset_backend,
    wait_until,
)
from bench.workload import write_yaml

ENTRIES = 100


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, kills, ttl = params["url"], params["kills"], params["lease_ttl"]
    work = Path(params["workdir"])
    kind = url.split(":", 1)[0]
    reset_backend(url)
    spec = [{"name": f"second-{i:03d}", "every": 1, "offset": 0} for i in range(ENTRIES)]
    schedule = write_yaml(spec, work / "failover.yaml", missed="catch_up")
    nodes = {
        name: daemons.run(
            schedule, url, work / f"failover-{kind}-{name}.log", node=name, lease_ttl=f"{ttl}s"
        )
        for name in ("node-a", "node-b")
    }
    backend = open_backend(url)
    rng = random.Random(3)
    gaps: list[float] = []
    try:
        if not wait_until(lambda: queued_count(url) > 0, timeout=60, interval=0.1):
            raise RuntimeError("no leader published within 60 s")
        time.sleep(2.0)
        begin = time.time()
        for _ in range(kills):
            leader = _current_leader(backend, set(nodes), timeout=3 * ttl + 10)
            if leader is None:
                return {"error": "no leader for 3 lease TTLs + 10 s\n" + _tails(work, kind)}
            name = leader
            time.sleep(rng.uniform(0.0, 1.0))  # kill at varying points of the renewal cycle
            killed_at = time.time()
            daemons.kill9(nodes[name])
            nxt = _wait_next_arrival(url, killed_at, timeout=3 * ttl + 10)
            gaps.append(nxt - killed_at if nxt else float("inf"))
            nodes[name] = daemons.run(
                schedule, url, work / f"failover-{kind}-{name}.log", node=name, lease_ttl=f"{ttl}s"
            )
            time.sleep(1.5)  # the restarted node is up (as a standby) before the next kill
        end = float(int(time.time()) - 1)
        time.sleep(2.0)
    finally:
        for process in nodes.values():
            daemons.stop(process)
        backend.close()
    found = arrivals(url)
    ids = Counter(a.id for a in found)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    published = {(a.entry, a.slot) for a in found}
    start = float(int(begin))
    expected = {(item["name"], float(s)) for item in spec for s in range(int(start), int(end))}
    lost = len(expected - published)
    finite = [g for g in gaps if g != float("inf")]
    return {
        "backend": kind,
        "lease_ttl_s": ttl,
        "kills": kills,
        "entries": ENTRIES,
        "gap_s": {**percentiles(finite), "never": len(gaps) - len(finite)},
        "gap_target_s": ttl + 1,
        "expected_runs": len(expected),
        "lost": lost,
        "duplicates": duplicates,
        "samples": {"gap_s": [round(g, 3) for g in finite]},
    }


def _current_leader(backend: Any, names: set[str], timeout: float) -> str | None:
    found: list[str] = []

    def check() -> bool:
        info = backend.leader()
        if info is not None and info.node in names:
            found.append(info.node)
        return bool(found)

    wait_until(check, timeout=timeout, interval=0.05)
    return found[0] if found else None


def _tails(work: Path, kind: str) -> str:
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:])
        for log in sorted(work.glob(f"failover-{kind}-*.log"))
    )


def _wait_next_arrival(url: str, after: float, timeout: float) -> float | None:
    """The broker time of the first message that arrived after `after`, polling."""
    first: list[float] = []

    def check() -> bool:
        t = _first_after(url, after)
        if t is not None:
            first.append(t)
        return t is not None

    wait_until(check, timeout=timeout, interval=0.01)
    return first[0] if first else None


def _first_after(url: str, after: float) -> float | None:
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :], timeout=5)
        try:
            row = db.execute(
                "SELECT MIN(ready_at) FROM message WHERE ready_at > ?", (after,)
            ).fetchone()
        finally:
            db.close()
        return row[0]
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        best = None
        for key in client.scan_iter("beatd:queue:*"):
            rows = client.xrange(key, min=f"({int(after * 1000)}-0", count=1)
            if rows:
                t = int(rows[0][0].split("-")[0]) / 1000
                best = t if best is None else min(best, t)
        return best
    finally:
        client.close()
