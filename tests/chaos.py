"""A standalone, repeatable fault run: kill -9 leaders again and again, then count slots.

    python -m tests.chaos --kills 50                      # SQLite, three schedulers
    python -m tests.chaos --kills 50 --broker redis       # a private redis-server on a free port
    python -m tests.chaos --kills 20 --broker redis --restart-empty 5   # Redis without persistence

With `--restart-empty N`, Redis runs without persistence and is also restarted empty N times,
after N of the kills, once a running scheduler leads: every scheduler is frozen (SIGSTOP), the
queue drained, Redis killed and started again empty, the schedulers thawed. The leader holds the
positions and must restore them: 0 lost, 0 duplicated. Slots counted `state_lost` in the
schedulers' logs (no node held their positions) are reported too.

Every entry fires each second with `missed: catch_up`, so every slot between the first and the
last published one must be in the queue exactly once. Prints slots expected, published,
duplicated and lost, and exits non-zero on any duplicate or loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Container
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path

from beatd.backends import open_backend
from beatd.backends.base import Backend
from beatd.errors import BackendError
from tests.redis_server import RedisServer

STATE_LOST = re.compile(r"counted (\d+) slot\(s\) missed \(state_lost\)")

SCHEDULE = """\
defaults:
  missed: catch_up
  max_catch_up: 1000
entries:
"""


def start_scheduler(node: str, broker: str, workdir: Path, ttl: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{node}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beatd",
            "run",
            "--node",
            node,
            "--broker",
            broker,
            "-s",
            str(workdir / "schedules"),
            "--lease-ttl",
            ttl,
            "--no-watch",
            "--metrics-addr",
            "off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )


def live_leader(backend: Backend, nodes: Container[str], timeout: float) -> str:
    """The leading node once it is one still running (a killed one holds its lease a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = backend.leader()
        if leader is not None and leader.node in nodes:
            return leader.node
        time.sleep(0.1)
    raise SystemExit(f"no running scheduler took the lease within {timeout:g} s")


def drain(backend: Backend, queue: str) -> list[dict[str, object]]:
    """Take every message out of the queue (acknowledging it) and return the bodies."""
    bodies = []
    while (delivery := backend.claim([queue], "chaos", 60)) is not None:
        bodies.append(json.loads(delivery.body))
        backend.ack(delivery)
    return bodies


def restart_empty(
    server: RedisServer, nodes: dict[str, subprocess.Popen[bytes]], backend: Backend
) -> list[dict[str, object]]:
    """Freeze the schedulers, take what is queued, restart Redis empty, thaw them."""
    for proc in nodes.values():
        proc.send_signal(signal.SIGSTOP)
    bodies = drain(backend, "default")  # what Redis is about to lose
    server.restart()
    for proc in nodes.values():
        proc.send_signal(signal.SIGCONT)
    with suppress(BackendError):  # the drained connection was to the old server
        backend.ping()
    return bodies


def state_lost(workdir: Path) -> int:
    """Slots the schedulers counted missed because no node held their positions."""
    found = 0
    for log in workdir.glob("*.log"):
        found += sum(int(n) for n in STATE_LOST.findall(log.read_text(errors="replace")))
    return found


def count(bodies: list[dict[str, object]], entries: int) -> tuple[int, int, int, int]:
    """(expected, published, duplicated, lost) over every entry's first..last published slot."""
    expected = published = duplicated = lost = 0
    for i in range(entries):
        slots = Counter(
            datetime.fromisoformat(str(b["scheduled_for"])) for b in bodies if b["entry"] == f"e{i}"
        )
        if not slots:
            continue
        first, last = min(slots), max(slots)
        span = int((last - first) / timedelta(seconds=1)) + 1
        expected += span
        published += sum(slots.values())
        duplicated += sum(n - 1 for n in slots.values() if n > 1)
        lost += span - len(slots)
    return expected, published, duplicated, lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--ttl", default="2s")
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restart-empty", type=int, default=0, metavar="N")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="beatd-chaos-"))
    (workdir / "schedules").mkdir()
    lines = [f"  e{i}:\n    task: chaos.tick\n    every: 1s\n" for i in range(args.entries)]
    (workdir / "schedules" / "chaos.yaml").write_text(SCHEDULE + "".join(lines))
    server = None
    if args.broker == "redis":
        server = RedisServer(workdir / "redis", persistent=not args.restart_empty).start()
        broker = server.url
    else:
        broker = f"sqlite:///{workdir / 'beatd.db'}"
    nodes = {
        f"n{i}": start_scheduler(f"n{i}", broker, workdir, args.ttl) for i in range(args.schedulers)
    }
    backend = open_backend(broker)
    bodies: list[dict[str, object]] = []
    restarts = args.restart_empty
    try:
        time.sleep(3)
        for kill in range(args.kills):
            leader = live_leader(backend, nodes, float(args.ttl.rstrip("s")) + 5)
            victim = nodes.pop(leader)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            time.sleep(rng.uniform(0.0, 1.5))
            # a fresh name, as HOSTNAME-PID gives: under the old one the new process would just
            # take back its predecessor's lease, and no standby would ever have to take over
            node = f"{leader.split('.')[0]}.{kill + 1}"
            nodes[node] = start_scheduler(node, broker, workdir, args.ttl)
            print(f"kill {kill + 1}/{args.kills}: leader was {leader}", flush=True)
            time.sleep(rng.uniform(1.0, 3.0))
            if server is not None and restarts and rng.random() < restarts / (args.kills - kill):
                restarts -= 1
                # under a running leader: one that was just killed takes the positions with it,
                # and its successor can only count the slots since it saw the data (state_lost)
                live_leader(backend, nodes, float(args.ttl.rstrip("s")) + 5)
                bodies += restart_empty(server, nodes, backend)
                print("Redis restarted empty", flush=True)
                time.sleep(rng.uniform(1.0, 3.0))
        time.sleep(float(args.ttl.rstrip("s")) + 2)  # let the last leader catch up
    finally:
        for proc in nodes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in nodes.values():
            proc.wait(timeout=30)
    bodies += drain(backend, "default")
    expected, published, duplicated, lost = count(bodies, args.entries)
    backend.close()
    if server is not None:
        server.stop()
    print(
        f"slots expected={expected} published={published} duplicated={duplicated} lost={lost} "
        f"state_lost={state_lost(workdir)} redis_restarted_empty={args.restart_empty - restarts}"
    )
    print(f"logs in {workdir}")
    return 1 if duplicated or lost else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
