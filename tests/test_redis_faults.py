"""Faults on Redis, as real processes: `beatd run` and `beatd worker` against a real redis-server.

Leaders are killed and frozen, Redis is frozen and restarted, a worker is killed mid-task; every
test then counts what was published and run. (A commit sent straight to the script with a stale
token or epoch is in tests/backends/test_redis.py.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.redis import SCRIPTS, RedisBackend
from beatd.errors import TransientBackendError
from beatd.message import RunMessage
from tests.processes import Proc, Processes
from tests.redis_server import RedisServer
from tests.test_daemon import EVERY_SECOND, assert_contiguous, wait_for
from tests.worker_tasks import events

pytestmark = [pytest.mark.slow, pytest.mark.lowest]
TTL = 2.0  # seconds: the lease of every scheduler here; calls are bounded by TTL / 5
SECOND = timedelta(seconds=1)
STREAM = "beatd:queue:default:normal"
DOWN = "unavailable, retrying with backoff"
UP = "reachable again"


def adding(entries: int, out: Path) -> str:
    """A schedule of `entries` entries every second whose task appends its run to `out`."""
    lines = ["defaults:\n  missed: catch_up\nentries:\n"]
    for i in range(entries):
        lines.append(
            f"  e{i}:\n    task: tests.worker_tasks.add\n    every: 1s\n    args: ['{out}', 1, 2]\n"
        )
    return "".join(lines)


class Cluster(Processes):
    """One redis-server (persistent unless told) and the beatd processes started against it."""

    def __init__(self, tmp_path: Path, *, persistent: bool = True) -> None:
        self.server = RedisServer(tmp_path / "redis", persistent=persistent).start()
        super().__init__(tmp_path, self.server.url, TTL)
        self.admin: redis.Redis = self.server.client()

    def leader(self) -> str | None:
        node: Any = self.admin.hget("beatd:lease", "node")
        return None if node is None else str(node)

    def published(self) -> list[dict[str, Any]]:
        """Every message still in the default stream (no worker here to take them)."""
        entries: Any = self.admin.xrange(STREAM)
        return [json.loads(f["body"]) for _, f in entries]

    def slots(self) -> list[datetime]:
        return [datetime.fromisoformat(m["scheduled_for"]) for m in self.published()]

    def stop_leader_last(self, *procs: Proc) -> list[int]:
        """Stop `procs`, the lease holder last, and return their exit codes: a leader stopped
        first releases its lease at once, and a standby still running takes it (a new epoch,
        a second "became leader") before its own SIGTERM arrives."""
        leader = self.leader()
        return [proc.stop() for proc in sorted(procs, key=lambda proc: proc.name == leader)]

    def drained(self) -> bool:
        """Whether every run published so far has finished: a worker deletes a run from the
        stream when it acks it. A run claimed by a call whose reply was lost (Redis froze
        right after running the claim, or ran on resume a claim sent on a connection that had
        timed out) stays there, pending, until its visibility timeout lapses and it is
        delivered again: the newest run completing says nothing about it."""
        return self.admin.xlen(STREAM) == 0

    def close(self) -> None:
        super().close()
        self.admin.close()
        self.server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    yield started
    started.close()


def completed(out: Path) -> dict[str, list[datetime]]:
    """Runs the task recorded, per entry, in order (one line per completion)."""
    runs: dict[str, list[datetime]] = {}
    for event in events(out):
        entry, slot = event[1].split("@")
        runs.setdefault(entry, []).append(datetime.fromisoformat(slot))
    return runs


def assert_each_once_and_contiguous(runs: dict[str, list[datetime]], entries: int) -> None:
    assert sorted(runs) == sorted(f"e{i}" for i in range(entries))
    for slots in runs.values():
        assert_contiguous(slots, SECOND)  # no slot twice, none lost between first and last


# --- the leader dies or freezes -----------------------------------------------------------


def test_kill_9_of_the_leader_a_standby_publishes_within_ttl_plus_1s_nothing_twice_or_lost(
    cluster: Cluster,
) -> None:
    cluster.schedule(EVERY_SECOND)
    a = cluster.scheduler("a")
    wait_for(lambda: len(cluster.slots()) >= 2, what="a to publish")
    standbys = {"b": cluster.scheduler("b"), "c": cluster.scheduler("c")}
    assert cluster.leader() == "a"

    a.signal(signal.SIGKILL)
    a.popen.wait()
    killed_at = time.time()

    def after_kill() -> list[float]:
        return [
            datetime.fromisoformat(m["published_at"]).timestamp()
            for m in cluster.published()
            if datetime.fromisoformat(m["published_at"]).timestamp() > killed_at
        ]

    wait_for(after_kill, timeout=TTL + 5, what="a standby to publish")
    took_over = min(after_kill()) - killed_at
    successor = cluster.leader()
    assert successor in standbys
    count = len(cluster.slots())
    wait_for(lambda: len(cluster.slots()) >= count + 3, what="the successor to go on")
    assert cluster.stop_leader_last(*standbys.values()) == [0, 0]

    assert took_over <= TTL + 1.0, f"the first publish after the kill took {took_over:.2f} s"
    assert_contiguous(cluster.slots(), SECOND)
    assert {n: p.count("became leader") for n, p in standbys.items()} == {
        n: int(n == successor) for n in standbys
    }
    assert cluster.admin.get("beatd:epoch") == "2"


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
    assert cluster.admin.get("beatd:epoch") == "2"


# --- Redis freezes or restarts --------------------------------------------------------------


def test_redis_frozen_for_30s_calls_fail_fast_each_logs_once_and_the_gap_is_caught_up(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    cluster.schedule(adding(1, out))
    a = cluster.scheduler("a")
    wait_for(lambda: cluster.leader() == "a", what="a to lead")
    b = cluster.scheduler("b")
    w = cluster.worker("w", "-c", "1", "--visibility-timeout", "5s")
    daemons = (a, b, w)
    wait_for(lambda: len(events(out)) >= 2, what="runs to complete")
    probe = RedisBackend(cluster.server.url, op_timeout=TTL / 5)  # as `beatd run` opens it
    probe.ping()

    cluster.server.pause()
    paused_at = time.time()
    took, timeouts = [], set()
    for call in (probe.ping, probe.load_states, lambda: probe.claim(["default"], "probe", 5)):
        started = time.monotonic()
        with pytest.raises(TransientBackendError) as caught:
            call()
        took.append(time.monotonic() - started)
        assert isinstance(caught.value.__cause__, redis.TimeoutError)
        timeouts.add(str(caught.value.__cause__))
    # redis-py's words for a timeout on this server, as the daemons' clients meet it too
    (timeout,) = timeouts
    wait_for(lambda: all(d.count(DOWN) for d in daemons), what="every daemon to notice")
    time.sleep(max(0.0, paused_at + 30 - time.time()))
    assert [d.popen.poll() for d in daemons] == [None, None, None]
    cluster.server.resume()
    resumed_at = time.time()
    wait_for(lambda: all(d.count(UP) for d in daemons), what="every daemon to reconnect")
    wait_for(
        lambda: max(completed(out)["e0"]).timestamp() >= resumed_at + 2 and cluster.drained(),
        timeout=20 + 5,  # a claim whose reply the freeze lost runs after the visibility, 5 s
        what="runs after the outage to complete, those claimed in lost replies too",
    )
    probe.close()
    assert [d.stop() for d in daemons] == [0, 0, 0]

    assert all(t < TTL / 5 + 0.5 for t in took), took  # fail fast, not after the 30 s freeze
    assert {d.name: (d.count(DOWN), d.count(UP)) for d in daemons} == {
        "a": (1, 1),
        "b": (1, 1),
        "w": (1, 1),
    }
    # each noticed within its longest sleep plus one bounded call: a timeout, not a hang (an
    # idle worker waits on its subscription, and PINGs on it once it was silent for a block
    # period of 1.5 s: a frozen server leaves the PING unanswered)
    url = re.escape(cluster.server.url)
    pattern = rf"backend {url} {DOWN}: {url}: \w+: TimeoutError: {re.escape(timeout)}"
    for daemon, longest_sleep, op_timeout in ((a, 1.0, TTL / 5), (b, 1.0, TTL / 5), (w, 1.5, 2.0)):
        noticed_at, line = daemon.first(DOWN)
        assert re.fullmatch(pattern, line), line
        assert noticed_at - paused_at <= longest_sleep + op_timeout + 0.5, daemon.name
    runs = completed(out)
    assert_each_once_and_contiguous(runs, 1)  # catch_up published the 30 s gap, each run once
    assert min(runs["e0"]).timestamp() < paused_at - 1
    assert max(runs["e0"]).timestamp() > resumed_at + 1


def executions(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Per run id, each time the task ran: (its delivery count, when it ran)."""
    runs: dict[str, list[tuple[int, float]]] = {}
    for event in events(out):
        runs.setdefault(event[1], []).append((int(event[3]), float(event[5])))
    return runs


