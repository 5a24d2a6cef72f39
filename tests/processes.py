"""`beatd run` and `beatd worker` as real processes against one backend, for the tests that kill,
freeze and count them (tests/test_redis_faults.py, tests/test_postgresql_faults.py,
tests/test_controls_processes.py).

Each process logs JSON lines to its own file in the test's directory; a test reads them with
`Proc`, waits on them with tests.waiting.wait_for and stops what it started by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a line still being written is skipped)."""
        found = []
        for line in self.log.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def messages(self) -> list[str]:
        return [r["msg"] for r in self.records()]

    def count(self, fragment: str) -> int:
        return sum(fragment in m for m in self.messages())

    def first(self, fragment: str) -> tuple[float, str]:
        """When (epoch seconds) and what was logged first containing `fragment`."""
        for r in self.records():
            if fragment in r["msg"]:
                moment = datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                return moment.timestamp(), r["msg"]
        raise AssertionError(f"{self.name} never logged {fragment!r}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(15)


class Processes:
    """The beatd processes a test starts against one backend URL, with its schedule files."""

    def __init__(self, directory: Path, broker: str, lease_ttl: float = 2.0) -> None:
        self.dir, self.broker, self.lease_ttl = directory, broker, lease_ttl
        self.procs: list[Proc] = []

    @property
    def schedules(self) -> Path:
        return self.dir / "schedules"

    def schedule(self, text: str) -> None:
        self.schedules.mkdir()
        (self.schedules / "s.yaml").write_text(text)

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        argv = [sys.executable, "-m", "beatd", *argv, "--broker", self.broker]
        if (self.schedules / "s.yaml").exists():
            argv += ["-s", str(self.schedules)]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*argv, "--log-format", "json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def _started(self, proc: Proc, line: str) -> Proc:
        wait_for(lambda: proc.count(line) or proc.popen.poll() is not None, what=proc.name)
        assert proc.count(line) == 1, proc.log.read_text()
        return proc

    def scheduler(self, node: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """`beatd run` as node `node`, with `env` added to the test's environment."""
        argv = ["run", "--node", node, "--lease-ttl", f"{self.lease_ttl:g}s", "--no-watch", *args]
        return self._started(self._start(node, argv, env), f"beatd run node={node} ")

    def worker(self, name: str, *args: str) -> Proc:
        argv = ["worker", "-A", "tests.worker_tasks", "--pool", "process", *args]
        return self._started(self._start(name, argv), "ready: ")

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.kill()
                proc.popen.wait()
