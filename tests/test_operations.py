"""Operating beatd, as real processes: metric values after real events, the notify protocol
against a real NOTIFY_SOCKET, and the alert rules checked by promtool.

Every expected count is derived from what the processes wrote to the database (the published
messages carry their slot and publish time), so the checks are exact without depending on how
the operating system schedules the processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli import main
from beatd.history import HistoryQuery
from beatd.message import RunMessage
from tests.redis_server import free_port
from tests.test_daemon import query
from tests.waiting import wait_for
from tests.worker_tasks import events

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
R = TypeVar("R")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SCHEDULER_METRICS = {
    "beatd_clock_skew_seconds",
    "beatd_config_drift",
    "beatd_nodes_tz_drift",
    "beatd_node_records_failed_total",
    "beatd_entries",
    "beatd_runtime_entries",
    "beatd_entry_changes_applied_total",
    "beatd_entry_changes_lag_seconds",
    "beatd_is_leader",
    "beatd_leader_epoch",
    "beatd_leader_changes_total",
    "beatd_runs_due_total",
    "beatd_runs_published_total",
    "beatd_runs_missed_total",
    "beatd_runs_late_total",
    "beatd_publish_delay_seconds",
    "beatd_next_due_timestamp_seconds",
    "beatd_last_published_timestamp_seconds",
    "beatd_config_reloads_total",
    "beatd_config_last_reload_success",
    "beatd_backend_up",
    "beatd_backend_data_lost_total",
    "beatd_history_records",
    "beatd_history_trimmed_total",
    "beatd_history_write_errors_total",
    "beatd_runs_overdue_total",
    "beatd_entry_failing",
    "beatd_entry_paused",
    "beatd_busy_marks_dropped_total",
    "beatd_runs_triggered_total",
    "beatd_runs_backfilled_total",
    "beatd_entry_last_duration_seconds",
    "beatd_entry_last_succeeded_timestamp_seconds",
    "beatd_entry_last_failed_timestamp_seconds",
}
WORKER_METRICS = {
    "beatd_tasks_total",
    "beatd_entry_last_success_timestamp_seconds",
    "beatd_entry_last_failure_timestamp_seconds",
    "beatd_task_duration_seconds",
    "beatd_queue_depth",
    "beatd_dead_letters",
}

# the leader's Celery event listener (on Redis)
CELERY_METRICS = {
    "beatd_celery_events_total",
    "beatd_celery_events_last_timestamp_seconds",
    "beatd_celery_events_listening",
    "beatd_celery_runs_published_total",
    "beatd_celery_events_undecodable_total",
    "beatd_celery_events_unrecorded_total",
    "beatd_celery_events_interruptions_total",
}

# the leader's AMQP relay (`beatd run`, every backend; they move while it leads AMQP entries)
AMQP_METRICS = {
    "beatd_amqp_outbox_depth",
    "beatd_amqp_outbox_oldest_age_seconds",
    "beatd_amqp_connected",
    "beatd_amqp_published_total",
    "beatd_amqp_republished_total",
    "beatd_amqp_unroutable_total",
    "beatd_amqp_outbox_unreadable_total",
}

# `beatd run` serving the HTTP API (tests/test_http.py)
API_METRICS = {
    "beatd_api_requests_total",
    "beatd_api_request_duration_seconds",
    "beatd_api_auth_failures_total",
}
# both daemons, on a backend that pools connections (PostgreSQL: tests/backends/test_postgresql.py)
BACKEND_METRICS = {"beatd_backend_connections", "beatd_backend_listen_reconnects_total"}
# both daemons, on Redis (tests/backends/test_redis_sentinel.py)
REPLICATION_METRICS = {
    "beatd_backend_unacknowledged_writes_total",
    "beatd_backend_primary_changes_total",
}

THREE_POLICIES = """\
entries:
  skip:
    task: t.skip
    every: 1s
    missed: skip
  once:
    task: t.once
    every: 1s
    missed: run_once
  catch:
    task: t.catch
    every: 1s
    missed: catch_up
    max_catch_up: 2