def test_redis_restarted_with_aof_under_load_both_daemons_recover_nothing_twice_or_lost(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    entries = 20
    cluster.schedule(adding(entries, out))
    a = cluster.scheduler("a")
    wait_for(lambda: cluster.leader() == "a", what="a to lead")
    b = cluster.scheduler("b")
    w = cluster.worker("w", "-c", "2", "--visibility-timeout", "10s")
    daemons = (a, b, w)
    wait_for(lambda: len(events(out)) >= 3 * entries, what="runs to complete")

    cluster.server.kill()  # SIGKILL: only what the AOF holds comes back
    killed_at = time.time()
    wait_for(lambda: all(d.count(DOWN) for d in daemons), what="every daemon to notice")
    time.sleep(max(0.0, killed_at + TTL + 0.5 - time.time()))  # down for longer than the lease
    cluster.server.start()
    restarted_at = time.time()
    wait_for(lambda: all(d.count(UP) for d in daemons), what="every daemon to reconnect")
    wait_for(
        lambda: (
            all(max(s).timestamp() >= restarted_at + 2 for s in completed(out).values())
            and cluster.drained()
        ),
        timeout=20 + 10,  # a claim whose reply the kill lost runs after the visibility, 10 s
        what="runs after the restart to complete, those claimed in lost replies too",
    )
    assert cluster.stop_leader_last(a, b) == [0, 0]
    wait_for(cluster.drained, what="the worker to run the last runs published")
    assert w.stop() == 0

    # each outage logged once, then its end: a loaded machine may time out a call again later,
    # which is an outage of its own, but never a second line for the same one
    for d in daemons:
        said = [m for m in d.messages() if DOWN in m or UP in m]
        assert said and all(DOWN in m for m in said[::2]) and all(UP in m for m in said[1::2])
        assert len(said) % 2 == 0, f"{d.name} did not log the end of its last outage: {said}"
    # At most once published, at least once run: a run that finished just before the kill but
    # whose ack the kill lost is delivered again after the visibility timeout, so it may run
    # twice, but only as a later delivery of the same published run, never as a second one.
    repeated = {run: ran for run, ran in executions(out).items() if len(ran) > 1}
    for run, ran in repeated.items():
        deliveries = [count for count, _ in ran]
        assert deliveries == sorted(set(deliveries)), f"{run} was published twice: {ran}"
        assert ran[0][1] <= killed_at, f"{run} ran again though its first run was after the kill"
    assert len(repeated) <= 2, f"more runs repeated than the worker's 2 slots hold: {repeated}"
    runs = {entry: sorted(set(slots)) for entry, slots in completed(out).items()}
    assert_each_once_and_contiguous(runs, entries)
    assert all(min(s).timestamp() < killed_at - 1 for s in runs.values())
    # the lease lapsed while Redis was down; the epoch went on from the AOF, not back to 1
    assert cluster.admin.get("beatd:epoch") == "2"
    assert cluster.admin.xlen(STREAM) == 0


def test_redis_restarted_empty_the_leader_restores_positions_above_the_old_epoch(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, persistent=False)
    try:
        restarted_empty(cluster)
    finally:
        cluster.close()


def restarted_empty(cluster: Cluster) -> None:
    entries = 5
    cluster.schedule(adding(entries, cluster.dir / "out"))
    cluster.admin.set("beatd:epoch", 3)  # as after a few leader changes
    a = cluster.scheduler("a", "--log-level", "debug")
    wait_for(lambda: cluster.leader() == "a", what="a to lead")
    b = cluster.scheduler("b", "--log-level", "debug")
    wait_for(lambda: len(cluster.slots()) >= 3 * entries, what="a to publish")

    cluster.server.restart()  # SIGKILL, then an empty redis-server on the same port
    restarted_at = time.time()
    cluster.admin = cluster.server.client()
    lost = "lost its data: it restarted"
    wait_for(lambda: a.count(lost) + b.count(lost), what="the loss to be noticed")
    wait_for(
        lambda: any(s.timestamp() >= restarted_at + 3 for s in cluster.slots()),
        what="publishing to go on after the restart",
    )
    assert [a.stop(), b.stop()] == [0, 0]

    published: dict[str, list[datetime]] = {}
    state_lost = 0
    for proc in (a, b):
        for m in proc.messages():
            if found := re.fullmatch(r"publish entry=(\S+) slot=(\S+) due=.*", m):
                published.setdefault(found[1], []).append(datetime.fromisoformat(found[2]))
            if found := re.fullmatch(r"missed entry=\S+ reason=state_lost count=(\d+)", m):
                state_lost += int(found[1])
    assert sorted(published) == [f"e{i}" for i in range(entries)]
    if state_lost == 0:  # the leader kept the positions: every slot published, once
        for slots in published.values():
            assert_contiguous(slots, SECOND)
    assert int(cluster.admin.get("beatd:epoch") or 0) > 4  # a led at 4; never back to 1
    url = cluster.server.url
    assert (a.count(lost), b.count(lost)) in ((1, 0), (1, 1))
    assert (
        a.messages().count(
            f"Redis at {url} lost its data: it restarted (run id changed) without beatd's keys "
            "(beatd:format is gone, the fencing epoch is 0 where 4 was seen): every entry's "
            "position, every queued run and every dead letter it held are gone. The epoch goes "
            "on above 4; entries whose positions this node still holds are restored, the others "
            "count their lost slots as missed (state_lost). Enable AOF (appendonly yes) so that a "
            "restart keeps them"
        )
        == 1
    )
    assert a.count("restored the positions of 5 entries") == 1


# --- a worker dies mid-task -----------------------------------------------------------------


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
    backend = RedisBackend(cluster.server.url)
    backend.enqueue([Outgoing("long", "long@1", BeatdQueue("default"), message.to_json())])
    wait_for(lambda: events(out), what="the task to start")
    first.signal(signal.SIGKILL)
    assert first.popen.wait() == -signal.SIGKILL
    orphan = int(events(out)[0][4])
    wait_for(lambda: not os.path.exists(f"/proc/{orphan}/stat") or zombie(orphan), what="exit")
    second = cluster.worker("second", "-c", "1", "--visibility-timeout", "1s")
    wait_for(lambda: len(events(out)) == 3, what="the run to be delivered again and finish")
    assert second.stop() == 0

    assert [(e[0], e[1], e[3]) for e in events(out)] == [
        ("start", "long@1", "1"),  # delivery 1: killed with its worker, never finished
        ("start", "long@1", "2"),
        ("end", "long@1", "2"),
    ]
    lines = [re.sub(r" duration=\S+", "", m) for m in second.messages() if m.startswith("task=")]
    assert lines == ["task=tests.worker_tasks.slow id=long@1 attempt=1 outcome=succeeded"]
    assert backend.queue_depths() == {}
    assert cluster.admin.xpending(STREAM, "workers")["pending"] == 0
    backend.close()


def test_a_claim_whose_reply_was_lost_runs_once_after_the_visibility_timeout_not_never(
    cluster: Cluster,
) -> None:
    """What a freeze does to the claim in flight (the frozen-Redis test above met it under
    load): Redis ran the claim, the worker never read the reply. The run stays pending under
    the worker's name and is delivered again once its visibility lapses; a run published after
    it is not held up by it."""
    out = cluster.dir / "out"
    w = cluster.worker("w", "-c", "1", "--visibility-timeout", "2s")
    (consumer,) = [c for m in w.messages() for c in re.findall(r"^worker consumer=(\S+) ", m)]
    backend = RedisBackend(cluster.server.url)
    w.signal(signal.SIGSTOP)  # the claim below is then the only one
    try:
        backend.enqueue(
            [Outgoing("lost", "lost@1", BeatdQueue("default"), run_body("lost@1", out).decode())]
        )
        claimed_from = time.time()
        lost_reply = backend.claim(["default"], consumer, 2.0)
        backend.enqueue(
            [Outgoing("later", "later@1", BeatdQueue("default"), run_body("later@1", out).decode())]
        )
    finally:
        w.signal(signal.SIGCONT)
    wait_for(lambda: len(events(out)) == 2, what="both runs to complete")
    assert w.stop() == 0

    assert lost_reply is not None and (lost_reply.id, lost_reply.deliveries) == ("lost@1", 1)
    # event, id, attempt, deliveries: the lost one on its second delivery, after the later one
    assert [e[:4] for e in events(out)] == [
        ["sum=3", "later@1", "1", "1"],
        ["sum=3", "lost@1", "1", "2"],
    ]
    assert float(events(out)[1][5]) >= claimed_from + 2.0 - 0.01  # Redis's clock is in ms
    assert backend.queue_depths() == {}
    assert cluster.admin.xpending(STREAM, "workers")["pending"] == 0
    backend.close()


def zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- a bad queue entry ----------------------------------------------------------------------


def run_body(id: str, out: Path, **fields: object) -> bytes:
    now = datetime.now(UTC)
    message = RunMessage(
        id=id,
        task="tests.worker_tasks.add",
        entry=id.split("@")[0],
        scheduled_for=now,
        published_at=now,
        queue="default",
        args=(str(out), 1, 2),
    )
    return json.dumps({**json.loads(message.to_json()), **fields}).encode()


def test_bad_queue_entries_are_dead_lettered_with_a_reason_and_the_worker_goes_on(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    wrong_types = {"id": 1, "task": [], "entry": {}, "scheduled_for": 2, "published_at": None}
    wrong_types |= {"queue": 3, "args": "a", "kwargs": [], "headers": 4, "attempt": "1"}
    raw = redis.Redis(port=cluster.server.port)  # bytes as they are, no decoding
    bad: list[tuple[dict[bytes, bytes], str]] = [
        (
            {b"id": b"surrogate@1", b"body": b'{"id": "surrogate@1", "task": "\xed\xa0\x80"}'},
            "the queue entry's body is not UTF-8 text (byte 0xed at offset 31)",
        ),
        (
            {b"id": b"\xff\xfe@1", b"body": run_body("undecodable@1", out)},
            "the queue entry's id is not UTF-8 text (byte 0xff at offset 0)",
        ),
        ({b"id": b"nobody@1"}, "the queue entry has no body field"),
        ({b"body": run_body("noid@1", out)}, "the queue entry has no id field"),
        ({b"other": b"\xed\xa0\x80"}, "the queue entry has no id field"),
        (
            {b"id": b"typed@1", b"body": json.dumps(wrong_types).encode()},
            "unreadable run message: field 'id' must be str, got int",
        ),
        (
            {b"id": b"stream@1", b"body": run_body("body@1", out)},
            "the queue entry's id 'stream@1' differs from its body's id 'body@1'",
        ),
    ]
    for fields, _ in bad:
        raw.xadd(STREAM, fields)  # type: ignore[arg-type]
    raw.xadd(STREAM, {b"id": b"extra@1", b"body": run_body("extra@1", out), b"x": b"\xed"})
    raw.xadd(STREAM, {b"id": b"good@1", b"body": run_body("good@1", out)})
    w = cluster.worker("w", "-c", "1")
    settled = wait_for(
        lambda: cluster.admin.xlen(STREAM) == 0 or w.popen.poll() is not None,
        what="every entry to be settled",
    )
    assert settled and w.stop() == 0, w.log.read_text()

    assert sorted(e[1] for e in events(out)) == ["extra@1", "good@1"]
    letters = RedisBackend(cluster.server.url).dead_letters()
    assert [d.reason for d in letters] == [reason for _, reason in bad]
    assert w.count("outcome=dead_lettered") == len(bad)
    assert cluster.admin.xpending(STREAM, "workers")["pending"] == 0
    raw.close()


# --- the worker waits on Redis --------------------------------------------------------------


# commands run inside beatd's scripts: commandstats counts them too, but they are not sent
IN_SCRIPTS = {
    name.lower()
    for script in SCRIPTS.values()
    for name in re.findall(r"redis\.call\('(\w+)'", script.source)
}


def commands_sent(admin: redis.Redis) -> dict[str, int]:
    """Commands sent since the last CONFIG RESETSTAT (a script call counts once), leaving out
    the test's own."""
    stats: Any = admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    mine = ("config", "info")
    return {
        n: c
        for n, c in calls.items()
        if n.split("|")[0] not in IN_SCRIPTS and not n.startswith(mine)
    }


def test_an_idle_worker_sends_one_command_per_block_period_and_starts_a_run_within_ms(
    cluster: Cluster,
) -> None:
    out = cluster.dir / "out"
    w = cluster.worker("w", "-c", "1")  # op timeout 2 s: a block period of 1.5 s at most
    backend = RedisBackend(cluster.server.url)
    backend.enqueue(
        [Outgoing("warm", "warm@1", BeatdQueue("default"), run_body("warm@1", out).decode())]
    )
    wait_for(lambda: events(out), what="the first run")
    cluster.admin.config_resetstat()
    idle_since = time.monotonic()
    time.sleep(10)  # an idle period is what is measured here
    sent = commands_sent(cluster.admin)
    assert sum(sent.values()) <= 10 / 1.5, sent

    latencies = []
    for n in range(3):
        run = f"late@{n}"
        queued_at = time.time()
        backend.enqueue([Outgoing("late", run, BeatdQueue("default"), run_body(run, out).decode())])
        started = wait_for(lambda run=run: [e for e in events(out) if e[1] == run], what=run)
        latencies.append(float(started[0][5]) - queued_at)
        time.sleep(1.2)  # idle again, past the longest poll interval a polling worker would use
    assert max(latencies) < 0.25, latencies
    assert time.monotonic() - idle_since > 10
    assert w.stop() == 0
    backend.close()
