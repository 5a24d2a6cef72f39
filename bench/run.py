"""Run every benchmark, write the raw figures, the Markdown report and the plots.

    python -m bench.run            # the full run (about 25 minutes on 2 cores)
    python -m bench.run --quick    # the smoke test (under 5 minutes)
    python -m bench.run --only throughput,delay
    python -m bench.run --only throughput,delay,worker --backends postgresql
    python -m bench.report bench/results/DATE.json   # the report again from raw figures

Each scenario runs in its own process, one after another, so its peak RSS is its own and no two
measurements share the CPU. The peers (celery, RedBeat, APScheduler) and matplotlib are
installed into `bench/.peers/` from `requirements/peers.lock` on first use. The full run
writes `bench/results/DATE.json`, `docs/benchmarks.md` and `docs/bench-*.png`; `--quick` writes
`bench/results/DATE-quick.json` and its report and plots next to it, leaving docs/ alone.

Redis is the bench's own redis-server; PostgreSQL is a scratch database the bench creates on the
server at 127.0.0.1:5432 (`bench.pgdatabase`) and drops at the end. When that server cannot be
reached, the PostgreSQL jobs are reported failed with the reason and the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from bench import peers, pgdatabase, plan, report
from bench.common import RESULT_MARK
from bench.pgdatabase import ScratchDatabase
from bench.redisserver import RedisServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"
JOB_TIMEOUT = 900


def main() -> None:
    parser = argparse.ArgumentParser(description="beatd benchmarks against its peers")
    parser.add_argument("--quick", action="store_true", help="the short smoke-test run")
    parser.add_argument("--only", help="comma-separated groups: " + ", ".join(_groups()))
    parser.add_argument(
        "--backends", help="comma-separated backends: " + ", ".join(plan.BACKENDS_ALL)
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those groups in today's results file, keep the others "
        "(with --backends: only those backends' rows of them)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    jobs = plan.jobs(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        jobs = [job for job in jobs if job[0] in wanted]
    backends = args.backends.split(",") if args.backends else None
    if backends:
        jobs = plan.for_backends(jobs, backends)
    peers.ensure_venv(log=_say)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "scenarios": {}}
    results["machine"]["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="beatd-bench-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis").start()
        results["machine"]["redis_server"] = server.version()
        database = _postgres(jobs, results["machine"])
        try:
            for index, (group, module, params) in enumerate(jobs, 1):
                params = _resolve(params, work, server, database, index)
                label = f"{group} " + " ".join(
                    f"{k}={v}"
                    for k, v in params.items()
                    if k in ("count", "tool", "mode", "way", "backend_name")
                )
                _say(f"[{index}/{len(jobs)}] {label} ...")
                result = run_job(module, params)
                server.flush()
                if isinstance(database, ScratchDatabase) and params["url"] == database.url:
                    pgdatabase.reset(database.url)
                results["scenarios"].setdefault(group, []).append(result)
                _say(f"    {_brief(result)}")
        finally:
            server.stop()
            if isinstance(database, ScratchDatabase):
                database.drop()
    results["machine"]["load_after"] = os.getloadavg()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.merge:
        results = _merged(results, args.quick, backends)
    write(results, args.quick)
    _say(f"done in {results['elapsed_s']:.0f} s")


def _postgres(jobs: list[plan.Job], machine: dict[str, Any]) -> ScratchDatabase | str | None:
    """The scratch database when a job needs PostgreSQL, or why there is none."""
    if not any(params.get("url") == "postgresql" for _, _, params in jobs):
        return None
    database = ScratchDatabase()
    try:
        database.create()
        machine["postgresql_server"] = database.version()
        machine["postgresql_settings"] = database.settings()
    except Exception as exc:  # no psycopg, no server, no right to create a database: its jobs fail
        reason = f"no PostgreSQL database for the bench at {database.server}: {exc}"
        _say(reason)
        return reason
    return database


class Done(NamedTuple):
    timed_out: bool
    stdout: str
    stderr: str


def run_command(command: list[str], timeout: float) -> Done:
    """Run `command` in a process group of its own; after `timeout` seconds kill the whole
    group: the job and the `beatd run` daemons (and servers) it started, which a kill of the
    job alone would leave running into the next jobs."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
        return Done(False, out, err)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return Done(True, out, err)


