"""The operator controls (docs/controls.md) with real `beatd run` and `beatd worker` processes,
on SQLite and on Redis, where time and failover matter (issue 16): a pause while no leader
leads, `overlap: skip` with a task longer than its interval and with a worker killed mid-run, a
trigger during a pause and at a slot's exact second, a backfill over published slots.

The daemons are processes (tests/processes.py); the commands run in-process against the same
backend, as an operator's shell would beside them. Every entry fires each second, and each test
waits on the run history (`beatd history --json`), never for a fixed time.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from beatd.cli import main
from tests.processes import Processes
from tests.redis_server import RedisServer
from tests.test_redis_faults import zombie
from tests.waiting import wait_for
from tests.worker_tasks import events

pytestmark = pytest.mark.slow
SECOND = timedelta(seconds=1)
PAUSE_SINCE = re.compile(r"since (\S+Z), until resumed")


@pytest.fixture(params=["sqlite", "redis"])
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """The processes of one test, on its own SQLite file or its own redis-server."""
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis", persistent=True).start()
        url = server.url
    else:
        url = f"sqlite:///{tmp_path / 'beatd.db'}"
    started = Processes(tmp_path, url)
    try:
        yield started
    finally:
        started.close()
        if server is not None:
            server.stop()


def beatd(procs: Processes, *args: str, schedules: bool = True) -> tuple[int, str, str]:
    """A command against the test's backend, in-process: (exit status, stdout, stderr)."""
    argv = [*args, "--broker", procs.broker]
    if schedules:
        argv += ["-s", str(procs.schedules)]
    result = CliRunner().invoke(main, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def history(procs: Processes, entry: str) -> list[dict[str, Any]]:
    """The entry's run and missed-slot records, newest first."""
    code, out, err = beatd(procs, "history", entry, "--json", "-n", "1000")
    assert (code, err) == (0, ""), err
    return [json.loads(line) for line in out.splitlines()]


def runs(procs: Processes, entry: str, status: str | None = None) -> list[dict[str, Any]]:
    found = [r for r in history(procs, entry) if r["type"] == "run"]
    return [r for r in found if status is None or r["status"] == status]


def missed(records: list[dict[str, Any]], reason: str) -> list[datetime]:
    """Every slot the missed records with `reason` account for."""
    slots = []
    for record in (r for r in records if r["type"] == "missed" and r["reason"] == reason):
        first, last = at(record["first_slot"]), at(record["last_slot"])
        span = [first + k * SECOND for k in range(int((last - first) / SECOND) + 1)]
        assert len(span) == record["slots"], record
        slots += span
    return slots


def audit_log(procs: Processes, entry: str) -> list[dict[str, Any]]:
    """The entry's audit records, newest first."""
    code, out, err = beatd(procs, "audit", entry, "--json", schedules=False)
    assert (code, err) == (0, "")
    records: list[dict[str, Any]] = json.loads(out)
    return records


def action_time(procs: Processes, entry: str, action: str) -> datetime:
    """When the entry's newest `action` (pause, resume) was taken, by the backend's clock."""
    record = next(r for r in audit_log(procs, entry) if r["action"] == action)
    return at(record["at"])


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def now() -> datetime:
    return datetime.now(UTC)


def assert_every_slot_ends_once(records: list[dict[str, Any]]) -> None:
    """From the first slot to the last, each is one scheduled run or one missed slot."""
    ended: Counter[datetime] = Counter()
    for record in records:
        if record["type"] == "run" and record["kind"] in ("scheduled", "caught_up"):
            ended[at(record["slot"])] += 1
    for reason in {r["reason"] for r in records if r["type"] == "missed"}:
        ended.update(missed(records, reason))
    twice = sorted(slot for slot, n in ended.items() if n > 1)
    assert not twice, f"slots ended twice: {twice}"
    first, last = min(ended), max(ended)
    lost = [first + k * SECOND for k in range(int((last - first) / SECOND) + 1)]
    assert [slot for slot in lost if slot not in ended] == []


# --- a pause while no leader leads --------------------------------------------------------

TWO_EVERY_SECOND = """\
defaults:
  missed: catch_up
entries:
  paused:
    task: t.paused
    every: 1s
  other:
    task: t.other
    every: 1s
"""


def test_a_pause_during_failover_holds_on_the_standby_and_resume_publishes_the_next_slot(
    procs: Processes,
) -> None:
    procs.schedule(TWO_EVERY_SECOND)
    procs.lease_ttl = 3.0  # the killed leader's lease: the time the pause has to land in
    a = procs.scheduler("a")
    wait_for(lambda: len(runs(procs, "paused")) >= 2, what="a to publish")
    b = procs.scheduler("b")
    a.signal(signal.SIGKILL)
    a.popen.wait()

    code, out, err = beatd(procs, "pause", "paused", "--reason", "failover drill", "--by", "ops")
    assert b.count("became leader") == 0, "the pause was to land while no leader led"
    assert (code, err) == (0, "")
    since = PAUSE_SINCE.search(out)
    assert since is not None and out == (
        f"paused paused: by ops, reason 'failover drill', since {since[1]}, until resumed\n"
    )
    paused_at = action_time(procs, "paused", "pause")
    assert f"{paused_at:%Y-%m-%dT%H:%M:%SZ}" == since[1]
    wait_for(lambda: b.count("became leader"), timeout=10, what="b to take over")
    took_over = b.first("became leader")[0]
    wait_for(
        lambda: any(r["node"] == "b" and at(r["slot"]) >= paused_at + 2 * SECOND
                    for r in runs(procs, "other")),
        what="b to publish the other entry",
    )  # fmt: skip
    during = history(procs, "paused")

    code, out, err = beatd(procs, "resume", "paused", "--by", "ops", schedules=False)
    assert (code, out, err) == (0, "resumed paused\n", "")
    resumed_at = action_time(procs, "paused", "resume")
    wait_for(
        lambda: any(at(r["slot"]) > resumed_at for r in runs(procs, "paused")),
        what="the next slot after the resume",
    )
    assert b.stop() == 0

    records = history(procs, "paused")
    assert_every_slot_ends_once(records)
    published = sorted(at(r["slot"]) for r in records if r["type"] == "run")
    stopped = missed(records, "paused")
    assert stopped, "no slot was missed as paused"
    # the standby, leading after the pause, published none of its slots: the first of them
    # fell due before it took over, the last before the resume; the next slot was published
    assert [r for r in during if r["type"] == "run" and at(r["slot"]) >= paused_at] == []
    assert min(stopped) < datetime.fromtimestamp(took_over, UTC)
    assert paused_at <= min(stopped) and max(stopped) < resumed_at
    assert [s for s in published if paused_at <= s < resumed_at] == []
    assert min(s for s in published if s > paused_at) == max(stopped) + SECOND


# --- overlap: skip, with real workers ------------------------------------------------------


def slow_every_second(out: Path, seconds: float) -> str:
    return f"""\
entries:
  long:
    task: tests.worker_tasks.slow
    every: 1s
    overlap: skip
    args: ['{out}', {seconds}]
"""


def test_overlap_skip_with_a_task_longer_than_its_interval_on_two_workers_runs_one_at_a_time(
    procs: Processes,
) -> None:
    out = procs.dir / "out"
    procs.schedule(slow_every_second(out, 1.5))
    procs.scheduler("a")
    workers = [procs.worker(name, "-c", "1") for name in ("w1", "w2")]
    wait_for(lambda: len(runs(procs, "long", "succeeded")) >= 3, what="three runs to end")
    assert [w.stop() for w in workers] == [0, 0]

    ran = events(out)  # `start|end id attempt deliveries pid time`, as the task wrote them
    spans = sorted(
        (float(start[5]), float(end[5]), start[1])
        for start in ran
        for end in ran
        if (start[0], end[0]) == ("start", "end") and start[1] == end[1]
    )
    assert len(spans) >= 3
    for (_, ended, before), (started, _, after) in pairwise(spans):
        assert started >= ended, f"{after} started before {before} ended"
    records = history(procs, "long")
    finished = [r for r in records if r["type"] == "run" and r["status"] == "succeeded"]
    attempts = sorted(
        (at(a["started_at"]), at(a["ended_at"])) for r in finished for a in r["attempts"]
    )
    for (_, ended), (started, _) in pairwise(attempts):
        assert started >= ended
    assert missed(records, "overlap"), "no slot was missed while a run was busy"
    assert_every_slot_ends_once(records)


def test_overlap_skip_with_a_worker_killed_mid_run_publishes_nothing_until_the_redelivery_ends(
    procs: Processes,
) -> None:
    out = procs.dir / "out"
    procs.schedule(slow_every_second(out, 1.5))
    procs.scheduler("a")
    first = procs.worker("first", "-c", "1", "--visibility-timeout", "2s")
    wait_for(lambda: events(out), what="the first run to start")
    first.signal(signal.SIGKILL)
    assert first.popen.wait() == -signal.SIGKILL
    (_, lost_id, _, _, child, _) = events(out)[0]
    wait_for(lambda: zombie(int(child)), what="the killed worker's child to exit")
    second = procs.worker("second", "-c", "1", "--visibility-timeout", "2s")
    wait_for(
        lambda: [r for r in runs(procs, "long", "succeeded") if r["id"] != lost_id],
        what="a run after the redelivered one",
    )
    assert second.stop() == 0

    records = history(procs, "long")
    (lost,) = [r for r in records if r["type"] == "run" and r["id"] == lost_id]
    assert [(a["number"], a["outcome"]) for a in lost["attempts"]] == [
        (1, "lost"),
        (2, "succeeded"),
    ]
    assert [e[:4] for e in events(out) if e[1] == lost_id] == [
        ["start", lost_id, "1", "1"],  # killed with its worker, never finished
        ["start", lost_id, "1", "2"],
        ["end", lost_id, "1", "2"],
    ]
    redelivered_end = at(lost["attempts"][1]["ended_at"])
    later = [r for r in records if r["type"] == "run" and at(r["slot"]) > at(lost["slot"])]
    assert later, "nothing was published after the lost run"
    assert min(at(r["published_at"]) for r in later) >= redelivered_end
    skipped = missed(records, "overlap")
    assert min(skipped) == at(lost["slot"]) + SECOND
    assert_every_slot_ends_once(records)


# --- trigger -------------------------------------------------------------------------------


def adding_every_second(out: Path) -> str:
    return f"""\
entries:
  tick:
    task: tests.worker_tasks.add
    every: 1s
    args: ['{out}', 1, 2]
"""


def test_a_trigger_during_a_pause_is_refused_naming_it_and_forced_runs(procs: Processes) -> None:
    out = procs.dir / "out"
    procs.schedule(adding_every_second(out))
    a = procs.scheduler("a")
    w = procs.worker("w", "-c", "1")
    wait_for(lambda: runs(procs, "tick", "succeeded"), what="a first run")

    code, paused, err = beatd(procs, "pause", "tick", "--reason", "db migration", "--by", "bob")
    assert (code, err) == (0, "")
    since = PAUSE_SINCE.search(paused)
    assert since is not None
    code, stdout, err = beatd(procs, "trigger", "tick", "--by", "alice")
    assert (code, stdout) == (1, "")
    assert err == (
        f"beatd: tick is paused (by bob, reason 'db migration', since {since[1]}, until "
        "resumed); nothing was published: resume it with `beatd resume`, or add --force\n"
    )
    code, stdout, err = beatd(procs, "trigger", "tick", "--force", "--by", "alice")
    assert (code, err) == (0, "")
    forced = stdout.strip()
    assert re.fullmatch(r"tick@manual-[0-9a-f]{32}", forced), stdout
    wait_for(
        lambda: [r for r in runs(procs, "tick", "succeeded") if r["id"] == forced],
        what="the forced run to be run",
    )
    first_paused = at(since[1]) + SECOND  # the first slot due after the pause began
    wait_for(lambda: now() > first_paused, what="a slot to fall due in the pause")
    code, stdout, err = beatd(procs, "resume", "tick", "--by", "bob", schedules=False)
    assert (code, stdout, err) == (0, "resumed tick\n", "")
    resumed_at = action_time(procs, "tick", "resume")
    wait_for(
        lambda: any(at(r["slot"]) > resumed_at for r in runs(procs, "tick", "succeeded")),
        what="a scheduled run after the resume",
    )
    assert [a.stop(), w.stop()] == [0, 0]

    records = history(procs, "tick")
    paused_at = action_time(procs, "tick", "pause")
    scheduled = [at(r["slot"]) for r in records if r["type"] == "run" and r["kind"] != "manual"]
    assert [slot for slot in scheduled if paused_at <= slot < resumed_at] == []
    forced_at = at(next(r for r in records if r.get("id") == forced)["published_at"])
    assert paused_at < forced_at < resumed_at
    assert paused_at <= min(missed(records, "paused"))
    assert max(missed(records, "paused")) < resumed_at
    assert [e[1] for e in events(out)].count(forced) == 1
    audit = [(r["action"], r["detail"].get("status")) for r in audit_log(procs, "tick")]
    assert audit == [("resume", None), ("trigger", "published"), ("pause", None)]
    assert_every_slot_ends_once(records)


def test_a_trigger_at_a_slots_exact_second_gives_two_runs_both_run(procs: Processes) -> None:
    out = procs.dir / "out"
    procs.schedule(f"""\
entries:
  tick:
    task: tests.worker_tasks.notes_its_slot
    every: 1s
    args: ['{out}']
""")  # every second is a slot's: a trigger's second is one
    a = procs.scheduler("a")
    w = procs.worker("w", "-c", "2")
    wait_for(lambda: runs(procs, "tick", "succeeded"), what="a first run")
    code, stdout, err = beatd(procs, "trigger", "tick", "--by", "alice")
    assert (code, err) == (0, "")
    manual_id = stdout.strip()

    def slot_of(run_id: str) -> str | None:
        """The slot the run's message carried, as its task noted it once it ran."""
        return next((e[0].removeprefix("slot=") for e in events(out) if e[1] == run_id), None)

    manual_slot = wait_for(lambda: slot_of(manual_id), what="the manual run to be run")
    scheduled_id = f"tick@{manual_slot}"
    wait_for(lambda: slot_of(scheduled_id), what="the slot's own run to be run")
    assert [a.stop(), w.stop()] == [0, 0]

    assert scheduled_id != manual_id
    ran = [e[1] for e in events(out)]
    assert (ran.count(manual_id), ran.count(scheduled_id)) == (1, 1)
    done = {r["id"]: (r["kind"], r["status"]) for r in runs(procs, "tick")}
    assert (done[manual_id], done[scheduled_id]) == (
        ("manual", "succeeded"),
        ("scheduled", "succeeded"),
    )


# --- backfill ------------------------------------------------------------------------------


def test_a_backfill_beside_a_running_scheduler_publishes_only_absent_slots_not_past_its_horizon(
    procs: Processes,
) -> None:
    out = procs.dir / "out"
    procs.schedule(adding_every_second(out))
    a = procs.scheduler("a")
    w = procs.worker("w", "-c", "2")
    wait_for(lambda: len(runs(procs, "tick", "succeeded")) >= 3, what="three runs")
    first, _, third = sorted(at(r["slot"]) for r in runs(procs, "tick"))[:3]
    ids = [f"tick@{first + k * SECOND:%Y-%m-%dT%H:%M:%SZ}" for k in range(-2, 3)]
    assert f"tick@{third:%Y-%m-%dT%H:%M:%SZ}" == ids[-1]
    span = ["--from", f"{first - 2 * SECOND:%Y-%m-%dT%H:%M:%SZ}"]
    span += ["--to", f"{third + SECOND:%Y-%m-%dT%H:%M:%SZ}"]

    code, stdout, err = beatd(procs, "backfill", "tick", *span, "--by", "carol")
    assert (code, err) == (0, "")
    assert stdout == (
        f"published  {ids[0]}\npublished  {ids[1]}\nalready there  {ids[2]}\n"
        f"already there  {ids[3]}\nalready there  {ids[4]}\npublished 2, already there 3\n"
    )
    again = beatd(procs, "backfill", "tick", *span, "--by", "carol")
    assert again == (0, "".join(f"already there  {i}\n" for i in ids) + (
        "published 0, already there 5\n"
    ), "")  # fmt: skip
    wait_for(
        lambda: {r["id"] for r in runs(procs, "tick", "succeeded")} >= set(ids),
        what="the backfilled runs to be run",
    )

    last = (now() + timedelta(seconds=60)).replace(microsecond=0)
    past = ["--from", f"{third:%Y-%m-%dT%H:%M:%SZ}", "--to", f"{last + SECOND:%Y-%m-%dT%H:%M:%SZ}"]
    code, stdout, err = beatd(procs, "backfill", "tick", *past, "--by", "carol")
    assert (code, stdout) == (2, "")
    refused = re.fullmatch(
        rf"beatd: --to: {last:%Y-%m-%dT%H:%M:%SZ} is past tick's horizon (\S+Z): later slots "
        r"are the scheduler's to publish; end the range at or before it\n",
        err,
    )
    assert refused is not None, err
    assert [a.stop(), w.stop()] == [0, 0]

    records = history(procs, "tick")
    assert at(refused[1]) in {at(r["slot"]) for r in records if r["type"] == "run"}
    kinds = {r["id"]: r["kind"] for r in records if r["type"] == "run"}
    assert [kinds[i] for i in ids] == [
        "backfill",
        "backfill",
        "scheduled",
        "scheduled",
        "scheduled",
    ]
    ran = Counter(e[1] for e in events(out))
    assert [ran[i] for i in ids] == [1, 1, 1, 1, 1]
    assert_every_slot_ends_once(records)
