"""Scenario 8: issue 18's scale — runtime entries held in the backend, beside RedBeat.

`count` entries of issue 18's mix (`bench.workload.runtime_mix`: 40 % daily cron in 50 zones,
40 % hourly cron, 20 % intervals from 1 min to 1 day). The first `count - batch` are the stock,
written over the backend URL in `Client.add_many` calls of `STOCK_CHUNK` (timed apart); the last
`batch` are the import held to issue 18's ≤ 10 s per 100,000, by `way`:

- `backend`: one `Client.add_many` over the backend URL;
- `http`: one `Client.add_many` through a real `beatd run`'s API, which the client sends in
  requests of `chunk` entries (the API refuses a body above 1 MiB), three at a time;
- `redbeat`: every entry through `RedBeatSchedulerEntry(...).save()` (bench/drivers/
  redbeat_import.py, on the peers' venv; the stock is written by RedBeat too).

Then the bytes per entry: the growth of Redis `used_memory` (the bench's own redis-server,
flushed before), or the SQLite file with its WAL after a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

import redis

from bench import daemons
from bench.common import (
    arrivals,
    percentiles,
    proc_cpu,
    proc_hwm_mb,
    queued_count,
    redis_queue_keys,
    reset_backend,
    wait_until,
)
from bench.peers import PYTHON
from bench.redisserver import free_port
from bench.tools import DRIVERS
from bench.workload import TASK, daily, mixed_intervals, runtime_mix, write_yaml

STOCK_CHUNK = 20_000
HTTP_CHUNK = 5_000  # about 560 KiB of JSON: under the API's 1 MiB
PROBE = "zz-applied-probe"  # written after an import over HTTP: applied, the import is too


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, count, way = params["url"], params["count"], params["way"]
    batch = min(params.get("batch", 100_000), count)
    work = Path(params["workdir"]) / f"scale-{way}-{count}"
    work.mkdir(parents=True, exist_ok=True)
    seeded = params.get("seeded", False)  # the entries are there already (a store kept)
    if not seeded:
        reset_backend(url)
    before = _used_memory(url)
    if way == "redbeat":
        result = _redbeat(url, count, work)
    elif way == "leader":
        start = Start(seeded, params.get("restart", False), params.get("steady", 0))
        result = _leader(url, count, work, params.get("changes", 20), start)
    elif way == "takeover":
        result = _takeover(url, count, work, seeded)
    else:
        result = _beatd(url, count, batch, way, work, params.get("chunk", HTTP_CHUNK))
    size = _stored_bytes(url) - before
    if not seeded:
        reset_backend(url)
    return {
        "way": way,
        "backend": url.split(":", 1)[0],
        "entries": count,
        "batch": batch if way != "redbeat" else count,
        **result,
        # on a store kept (seeded) the growth during the run, not the entries' bytes
        ("grown_bytes" if seeded else "stored_bytes"): size,
        **({} if seeded else {"bytes_per_entry": round(size / count, 1)}),
    }


def _beatd(url: str, count: int, batch: int, way: str, work: Path, chunk: int) -> dict[str, Any]:
    from beatd import Client

    stock = count - batch
    with Client(url, by="bench", timeout=120) as client:
        started = time.perf_counter()
        for start in range(0, stock, STOCK_CHUNK):
            client.add_many(runtime_mix(min(STOCK_CHUNK, stock - start), start=start))
        stock_s = time.perf_counter() - started
    entries = runtime_mix(batch, start=stock)
    redis_cpu = _redis_cpu(url)
    if way == "http":
        timed = _through_api(url, entries, work, chunk, held=stock)
    else:
        with Client(url, by="bench", timeout=120) as client:
            cpu, started = time.process_time(), time.perf_counter()
            client.add_many(entries)
            timed = {
                "import_s": time.perf_counter() - started,
                "client_cpu_s": round(time.process_time() - cpu, 3),
            }
    import_s = timed.pop("import_s")
    redis_end = _redis_cpu(url)
    redis_after = timed.pop("redis_cpu_at_return", redis_end)  # over HTTP: before the probe
    if redis_cpu is not None and redis_after is not None and redis_end is not None:
        timed["redis_cpu_s"] = round(redis_after - redis_cpu, 3)
        if way == "http":
            timed["redis_cpu_applied_s"] = round(redis_end - redis_cpu, 3)
    cpu = sum(timed.get(k) or 0 for k in ("client_cpu_s", "daemon_cpu_s", "redis_cpu_s"))
    timed["cpu_us_per_entry"] = round(cpu / batch * 1e6, 1)
    return {
        "stock_s": round(stock_s, 3),
        "stock_us_per_entry": round(stock_s / stock * 1e6, 1) if stock else None,
        "import_s": round(import_s, 3),
        "import_us_per_entry": round(import_s / batch * 1e6, 1),
        "import_s_per_100k": round(import_s / batch * 100_000, 2),
        **timed,
    }


class Start(NamedTuple):
    """How the leader starts: over entries written already (`seeded`), after a first run that
    wrote every entry's state (`restart`: the states are read, not written), and with the
    steady-load scenario's `steady` file entries beside the probe (every 1-60 s: about 3,200
    runs a second for 10,000)."""

    seeded: bool = False
    restart: bool = False
    steady: int = 0


def _leader(url: str, count: int, work: Path, changes: int, start: Start) -> dict[str, Any]:
    """`count` runtime entries written over the backend URL, then a real `beatd run` whose file
    holds one probe entry every second: spawn to first publish, to every entry adopted (its
    log's `adopted in stages`), how late the runs of slots in between were, its peak RSS, and
    `changes` entries (every second) added one at a time — from each write's acknowledgement
    to its first slot (the leader held it by then, as it published it) and to its run's
    arrival."""
    from beatd import Client

    if not start.seeded:
        with Client(url, by="bench", timeout=120) as client:
            for at in range(0, count, STOCK_CHUNK):
                client.add_many(runtime_mix(min(STOCK_CHUNK, count - at), start=at))
    probe = {"name": "probe", "every": 1, "offset": 0}
    schedule = write_yaml([probe, *mixed_intervals(start.steady)], work / "beatd.yaml")
    if start.restart:
        _run_until_adopted(schedule, url, work / "beatd-first.log")
    _clear_queues(url)
    spawned = time.time()
    log = _fresh(work / "beatd.log")
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    extra = ("--metrics-addr", f"127.0.0.1:{port}", "--metrics-entries", "none")
    process = daemons.run(schedule, url, log, extra=extra)
    try:
        if not wait_until(lambda: queued_count(url) > 0, timeout=300, interval=0.05):
            raise RuntimeError(f"beatd published nothing within 300 s; see {work}")
        cpu = proc_cpu(process.pid)
        first = min(arrivals(url), key=lambda a: a.arrived)
        if not wait_until(lambda: ADOPTED in log.read_text(), timeout=900, interval=0.2):
            raise RuntimeError(f"beatd adopted nothing in stages within 900 s; see {work}")
        adopted = time.time()
        adopted_cpu, adopted_rss = proc_cpu(process.pid), proc_hwm_mb(process.pid)
        during = [a for a in arrivals(url) if spawned <= a.slot <= adopted]
        late = [a.arrived - a.slot for a in during if not _in_file(a.entry)]
        file_late = [a.arrived - a.slot for a in during if _in_file(a.entry)]
        changed = _changes(url, changes, metrics)
        rss = proc_hwm_mb(process.pid)
    finally:
        daemons.stop(process)
    return {
        "restart": start.restart,
        "steady_entries": start.steady,
        "first_publish_s": round(first.arrived - spawned, 3),
        "daemon_cpu_to_first_publish_s": round(cpu, 3),
        "adopted_s": round(adopted - spawned, 3),
        "daemon_cpu_to_adopted_s": round(adopted_cpu, 3),
        "daemon_cpu_us_per_entry": round(adopted_cpu / count * 1e6, 1),
        "startup_run_delay_s": percentiles(late),
        "startup_file_run_delay_s": percentiles(file_late),
        "daemon_peak_rss_adopted_mb": round(adopted_rss, 1),
        "daemon_peak_rss_mb": round(rss, 1),
        "daemon_bytes_per_entry": round(rss * 2**20 / count, 1),
        "changes_measured": [len(changed.applied), len(changed.to_slot), changes],
        "change_applied_lag_s": percentiles(changed.applied),
        "change_to_slot_s": percentiles(changed.to_slot),
        "change_to_arrival_s": percentiles(changed.to_arrival),
    }


ADOPTED = "adopted in stages"  # beatd.staging's line when every entry is adopted


def _fresh(log: Path) -> Path:
    """`log` emptied: the waits read it for this run's lines (the daemons append)."""
    log.unlink(missing_ok=True)
    return log


def _in_file(entry: str) -> bool:
    """Whether `entry` is one of the leader's file entries (the probe, the steady load's)."""
    return entry == "probe" or entry.startswith("mixed-")


def _takeover(url: str, count: int, work: Path, seeded: bool) -> dict[str, Any]:
    """A leader and a standby over `count` runtime entries, the standby holding every entry;
    the leader killed (SIGKILL): from the kill to the standby's lease, its first publish and
    every entry adopted; no run published twice, and each second's slot of the probe entry
    (every second, in the file) published once across the kill."""
    from beatd import Client

    if not seeded:
        with Client(url, by="bench", timeout=120) as client:
            for at in range(0, count, STOCK_CHUNK):
                client.add_many(runtime_mix(min(STOCK_CHUNK, count - at), start=at))
    probe = {"name": "probe", "every": 1, "offset": 0}
    schedule = write_yaml([probe], work / "beatd.yaml", missed="catch_up")  # each slot
    _clear_queues(url)
    leader_log, standby_log = _fresh(work / "leader.log"), _fresh(work / "standby.log")
    leader = daemons.run(schedule, url, leader_log, node="leader")
    standby = None
    try:
        if not wait_until(lambda: ADOPTED in leader_log.read_text(), timeout=900, interval=0.5):
            raise RuntimeError(f"the leader adopted nothing in stages in 900 s; see {work}")
        standby = daemons.run(schedule, url, standby_log, node="standby")
        held = re.compile(r"read \d+ runtime entries")  # the count and those written before
        if not wait_until(lambda: held.search(standby_log.read_text()), 900, 0.5):
            raise RuntimeError(f"the standby did not read every entry in 900 s; see {work}")
        time.sleep(5)
        if leader.poll() is not None or standby.poll() is not None:
            raise RuntimeError(f"a beatd ended before the kill; see {work}")
        daemons.kill9(leader)
        killed = time.time()
        if not wait_until(lambda: "became leader" in standby_log.read_text(), 60, 0.05):
            raise RuntimeError(f"the standby did not take the lease within 60 s; see {work}")
        led = time.time()
        if not wait_until(lambda: ADOPTED in standby_log.read_text(), 900, 0.2):
            raise RuntimeError(f"the standby adopted nothing in stages in 900 s; see {work}")
        adopted = time.time()
        time.sleep(10)
        rss = proc_hwm_mb(standby.pid)
    finally:
        daemons.kill9(leader)
        if standby is not None:
            daemons.stop(standby)
    runs = arrivals(url)
    ids = [a.id for a in runs]
    first_at = min((a.arrived for a in runs if a.arrived > killed), default=None)
    slots = sorted(a.slot for a in runs if a.entry == "probe" and killed - 5 <= a.slot <= adopted)
    expected = set(range(math.ceil(killed - 5), math.floor(adopted) + 1))
    return {
        "lease_after_kill_s": round(led - killed, 3),
        "first_publish_after_kill_s": None if first_at is None else round(first_at - killed, 3),
        "adopted_after_kill_s": round(adopted - killed, 3),
        "runs": len(ids),
        "repeated_runs": len(ids) - len(set(ids)),
        "probe_slots_missing": len(expected - {int(slot) for slot in slots}),
        "probe_slots_repeated": len(slots) - len(set(slots)),
        "standby_peak_rss_mb": round(rss, 1),
    }


def _run_until_adopted(schedule: Path, url: str, log: Path) -> None:
    """A first `beatd run` that adopts every entry (writing their states), then stops."""
    process = daemons.run(schedule, url, _fresh(log))
    try:
        if not wait_until(lambda: ADOPTED in log.read_text(), timeout=900, interval=0.5):
            raise RuntimeError(f"the first beatd adopted nothing in stages in 900 s; see {log}")
    finally:
        daemons.stop(process)


def _clear_queues(url: str) -> None:
    """No message left from a run before (no worker takes them): the first publish is this
    run's."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :], timeout=60)
        try:
            db.execute("DELETE FROM message")
            db.commit()
        except sqlite3.OperationalError:  # no table yet: nothing to clear
            pass
        finally:
            db.close()
    elif url.startswith("redis"):
        client = redis.Redis.from_url(url, socket_timeout=120, decode_responses=True)
        for key in redis_queue_keys(client):
            client.delete(key)
        client.close()


def _changes(url: str, changes: int, metrics: str | None = None) -> Changes:
    """`changes` entries added one at a time: from each write's acknowledgement to its first
    slot and its run's arrival, and (`metrics`: the leader's /metrics) the leader's own
    `beatd_entry_changes_lag_seconds` once it counted the change applied."""
    from beatd import Client

    done = Changes([], [], [])
    with Client(url, by="bench", timeout=30) as client:
        for i in range(changes):
            name = f"change-{int(time.time())}-{i:03d}"  # a store kept holds earlier runs'
            applied = _scraped(metrics).get("beatd_entry_changes_applied_total", 0.0)
            client.add(name, task=TASK, every="1s", args=[name])
            acked = time.time()
            if metrics is not None:
                lag = _applied_lag(metrics, applied)
                if lag is not None:
                    done.applied.append(lag)
            first = _first_run(url, name, acked)
            if first is not None:
                done.to_slot.append(first.slot - first.acked)
                done.to_arrival.append(first.arrived - first.acked)
    return done


class Changes(NamedTuple):
    to_slot: list[float]
    to_arrival: list[float]
    applied: list[float]  # the leader's lag from each write to its application


def _scraped(metrics: str | None) -> dict[str, float]:
    """The unlabelled samples of a /metrics page (none without one)."""
    if metrics is None:
        return {}
    import urllib.request

    with urllib.request.urlopen(metrics, timeout=10) as page:
        text = page.read().decode()
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            samples[name] = float(value)
    return samples


def _applied_lag(metrics: str, before: float, timeout: float = 30.0) -> float | None:
    """The leader's change lag once its applied count passed `before` (None: not in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = _scraped(metrics)
        if samples.get("beatd_entry_changes_applied_total", 0.0) > before:
            return samples.get("beatd_entry_changes_lag_seconds")
        time.sleep(0.1)  # a scrape takes the daemon's interpreter too
    return None


