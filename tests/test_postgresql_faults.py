"""Faults on PostgreSQL, as real processes: `beatd run` and `beatd worker` against a PostgreSQL
server the test starts itself (tests/postgres_server.py), so it may kill it.

The leader is killed with kill -9, the server is killed and restarted under load, every beatd
connection is terminated (`pg_terminate_backend`), a worker is killed mid-task; every test then
counts what was published and run: no slot twice, none lost (`missed: catch_up`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.postgres import PostgresBackend
from beatd.errors import NotApplied
from beatd.message import RunMessage
from tests.postgres_server import PostgresServer
from tests.processes import REPO, Proc, Processes
from tests.test_daemon import EVERY_SECOND, assert_contiguous, wait_for
from tests.test_redis_faults import (
    adding,
    assert_each_once_and_contiguous,
    completed,
    run_body,
)
from tests.worker_tasks import events

pytestmark = [pytest.mark.slow, pytest.mark.lowest]
TTL = 2.0  # seconds: the lease of every scheduler here
SECOND = timedelta(seconds=1)
DOWN_FOR = 8.0  # seconds the server stays down when a test restarts it
VISIBILITY = 3.0  # seconds: the workers' claims, where a test waits for one to lapse
# seconds: the claims while the server restarts, longer than it stays down plus its crash
# recovery on a busy machine (3 s and more seen), so a run finished before the kill is acked
# once the server is back instead of delivered again after its claim lapsed (at least once)
OUTLIVES_RESTART = 20.0


class Cluster(Processes):
    """One PostgreSQL server and the beatd processes started against it."""

    def __init__(self, tmp_path: Path, *settings: str) -> None:
        self.server = PostgresServer(*settings).start()
        super().__init__(tmp_path, self.server.url, TTL)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.server.url, autocommit=True) as db:
            return db.execute(sql).fetchall()  # type: ignore[arg-type]

    def leader(self) -> str | None:
        rows = self.query(
            "SELECT node FROM beatd.lease WHERE expires_at > extract(epoch FROM clock_timestamp())"
        )
        return str(rows[0][0]) if rows else None

    def slots(self) -> list[datetime]:
        """The slots of every message still queued (no worker here to take them)."""
        rows = self.query("SELECT body FROM beatd.message ORDER BY seq")
        return [datetime.fromisoformat(json.loads(body)["scheduled_for"]) for (body,) in rows]

    def terminate_beatd_sessions(self) -> int:
        rows = self.query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = 'postgres' AND backend_type = "
            "'client backend'"
        )
        return int(rows[0][0])

    def close(self) -> None:
        super().close()
        self.server.remove()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    yield started
    started.close()


def test_kill_9_of_the_leader_a_standby_takes_over_nothing_twice_or_lost(
    cluster: Cluster,
) -> None:
    cluster.schedule(EVERY_SECOND)
    a = cluster.scheduler("a")
    wait_for(lambda: len(cluster.slots()) >= 2, what="a to publish")
    b = cluster.scheduler("b")
    assert cluster.leader() == "a"

    a.signal(signal.SIGKILL)
    a.popen.wait()
    wait_for(lambda: cluster.leader() == "b", timeout=TTL + 5, what="b to take over")
    took_over = time.time()
    # b first catches up the slots missed since the kill in one burst, then goes on live
    wait_for(lambda: max(cluster.slots()).timestamp() >= took_over + 2, what="b to go on")
    assert b.stop() == 0

    assert_contiguous(cluster.slots(), SECOND)
    assert b.count("became leader") == 1
    assert cluster.query("SELECT epoch FROM beatd.lease") == [(2,)]


def test_a_leader_frozen_past_its_lease_wakes_up_as_standby_and_publishes_nothing(
    cluster: Cluster,
) -> None:
    cluster.schedule(EVERY_SECOND)
    a = cluster.scheduler("a")
    wait_for(lambda: len(cluster.slots()) >= 2, what="a to publish")
    b = cluster.scheduler("b")
    a.signal(signal.SIGSTOP)
    wait_for(lambda: cluster.leader() == "b", timeout=TTL + 3, what="b to take over")
    count = len(cluster.slots())
    wait_for(lambda: len(cluster.slots()) >= count + 2, what="b to publish")
    a.signal(signal.SIGCONT)
    stepped_down = (
        "no lease renewal in time; stepping down node=a epoch=1",  # it woke up in its sleep
        "lease epoch 1 of a is no longer held (node b holds epoch 2); now standby",  # mid-tick
    )
    wait_for(lambda: any(a.count(line) for line in stepped_down), what="a to step down")
    count = len(cluster.slots())
    wait_for(lambda: len(cluster.slots()) >= count + 2, what="b to go on")
    assert [a.stop(), b.stop()] == [0, 0]

    assert sum(a.count(line) for line in stepped_down) == 1
    assert (a.count("became leader"), b.count("became leader")) == (1, 1)
    assert_contiguous(cluster.slots(), SECOND)
    assert cluster.query("SELECT epoch FROM beatd.lease") == [(2,)]


def test_postgresql_killed_and_restarted_under_load_nothing_twice_or_lost(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    entries = 10
    cluster.schedule(adding(entries, out))
    a = cluster.scheduler("a")
    wait_for(lambda: cluster.leader() == "a", what="a to lead")
    b = cluster.scheduler("b")
    w = cluster.worker("w", "-c", "2", "--visibility-timeout", f"{OUTLIVES_RESTART:g}s")
    wait_for(lambda: len(events(out)) >= 3 * entries, what="runs to complete")

    cluster.server.kill()  # SIGKILL of the postmaster: what was committed comes back
    killed_at = time.time()
    # down past the lease, and long enough for a reconnection backoff to grow (1 s, 2 s, 4 s)
    time.sleep(max(0.0, killed_at + DOWN_FOR - time.time()))
    cluster.server.start()
    restarted_at = time.time()
    wait_for(
        lambda: all(max(s).timestamp() >= restarted_at + 2 for s in completed(out).values()),
        timeout=40,
        what="runs after the restart to complete",
    )
    # the standby may still be in its backoff (up to 5 s) when the leader's runs go on
    wait_for(lambda: all(d.count("reachable again") for d in (a, b)), what="both back")
    assert [d.stop() for d in (a, b)] == [0, 0]
    wait_for(
        lambda: cluster.query("SELECT count(*) FROM beatd.message") == [(0,)],
        timeout=OUTLIVES_RESTART + 10,  # a claim whose commit was cut off lapses first
        what="drain",
    )
    assert w.stop() == 0

    runs = completed(out)
    assert_each_once_and_contiguous(runs, entries)
    assert all(min(s).timestamp() < killed_at - 1 for s in runs.values())
    # back within beatd's own retry backoff (at most 5 s) of the server, not after the pool's
    # reconnection backoff, which doubles while the server is down (the next try at 15 s)
    back = [d.first("reachable again")[0] - restarted_at for d in (a, b)]
    assert max(back) < 5.0 + 1.0, back


def test_every_connection_terminated_again_and_again_nothing_twice_or_lost(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    entries = 10
    cluster.schedule(adding(entries, out))
    a = cluster.scheduler("a")
    wait_for(lambda: cluster.leader() == "a", what="a to lead")
    w = cluster.worker("w", "-c", "2", "--visibility-timeout", f"{VISIBILITY:g}s")
    wait_for(lambda: len(events(out)) >= 2 * entries, what="runs to complete")

    terminated = []
    for _ in range(5):
        terminated.append(cluster.terminate_beatd_sessions())
        done = len(events(out))
        wait_for(lambda done=done: len(events(out)) >= done + entries, what="runs to go on")
    # a claim whose COMMIT was cut off (OutcomeUnknown) is delivered again once it lapses
    settled = time.time() + VISIBILITY + 1
    wait_for(
        lambda: all(max(s).timestamp() >= settled for s in completed(out).values()),
        timeout=30,
        what="runs after the last termination's claims lapsed to complete",
    )
    assert [d.stop() for d in (a, w)] == [0, 0]

    assert all(count >= 2 for count in terminated), terminated  # the scheduler's, the worker's
    assert_each_once_and_contiguous(completed(out), entries)


def test_kill_9_of_a_worker_mid_task_another_claims_the_run_after_the_visibility_timeout(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    first = cluster.worker("first", "-c", "1", "--visibility-timeout", "1s")
    now = datetime.now(UTC)
    message = RunMessage(
        id="long@1",
        task="tests.worker_tasks.slow",
        entry="long",
        scheduled_for=now,
        published_at=now,
        queue="default",
        args=(str(out), 0.5),
    )
    backend = PostgresBackend(cluster.server.url)
    try:
        backend.enqueue([Outgoing("long", "long@1", BeatdQueue("default"), message.to_json())])
        wait_for(lambda: events(out), what="the task to start")
        first.signal(signal.SIGKILL)
        assert first.popen.wait() == -signal.SIGKILL
        second = cluster.worker("second", "-c", "1", "--visibility-timeout", "1s")
        wait_for(lambda: len(events(out)) == 3, what="the run to be delivered again and finish")
        assert second.stop() == 0
        assert [(e[0], e[1], e[3]) for e in events(out)] == [
            ("start", "long@1", "1"),  # delivery 1: killed with its worker, never finished
            ("start", "long@1", "2"),
            ("end", "long@1", "2"),
        ]
        assert backend.queue_depths() == {}
    finally:
        backend.close()


def test_an_idle_worker_claims_nothing_until_notified_then_starts_a_run_within_ms(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, "log_statement=all")  # the server logs every statement
    try:
        out = cluster.dir / "out"
        w = cluster.worker("w", "-c", "1")
        backend = PostgresBackend(cluster.server.url)

        def claims() -> int:
            return cluster.server.log(tail=None).count("FOR UPDATE SKIP LOCKED")

        wait_for(claims, what="the first claim")
        before = claims()
        time.sleep(5)  # an idle period is what is measured here
        idle_claims = claims() - before
        latencies = []
        for n in range(3):
            run = f"late@{n}"
            body = run_body(run, out).decode()
            queued_at = time.time()
            backend.enqueue([Outgoing("late", run, BeatdQueue("default"), body)])
            started = wait_for(lambda run=run: [e for e in events(out) if e[1] == run], what=run)
            latencies.append(float(started[0][5]) - queued_at)
            time.sleep(1.2)  # idle again, past the longest poll interval a polling worker uses
        assert w.stop() == 0
        backend.close()
    finally:
        cluster.close()
    assert idle_claims == 0  # woken by NOTIFY, never polling
    # no claim in the idle periods, so each start came from the NOTIFY: within half a second
    # even on a loaded machine (0.137 s was seen at load 8), where a poll would take seconds
    assert max(latencies) < 0.5, latencies


def test_a_switchover_to_a_synchronous_standby_loses_no_committed_slot(tmp_path: Path) -> None:
    primary = PostgresServer("synchronous_standby_names=*").start()
    standby: PostgresServer | None = None
    scheduler: Proc | None = None
    try:
        standby = PostgresServer(standby_of=primary).start()
        both = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
        url = f"{both}?target_session_attrs=read-write"
        (tmp_path / "schedules").mkdir()
        (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
        log = tmp_path / "a.log"
        argv = [sys.executable, "-m", "beatd", "run", "--node", "a", "--no-watch"]
        argv += ["--lease-ttl", "10s", "-s", str(tmp_path / "schedules"), "--log-format", "json"]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(REPO), "BEATD_BROKER": url},
            )
        scheduler = started = Proc("a", popen, log)

        def slots(server: PostgresServer) -> list[datetime]:
            with psycopg.connect(server.url, autocommit=True) as db:
                rows = db.execute("SELECT body FROM beatd.message ORDER BY seq").fetchall()
            return [datetime.fromisoformat(json.loads(b)["scheduled_for"]) for (b,) in rows]

        wait_for(lambda: started.count("became leader"), what="a to lead")
        wait_for(lambda: len(slots(primary)) >= 3, what="a to publish on the primary")
        with psycopg.connect(primary.url, autocommit=True) as db:
            replication = db.execute("SELECT sync_state FROM pg_stat_replication").fetchall()
        assert replication == [("sync",)]  # a commit returns once the standby has it
        committed = slots(primary)
        primary.kill()
        standby.promote()
        wait_for(lambda: len(slots(standby)) >= len(committed) + 3, what="a to go on")
        assert scheduler.stop() == 0

        after = slots(standby)
        assert set(committed) <= set(after)  # no committed slot lost with the primary
        assert_contiguous(after, SECOND)  # none twice, none skipped across the switchover
        assert scheduler.count("became leader") == 1  # the same lease, on the new primary
    finally:
        if scheduler is not None and scheduler.popen.poll() is None:
            scheduler.popen.kill()
            scheduler.popen.wait()
        if standby is not None:
            standby.remove()
        primary.remove()


def test_a_database_unreachable_at_start_is_a_transient_error_not_bad_input() -> None:
    server = PostgresServer()  # made, not started yet
    try:
        backend = PostgresBackend(server.url, op_timeout=0.5)  # no error: it may come up later
        try:
            with pytest.raises(NotApplied):
                backend.ping()
            server.start()
            wait_for(lambda: _answers(backend), what="the backend to answer")
            assert backend.load_states() == {}  # the schema was created at the first call
            assert backend.format_found == 0
        finally:
            backend.close()
    finally:
        server.remove()


def _answers(backend: PostgresBackend) -> bool:
    try:
        backend.ping()
    except NotApplied:
        return False
    return True
