"""Scenario 9: issue 19's web console, from a real `beatd run` serving it at `--api-addr`.

`mode=pages`: `count` runtime entries (issue 18's mix, written over the backend URL), a daemon
serving the API and the console, a session signed in with a read token; then `requests`
sequential GETs of each page (`pages`: the overview, the entries page unfiltered, filtered by
name, sorted by next due and at its last page, an entry, the dead letters; fewer GETs when
they take more than `budget_s` in all), each timed from the request to the last byte over one
keep-alive connection: p50/p95/p99 per page (target: p95 ≤ 200 ms at 100,000 entries).

`mode=load`: the steady-load scenario (`bench.scenarios.delay`'s `count` entries every 1-60 s)
`runs` times with a client fetching the entries page `rate` times a second and `runs` times with
the console idle, interleaved (idle, busy, idle, busy, ...), each a fresh daemon on an emptied
backend and a `window` of seconds: the p99 publish delay of each run, their medians, and the
busy/idle difference (target: within max(10 %, 5 ms)).
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench import daemons
from bench.common import (
    arrivals,
    percentiles,
    proc_cpu,
    queued_count,
    reset_backend,
    wait_until,
)
from bench.redisserver import free_port
from bench.workload import mixed_intervals, runtime_mix, write_yaml

STOCK_CHUNK = 20_000
PAGE_BUDGET_S = 60.0  # at most this long timing one page
POINTS = (50, 95, 99)


def run(params: dict[str, Any]) -> dict[str, Any]:
    if params["mode"] == "pages":
        return _pages(params)
    return _load(params)


class Console:
    """A `beatd run` serving the console on 127.0.0.1, and a signed-in HTTP session."""

    def __init__(self, url: str, work: Path, schedule: Path, tag: str) -> None:
        from beatd.http.tokens import Scope, new_token

        work.mkdir(parents=True, exist_ok=True)
        self.reader = new_token("bench", Scope.READ)
        tokens = work / "api-tokens"
        tokens.write_text(self.reader.line + "\n")
        tokens.chmod(0o600)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = work / f"console-{tag}.log"
        self.process = daemons.run(
            schedule,
            url,
            self.log,
            lease_ttl="30s",
            extra=["--api-addr", self.host, "--api-tokens", str(tokens)],
        )
        self.cookie = ""

    def wait_index(self, timeout: float) -> None:
        """Until the node's entry index is built (503 before)."""

        def built() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"beatd run exited; see {self.log}")
            try:
                status, _ = self.get("/v1/entry-index?limit=1", bearer=True)
            except OSError:
                return False
            return status == 200

        if not wait_until(built, timeout=timeout, interval=0.2):
            raise RuntimeError(f"the entry index was not built in {timeout:.0f} s; see {self.log}")

    def sign_in(self) -> None:
        body = urllib.parse.urlencode({"token": self.reader.token, "next": "/ui/"})
        connection = http.client.HTTPConnection(self.host, timeout=60)
        try:
            connection.request(
                "POST",
                "/ui/signin",
                body,
                {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Origin": f"http://{self.host}",
                },
            )
            answer = connection.getresponse()
            answer.read()
            cookies = [c.split(";", 1)[0] for c in answer.msg.get_all("Set-Cookie") or []]
        finally:
            connection.close()
        session = [c for c in cookies if c.startswith("beatd_session=")]
        if answer.status != 303 or not session:
            raise RuntimeError(f"sign-in answered {answer.status} without a session cookie")
        self.cookie = session[0]

    def get(
        self, path: str, bearer: bool = False, connection: http.client.HTTPConnection | None = None
    ) -> tuple[int, bytes]:
        own = connection is None
        conn = connection or http.client.HTTPConnection(self.host, timeout=60)
        headers = (
            {"Authorization": f"Bearer {self.reader.token}"} if bearer else {"Cookie": self.cookie}
        )
        try:
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        daemons.stop(self.process)


def pages(count: int) -> list[tuple[str, str]]:
    """(name, path) of each page timed; one entry named in the middle of the seeded ones."""
    last, middle = max(0, count - 50), f"rt-{count // 2:07d}"
    return [
        ("overview", "/ui/"),
        ("entries", "/ui/entries"),
        ("entries, name filter", f"/ui/entries?name={middle}"),
        ("entries, by next due", "/ui/entries?sort=next_due"),
        ("entries, last page", f"/ui/entries?sort=name&offset={last}"),
        ("entry", f"/ui/entries/{middle}"),
        ("dead letters", "/ui/dead"),
    ]


def _pages(params: dict[str, Any]) -> dict[str, Any]:
    from beatd import Client

    url, count, requests = params["url"], params["count"], params["requests"]
    work = Path(params["workdir"])
    reset_backend(url)
    started = time.perf_counter()
    with Client(url, by="bench", timeout=300) as client:
        for start in range(0, count, STOCK_CHUNK):
            client.add_many(runtime_mix(min(STOCK_CHUNK, count - start), start=start))
    seed_s = time.perf_counter() - started
    schedule = write_yaml([{"name": "probe", "every": 60, "offset": 0}], work / "console.yaml")
    console = Console(url, work, schedule, "pages")
    try:
        spawned = time.perf_counter()
        console.wait_index(timeout=600)
        index_s = time.perf_counter() - spawned
        console.sign_in()
        budget = params.get("budget_s", PAGE_BUDGET_S)
        gap = params.get("gap_s", 0.0)
        timings = {
            name: _timed(console, path, requests, budget, gap) for name, path in pages(count)
        }
    finally:
        console.stop()
    reset_backend(url)
    return {
        "mode": "pages",
        "backend": url.split(":", 1)[0],
        "entries": count,
        "requests": requests,
        "gap_s": gap,
        "seed_s": round(seed_s, 1),
        "index_built_s": round(index_s, 1),
        "pages_ms": timings,
        "worst_p95_ms": max(t["p95"] for t in timings.values()),
    }


