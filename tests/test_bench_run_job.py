"""bench.run's job timeout: the job and every process it started (its `beatd run` daemons)
are killed, not only the job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bench.run
from bench.run import JOB_TIMEOUT, Done, run_command, run_job
from tests.waiting import wait_for

# a job that starts a daemon of its own (as a scenario starts `beatd run`), then hangs
HANGING_JOB = (
    "import subprocess, sys, time\n"
    "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(daemon.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def gone(pid: int) -> bool:
    """Whether `pid` has exited (gone, or a zombie not yet reaped by its new parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_timed_out_job_is_killed_with_the_daemons_it_started() -> None:
    done = run_command([sys.executable, "-c", HANGING_JOB], timeout=3)
    assert done.timed_out
    daemon = int(done.stdout.split()[0])
    wait_for(lambda: gone(daemon), timeout=10, what=f"the job's daemon {daemon} killed")


def test_a_job_that_ends_answers_its_output() -> None:
    done = run_command([sys.executable, "-c", "print('ok')"], timeout=30)
    assert (done.timed_out, done.stdout) == (False, "ok\n")


def test_a_job_that_says_it_needs_longer_is_given_its_own_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console's pages at 1,000,000 entries seed them first (minutes on this machine):
    such a job carries `timeout_s`; every other job keeps the bench's."""
    given: list[float] = []

    def timing_out(command: list[str], timeout: float) -> Done:
        given.append(timeout)
        return Done(True, "", "")

    monkeypatch.setattr(bench.run, "run_command", timing_out)
    longer = run_job("console", {"mode": "pages", "count": 1_000_000, "timeout_s": 2_400})
    usual = run_job("console", {"mode": "pages", "count": 100_000})
    assert given == [2_400, JOB_TIMEOUT]
    assert (longer["error"], usual["error"]) == (
        "timed out after 2400 s",
        f"timed out after {JOB_TIMEOUT} s",
    )