class _FirstRun(NamedTuple):
    acked: float
    slot: float
    arrived: float


def _first_run(url: str, name: str, acked: float, timeout: float = 30.0) -> _FirstRun | None:
    """The first run of entry `name` to reach the queue, written at `acked`; None if none
    arrives within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [a for a in arrivals(url, acked - 1) if a.entry == name]
        if runs:
            first = min(runs, key=lambda a: a.slot)
            return _FirstRun(acked, first.slot, first.arrived)
        time.sleep(0.05)
    return None


def _through_api(
    url: str, entries: dict[str, dict[str, Any]], work: Path, chunk: int, held: int = 0
) -> dict[str, Any]:
    """`entries` through the API of a `beatd run` on `url`, `chunk` a request, once its leader
    has adopted the `held` entries there already (an import into a running deployment, not
    into one starting: with more than STAGED_ABOVE held, its log's `adopted in stages`)."""
    from beatd import Client
    from beatd.staging import STAGED_ABOVE

    token, tokens = _token(work)
    port = free_port()
    schedule = write_yaml(daily(1, avoid=_now(), window=600), work / "beatd.yaml")
    extra = ("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens))
    log = _fresh(work / "beatd.log")
    process = daemons.run(schedule, url, log, extra=extra)
    api = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: _answers(api, token), timeout=60, interval=0.1):
            raise RuntimeError(f"the API at {api} did not answer within 60 s; see {work}")
        if held > STAGED_ABOVE and not wait_until(lambda: ADOPTED in log.read_text(), 600, 0.2):
            raise RuntimeError(f"the leader did not adopt the {held} entries held; see {work}")
        cpu0 = proc_cpu(process.pid)
        cpu = time.process_time()
        with Client(api, token=token, timeout=120) as client:
            transport = getattr(client, "_transport", None)
            if transport is not None and hasattr(transport, "request_entries"):
                transport.request_entries = chunk  # it splits the batch, some requests at once
                started = time.perf_counter()
                client.add_many(entries)
            else:  # a beatd whose client sends one request per call
                names, started = list(entries), time.perf_counter()
                for at in range(0, len(names), chunk):
                    client.add_many({name: entries[name] for name in names[at : at + chunk]})
            import_s = time.perf_counter() - started
            daemon_cpu = proc_cpu(process.pid) - cpu0
            client_cpu = time.process_time() - cpu
            redis_cpu = _redis_cpu(url)
            applied_s = _applied(client, url, started)
        return {
            "import_s": import_s,
            "requests": -(-len(entries) // chunk),
            "daemon_cpu_s": round(daemon_cpu, 3),
            "client_cpu_s": round(client_cpu, 3),
            "applied_s": round(applied_s, 3),
            "daemon_cpu_applied_s": round(proc_cpu(process.pid) - cpu0, 3),
            "redis_cpu_at_return": redis_cpu,
            "daemon_peak_rss_mb": round(proc_hwm_mb(process.pid), 1),
        }
    finally:
        daemons.stop(process)


def _applied(client: Any, url: str, started: float) -> float:
    """Seconds from `started` until the leader had applied the import: it publishes the first
    slot of a probe entry written after it (the feed is applied in order). The probe is removed
    again."""
    client.add(PROBE, task=TASK, every="1s")
    first = _first_run(url, PROBE, time.time(), timeout=300)
    client.remove(PROBE)
    if first is None:
        raise RuntimeError("the leader published no slot of the probe within 300 s")
    return time.perf_counter() - started - (time.time() - first.slot)


def _redbeat(url: str, count: int, work: Path) -> dict[str, Any]:
    path = work / "entries.json"
    path.write_text(json.dumps(runtime_mix(count)))
    done = subprocess.run(
        [str(PYTHON), str(DRIVERS / "redbeat_import.py"), url, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    timed = json.loads(done.stdout.splitlines()[-1])
    return {
        "import_s": round(timed["wall_s"], 3),
        "import_us_per_entry": round(timed["wall_s"] / count * 1e6, 1),
        "import_s_per_100k": round(timed["wall_s"] / count * 100_000, 2),
        "client_cpu_s": round(timed["cpu_s"], 3),
    }


def _token(work: Path) -> tuple[str, Path]:
    made = daemons.beatd_output(["api", "token", "bench", "--scope", "write"])
    token = next(line.split()[-1] for line in made.splitlines() if line.startswith("token:"))
    line = made.split("file:", 1)[1].split("the token")[0].strip()
    path = work / "tokens"
    path.write_text(line + "\n")
    os.chmod(path, 0o600)
    return token, path


def _answers(api: str, token: str) -> bool:
    from beatd import Client
    from beatd.client import ClientError

    try:
        with Client(api, token=token, timeout=2) as client:
            next(iter(client.iter(page_size=1)), None)  # one page, not every entry
        return True
    except (OSError, ClientError):
        return False


def _now() -> Any:
    from bench.common import utc

    return utc(time.time())


def _redis_cpu(url: str) -> float | None:
    """Redis's CPU seconds so far (`INFO cpu`: user and system), None for another backend."""
    if not url.startswith("redis"):
        return None
    client = redis.Redis.from_url(url, socket_timeout=120)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def _used_memory(url: str) -> int:
    if not url.startswith("redis"):
        return 0
    client = redis.Redis.from_url(url, socket_timeout=120)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _stored_bytes(url: str) -> int:
    """Redis `used_memory`, or the SQLite file and its WAL after a checkpoint."""
    if url.startswith("redis"):
        return _used_memory(url)
    path = Path(url[len("sqlite:///") :])
    db = sqlite3.connect(path, timeout=30)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )
