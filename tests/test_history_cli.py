"""`beatd history`, the history columns of `beatd status` and `beatd migrate` carrying the
history: in-process, against the in-memory backend and a real SQLite file."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from beatd.backends import Backend, open_backend
from beatd.backends.base import BeatdQueue, Outgoing, StateWrite
from beatd.backends.memory import discard
from beatd.history import (
    Attempt,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    MissedSlots,
    RunKind,
    RunRecord,
)
from beatd.state import EntryState
from tests.in_process import beatd, schedules_folder

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 12, 4, 1, 30, tzinfo=UTC)
SCHEDULES = """\
entries:
  nightly:
    task: t.nightly
    cron: "30 2 * * *"
    timezone: Europe/Berlin
  tick:
    task: t.tick
    every: 10s
"""


@pytest.fixture(params=["memory", "sqlite"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'beatd.db'}"
        return
    name = f"history-cli-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    discard(name)


@pytest.fixture
def schedules(tmp_path: Path) -> Path:
    return schedules_folder(tmp_path, SCHEDULES)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def attempt(
    number: int, start: float, end: float | None, outcome: str | None, **kw: Any
) -> Attempt:
    """Attempt `number`, by worker `w<number>` (pid 100 + number), from T0 + `start` s."""
    ended = None if end is None else at(end)
    return Attempt(number, f"w{number}", "host1", 100 + number, at(start), ended, outcome, **kw)


def nightly_success() -> RunRecord:
    return RunRecord(
        "nightly@2025-12-04T01:30:00Z", "nightly", T0, T0, at(0.01), "node-a", 3,
        RunKind.SCHEDULED, attempts=(attempt(1, 0.4, 3.6, "succeeded"),),
    )  # fmt: skip


def nightly_dead() -> RunRecord:
    """The next night: failed twice, retried, then dead-lettered by its time limit."""
    day = 86400
    tries = (
        attempt(1, day + 1, day + 2, "retried", error_type="ValueError", error="bad\ninput"),
        attempt(2, day + 12, day + 13, "lost"),
        attempt(3, day + 70, day + 130, "dead_lettered", reason="time_limit"),
    )
    return RunRecord(
        "nightly@2025-12-05T01:30:00Z", "nightly", at(day), at(day), at(day), "node-b", 4,
        RunKind.CAUGHT_UP, attempts=tries,
    )  # fmt: skip


def gone_queued() -> RunRecord:
    """An entry no longer in the schedule files: shown in UTC only."""
    return RunRecord("gone@x", "gone", at(600), at(605), at(600.5), "node-a", 3, RunKind.SCHEDULED)


def nightly_missed() -> MissedRecord:
    slots = MissedSlots("nightly", "skipped", at(-3 * 86400), at(-86400), 3)
    return MissedRecord(slots, at(0), "node-a", 3)


def seed(url: str, *runs: RunRecord, missed: tuple[MissedRecord, ...] = ()) -> Backend:
    backend = open_backend(url)
    backend.import_history(runs, missed)
    return backend


def test_history_shows_each_run_and_missed_range_newest_first(broker: str, schedules: Path) -> None:
    backend = seed(
        broker, nightly_success(), nightly_dead(), gone_queued(), missed=(nightly_missed(),)
    )
    try:
        code, out, _ = beatd("history", "--broker", broker, "-s", str(schedules))
    finally:
        backend.close()
    assert code == 0, out
    assert out.splitlines() == [
        "ENTRY    SCHEDULED (UTC)       ENTRY'S ZONE               STATUS         DELAY   STARTED"
        "               DURATION  TRIES  WORKER  NODE    EPOCH  DETAIL",
        "nightly  2025-12-05T01:30:00Z  2025-12-05T02:30:00+01:00  dead_lettered  1.0 s   "
        "2025-12-05T01:30:01Z  1 min     3      w3      node-b  4      caught_up; time_limit",
        "gone     2025-12-04T01:40:00Z  -                          queued         -       -"
        "                     -         0      -       node-a  3",
        "nightly  2025-12-04T01:30:00Z  2025-12-04T02:30:00+01:00  succeeded      400 ms  "
        "2025-12-04T01:30:00Z  3.2 s     1      w1      node-a  3",
        "nightly  2025-12-01T01:30:00Z  2025-12-01T02:30:00+01:00  missed         -       -"
        "                     -         -      -       node-a  3      3 slot(s) skipped, the last "
        "2025-12-03T01:30:00Z",
    ]


def test_history_of_one_entry_limited_since_and_by_outcome(broker: str) -> None:
    backend = seed(
        broker, nightly_success(), nightly_dead(), gone_queued(), missed=(nightly_missed(),)
    )
    try:

        def ids(*args: str) -> list[str]:
            code, out, err = beatd("history", "--broker", broker, "--json", *args)
            assert code == 0, err
            return [o.get("id") or o["type"] for o in map(json.loads, out.splitlines())]

        assert ids("nightly") == [nightly_dead().id, nightly_success().id, "missed"]
        assert ids("nightly", "-n", "2") == [nightly_dead().id, nightly_success().id]
        assert ids("--since", "2025-12-04T01:35:00") == [nightly_dead().id, gone_queued().id]
        assert ids("--since", "2025-12-04T02:35:00+01:00") == [nightly_dead().id, gone_queued().id]
        assert ids("--since", "1d") == []  # a day back from now: T0 is long ago
        assert ids("--outcome", "queued", "--outcome", "succeeded") == [
            gone_queued().id,
            nightly_success().id,
        ]
        assert ids("--outcome", "missed") == ["missed"]
        assert ids("--outcome", "failed") == []
        code, out, _ = beatd("history", "--broker", broker, "--outcome", "failed")
        assert (code, out) == (0, "no runs or missed slots recorded that match\n")
    finally:
        backend.close()


def test_history_finds_n_matching_runs_beyond_the_first_batch(broker: str) -> None:
    many = [
        RunRecord(f"e@{i:04d}", "e", at(i), at(i), at(i), "n", 1, RunKind.SCHEDULED)
        for i in range(300)
    ]
    done = many[5]
    many[5] = RunRecord(
        done.id, "e", done.slot, done.due, done.published_at, "n", 1, RunKind.SCHEDULED,
        attempts=(attempt(1, 5, 6, "failed", error_type="KeyError", error="'x'"),),
    )  # fmt: skip
    backend = seed(broker, *many)
    try:
        code, out, err = beatd("history", "--broker", broker, "--outcome", "failed", "--json")
    finally:
        backend.close()
    assert code == 0, err
    (found,) = map(json.loads, out.splitlines())
    assert found["id"] == "e@0005" and found["attempts"][0]["error"] == "'x'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "yesterday"],
            "beatd: --since: cannot read 'yesterday': give a duration back from now (such as 30m"
            " or 2d) or an ISO 8601 time (such as 2026-12-05T01:00:00Z)\n",
        ),
        (
            ["--outcome", "succeded"],
            "beatd: --outcome: unknown outcome 'succeded': use one of succeeded, retried, failed,"
            " expired, dead_lettered, crashed, released, lost, queued, running, overdue, unknown,"
            " missed; did you mean 'succeeded'?\n",
        ),
    ],
    ids=["since", "outcome"],
)
def test_bad_since_or_outcome_names_the_option_and_exits_2(args: list[str], message: str) -> None:
    code, out, err = beatd("history", "--broker", "memory://never-opened", *args)
    assert (code, out, err) == (2, "", message)


def documented_fields(section: str) -> list[str]:
    """The field names of one table in docs/history.md, under the heading `section`."""
    text = (REPO / "docs" / "history.md").read_text()
    part = text.split(f"\n{section}\n", 1)[1]
    rows = re.findall(r"^\| `([a-z_]+)` \|", part.split("\n\n\n", 1)[0].split("\n#", 1)[0], re.M)
    return rows


def test_every_json_field_is_documented_and_every_documented_field_is_emitted(
    broker: str, schedules: Path
) -> None:
    backend = seed(broker, nightly_dead(), missed=(nightly_missed(),))
    try:
        code, out, err = beatd("history", "--broker", broker, "-s", str(schedules), "--json")
    finally:
        backend.close()
    assert code == 0, err
    run, gap = map(json.loads, out.splitlines())
    assert list(run) == documented_fields("### A run")
    assert list(run["attempts"][0]) == documented_fields("### An attempt")
    assert list(gap) == documented_fields("### A missed-slot range")
    assert run["slot_local"] == "2025-12-05T02:30:00+01:00"
    assert run["timezone"] == "Europe/Berlin"
    assert (run["delay_seconds"], run["duration_seconds"]) == (1.0, 60.0)
    assert run["attempts"][0] == {
        "number": 1,
        "consumer": "w1",
        "host": "host1",
        "pid": 101,
        "started_at": "2025-12-05T01:30:01Z",
        "ended_at": "2025-12-05T01:30:02Z",
        "duration_seconds": 1.0,
        "outcome": "retried",
        "reason": None,
        "error_type": "ValueError",
        "error": "bad\ninput",
    }
    assert gap == {
        "type": "missed",
        "entry": "nightly",
        "reason": "skipped",
        "first_slot": "2025-12-01T01:30:00Z",
        "first_slot_local": "2025-12-01T02:30:00+01:00",
        "last_slot": "2025-12-03T01:30:00Z",
        "timezone": "Europe/Berlin",
        "slots": 3,
        "recorded_at": "2025-12-04T01:30:00Z",
        "node": "node-a",
        "epoch": 3,
        "overdue_at": None,
        "pause": None,  # skipped, not paused
    }


def test_a_run_published_claimed_and_acked_shows_its_worker_and_outcome(broker: str) -> None:
    """Not seeded: written by the backend's own steps, at its own clock."""
    backend = open_backend(broker)
    try:
        lease = backend.acquire_lease("node-a", 30)
        assert lease is not None
        slot = datetime.now(UTC).replace(microsecond=0)
        state = EntryState("tick", slot, slot, "every 10s")
        body = '{"task": "t.tick"}'
        message = Outgoing("tick", "tick@1", BeatdQueue("default"), body, slot, slot)
        assert backend.commit(lease, [StateWrite(state, None)], [message]) == set()
        delivery = backend.claim(["default"], "worker-7", 30)
        assert delivery is not None
        backend.ack(delivery)
        code, out, err = beatd("history", "tick", "--broker", broker, "--json")
    finally:
        backend.close()
    assert code == 0, err
    (run,) = map(json.loads, out.splitlines())
    assert (run["status"], run["node"], run["epoch"], run["kind"]) == (
        "succeeded",
        "node-a",
        1,
        "scheduled",
    )
    assert [a["consumer"] for a in run["attempts"]] == ["worker-7"]
    assert run["timezone"] is None and run["slot_local"] is None  # no schedule files given


# --- beatd status


def summary(entry: str, status: str, finished: datetime, **kw: Any) -> EntrySummary:
    values: dict[str, Any] = {
        "last_duration": timedelta(seconds=3.2),
        "last_success_at": None,
        "last_failure_at": None,
        "consecutive_failures": 0,
    }
    values.update(kw)
    return EntrySummary(entry, status, finished, **values)


def from_the_table(out: str) -> list[str]:
    """The status's lines from three before its entry table (the nodes' lines come before)."""
    lines = out.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("ENTRY")) - 3 :]


def test_status_shows_the_last_run_and_times_relative_to_now(broker: str, schedules: Path) -> None:
    now = datetime.now(UTC)
    backend = open_backend(broker)
    three_h = now - timedelta(hours=3, seconds=30)
    ten_min = now - timedelta(minutes=10, seconds=30)
    try:
        lease = backend.acquire_lease("node-a", 30)
        assert lease is not None
        tick = now.replace(microsecond=0) - timedelta(seconds=now.second % 10)
        write = StateWrite(EntryState("tick", tick, tick, "every 10s"), None)
        assert backend.commit(lease, [write], []) == set()
        backend.release_lease(lease)
        tick_summary = summary("tick", "succeeded", ten_min, last_success_at=ten_min)
        failing = summary(
            "nightly", "failed", ten_min, last_success_at=three_h, consecutive_failures=3
        )
        backend.import_history((), (), [tick_summary, failing])
        args = ["status", "--broker", broker, "-s", str(schedules)]
        code, out, err = beatd(*args)
        json_code, json_out, _ = beatd(*args, "--json", "--limit", "1")
        one_code, one_out, _ = beatd(*args, "tick")
        first_code, first_out, _ = beatd(*args, "-n", "1")
    finally:
        backend.close()
    assert code == 0, err
    lines = from_the_table(out)
    assert re.split(r"  +", lines[3]) == [
        "ENTRY", "LAST PUBLISHED", "NEXT DUE", "LAST STATUS", "LAST SUCCESS", "LAST DURATION",
        "LATE", "MISSED",
    ]  # fmt: skip
    nightly, tick_row = (re.split(r"  +", line) for line in lines[4:6])
    assert nightly[0] == "nightly" and nightly[1] == "never"
    assert re.fullmatch(r"\S+Z \(new, in \d+ (h|min)\)", nightly[2]), nightly[2]
    assert nightly[3:] == [
        "failed (3 in a row)",
        f"{three_h:%Y-%m-%dT%H:%M:%SZ} (3 h ago)",
        "3.2 s",
        "-",
        "-",
    ]
    assert tick_row[0] == "tick"
    assert re.fullmatch(rf"{tick:%Y-%m-%dT%H:%M:%SZ} \((now|\d+ s ago)\)", tick_row[1])
    assert tick_row[3:6] == ["succeeded", f"{ten_min:%Y-%m-%dT%H:%M:%SZ} (10 min ago)", "3.2 s"]
    assert lines[6] == "2 entries"

    assert json_code == 0
    report = json.loads(json_out)
    assert report["entries_total"] == 2
    (row,) = report["entries"]
    # the history's six keys, then the controls' (tests/test_controls_cli.py)
    assert list(row)[-3:] == ["paused", "busy", "held"]
    assert {k: row[k] for k in list(row)[-9:-3]} == {
        "last_status": "failed",
        "last_finished": f"{ten_min:%Y-%m-%dT%H:%M:%SZ}",
        "last_success": f"{three_h:%Y-%m-%dT%H:%M:%SZ}",
        "last_failure": None,
        "last_duration_seconds": 3.2,
        "consecutive_failures": 3,
    }
    assert one_code == 0
    assert [line.split()[0] for line in from_the_table(one_out)[3:5]] == ["ENTRY", "tick"]
    assert from_the_table(one_out)[5] == "1 entries"
    assert first_code == 0
    assert from_the_table(first_out)[4].split()[0] == "nightly"
    assert from_the_table(first_out)[5] == "1 of 2 entries (--limit)"