def run_job(module: str, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("unavailable"):
        return {"error": params["unavailable"], "params": _public(params)}
    command = [sys.executable, "-m", "bench.common", module, json.dumps(params)]
    timeout = params.get("timeout_s", JOB_TIMEOUT)  # a job that needs longer says so
    done = run_command(command, timeout)
    if done.timed_out:
        return {"error": f"timed out after {timeout} s", "params": _public(params)}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
            result["params"] = _public(params)
            return result
    return {"error": (done.stderr or done.stdout)[-2000:], "params": _public(params)}


def _stem(quick: bool) -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d") + ("-quick" if quick else "")


def _merged(results: dict[str, Any], quick: bool, backends: list[str] | None) -> dict[str, Any]:
    """Today's results with the groups just run replaced (only `backends`' rows of them, when
    given); the re-run is noted."""
    path = RESULTS / f"{_stem(quick)}.json"
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    old["scenarios"] = merge_scenarios(old["scenarios"], results["scenarios"], backends)
    reruns = old["machine"].setdefault("reruns", [])
    rerun = {"groups": sorted(results["scenarios"]), **results["machine"]}
    if backends:
        rerun["backends"] = backends
    reruns.append(rerun)
    return old


def merge_scenarios(
    old: dict[str, list[dict[str, Any]]],
    new: dict[str, list[dict[str, Any]]],
    backends: list[str] | None,
) -> dict[str, list[dict[str, Any]]]:
    """`old` with `new`'s groups in place of its own; with `backends`, a group keeps its rows
    of the other backends and gains the new ones after them."""
    out = dict(old)
    for group, rows in new.items():
        kept = (
            []
            if backends is None
            else [r for r in old.get(group, []) if _backend(r) not in backends]
        )
        out[group] = kept + rows
    return out


def _backend(row: dict[str, Any]) -> str:
    return row.get("backend") or row.get("params", {}).get("backend_name", "")


def write(results: dict[str, Any], quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = _stem(quick)
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    _say(f"wrote {path.relative_to(REPO)}")
    out_dir, doc = (RESULTS, RESULTS / f"{stem}.md") if quick else (DOCS, DOCS / "benchmarks.md")
    plots = report.plot(path, out_dir, prefix=f"{stem}-" if quick else "bench-")
    doc.write_text(report.markdown(results, plots, doc.parent, path.relative_to(REPO)))
    _say(f"wrote {doc.relative_to(REPO)} and {len(plots)} plot(s)")


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "beatd"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "beatd_commit": commit + ("+uncommitted" if dirty else ""),
        "peers": peers.versions(),
    }


def _resolve(
    params: dict[str, Any],
    work: Path,
    server: RedisServer,
    database: ScratchDatabase | str | None,
    index: int,
) -> dict[str, Any]:
    params = dict(params, workdir=str(work / f"job-{index}"))
    Path(params["workdir"]).mkdir(parents=True, exist_ok=True)
    if params.get("url") == "sqlite":
        params["url"] = f"sqlite:///{work}/job-{index}/beatd.db"
    elif params.get("url") == "redis":
        params["url"] = server.url
        params["redis_pid"] = server.pid
    elif params.get("url") == "postgresql":
        if isinstance(database, ScratchDatabase):
            params["url"] = database.url
        else:
            params["unavailable"] = database or "no PostgreSQL database"
            params["url"] = "postgresql://unavailable"
    params["backend_name"] = params["url"].split(":", 1)[0]
    return params


def _public(params: dict[str, Any]) -> dict[str, Any]:
    hidden = ("workdir", "url", "redis_pid", "unavailable")
    return {k: v for k, v in params.items() if k not in hidden}


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"].strip().splitlines()[-1][:200]
    keys = (
        "runs_per_s",
        "publish_wall_s",
        "landed_pct",
        "lost",
        "duplicates",
        "cpu_us_per_run",
        "cpu_ms_per_s",
        "first_publish_s",
        "daemon_peak_rss_mb",
        "tasks_per_s",
        "queued_pct",
        "all_queued_s",
        "import_s",
        "import_us_per_entry",
        "bytes_per_entry",
        "worst_p95_ms",
        "idle_p99_ms_median",
        "busy_p99_ms_median",
    )
    parts = [f"{k}={result[k]}" for k in keys if k in result]
    for name in ("delay_s", "gap_s"):
        if isinstance(result.get(name), dict) and result[name].get("p50") is not None:
            d = result[name]
            parts.append(f"{name} p50={d['p50']:.3f} p99={d.get('p99', 0):.3f} max={d['max']:.3f}")
    return " ".join(parts)


def _groups() -> list[str]:
    return sorted({job[0] for job in plan.jobs(False)})


def _say(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    main()
