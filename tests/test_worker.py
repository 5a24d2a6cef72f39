"""`beatd worker` as real processes on a real SQLite file: runs, retries, kills and drains."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.backends.base import BeatdQueue, Delivery, Outgoing
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli import main
from beatd.errors import TransientBackendError
from beatd.history import Ending
from beatd.message import RunMessage
from beatd.pool import PoolKind
from beatd.tasks import Registry, Task, registry
from beatd.worker import Outcome, Wakeup, Worker, WorkerSettings
from tests import worker_tasks
from tests.waiting import wait_for
from tests.worker_tasks import events

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TASKS = "tests.worker_tasks"
T = TASKS + "."


def publish(
    backend: SQLiteBackend,
    task: str,
    *args: object,
    id: str,
    expires_at: datetime | None = None,
    recorded: bool = False,
) -> None:
    """Queue a run; `recorded`: as a leader's commit does, with its record in the run history
    (once per test: it takes the lease)."""
    now = datetime.now(UTC)
    entry = id.split("@")[0]
    message = RunMessage(
        id=id,
        task=task,
        entry=entry,
        scheduled_for=now,
        published_at=now,
        queue="default",
        args=args,
        expires_at=expires_at,
    )
    if not recorded:
        backend.enqueue([Outgoing(entry, id, BeatdQueue("default"), message.to_json())])
        return
    lease = backend.acquire_lease("tests", 3600)
    assert lease is not None, "one recorded run per test"
    outgoing = Outgoing(entry, id, BeatdQueue("default"), message.to_json(), now, now)
    backend.commit(lease, [], [outgoing])


def attempts(backend: SQLiteBackend, run_id: str) -> list[tuple[str | None, str, str, str]]:
    """The run's attempts in the history: outcome, reason, error type and message."""
    record = backend.run(run_id)
    assert record is not None
    return [(a.outcome, a.reason, a.error_type, a.error) for a in record.attempts]


