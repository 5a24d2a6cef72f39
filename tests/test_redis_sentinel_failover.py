"""A Redis primary killed under `beatd run` and `beatd worker`, behind Sentinel, as real processes.

One primary, one replica and three sentinels (`down-after-milliseconds 1000`) started by the
test; ten `catch_up` entries every second; the scheduler (lease TTL 2 s) and a worker follow the
service by its `redis+sentinel://` URL. Each run notes its id, its publish time and its
delivery: a slot published twice shows one id with two publish times, a slot lost is a gap in
its entry's runs. The figures each test measured are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.processes import Processes
from tests.redis_sentinel import SentinelCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENTRIES = 10
TTL = 2.0  # the scheduler's lease
SECOND = timedelta(seconds=1)


class Deployment:
    """The Sentinel set, and `beatd run` and `beatd worker` processes following it."""

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "runs.txt"
        self.cluster = SentinelCluster(tmp_path / "redis").start()
        self.processes = Processes(tmp_path, self.cluster.url, TTL)
        lines = ["defaults:\n  missed: catch_up\nentries:\n"]
        for i in range(ENTRIES):
            lines.append(
                f"  e{i}:\n    task: tests.worker_tasks.note_publish\n    every: 1s\n"
                f"    args: ['{self.out}']\n"
            )
        self.processes.schedule("".join(lines))

    def runs(self) -> list[tuple[str, datetime, int]]:
        """(run id, published at, delivery) of every run completed so far."""
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text().splitlines():
            run, published, delivery = line.split()
            found.append((run, datetime.fromisoformat(published), int(delivery)))
        return found

    def close(self) -> None:
        self.processes.close()
        self.cluster.stop()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    started = Deployment(tmp_path)
    yield started
    started.close()


def slots_by_entry(runs: list[tuple[str, datetime, int]]) -> dict[str, set[datetime]]:
    found: dict[str, set[datetime]] = {}
    for run, _, _ in runs:
        entry, slot = run.split("@")
        found.setdefault(entry, set()).add(datetime.fromisoformat(slot))
    return found


def lost(runs: list[tuple[str, datetime, int]]) -> int:
    """Slots missing between each entry's first and last run."""
    missing = 0
    for slots in slots_by_entry(runs).values():
        missing += sum((b - a) // SECOND - 1 for a, b in pairwise(sorted(slots)))
    return missing


def republished(runs: list[tuple[str, datetime, int]]) -> int:
    """Runs published more than once: one id, several publish times."""
    times: dict[str, set[datetime]] = {}
    for run, published, _ in runs:
        times.setdefault(run, set()).add(published)
    return sum(len(t) - 1 for t in times.values())


class Figures(NamedTuple):
    gap: float  # seconds from the kill to the first run published after it
    reconnected: float  # seconds from Sentinel's +switch-master to the later of the two processes
    republished: int
    lost: int

    def __str__(self) -> str:
        return (
            f"gap {self.gap:.1f} s, reconnected {self.reconnected:.1f} s after +switch-master, "
            f"republished {self.republished}, lost {self.lost}"
        )


def switched_at(cluster: SentinelCluster) -> float:
    """When the first sentinel logged +switch-master (epoch seconds; Redis logs local time)."""
    moments = []
    for sentinel in cluster.sentinels:
        for line in (sentinel.directory / "sentinel.log").read_text().splitlines():
            if "+switch-master" in line:
                stamp = " ".join(line.split()[1:5])  # 05 Dec 2026 22:18:38.543
                moments.append(datetime.strptime(stamp, "%d %b %Y %H:%M:%S.%f").timestamp())
    assert moments, "no sentinel logged +switch-master"
    return min(moments)


def fail_over(
    deployment: Deployment, before_kill: Callable[[], None], *scheduler_args: str
) -> Figures:
    """Kill the primary under load, and count once the scheduler stopped and the worker ran
    every slot up to the last published."""
    cluster = deployment.cluster
    scheduler = deployment.processes.scheduler("a", *scheduler_args)
    worker = deployment.processes.worker("w", "-c", "4", "--visibility-timeout", "3s")
    wait_for(lambda: len(deployment.runs()) >= 3 * ENTRIES, what="runs before the kill")
    before_kill()
    new_primary = cluster.replica.port
    cluster.primary.kill()
    killed_at = time.time()
    if cluster.replica.process is None:  # stopped first: back, with what it had
        cluster.replica.start()

    def published_after() -> list[float]:
        return [p.timestamp() for _, p, _ in deployment.runs() if p.timestamp() > killed_at]

    wait_for(published_after, timeout=30, what="a run published after the failover")
    gap = min(published_after()) - killed_at
    assert cluster.primary_port() == new_primary
    wait_for(
        lambda: len(published_after()) >= 3 * ENTRIES, timeout=30, what="runs after the failover"
    )
    scheduler.signal(signal.SIGTERM)
    assert scheduler.popen.wait(15) == 0
    last = max(p for _, p, _ in deployment.runs())

    def drained() -> bool:  # every slot up to the last published has run
        runs = deployment.runs()
        ends = [max(s) for s in slots_by_entry(runs).values()]
        return lost(runs) == 0 and min(ends) >= last - 2 * SECOND

    wait_for(drained, timeout=20, what="the worker to run every slot published")
    assert worker.stop() == 0
    runs = deployment.runs()
    assert sorted(slots_by_entry(runs)) == sorted(f"e{i}" for i in range(ENTRIES))
    switched = switched_at(cluster)
    reconnected = max(p.first("moved to a new primary")[0] for p in (scheduler, worker))
    for proc in (scheduler, worker):
        assert proc.count("moved to a new primary") == 1, proc.log.read_text()
    return Figures(gap, reconnected - switched, republished(runs), lost(runs))


def test_primary_killed_in_steady_state_every_slot_is_published_once_none_lost(
    deployment: Deployment,
) -> None:
    figures = fail_over(deployment, lambda: None)
    print(f"\nsteady state: {figures}")
    assert (figures.republished, figures.lost) == (0, 0)
    assert figures.reconnected < TTL
    assert figures.gap < 1.0 + TTL + 3.0  # down-after + lease TTL + the vote and promotion


def test_primary_killed_with_its_replica_stopped_first_none_lost(deployment: Deployment) -> None:
    """The replica is killed first, so the commits after it are on the primary only; the
    leader (auto: the primary had a replica) pauses after the first of them. Then the primary
    is killed and the replica started again with what it had: Sentinel promotes it, the slots
    of the commit it never got are published again, and the leader publishes on the new
    primary without waiting (auto: it has no replica)."""
    cluster = deployment.cluster

    def stop_replica() -> None:
        cluster.replica.kill()
        wait_for(
            lambda: deployment.processes.procs[0].count("not acknowledged by any replica"),
            timeout=10,
            what="the leader to pause",
        )

    figures = fail_over(deployment, stop_replica)
    print(f"\nreplica stopped first: {figures}")
    assert figures.lost == 0
    assert figures.republished <= ENTRIES  # at most the runs of the one commit before the pause
    assert figures.reconnected < TTL
