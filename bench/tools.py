"""The four tools behind one face: start one on a Redis with a workload, read what it published.

beatd runs as `beatd run` with its Redis backend; `celery beat` (default scheduler) and RedBeat
as the real `celery beat` command on an app generated in the work directory
(`drivers/celeryapp.py`); APScheduler 3 as `drivers/apscheduler_driver.py`. The peers run on the
peers' venv. Every tool's messages carry the entry and the moment they were sent, so the same
code measures all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from bench import daemons
from bench.common import arrivals
from bench.peers import PYTHON, VENV
from bench.workload import Spec, write_yaml

DRIVERS = Path(__file__).resolve().parent / "drivers"
TOOLS = ("beatd", "celery-beat", "redbeat", "apscheduler")


@dataclass(frozen=True, slots=True)
class Sent:
    entry: str
    at: float  # when it reached (beatd: the broker's stream id) or was sent (peers)
    slot: float | None  # the scheduled time, where the tool says (beatd, APScheduler)


def start(tool: str, spec: Spec, url: str, work: Path) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{tool}.log"
    if tool == "beatd":
        return daemons.run(write_yaml(spec, work / "beatd.yaml"), url, log)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "BENCH_REDIS": url, "BENCH_SPEC": str(spec_path), "PYTHONPATH": str(work)}
    if tool == "apscheduler":
        args = [str(PYTHON), str(DRIVERS / "apscheduler_driver.py"), url, str(spec_path)]
    else:
        shutil.copy(DRIVERS / "celeryapp.py", work / "celeryapp.py")
        args = [
            str(VENV / "bin" / "celery"),
            "-A",
            "celeryapp",
            "beat",
            "--loglevel",
            "WARNING",
            "-s",
            str(work / "celerybeat-schedule"),
        ]
        if tool == "redbeat":
            args += ["-S", "redbeat.RedBeatScheduler"]
    out = log.open("ab")
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    out.close()
    return process


def count(tool: str, url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        if tool == "beatd":
            return sum(client.xlen(k) for k in client.scan_iter("beatd:queue:*"))
        return int(client.llen(_list(tool)))
    finally:
        client.close()


def sent(tool: str, url: str) -> list[Sent]:
    if tool == "beatd":
        return [Sent(a.entry, a.arrived, a.slot) for a in arrivals(url)]
    client = redis.Redis.from_url(url, decode_responses=True)
    out = []
    try:
        for raw in _lrange(client, _list(tool)):
            data = json.loads(raw)
            if tool == "apscheduler":
                slot = datetime.fromisoformat(data["scheduled_for"].replace("Z", "+00:00"))
                out.append(Sent(data["entry"], data["published_ts"], slot.timestamp()))
            else:
                headers = data["headers"]
                out.append(Sent(headers["bench_entry"], headers["bench_published_at"], None))
    finally:
        client.close()
    return out


def _list(tool: str) -> str:
    return "apscheduler:queue" if tool == "apscheduler" else "celery"


def _lrange(client: redis.Redis, key: str, page: int = 10000):
    start = 0
    while True:
        rows = client.lrange(key, start, start + page - 1)
        yield from rows
        if len(rows) < page:
            return
        start += page
