"""Real `beatd run` and `beatd worker` processes, started and stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def beatd(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `python -m beatd ARGS` with its output in `log`; the repo on the path."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "beatd", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=environment,
    )
    out.close()
    return process


@cache
def _metrics_off() -> tuple[str, ...]:
    """`--metrics-addr off` where `beatd run` has it: two daemons on one host (failover) cannot
    both bind the default port, nor can the bench's and a test suite's."""
    text = subprocess.run(
        [sys.executable, "-m", "beatd", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    return ("--metrics-addr", "off") if "--metrics-addr" in text else ()


def run(
    schedule: Path,
    url: str,
    log: Path,
    *,
    node: str = "bench",
    lease_ttl: str = "10s",
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    return beatd(
        [
            "run",
            "--schedules",
            str(schedule),
            "--broker",
            url,
            "--node",
            node,
            "--lease-ttl",
            lease_ttl,
            "--no-watch",
            "--log-level",
            "info",
            *_metrics_off(),
            *extra,
        ],
        log,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit in `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def kill9(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def beatd_output(args: Sequence[str]) -> str:
    """What `python -m beatd ARGS` prints (it must succeed)."""
    return subprocess.run(
        [sys.executable, "-m", "beatd", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