def _timed(
    console: Console, path: str, requests: int, budget: float, gap: float = 0.0
) -> dict[str, Any]:
    """`requests` timed GETs of `path`, fewer when they take longer than `budget` seconds in
    all (`n` says how many: a loaded machine must not hold the whole bench); `gap` seconds
    apart, untimed (back to back, 100 GETs seldom meet a refresh of the entry index)."""
    connection = http.client.HTTPConnection(console.host, timeout=60)
    took = []
    try:
        status, body = console.get(path, connection=connection)  # warm: the first is not counted
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        ends = time.monotonic() + budget
        for _ in range(requests):
            if time.monotonic() > ends:
                break
            time.sleep(gap)
            began = time.perf_counter()
            status, _ = console.get(path, connection=connection)
            took.append((time.perf_counter() - began) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
    finally:
        connection.close()
    figures = percentiles(took, POINTS)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}


class Fetcher(threading.Thread):
    """GET /ui/entries `rate` times a second until stopped; counts and times the answers."""

    def __init__(self, console: Console, rate: float) -> None:
        super().__init__(daemon=True)
        self.console, self.period = console, 1.0 / rate
        self.stop_event = threading.Event()
        self.took: list[float] = []
        self.failed = 0

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.console.host, timeout=60)
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            began = time.perf_counter()
            try:
                status, _ = self.console.get("/ui/entries", connection=connection)
                self.failed += status != 200
            except OSError:
                self.failed += 1
                connection.close()
                connection = http.client.HTTPConnection(self.console.host, timeout=60)
            self.took.append((time.perf_counter() - began) * 1000)
            next_at += self.period
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        connection.close()


def _load(params: dict[str, Any]) -> dict[str, Any]:
    url, count, window = params["url"], params["count"], params["window"]
    runs, rate = params["runs"], params.get("rate", 10.0)
    work = Path(params["workdir"])
    schedule = write_yaml(mixed_intervals(count), work / "steady.yaml")
    rows: list[dict[str, Any]] = []
    for index in range(2 * runs):
        busy = index % 2 == 1
        rows.append(_steady(url, schedule, work / f"run-{index}", window, rate if busy else 0))
    idle = [r["delay_p99_ms"] for r in rows if not r["busy"]]
    loaded = [r["delay_p99_ms"] for r in rows if r["busy"]]
    idle_median, busy_median = statistics.median(idle), statistics.median(loaded)
    cpu = {
        busy: statistics.median(r["cpu_us_per_run"] for r in rows if r["busy"] == busy)
        for busy in (False, True)
    }
    allowed = max(0.10 * idle_median, 5.0)
    return {
        "mode": "load",
        "backend": url.split(":", 1)[0],
        "entries": count,
        "window_s": window,
        "runs_each": runs,
        "rate_per_s": rate,
        "idle_p99_ms_median": round(idle_median, 2),
        "busy_p99_ms_median": round(busy_median, 2),
        "difference_ms": round(busy_median - idle_median, 2),
        "allowed_ms": round(allowed, 2),
        "idle_cpu_us_per_run_median": round(cpu[False], 1),
        "busy_cpu_us_per_run_median": round(cpu[True], 1),
        "met": busy_median - idle_median <= allowed,
        "runs": rows,
    }


def _steady(url: str, schedule: Path, work: Path, window: float, rate: float) -> dict[str, Any]:
    reset_backend(url)
    console = Console(url, work, schedule, "busy" if rate else "idle")
    fetcher = None
    try:
        if not wait_until(lambda: queued_count(url) > 0, timeout=120, interval=0.1):
            raise RuntimeError(f"beatd published nothing in 120 s; see {console.log}")
        console.wait_index(timeout=120)
        console.sign_in()
        if rate:
            fetcher = Fetcher(console, rate)
            fetcher.start()
        start = float(int(time.time()) + 2)
        end = start + window
        time.sleep(max(0.0, start - time.time()))
        cpu0 = proc_cpu(console.process.pid)
        time.sleep(max(0.0, end - time.time()))
        cpu = proc_cpu(console.process.pid) - cpu0
        time.sleep(2.0)  # the runs of the window's last second land
    finally:
        if fetcher is not None:
            fetcher.stop_event.set()
            fetcher.join(10)
        console.stop()
    found = arrivals(url, since=start - 5)
    delays = [(a.arrived - a.slot) * 1000 for a in found if start <= a.slot < end]
    figures = percentiles(delays, POINTS)
    fetched = percentiles(fetcher.took, POINTS) if fetcher else None
    return {
        "busy": bool(rate),
        "published_runs": figures["n"],
        "delay_p50_ms": round(figures["p50"], 2),
        "delay_p99_ms": round(figures["p99"], 2),
        "cpu_us_per_run": round(cpu / max(1, figures["n"]) * 1e6, 1),
        "fetches": fetched["n"] if fetched else 0,
        "fetch_failures": fetcher.failed if fetcher else 0,
        "fetch_p95_ms": round(fetched["p95"], 2) if fetched and fetched["n"] else None,
    }