def claim_all(backend: SQLiteBackend) -> list[Delivery]:
    claimed = []
    while (delivery := backend.claim(["default"], "test", 30)) is not None:
        claimed.append(delivery)
    return claimed


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 may be slow to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def text(self) -> str:
        return self.log.read_text()

    def outcomes(self) -> list[str]:
        """The worker's `task=...` lines, without time stamps and tracebacks."""
        return re.findall(r"beatd\.worker: (task=.*)", self.text())

    def signal(self, signum: int, timeout: float = 10.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "beatd.db"


@pytest.fixture
def backend(db: Path) -> Iterator[SQLiteBackend]:
    handle = SQLiteBackend(db)
    yield handle
    handle.close()


@pytest.fixture
def launch(tmp_path: Path, db: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(
        *args: str, name: str = "worker", command: str = "worker", app: str | None = TASKS
    ) -> Proc:
        log = tmp_path / f"{name}.log"
        argv = [sys.executable, "-m", "beatd", command, "--broker", f"sqlite:///{db}", *args]
        if command == "worker" and app is not None:
            argv += ["-A", app]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
            )
        proc = Proc(popen, log)
        procs.append(proc)
        if command == "worker":
            wait_for(lambda: " ready: " in proc.text() or popen.poll() is not None, what="ready")
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def test_a_task_runs_and_its_run_is_acknowledged(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1", "--log-level", "debug")
    publish(backend, T + "add", str(out), 2, 3, id="sum@1")
    wait_for(lambda: backend.queue_depths() == {}, what="the run to be acknowledged")
    assert [e[:4] for e in events(out)] == [["sum=5", "sum@1", "1", "1"]]
    assert worker.signal(signal.SIGTERM) == 0
    (line,) = worker.outcomes()
    assert re.fullmatch(
        r"task=tests\.worker_tasks\.add id=sum@1 attempt=1 outcome=succeeded duration=\d+\.\d{3}s",
        line,
    )
    assert (
        worker.text()
        .rstrip()
        .endswith(
            "worker stopped succeeded=1 retried=0 failed=0 expired=0 dead_lettered=0 crashed=0 "
            "released=0"
        )
    )


def test_a_worker_without_history_records_no_attempt(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1", "--no-history")
    publish(backend, T + "add", str(out), 2, 3, id="sum@1", recorded=True)
    wait_for(lambda: backend.queue_depths() == {}, what="the run to be acknowledged")
    assert worker.signal(signal.SIGTERM) == 0
    assert attempts(backend, "sum@1") == []  # published with its record; no attempt written


def test_failures_retry_with_growing_backoff_then_go_to_dead_letters(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1")
    publish(backend, T + "always_fails", str(out), id="flaky@1", recorded=True)
    (dead,) = wait_for(backend.dead_letters, what="a dead letter")
    assert (dead.id, dead.reason, dead.deliveries) == (
        "flaky@1",
        "failed after 4 attempt(s): ValueError: boom on attempt 4",
        1,
    )
    runs = events(out)
    assert [(e[0], e[2]) for e in runs] == [
        ("fail", "1"),
        ("fail", "2"),
        ("fail", "3"),
        ("fail", "4"),
    ]
    gaps = [float(b[5]) - float(a[5]) for a, b in pairwise(runs)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert worker.signal(signal.SIGTERM) == 0
    summary = [re.sub(r" duration=\S+", "", line) for line in worker.outcomes()]
    assert summary == [
        f"task={T}always_fails id=flaky@1 attempt=1 outcome=retried retry_in=0.2s "
        "error=ValueError: boom on attempt 1",
        f"task={T}always_fails id=flaky@1 attempt=2 outcome=retried retry_in=0.4s "
        "error=ValueError: boom on attempt 2",
        f"task={T}always_fails id=flaky@1 attempt=3 outcome=retried retry_in=0.8s "
        "error=ValueError: boom on attempt 3",
        f"task={T}always_fails id=flaky@1 attempt=4 outcome=failed "
        "reason=failed after 4 attempt(s): ValueError: boom on attempt 4",
    ]
    assert 'raise ValueError(f"boom on attempt' in worker.text()  # the traceback is logged
    assert attempts(backend, "flaky@1") == [
        *(("retried", "", "ValueError", f"boom on attempt {n}") for n in (1, 2, 3)),
        ("failed", "", "ValueError", "boom on attempt 4"),
    ]
    record = backend.run("flaky@1")
    assert record is not None and record.status == "failed"


def test_hard_time_limit_kills_a_task_that_swallows_every_exception(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1")
    publish(backend, T + "ignores_everything", str(out), id="stubborn@1", recorded=True)
    (dead,) = wait_for(backend.dead_letters, what="a dead letter")
    first, second = events(out)
    assert (first[0], first[2], second[0], second[2]) == ("start", "1", "start", "2")
    assert dead.reason == (
        "failed after 2 attempt(s): TimeLimitExceeded: ran over its time limit of 0.5s; "
        f"child pid={second[4]} was killed by SIGKILL"
    )
    assert first[4] != second[4] and not alive(int(first[4])) and not alive(int(second[4]))
    assert worker.signal(signal.SIGTERM) == 0
    over = "ran over its time limit of 0.5s; child pid={} was killed by SIGKILL"
    assert attempts(backend, "stubborn@1") == [
        ("retried", "time_limit", "TimeLimitExceeded", over.format(first[4])),
        ("failed", "time_limit", "TimeLimitExceeded", over.format(second[4])),
    ]


def test_expired_runs_are_acknowledged_without_running(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    past = datetime.now(UTC) - timedelta(seconds=1)
    publish(backend, T + "add", str(out), 1, 1, id="old@1", expires_at=past, recorded=True)
    worker = launch("-c", "1")
    wait_for(lambda: backend.queue_depths() == {}, what="the expired run to be dropped")
    assert worker.signal(signal.SIGTERM) == 0
    assert not out.exists() and backend.dead_letters() == []
    assert attempts(backend, "old@1") == [("expired", "", "", "")]
    assert worker.outcomes() == [f"task={T}add id=old@1 attempt=1 outcome=expired deliveries=1"]


def test_an_unknown_task_goes_to_dead_letters_with_the_fix(
    launch: Callable[..., Proc], backend: SQLiteBackend
) -> None:
    publish(backend, "tests.nowhere.task", id="lost@1", recorded=True)
    worker = launch("-c", "1")
    (dead,) = wait_for(backend.dead_letters, what="a dead letter")
    reason = (
        "no task named 'tests.nowhere.task' is registered in this worker: import the module "
        "that defines it with -A/--app or list it under imports: in a schedule file"
    )
    assert (dead.id, dead.reason) == ("lost@1", reason)
    assert worker.signal(signal.SIGTERM) == 0
    assert worker.outcomes() == [
        f"task=tests.nowhere.task id=lost@1 attempt=1 outcome=dead_lettered deliveries=1 "
        f"reason={reason}"
    ]
    assert attempts(backend, "lost@1") == [("dead_lettered", reason, "", "")]


def test_a_killed_worker_loses_its_claim_and_a_second_worker_completes_the_run(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = launch("-c", "1", "--visibility-timeout", "1s", name="first")
    publish(backend, T + "slow", str(out), 0.5, id="long@1", recorded=True)
    wait_for(lambda: events(out), what="the task to start")
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    orphan = int(events(out)[0][4])
    wait_for(lambda: not alive(orphan), what="the orphaned child to exit with its parent")
    second = launch("-c", "1", "--visibility-timeout", "1s", name="second")
    wait_for(lambda: backend.queue_depths() == {}, what="the redelivered run to finish")
    assert [(e[0], e[1], e[3]) for e in events(out)] == [
        ("start", "long@1", "1"),  # delivery 1: killed with its worker, never finished
        ("start", "long@1", "2"),
        ("end", "long@1", "2"),
    ]
    # the history shows the killed worker's attempt lost, and the redelivered one
    record = backend.run("long@1")
    assert record is not None
    assert [(a.number, a.outcome, a.pid) for a in record.attempts] == [
        (1, "lost", first.proc.pid),
        (2, "succeeded", second.proc.pid),
    ]
    assert record.status == "succeeded"


def test_a_poison_message_is_dead_lettered_after_its_delivery_budget(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1", "--visibility-timeout", "0.5s", "--max-deliveries", "2")
    publish(backend, T + "kills_its_process", str(out), id="poison@1", recorded=True)
    (dead,) = wait_for(backend.dead_letters, what="a dead letter")
    reason = (
        "delivered 3 times without finishing (max-deliveries 2): each worker or child that "
        "took it died"
    )
    assert (dead.id, dead.reason, dead.deliveries) == ("poison@1", reason, 3)
    assert [(e[0], e[3]) for e in events(out)] == [("start", "1"), ("start", "2")]
    assert worker.signal(signal.SIGTERM) == 0
    lines = [re.sub(r" duration=\S+", "", line) for line in worker.outcomes()]
    assert lines == [
        *(
            f"task={T}kills_its_process id=poison@1 attempt=1 outcome=crashed deliveries={n} "
            f"reason=child pid={pid} was killed by SIGKILL; delivered again after the "
            "visibility timeout, dead-lettered after 2 deliveries"
            for n, pid in ((1, events(out)[0][4]), (2, events(out)[1][4]))
        ),
        f"task={T}kills_its_process id=poison@1 attempt=1 outcome=dead_lettered deliveries=3 "
        f"reason={reason}",
    ]
    # each crash is noted, so the next claim does not call that attempt lost
    killed = [f"child pid={e[4]} was killed by SIGKILL" for e in events(out)]
    assert attempts(backend, "poison@1") == [
        *(("crashed", how, "", "") for how in killed),
        ("dead_lettered", reason, "", ""),
    ]


def test_the_heartbeat_keeps_a_long_task_from_running_twice(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    workers = [launch("-c", "1", "--visibility-timeout", "1s", name=n) for n in "ab"]
    publish(backend, T + "slow", str(out), 2.5, id="long@1")  # over two visibility timeouts
    wait_for(lambda: backend.queue_depths() == {}, what="the run to finish")
    assert [(e[0], e[3]) for e in events(out)] == [("start", "1"), ("end", "1")]
    assert [w.signal(signal.SIGTERM) for w in workers] == [0, 0]
    assert sum(len(w.outcomes()) for w in workers) == 1


def test_sigterm_lets_the_running_task_finish_and_leaves_the_rest_queued(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1")
    publish(backend, T + "slow", str(out), 0.8, id="first@1")
    wait_for(lambda: events(out), what="the first task to start")
    publish(backend, T + "add", str(out), 1, 2, id="second@1")
    publish(backend, T + "add", str(out), 3, 4, id="third@1")
    assert worker.signal(signal.SIGTERM) == 0
    assert [e[:2] for e in events(out)] == [["start", "first@1"], ["end", "first@1"]]
    assert "waiting up to 30s for 1 running task(s)" in worker.text()
    assert len(worker.outcomes()) == 1 and "outcome=succeeded" in worker.outcomes()[0]
    assert [(d.id, d.deliveries) for d in claim_all(backend)] == [("second@1", 1), ("third@1", 1)]


def test_drain_timeout_releases_the_unfinished_run(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1", "--drain-timeout", "0.3s")
    publish(backend, T + "slow", str(out), 30, id="endless@1", recorded=True)
    wait_for(lambda: events(out), what="the task to start")
    started = time.monotonic()
    assert worker.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert [e[0] for e in events(out)] == ["start"]
    released = ("released", "the worker stopped before the task finished", "", "")
    assert attempts(backend, "endless@1") == [released]
    (line,) = [re.sub(r" duration=\S+", "", line) for line in worker.outcomes()]
    assert line == (
        f"task={T}slow id=endless@1 attempt=1 outcome=released "
        "reason=the worker stopped before the task finished"
    )
    assert [(d.id, d.deliveries) for d in claim_all(backend)] == [("endless@1", 1)]


def test_a_second_sigint_stops_at_once(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1")  # drain timeout 30 s
    publish(backend, T + "slow", str(out), 30, id="endless@1")
    wait_for(lambda: events(out), what="the task to start")
    worker.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT again stops at once" in worker.text(), what="the first SIGINT")
    started = time.monotonic()
    assert worker.signal(signal.SIGINT) == 0
    assert time.monotonic() - started < 5
    assert "received SIGINT again: stopping now; unfinished runs are released" in worker.text()
    assert [(d.id, d.deliveries) for d in claim_all(backend)] == [("endless@1", 1)]


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("--max-tasks-per-child", r"it ran 1 task\(s\) \(max-tasks-per-child\)"),
        ("--max-memory-per-child", r"it uses \d+ MiB \(max-memory-per-child 1 MiB\)"),
    ],
    ids=["tasks", "memory"],
)
def test_children_are_replaced_past_their_limits(
    launch: Callable[..., Proc], backend: SQLiteBackend, tmp_path: Path, flag: str, reason: str
) -> None:
    out = tmp_path / "out"
    worker = launch("-c", "1", flag, "1")
    for n in range(3):
        publish(backend, T + "add", str(out), n, n, id=f"n@{n}")
    wait_for(lambda: backend.queue_depths() == {}, what="three runs")
    assert worker.signal(signal.SIGTERM) == 0
    assert len({e[4] for e in events(out)}) == 3  # each run in a new child
    replaced = re.findall(r"slot=0 replacing child pid=\d+: (.*)", worker.text())
    assert len(replaced) == 3 and all(re.fullmatch(reason, r) for r in replaced), replaced


def test_thread_pool_runs_retries_and_interrupts_over_time_tasks(
    backend: SQLiteBackend, db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings = WorkerSettings(concurrency=2, pool="thread", visibility_timeout=5)
    worker = Worker(SQLiteBackend(db), registry, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        publish(backend, T + "add", str(out), 20, 22, id="sum@1")
        publish(backend, T + "asks_for_retries", str(out), 3, id="patient@1")
        publish(backend, T + "busy_loop", str(out), id="hog@1")
        wait_for(lambda: backend.queue_depths() == {}, what="every run to settle")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    stats = worker.stats
    assert stats.count(Outcome.SUCCEEDED, T + "add") == 1
    assert stats.count(Outcome.RETRIED, T + "asks_for_retries") == 2
    assert stats.count(Outcome.SUCCEEDED, T + "asks_for_retries") == 1
    assert stats.count(Outcome.FAILED, T + "busy_loop") == 1
    assert set(stats.last_success) == {"sum", "patient"}
    assert set(stats.last_failure) == {"patient", "hog"}
    (dead,) = backend.dead_letters()
    assert (
        dead.reason
        == "failed after 1 attempt(s): TimeLimitExceeded: ran over its time limit of 0.3s"
    )
    hog = [e[0] for e in events(out) if e[1] == "hog@1"]
    assert hog == ["start"]  # interrupted: never reached its end


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_a_worker_runs_exactly_the_tasks_of_the_registry_it_is_given(
    backend: SQLiteBackend, db: Path, tmp_path: Path, pool: PoolKind
) -> None:
    out = tmp_path / "out"
    own = Registry()  # differs from the global registry in every way a registry can
    own.register(Task(T + "add", worker_tasks.subtract))  # a name it has, another function
    own.register(Task("only.here", worker_tasks.add.func, max_retries=0))  # a name it lacks
    settings = WorkerSettings(concurrency=1, pool=pool, modules=(TASKS,), visibility_timeout=5)
    worker = Worker(SQLiteBackend(db), own, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        publish(backend, T + "add", str(out), 5, 3, id="difference@1")
        publish(backend, "only.here", str(out), 5, 3, id="sum@1")
        publish(backend, T + "always_fails", str(out), id="global@1")  # only in the global one
        wait_for(lambda: backend.queue_depths() == {}, what="every run to settle")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert sorted(e[:2] for e in events(out)) == [
        ["difference=2", "difference@1"],
        ["sum=8", "sum@1"],
    ]
    assert worker.stats.count(Outcome.SUCCEEDED) == 2
    (dead,) = backend.dead_letters()
    assert (dead.id, dead.reason) == (
        "global@1",
        f"no task named '{T}always_fails' is registered in this worker: import the module "
        "that defines it with -A/--app or list it under imports: in a schedule file",
    )


SCRIPT = """\
import sys
import threading

import beatd
from beatd.backends.sqlite import SQLiteBackend
from beatd.tasks import registry
from beatd.worker import Outcome, Worker, WorkerSettings


@beatd.task(name="scripted")
def scripted() -> str:
    return "ran"


if __name__ == "__main__":
    settings = WorkerSettings(concurrency=1, pool="process", visibility_timeout=5)
    worker = Worker(SQLiteBackend(sys.argv[1]), registry, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    sys.stdin.readline()  # the test says when the run has settled
    worker.stop()
    thread.join(10)
    print(worker.stats.summary())
"""


def test_a_process_pool_runs_a_task_defined_in_the_main_script(
    backend: SQLiteBackend, db: Path, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    publish(backend, "scripted", id="s@1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(script), str(db)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            wait_for(lambda: backend.queue_depths() == {}, what="the run to settle")
        finally:
            out, _ = proc.communicate("\n", timeout=20)
    assert out.splitlines()[-1] == (
        "succeeded=1 retried=0 failed=0 expired=0 dead_lettered=0 crashed=0 released=0"
    )


class FailingAcks(SQLiteBackend):
    """A real SQLite backend whose first acknowledgements fail as if the disk were full."""

    failures = 2

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientBackendError(f"{self.path}: database or disk is full")
        super().ack(delivery, ending)


def test_an_outcome_the_backend_refused_is_written_again(
    backend: SQLiteBackend, db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    settings = WorkerSettings(concurrency=1, pool="thread", max_backoff=0.1)
    worker = Worker(FailingAcks(db), registry, settings)
    thread = threading.Thread(target=worker.run)
    with caplog.at_level("INFO", logger="beatd.worker"):
        thread.start()
        try:
            publish(backend, T + "add", str(out), 1, 1, id="sum@1")
            wait_for(lambda: backend.queue_depths() == {}, what="the ack to be written")
        finally:
            worker.stop()
            thread.join(10)
    assert len(events(out)) == 1  # ran once; only its acknowledgement was retried
    assert worker.stats.count(Outcome.SUCCEEDED) == 1
    first, second = [r.getMessage() for r in caplog.records if "sum@1" in r.getMessage()]
    assert first == f"id=sum@1 outcome not written yet, retrying: {db}: database or disk is full"
    assert re.fullmatch(
        rf"task={re.escape(T)}add id=sum@1 attempt=1 outcome=succeeded duration=\S+", second
    )


def test_run_with_worker_executes_what_it_publishes(
    launch: Callable[..., Proc], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    schedule = tmp_path / "schedules" / "tick.yaml"
    schedule.parent.mkdir()
    schedule.write_text(
        textwrap.dedent(
            f"""\
            entries:
              tick:
                task: tests.worker_tasks.add
                every: 1s
                args: ["{out}", 1, 2]
            imports: [tests.worker_tasks]
            """
        )
    )
    daemon = launch("--with-worker", "-s", str(schedule.parent), "-c", "1", command="run")
    wait_for(lambda: len(events(out)) >= 2, timeout=15, what="two runs")
    assert daemon.signal(signal.SIGTERM) == 0
    runs = events(out)
    assert {e[0] for e in runs} == {"sum=3"}
    assert len({e[1] for e in runs}) == len(runs)  # one run per slot
    assert all(re.fullmatch(r"tick@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e[1]) for e in runs)
    succeeded = [line for line in daemon.outcomes() if "outcome=succeeded" in line]
    assert sorted(re.findall(r" id=(\S+) ", " ".join(succeeded))) == sorted(e[1] for e in runs)


def test_run_with_worker_exits_1_when_its_metrics_port_is_taken(
    launch: Callable[..., Proc], tmp_path: Path
) -> None:
    """An explicit --metrics-addr that is taken is a runtime failure (exit 1, systemd restarts
    the unit), with the embedded worker too: the worker's thread must not keep the process up."""
    schedule = tmp_path / "schedules" / "tick.yaml"
    schedule.parent.mkdir()
    schedule.write_text(
        "entries:\n  tick:\n    task: tests.worker_tasks.add\n    every: 1s\n"
        "    args: [out, 1, 2]\nimports: [tests.worker_tasks]\n"
    )
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        daemon = launch(
            "--with-worker", "-s", str(schedule.parent), "--metrics-addr", address, command="run"
        )
        wait_for(lambda: daemon.proc.poll() is not None, timeout=15, what="beatd run to exit")
    finally:
        taken.close()
    assert daemon.proc.returncode == 1
    assert f"beatd: --metrics-addr: cannot serve metrics at {address!r}: " in daemon.text()


# --- beatd dead ----------------------------------------------------------------------------


def bury(backend: SQLiteBackend, *ids: str) -> None:
    for run in ids:
        publish(backend, T + "add", "out", 1, 1, id=run)
        delivery = backend.claim(["default"], "test", 30)
        assert delivery is not None
        backend.dead_letter(delivery, f"boom {run}")


def test_dead_list_json_and_retry_in_process(backend: SQLiteBackend, db: Path) -> None:
    bury(backend, "a@1", "b@1")
    broker = ["--broker", f"sqlite:///{db}"]
    runner = CliRunner()
    result = runner.invoke(main, ["dead", "list", "--json", *broker])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    failed = [d.failed_at.strftime("%Y-%m-%dT%H:%M:%SZ") for d in backend.dead_letters()]
    assert [{k: v for k, v in r.items() if k != "message"} for r in rows] == [
        {
            "id": run,
            "task": T + "add",
            "queue": "default",
            "failed_at": at,
            "deliveries": 1,
            "reason": f"boom {run}",
        }
        for run, at in zip(["a@1", "b@1"], failed, strict=True)
    ]
    assert [r["message"]["args"] for r in rows] == [["out", 1, 1], ["out", 1, 1]]

    result = runner.invoke(main, ["dead", "retry", "a@1", *broker])
    assert (result.exit_code, result.stdout) == (0, "requeued 1 dead letter(s)\n")
    assert [d.id for d in backend.dead_letters()] == ["b@1"]
    assert backend.queue_depths() == {"default": 1}

    result = runner.invoke(main, ["dead", "retry", "a@1", *broker])
    assert (result.exit_code, result.stderr) == (
        2,
        "beatd: ID: no dead letter with id 'a@1' (see beatd dead list)\n",
    )
    result = runner.invoke(main, ["dead", "retry", *broker])
    assert (result.exit_code, result.stderr) == (
        2,
        "beatd: ID/--all: give a run ID or --all, not both and not neither\n",
    )


def test_dead_list_and_retry_all_as_a_subprocess(backend: SQLiteBackend, db: Path) -> None:
    bury(backend, "a@1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    broker = ["--broker", f"sqlite:///{db}"]
    beatd = [sys.executable, "-m", "beatd", "dead"]
    listed = subprocess.run([*beatd, "list", *broker], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    header, row, total = listed.stdout.splitlines()
    assert header.split() == [
        "ID",
        "TASK",
        "QUEUE",
        "FAILED",
        "AT",
        "(UTC)",
        "DELIVERIES",
        "REASON",
    ]
    assert row.split()[:3] == ["a@1", T + "add", "default"]
    assert row.endswith("  1           boom a@1") and total == "1 dead letter(s)"
    retried = subprocess.run(
        [*beatd, "retry", "--all", *broker], capture_output=True, text=True, env=env
    )
    assert (retried.returncode, retried.stdout) == (0, "requeued 1 dead letter(s)\n")
    assert backend.dead_letters() == [] and backend.queue_depths() == {"default": 1}


def test_worker_refuses_a_task_module_it_cannot_import(db: Path) -> None:
    result = CliRunner().invoke(
        main, ["worker", "--broker", f"sqlite:///{db}", "-A", "tests.no_such_module"]
    )
    assert result.exit_code == 2
    with pytest.raises(ModuleNotFoundError) as missing:  # Python's words for it
        importlib.import_module("tests.no_such_module")
    assert result.stderr == (
        "beatd: cannot import task module 'tests.no_such_module' (from -A/--app or imports:): "
        f"ModuleNotFoundError: {missing.value}; the current directory and PYTHONPATH are "
        "searched\n"
    )


def test_worker_without_tasks_refuses_to_start(launch: Callable[..., Proc]) -> None:
    worker = launch(command="worker", name="empty", app=None)
    assert worker.proc.wait(10) == 2
    assert worker.text() == (
        "beatd: --app: no tasks to run: name the modules that define them with -A/--app "
        "pkg.module or under imports: in a schedule file\n"
    )


def test_a_child_that_cannot_start_stops_the_worker_with_status_1(
    launch: Callable[..., Proc],
) -> None:
    worker = launch(app="tests.child_fails")
    assert worker.proc.wait(10) == 1
    assert worker.text().splitlines()[-1] == (
        "a process child could not start: cannot import task module "
        "'tests.child_fails' (from -A/--app or imports:): RuntimeError: this module refuses "
        f"to load in a child process at {REPO / 'tests' / 'child_fails.py'}:10; the current "
        "directory and PYTHONPATH are searched"
    )


@pytest.mark.parametrize("stored_as", ["TEXT", "BLOB"])
def test_a_row_whose_body_is_not_utf8_is_dead_lettered_and_the_queue_goes_on(
    launch: Callable[..., Proc], backend: SQLiteBackend, db: Path, tmp_path: Path, stored_as: str
) -> None:
    out = tmp_path / "out"
    now = datetime.now(UTC)
    message = RunMessage("bad@1", T + "add", "bad?", now, now, "default", (str(out), 1, 1))
    good = message.to_json().encode()
    bad = good.replace(b"bad?", b"bad\xed\xa0\x80")  # a UTF-16 surrogate: not UTF-8
    offset = bad.index(b"\xed")
    with sqlite3.connect(db) as conn:  # written by hand, as another program might
        conn.execute(
            "INSERT INTO message (id, queue, priority, body, ready_at) "
            f"VALUES ('bad@1', 'default', 5, CAST(? AS {stored_as}), 0)",
            (bad,),
        )
    publish(backend, T + "add", str(out), 2, 3, id="sum@1")  # behind the bad row
    worker = launch("-c", "1")
    wait_for(lambda: backend.queue_depths() == {}, what="both rows to be settled")
    assert [e[:2] for e in events(out)] == [["sum=5", "sum@1"]]
    (dead,) = backend.dead_letters()
    reason = f"the queue entry's body is not UTF-8 text (byte 0xed at offset {offset})"
    assert (dead.id, dead.reason) == ("bad@1", reason)
    with sqlite3.connect(db) as conn:  # kept byte for byte
        conn.text_factory = bytes
        assert conn.execute("SELECT body FROM dead_letter").fetchall() == [(bad,)]
    assert worker.signal(signal.SIGTERM) == 0
    assert "unavailable" not in worker.text()
    assert worker.outcomes()[0] == (
        f"task=? id=bad@1 attempt=? outcome=dead_lettered deliveries=1 reason={reason}"
    )


def test_a_worker_whose_database_file_was_deleted_stops_with_status_1(
    launch: Callable[..., Proc], backend: SQLiteBackend, db: Path, tmp_path: Path
) -> None:
    worker = launch("-c", "1")
    opened = db.stat()
    for path in tmp_path.glob("beatd.db*"):
        path.unlink()
    assert worker.proc.wait(timeout=10) == 1
    assert (
        "ERROR beatd: storage failed, stopping with status 1: "
        f"{db} is not the database file this process opened (device {opened.st_dev} inode "
        f"{opened.st_ino}): it was deleted or replaced"
    ) in worker.text()


def test_a_worker_on_a_corrupt_database_stops_with_status_3(
    launch: Callable[..., Proc], backend: SQLiteBackend, db: Path
) -> None:
    publish(backend, T + "add", "/dev/null", 2, 3, id="sum@1")
    backend.close()
    with sqlite3.connect(db) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'message'").fetchone()
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as file:
        file.seek((page[0] - 1) * size + 8)  # past the page header: the cells point nowhere
        file.write(b"\x07" * (size - 8))
    worker = launch("-c", "1")
    assert worker.proc.wait(timeout=20) == 3
    assert f"ERROR beatd: storage failed, stopping with status 3: {db} is damaged: " in (
        worker.text()
    )
    assert "unavailable, retrying" not in worker.text()


def test_a_wakeup_closed_twice_closes_no_descriptor_another_opened_since() -> None:
    """Its second close closed the read end's number again: another thread's pipe or socket
    that had reused it (the API server's trigger, in the suite: its stop found it gone)."""
    wakeup = Wakeup()
    wakeup.close()
    read, write = os.pipe()  # most likely the numbers the wakeup just gave back
    try:
        wakeup.close()
        wakeup.set()  # closed: nothing written anywhere
        os.write(write, b"x")
        assert os.read(read, 1) == b"x"
    finally:
        os.close(read)
        os.close(write)