"""
GRACE = timedelta(seconds=1)  # the default misfire_grace of a 1 s interval
SECOND = timedelta(seconds=1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def families(port: int) -> set[str]:
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    found = set()
    for family in text_string_to_metric_families(text):
        suffix = "_total" if family.type == "counter" else ""
        found.add(family.name + suffix)
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc, self.log, self.port = proc, log, port

    def text(self) -> str:
        return self.log.read_text()

    def scrape(self) -> Samples:
        return scrape(self.port)

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(command: str, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        log = tmp_path / f"{name}.log"
        argv = [sys.executable, "-m", "beatd", command, "--broker", f"sqlite:///{tmp_path}/db"]
        argv += ["--metrics-addr", f"127.0.0.1:{port}", "--log-level", "debug", *args]
        environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=environ
            )
        proc = Proc(popen, log, port)
        procs.append(proc)
        wait_for(lambda: _serving(proc), what=f"{name} to serve metrics")
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            os.kill(proc.proc.pid, signal.SIGCONT)
            proc.proc.kill()
            proc.proc.wait()


def _serving(proc: Proc) -> bool:
    if proc.proc.poll() is not None:
        raise AssertionError(f"exited with {proc.proc.returncode}:\n{proc.text()}")
    try:
        return get(f"http://127.0.0.1:{proc.port}/healthz")[0] == 200
    except OSError:
        return False


def published(db: Path, entry: str) -> list[tuple[datetime, datetime]]:
    """(slot, published_at) of every message of `entry`, in publishing order."""
    bodies = [json.loads(b) for (b,) in query(db, "SELECT body FROM message ORDER BY seq")]
    return [
        (datetime.fromisoformat(m["scheduled_for"]), datetime.fromisoformat(m["published_at"]))
        for m in bodies
        if m["entry"] == entry
    ]


def horizon(db: Path, entry: str) -> datetime:
    ((us,),) = query(db, "SELECT last_slot_us FROM entry_state WHERE entry = ?", entry)
    return datetime.fromtimestamp(us / 1e6, UTC)


def leader(db: Path) -> str | None:
    rows = query(db, "SELECT node FROM lease WHERE expires_at > ?", time.time())
    return rows[0][0] if rows else None


def gaps(slots: list[datetime]) -> int:
    """Slots missing between the first and the last of `slots` (1 s apart)."""
    ordered = sorted(slots)
    return sum(int((b - a) / SECOND) - 1 for a, b in pairwise(ordered))


Runs = dict[str, list[tuple[datetime, datetime]]]
RUN_METRICS = ("beatd_runs_", "beatd_publish_delay_", "beatd_last_published_", "beatd_next_due_")


def snapshot(proc: Proc, db: Path, horizons: dict[str, datetime | None]) -> tuple[Samples, Runs]:
    """A scrape and a read of the database that saw the same runs: the run metrics did not
    change across the read, and count as many publishes as the database holds after each
    entry's horizon (the runs `proc` published: its counts are its own)."""

    def agreeing() -> tuple[Samples, Runs] | None:
        before = proc.scrape()
        runs = {e: published(db, e) for e in horizons}
        after = proc.scrape()
        same = {k: v for k, v in before.items() if k[0].startswith(RUN_METRICS)} == {
            k: v for k, v in after.items() if k[0].startswith(RUN_METRICS)
        }
        counted = all(
            value(after, "beatd_runs_published_total", entry=e)
            == sum(h is None or slot > h for slot, _ in runs[e])
            for e, h in horizons.items()
        )
        return (after, runs) if same and counted else None

    return wait_for(agreeing, what="a scrape that agrees with the database")


LATE_AFTER_OUTAGE = {"skip": 0, "once": 1, "catch": 2}
MISS_REASON = {"skip": "skipped", "once": "skipped", "catch": "beyond_catch_up"}


