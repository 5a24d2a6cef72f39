"""A standalone, repeatable fault run: one fault after another under running schedulers.

    python -m tests.chaos --kills 50                      # SQLite, three schedulers
    python -m tests.chaos --kills 50 --broker redis       # a private redis-server on a free port
    python -m tests.chaos --kills 30 --faults kill,delete,readonly    # SQLite storage faults
    python -m tests.chaos --kills 20 --broker redis --restart-empty 5   # Redis without persistence

Every entry fires each second with `missed: catch_up`, so every slot between the first and the
last published one must be in the queue exactly once. Prints slots expected, published,
duplicated, lost and state_lost, and exits non-zero on any duplicate or on any loss that the
schedulers did not count as `state_lost`.

Each round applies one fault from `--faults`:
- `kill`: kill -9 the leader and start a replacement under a new name.
- `delete`: delete the SQLite file (and its -wal, -shm) under the running schedulers. Every one
  must exit 1 (the run acts as systemd and starts them again, on the new file). The runs queued
  in the deleted file are drained first, as workers would have; the new file starts each entry
  from now, so slots are counted within each file, and a slot published in two files counts
  as a duplicate (a split brain).
- `readonly`: kill -9 every scheduler, make the file read-only, start them again (they open it
  read-only and fail their writes), then fix the mode: they must recover by themselves and
  catch up what fell due. Run as root, the schedulers run without CAP_DAC_OVERRIDE (setpriv), so
  that the mode binds them.

With `--restart-empty N` (Redis), Redis runs without persistence and is also restarted empty
after N of the rounds, once a running scheduler leads: every scheduler is frozen (SIGSTOP), the
queue drained, Redis killed and started again empty, the schedulers thawed. The leader holds the
positions and must restore them: 0 lost, 0 duplicated. Slots the schedulers' logs count missed
as `state_lost` (no node held their positions) are reported as state_lost; each is a lost slot
accounted for, so lost must equal state_lost.
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
from collections.abc import Callable, Container
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


# As root, writes ignore a file's mode; without CAP_DAC_OVERRIDE they obey it.
OBEYING_FILE_MODES = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    if os.geteuid() == 0
    else []
)


def start_scheduler(node: str, broker: str, workdir: Path, ttl: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{node}.log").open("ab")
    return subprocess.Popen(
        [
            *OBEYING_FILE_MODES,
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


def count(generations: list[list[dict[str, object]]], entries: int) -> tuple[int, int, int, int]:
    """(expected, published, duplicated, lost) over every entry's first..last published slot in
    each generation of the database (a deleted file ends one), and slots found in two."""
    expected = published = duplicated = lost = 0
    for i in range(entries):
        seen: Counter[datetime] = Counter()
        for bodies in generations:
            slots = Counter(
                datetime.fromisoformat(str(b["scheduled_for"]))
                for b in bodies
                if b["entry"] == f"e{i}"
            )
            if not slots:
                continue
            first, last = min(slots), max(slots)
            span = int((last - first) / timedelta(seconds=1)) + 1
            expected += span
            published += sum(slots.values())
            duplicated += sum(n - 1 for n in slots.values() if n > 1)
            duplicated += sum(1 for slot in slots if slot in seen)  # published in two files
            lost += span - len(slots)
            seen.update(slots.keys())
    return expected, published, duplicated, lost


def state_lost(workdir: Path) -> int:
    """Slots the schedulers counted missed because no node held their positions."""
    found = 0
    for log in workdir.glob("*.log"):
        found += sum(int(n) for n in STATE_LOST.findall(log.read_text(errors="replace")))
    return found


class Run:
    """The schedulers of a chaos run, started and restarted as systemd would."""

    def __init__(
        self,
        args: argparse.Namespace,
        broker: str,
        workdir: Path,
        server: RedisServer | None = None,
    ) -> None:
        self.args, self.broker, self.workdir, self.server = args, broker, workdir, server
        self.ttl = float(args.ttl.rstrip("s"))
        self.nodes = {f"n{i}": self.start(f"n{i}") for i in range(args.schedulers)}
        self.backend = open_backend(broker)
        self.generations: list[list[dict[str, object]]] = [[]]
        self.restarted = 0
        self.redis_restarted_empty = 0
        self.problems: list[str] = []

    def start(self, node: str) -> subprocess.Popen[bytes]:
        return start_scheduler(node, self.broker, self.workdir, self.args.ttl)

    def kill(self, round_: int, rng: random.Random) -> None:
        leader = live_leader(self.backend, self.nodes, self.ttl + 5)
        victim = self.nodes.pop(leader)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(rng.uniform(0.0, 1.5))
        # a fresh name, as HOSTNAME-PID gives (under the old one it would wait out the lease)
        node = f"{leader.split('.')[0]}.{round_}"
        self.nodes[node] = self.start(node)
        print(f"round {round_}: killed the leader {leader}", flush=True)

    def delete(self, round_: int) -> None:
        live_leader(self.backend, self.nodes, self.ttl + 5)
        self.generations[-1] += drain(self.backend, "default")
        self.backend.close()
        for path in self.workdir.glob("beatd.db*"):
            path.unlink()
        deadline = time.monotonic() + self.ttl + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self.nodes.values()):
            time.sleep(0.05)
        statuses = {node: proc.poll() for node, proc in self.nodes.items()}
        if any(status != 1 for status in statuses.values()):
            self.problems.append(f"round {round_}: after the file was deleted: {statuses}")
            for proc in self.nodes.values():
                proc.kill()
                proc.wait()
        self.generations.append([])
        self.restart_all(round_)
        self.backend = open_backend(self.broker)  # on the new file
        print(f"round {round_}: deleted the database; exit statuses {statuses}", flush=True)

    def readonly(self, round_: int, rng: random.Random) -> None:
        for proc in self.nodes.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        files = list(self.workdir.glob("beatd.db*"))
        for path in files:
            path.chmod(0o444)
        self.restart_all(round_)
        logs = [self.workdir / f"{node}.log" for node in self.nodes]
        wait_until(
            lambda: all("opening it again at the next attempt" in log.read_text() for log in logs),
            10,
            "every scheduler to fail a write to the read-only file",
        )
        time.sleep(rng.uniform(0.0, 2.0))
        for path in self.workdir.glob("beatd.db*"):
            path.chmod(0o600)
        wait_until(
            lambda: any("reachable again" in log.read_text() for log in logs),
            10,
            "a scheduler to recover once the mode was fixed",
        )
        print(f"round {round_}: read-only file, fixed; recovered", flush=True)

    def restart_empty(self, round_: int) -> None:
        """Under a running leader (one just killed would take the positions with it, and its
        successor could only count the slots since it saw the data as state_lost): freeze the
        schedulers, take what is queued, restart Redis empty, thaw them."""
        assert self.server is not None
        live_leader(self.backend, self.nodes, self.ttl + 5)
        for proc in self.nodes.values():
            proc.send_signal(signal.SIGSTOP)
        self.generations[-1] += drain(self.backend, "default")  # what Redis is about to lose
        self.server.restart()
        for proc in self.nodes.values():
            proc.send_signal(signal.SIGCONT)
        with suppress(BackendError):  # the drained connection was to the old server
            self.backend.ping()
        self.redis_restarted_empty += 1
        print(f"round {round_}: Redis restarted empty", flush=True)

    def restart_all(self, round_: int) -> None:
        self.nodes = {
            f"n{i}.{round_}": self.start(f"n{i}.{round_}") for i in range(len(self.nodes))
        }
        self.restarted += len(self.nodes)

    def finish(self) -> None:
        for proc in self.nodes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            proc.wait(timeout=30)
        self.generations[-1] += drain(self.backend, "default")
        self.backend.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="rounds, one fault each")
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--ttl", default="2s")
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults", default="kill", help="comma-separated: kill, delete, readonly (SQLite)"
    )
    parser.add_argument(
        "--restart-empty",
        type=int,
        default=0,
        metavar="N",
        help="Redis without persistence, restarted empty after N of the rounds",
    )
    args = parser.parse_args()
    args.faults = args.faults.split(",")
    if set(args.faults) - {"kill", "delete", "readonly"}:
        parser.error(f"--faults: unknown fault in {','.join(args.faults)}")
    if args.broker == "redis" and set(args.faults) - {"kill"}:
        parser.error("--faults delete and readonly are SQLite faults")
    if args.restart_empty and args.broker != "redis":
        parser.error("--restart-empty is a Redis fault (--broker redis)")
    if not 0 <= args.restart_empty <= args.kills:
        parser.error("--restart-empty is at most --kills (one restart after a round)")
    return args


def play(run: Run, args: argparse.Namespace, rng: random.Random) -> None:
    """Every round's fault, with a Redis restart after `--restart-empty` of them."""
    restarts = args.restart_empty
    time.sleep(3)
    for round_ in range(1, args.kills + 1):
        fault = rng.choice(args.faults)
        if fault == "kill":
            run.kill(round_, rng)
        elif fault == "delete":
            run.delete(round_)
        else:
            run.readonly(round_, rng)
        time.sleep(rng.uniform(1.0, 3.0))
        if restarts and rng.random() < restarts / (args.kills - round_ + 1):
            restarts -= 1
            run.restart_empty(round_)
            time.sleep(rng.uniform(1.0, 3.0))
    time.sleep(run.ttl + 2)  # let the last leader catch up


def main() -> int:
    args = parse_args()
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
    run = Run(args, broker, workdir, server)
    try:
        play(run, args, rng)
    finally:
        try:
            run.finish()
        finally:
            if server is not None:
                server.stop()
    expected, published, duplicated, lost = count(run.generations, args.entries)
    counted_lost = state_lost(workdir)
    print(
        f"slots expected={expected} published={published} duplicated={duplicated} lost={lost} "
        f"state_lost={counted_lost}"
    )
    print(
        f"database files: {len(run.generations)}; schedulers restarted: {run.restarted}; "
        f"Redis restarted empty: {run.redis_restarted_empty}"
    )
    for problem in run.problems:
        print(problem)
    print(f"logs in {workdir}")
    return 1 if duplicated or lost != counted_lost or run.problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