def test_status_of_an_unknown_entry_is_bad_input(broker: str, schedules: Path) -> None:
    open_backend(broker).close()
    code, out, err = beatd("status", "nightly", "nigthly", "--broker", broker, "-s", str(schedules))
    assert (code, out, err.splitlines()[-1]) == (  # memory:// warns first that it is private
        2,
        "",
        "beatd: ENTRY: no entry 'nigthly' in the schedule files; did you mean 'nightly'?",
    )


# --- beatd migrate


def test_migrate_copies_the_history_once(broker: str, tmp_path: Path) -> None:
    """To a second SQLite file, from the memory store or a first one."""
    source = seed(broker, nightly_success(), nightly_dead(), missed=(nightly_missed(),))
    finished = summary("nightly", "dead_lettered", at(86530), consecutive_failures=1)
    source.import_history((), (), [finished])
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    try:
        first = beatd("migrate", "--from", broker, "--to", target_url)
        again = beatd("migrate", "--from", broker, "--to", target_url)
        target = open_backend(target_url)
        try:
            assert target.runs(_all()) == source.runs(_all())
            assert target.export_missed() == source.export_missed()
            assert target.summaries() == source.summaries()
            assert target.summaries()["nightly"].last_status == "dead_lettered"
        finally:
            target.close()
    finally:
        source.close()
    assert first == (
        0,
        "copied 0 state(s), 0 dead letter(s), 2 run record(s), 1 missed-slot record(s), "
        "0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), 0 trigger key(s); "
        "skipped 0 already on the target\n",
        "",
    )
    assert again == (
        0,
        "copied 0 state(s), 0 dead letter(s), 0 run record(s), 0 missed-slot record(s), "
        "0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), 0 trigger key(s); "
        "skipped 3 already on the target\n",
        "",
    )


def _all() -> HistoryQuery:
    return HistoryQuery(limit=1000)