def test_scheduler_metrics_after_a_late_run_a_total_outage_and_a_failed_reload(
    tmp_path: Path, launch: Callable[..., Proc]
) -> None:
    schedule = tmp_path / "schedules" / "s.yaml"
    schedule.parent.mkdir()
    schedule.write_text(THREE_POLICIES)
    db = tmp_path / "db"
    run_args = ("-s", str(schedule.parent), "--no-watch", "--lease-ttl", "10s")

    # A leads; a 3 s SIGSTOP (past the 1 s misfire_grace) makes some of its runs late.
    a = launch("run", "a", "--node", "a", *run_args)
    wait_for(lambda: all(len(published(db, e)) >= 2 for e in MISS_REASON), what="a to publish")
    a.proc.send_signal(signal.SIGSTOP)
    time.sleep(3)
    a.proc.send_signal(signal.SIGCONT)
    counted = {e: len(published(db, e)) for e in MISS_REASON}
    wait_for(lambda: all(len(published(db, e)) > counted[e] + 1 for e in MISS_REASON))
    s, runs = snapshot(a, db, dict.fromkeys(MISS_REASON))
    delays = [(at - slot).total_seconds() for e in runs for slot, at in runs[e]]
    for entry, reason in MISS_REASON.items():
        late = sum(at - slot > GRACE for slot, at in runs[entry])
        missed = gaps([slot for slot, _ in runs[entry]])
        assert value(s, "beatd_runs_published_total", entry=entry) == len(runs[entry])
        assert value(s, "beatd_runs_late_total", entry=entry) == late
        assert value(s, "beatd_runs_missed_total", entry=entry, reason=reason) == missed
        assert value(s, "beatd_runs_due_total", entry=entry) == len(runs[entry]) + missed
    assert value(s, "beatd_runs_late_total", entry="catch") >= 1, "the pause made nothing late"
    assert value(s, "beatd_runs_missed_total", entry="skip", reason="skipped") >= 1
    assert value(s, "beatd_publish_delay_seconds_count") == len(delays)
    assert value(s, "beatd_publish_delay_seconds_sum") == pytest.approx(
        sum(delays), abs=0.002 * len(delays)
    )
    assert value(s, "beatd_publish_delay_seconds_bucket", le="+Inf") == len(delays)
    assert value(s, "beatd_publish_delay_seconds_bucket", le="0.5") == sum(d <= 0.5 for d in delays)
    assert value(s, "beatd_is_leader") == 1 and value(s, "beatd_leader_epoch") == 1
    assert value(s, "beatd_leader_changes_total") == 1 and value(s, "beatd_entries") == 3
    assert value(s, "beatd_backend_up") == 1
    assert families(a.port) >= SCHEDULER_METRICS | AMQP_METRICS

    # A total outage: nobody schedules for 4 slots and the 1 s grace of the next (a slot less
    # overdue than that is published on time). B, started afterwards, counts what was missed
    # from the persisted horizon: exactly the slots between it and B's first publish.
    assert a.stop() == 0
    horizons = {e: horizon(db, e) for e in MISS_REASON}
    time.sleep(max(0.0, max(horizons.values()).timestamp() + 5 - time.time()))  # the outage
    b = launch("run", "b", "--node", "b", *run_args)
    wait_for(lambda: leader(db) == "b", what="b to lead")
    c = launch("run", "c", "--node", "c", *run_args)  # a standby

    def after(entry: str, runs: Runs | None = None) -> list[tuple[datetime, datetime]]:
        found = published(db, entry) if runs is None else runs[entry]
        return [(slot, at) for slot, at in found if slot > horizons[entry]]

    wait_for(lambda: all(len(after(e)) >= 4 for e in MISS_REASON), what="b to publish")
    s, runs = snapshot(b, db, dict(horizons))
    for entry, reason in MISS_REASON.items():
        first = min(slot for slot, _ in after(entry, runs))
        outage = int((first - horizons[entry]) / SECOND) - 1  # slots never published
        late = LATE_AFTER_OUTAGE[entry]  # run_once and catch_up publish the newest overdue
        assert outage + late >= 4, f"{entry}: only {outage} + {late} slots in a 4 s outage"
        assert value(s, "beatd_runs_missed_total", entry=entry, reason=reason) == outage
        assert value(s, "beatd_runs_late_total", entry=entry) == late
        last = value(s, "beatd_last_published_timestamp_seconds", entry=entry)
        assert last == max(slot for slot, _ in after(entry, runs)).timestamp()
        assert value(s, "beatd_next_due_timestamp_seconds", entry=entry) > last
    assert value(s, "beatd_leader_epoch") == 2 and value(s, "beatd_is_leader") == 1
    assert get(f"http://127.0.0.1:{b.port}/readyz") == (200, "leader, 3 entries\n")
    assert get(f"http://127.0.0.1:{c.port}/readyz") == (200, "standby, 3 entries\n")

    # The standby reads the persisted state: the time since the last publish stays meaningful.
    s = c.scrape()
    assert value(s, "beatd_is_leader") == 0 and value(s, "beatd_leader_epoch") == 0
    assert value(s, "beatd_leader_changes_total") == 0
    for entry in MISS_REASON:
        last = value(s, "beatd_last_published_timestamp_seconds", entry=entry)
        assert last in {slot.timestamp() for slot, _ in after(entry)}
        assert value(s, "beatd_next_due_timestamp_seconds", entry=entry) > last

    # `beatd status` sums the counts of every scheduler it is pointed at.
    result = CliRunner().invoke(
        main,
        [
            *("status", "--json", "--broker", f"sqlite:///{db}", "-s", str(schedule.parent)),
            *("--metrics-url", f"http://127.0.0.1:{b.port}"),
            *("--metrics-url", f"http://127.0.0.1:{c.port}/metrics"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["leader"]["node"] == "b" and report["leader"]["epoch"] == 2
    by_entry = {row["entry"]: row for row in report["entries"]}
    for entry, reason in MISS_REASON.items():
        expected = value(b.scrape(), "beatd_runs_missed_total", entry=entry, reason=reason)
        assert by_entry[entry]["missed"] == {reason: expected}
        assert by_entry[entry]["overdue_seconds"] is None

    # A reload that fails keeps the last good configuration, and says so.
    schedule.write_text(THREE_POLICIES + "  broken:\n    task: t.x\n    every: soon\n")
    b.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in b.text(), what="the reload to be refused")
    s = b.scrape()
    assert value(s, "beatd_config_reloads_total", result="failure") == 1
    assert value(s, "beatd_config_reloads_total", result="success") == 0
    assert value(s, "beatd_config_last_reload_success") == 0
    assert value(s, "beatd_entries") == 3
    schedule.write_text(THREE_POLICIES)
    b.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded 3 entries" in b.text(), what="the good reload")
    s = b.scrape()
    assert value(s, "beatd_config_reloads_total", result="success") == 1
    assert value(s, "beatd_config_last_reload_success") == 1
    assert b.stop() == 0 and c.stop() == 0


def message(task: str, id: str, *args: object, queue: str = "default") -> Outgoing:
    now = datetime.now(UTC)
    entry = id.split("@")[0]
    body = RunMessage(id, task, entry, now, now, queue, args=args).to_json()
    return Outgoing(entry, id, BeatdQueue(queue), body)


T = "tests.worker_tasks."


def test_worker_metrics_with_two_child_processes(
    tmp_path: Path, launch: Callable[..., Proc]
) -> None:
    notes = str(tmp_path / "notes")
    backend = SQLiteBackend(tmp_path / "db")
    backend.enqueue(
        [
            message(T + "slow", "slow@1", notes, 0.8),
            message(T + "slow", "slow@2", notes, 0.8),
            *(message(T + "add", f"sum@{i}", notes, i, 1) for i in range(3)),
            message(T + "always_fails", "boom@1", notes),
            message(T + "not_registered", "ghost@1"),
            message(T + "add", "elsewhere@1", notes, 1, 1, queue="other"),
        ]
    )
    started = time.time()
    worker = launch("worker", "w", "-A", "tests.worker_tasks", "-Q", "default", "-c", "2")

    def settled() -> Samples | None:
        s = worker.scrape()
        done = sum(v for (n, _), v in s.items() if n == "beatd_tasks_total")
        return s if done >= 3 + 2 + 4 + 1 and not backend.queue_depths().get("default") else None

    s = wait_for(settled, what="every run to settle")
    finished = time.time()
    tasks = {
        ("slow", "succeeded"): 2,
        ("add", "succeeded"): 3,
        ("always_fails", "retried"): 3,
        ("always_fails", "failed"): 1,
        ("not_registered", "dead_lettered"): 1,
    }
    found = {
        (dict(labels)["task"].removeprefix(T), dict(labels)["outcome"]): v
        for (name, labels), v in s.items()
        if name == "beatd_tasks_total"
    }
    assert found == tasks
    pids = {line[4] for line in events(Path(notes))}
    slow_pids = {line[4] for line in events(Path(notes)) if line[1].startswith("slow@")}
    assert len(slow_pids) == 2, "the two slow runs did not run side by side"
    assert len(pids) == 2, "outcomes come from both children"
    for task, count in (("slow", 2), ("add", 3), ("always_fails", 4)):
        assert value(s, "beatd_task_duration_seconds_count", task=T + task) == count
    assert value(s, "beatd_task_duration_seconds_sum", task=T + "slow") >= 1.6
    assert value(s, "beatd_task_duration_seconds_bucket", task=T + "add", le="0.5") == 3
    assert value(s, "beatd_dead_letters", queue="default") == 2  # failed, and never ran
    assert value(s, "beatd_queue_depth", queue="default") == 0
    assert value(s, "beatd_queue_depth", queue="other") == 1  # nobody serves it
    for entry in ("slow", "sum"):
        when = value(s, "beatd_entry_last_success_timestamp_seconds", entry=entry)
        assert started <= when <= finished
    assert started <= value(s, "beatd_entry_last_failure_timestamp_seconds", entry="boom")
    assert ("beatd_entry_last_success_timestamp_seconds", (("entry", "boom"),)) not in s
    assert families(worker.port) >= WORKER_METRICS
    assert get(f"http://127.0.0.1:{worker.port}/readyz") == (200, "worker running\n")
    assert worker.stop() == 0
    backend.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_notify_protocol_of_a_real_scheduler(
    tmp_path: Path, launch: Callable[..., Proc], notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text("entries:\n  h:\n    task: t.h\n    every: 1h\n")
    received: list[tuple[float, list[str]]] = []  # stamped on arrival, by a reader thread

    def read() -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(4096):
                received.append((time.monotonic(), data.decode().split("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen = 0

    def receive_until(wanted: str) -> list[str]:
        nonlocal seen

        def arrived() -> list[str] | None:
            nonlocal seen
            for index in range(seen, len(received)):
                if received[index][1][0] == wanted:
                    seen = index + 1
                    return received[index][1]
            return None

        return wait_for(arrived, timeout=10, what=wanted)

    def pings() -> list[float]:
        return [at for at, fields in list(received) if fields == ["WATCHDOG=1"]]

    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}  # pings due every 0.5 s
    run = launch("run", "n", "-s", str(tmp_path / "schedules"), "--no-watch", env=env)
    assert receive_until("READY=1") == ["READY=1", "STATUS=leader, 1 entries"]
    # an idle loop: nothing is due for an hour, yet the watchdog hears from it, every 0.5 s
    wait_for(lambda: len(pings()) >= 7, timeout=10, what="seven watchdog pings")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    run.proc.send_signal(signal.SIGHUP)
    reloading = receive_until("RELOADING=1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert len(reloading) == 2 and reloading[1].startswith("MONOTONIC_USEC=")
    assert before <= int(reloading[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert receive_until("READY=1") == ["READY=1", "STATUS=leader, 1 entries"]
    run.proc.send_signal(signal.SIGTERM)
    assert receive_until("STOPPING=1") == ["STOPPING=1"]
    assert run.proc.wait(10) == 0
    intervals = [b - a for a, b in pairwise(pings())]
    assert max(intervals) <= 0.5 + 0.1, f"a watchdog gap of {max(intervals):.3f} s"
    others = [fields for _, fields in received if fields != ["WATCHDOG=1"]]
    assert [f[0] for f in others] == [
        "STATUS=leader, 1 entries",  # on taking the lease, before the first step ends
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "STOPPING=1",
    ]


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install --no-install-recommends "
    "prometheus; scripts/test installs it)",
)


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(REPO / "deploy" / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # promtool's verdict
    # what it checked: every rule of the file (its report's wording is promtool's to change)
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert [len(group["rules"]) for group in groups["groups"]] == [21]


@needs_promtool
def test_alert_rules_fire_on_the_series_beatd_exports() -> None:
    """deploy/prometheus/alerts_test.yml: a missed count that grows, a state_lost series that
    appears already counted, the backend found without its data, callers waiting for a pooled
    connection, a LISTEN connection lost again and again; each fires, and resolves."""
    assert PROMTOOL is not None
    tests = REPO / "deploy" / "prometheus" / "alerts_test.yml"
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr  # promtool's verdict
    # what it ran: every case, with at least one firing and one quiet evaluation each
    for case in yaml.safe_load(tests.read_text())["tests"]:
        checks = case["alert_rule_test"]
        assert any(check["exp_alerts"] for check in checks), case["name"]
        assert any(not check["exp_alerts"] for check in checks), case["name"]


def test_the_alert_table_names_every_rule_in_order() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    section = doc.split("## Alert rules", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(Beatd\w+)` \|", section, flags=re.M)
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule["alert"] for group in groups["groups"] for rule in group["rules"]]
    assert documented == rules


def test_every_metric_is_documented_and_every_query_uses_one() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(beatd_\w+)`", doc, flags=re.M))
    every = SCHEDULER_METRICS | WORKER_METRICS | BACKEND_METRICS | CELERY_METRICS
    assert documented == every | REPLICATION_METRICS | AMQP_METRICS | API_METRICS
    queries = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    queries += (REPO / "deploy" / "grafana" / "beatd-dashboard.json").read_text()
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"beatd_\w+", queries)}
    assert used - documented == set()


def test_a_deadline_passed_while_no_worker_runs(
    tmp_path: Path, launch: Callable[..., Proc]
) -> None:
    """A real `beatd run` and no worker: each run of an entry with `deadline: 1s` is marked
    overdue in the history at its due time plus 1 s, counted and logged."""
    schedule = tmp_path / "s.yaml"
    schedule.write_text("entries:\n  tick: {task: t.tick, every: 1s, deadline: 1s}\n")
    a = launch("run", "a", "-s", str(schedule), "--no-watch")
    wait_for(
        lambda: value(a.scrape(), "beatd_runs_overdue_total", entry="tick") >= 2,
        what="two runs marked overdue",
    )
    assert a.stop() == 0
    backend = SQLiteBackend(tmp_path / "db")
    try:
        marked = [r for r in backend.runs(HistoryQuery(entry="tick")) if r.overdue_at]
    finally:
        backend.close()
    assert len(marked) >= 2
    assert all(r.overdue_at == r.due + SECOND and r.status == "overdue" for r in marked)
    lines = re.findall(r"run overdue entry=tick slot=(\S+) deadline=(\S+):", a.text())
    assert {(slot, deadline) for slot, deadline in lines} >= {
        (r.slot.strftime("%Y-%m-%dT%H:%M:%SZ"), (r.due + SECOND).isoformat()) for r in marked
    }
