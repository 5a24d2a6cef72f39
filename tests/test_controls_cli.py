"""`beatd trigger|pause|resume|backfill|audit`, and the controls in `beatd status`, `beatd
history`, `beatd dead retry` and `beatd migrate`: in-process, against the in-memory backend."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import beatd.cli.controls as cli_controls
import beatd.operations.controls as operations_controls
from beatd.backends import Backend, open_backend
from beatd.backends.base import BeatdQueue, Controls, Outgoing, StateWrite
from beatd.backends.memory import discard
from beatd.config import load_config
from beatd.controls import Trigger, TriggerResult
from beatd.errors import OutcomeUnknown
from beatd.state import EntryState
from tests.in_process import beatd, memory_broker, queued, schedules_folder

SCHEDULES = """\
entries:
  nightly:
    task: t.nightly
    cron: "30 2 * * *"
    timezone: Europe/Berlin
  tick:
    task: t.tick
    every: 10s
    args: [1]
  report-daily:
    task: t.report
    cron: "0 * * * *"
  slow-skip:
    task: t.slow
    every: 1h
    overlap: skip
  slow-buffer:
    task: t.slow
    every: 1h
    overlap: buffer_one
"""
MANUAL_ID = re.compile(r"tick@manual-[0-9a-f]{32}")


@pytest.fixture
def broker() -> Iterator[str]:
    yield from memory_broker("controls-cli")


@pytest.fixture
def schedules(tmp_path: Path) -> Path:
    return schedules_folder(tmp_path, SCHEDULES)


@pytest.fixture
def backend(broker: str) -> Iterator[Backend]:
    store = open_backend(broker)  # holds the memory store open for the test
    yield store
    store.close()


def controls(store: Backend) -> Controls:
    return store


# --- trigger


def test_trigger_publishes_one_manual_run_and_prints_its_id(
    broker: str, schedules: Path, backend: Backend
) -> None:
    code, out, err = beatd("trigger", "tick", "-s", schedules, "--broker", broker, "--by", "ann")
    assert (code, err) == (0, "")
    run_id = out.strip()
    assert MANUAL_ID.fullmatch(run_id), run_id
    (message,) = queued(backend)
    assert (message.id, message.kind, message.entry, message.args) == (
        run_id,
        "manual",
        "tick",
        (1,),
    )
    (record,) = controls(backend).audit("tick")
    assert (record.action, record.by, record.detail["run_id"]) == ("trigger", "ann", run_id)
    code, out, _ = beatd("history", "tick", "--json", "--broker", broker)
    (run,) = [json.loads(line) for line in out.splitlines()]
    assert (run["id"], run["kind"], run["audit"]) == (run_id, "manual", record.id)


def test_trigger_twice_gives_two_ids_and_a_key_gives_one_run(
    broker: str, schedules: Path, backend: Backend
) -> None:
    base = ["trigger", "tick", "-s", str(schedules), "--broker", broker]
    first, second = beatd(*base)[1].strip(), beatd(*base)[1].strip()
    assert first != second
    keyed = beatd(*base, "--idempotency-key", "deploy-42")
    again = beatd(*base, "--idempotency-key", "deploy-42")
    assert keyed == (0, "tick@manual-deploy-42\n", "")
    assert again == (
        0,
        "tick@manual-deploy-42\n",
        "duplicate: this idempotency key was already used for tick@manual-deploy-42; nothing "
        "more was published\n",
    )
    assert sorted(m.id for m in queued(backend)) == sorted([first, second, "tick@manual-deploy-42"])


def test_trigger_with_arguments_of_its_own(broker: str, schedules: Path, backend: Backend) -> None:
    code, _, err = beatd(
        "trigger", "tick", "-s", schedules, "--broker", broker,
        "--args", '[2, "x"]', "--kwargs", '{"full": true}',
    )  # fmt: skip
    assert (code, err) == (0, "")
    (message,) = queued(backend)
    assert (message.args, message.kwargs) == ((2, "x"), {"full": True})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--args", "{"], "beatd: --args: not JSON (Expecting property name enclosed in double "
                          "quotes: line 1 column 2 (char 1)): '{'"),
        (["--args", '{"a": 1}'], "beatd: --args: must be a JSON array, got '{\"a\": 1}'"),
        (["--kwargs", "[1]"], "beatd: --kwargs: must be a JSON object, got '[1]'"),
    ],
    ids=["args_not_json", "args_not_array", "kwargs_not_object"],
)  # fmt: skip
def test_trigger_refuses_bad_arguments(
    broker: str, schedules: Path, args: list[str], error: str
) -> None:
    code, out, err = beatd("trigger", "tick", "-s", schedules, "--broker", broker, *args)
    assert (code, out, err) == (2, "", error + "\n")


def test_trigger_of_an_unknown_entry_suggests_one(broker: str, schedules: Path) -> None:
    code, _, err = beatd("trigger", "tik", "-s", schedules, "--broker", broker)
    assert (code, err) == (
        2,
        "beatd: ENTRY: no entry 'tik' in the schedule files; did you mean 'tick'?\n",
    )


def test_trigger_of_a_paused_entry_is_refused_naming_the_pause_unless_forced(
    broker: str, schedules: Path, backend: Backend
) -> None:
    code, _, err = beatd(
        "pause", "tick", "--reason", "db maintenance", "--until", "2h", "--by", "bob",
        "-s", schedules, "--broker", broker,
    )  # fmt: skip
    assert (code, err) == (0, "")
    (control,) = controls(backend).load_controls(["tick"]).values()
    assert control.pause is not None and control.pause.until is not None
    at, until = (f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in (control.pause.at, control.pause.until))
    code, out, err = beatd("trigger", "tick", "-s", schedules, "--broker", broker)
    assert (code, out) == (1, "")
    assert err == (
        f"beatd: tick is paused (by bob, reason 'db maintenance', since {at}, until {until}); "
        "nothing was published: resume it with `beatd resume`, or add --force\n"
    )
    assert queued(backend) == []
    code, out, _ = beatd("trigger", "tick", "--force", "-s", schedules, "--broker", broker)
    assert code == 0 and MANUAL_ID.fullmatch(out.strip())
    assert [m.id for m in queued(backend)] == [out.strip()]


def test_trigger_of_a_busy_entry_under_skip_is_refused_naming_the_run_unless_forced(
    broker: str, schedules: Path, backend: Backend
) -> None:
    base = ["trigger", "slow-skip", "-s", str(schedules), "--broker", broker]
    code, running, _ = beatd(*base)
    assert code == 0
    assert beatd(*base) == (
        1,
        "",
        f"beatd: slow-skip is busy: run {running.strip()} has not ended, and its overlap is "
        "skip; nothing was published: wait for it, or add --force\n",
    )
    code, forced, _ = beatd(*base, "--force")
    assert code == 0
    assert [m.id for m in queued(backend)] == [running.strip(), forced.strip()]


def test_trigger_of_a_busy_entry_under_buffer_one_is_held_until_it_ends(
    broker: str, schedules: Path, backend: Backend
) -> None:
    base = ["trigger", "slow-buffer", "-s", str(schedules), "--broker", broker]
    running = beatd(*base)[1].strip()
    code, out, err = beatd(*base)
    held = out.strip()
    assert (code, err) == (
        0,
        f"held: slow-buffer is busy ({running}) under overlap: buffer_one; the run is published "
        "when that one ends\n",
    )
    assert held != running
    # the first is claimed and acked: its end publishes the held one, claimed next
    messages = queued(backend)
    assert [(m.id, m.kind) for m in messages] == [(running, "manual"), (held, "manual")]


def test_a_second_trigger_of_a_buffer_one_entry_holding_one_is_refused(
    broker: str, schedules: Path, backend: Backend
) -> None:
    base = ["trigger", "slow-buffer", "-s", str(schedules), "--broker", broker]
    beatd(*base)
    held = beatd(*base)[1].strip()
    assert beatd(*base) == (
        1,
        "",
        f"beatd: slow-buffer already holds manual run {held}, to publish when its busy run ends "
        "(overlap: buffer_one keeps one); nothing was published: wait for it to go out, or add "
        "--force to publish now beside the busy run\n",
    )
    assert controls(backend).load_controls()["slow-buffer"].held.run_id == held


class LosesTheFirstReply:
    """The backend's controls, except that the first trigger is applied and its reply lost."""

    def __init__(self, inner: Controls) -> None:
        self.inner = inner
        self.requests: list[Trigger] = []

    def trigger(self, request: Trigger) -> TriggerResult:
        self.requests.append(request)
        result = self.inner.trigger(request)
        if len(self.requests) == 1:
            raise OutcomeUnknown("the reply to the trigger was lost (injected)")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_trigger_whose_reply_is_lost_is_sent_again_and_runs_once(
    broker: str, schedules: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrappers: list[LosesTheFirstReply] = []

    def lossy(store: Backend) -> Any:
        wrappers.append(LosesTheFirstReply(controls(store)))
        return wrappers[-1]

    monkeypatch.setattr(cli_controls, "controls_of", lossy)
    monkeypatch.setattr(operations_controls.time, "sleep", lambda seconds: None)
    code, out, err = beatd("trigger", "tick", "-s", schedules, "--broker", broker)
    assert (code, err) == (0, "")
    (wrapper,) = wrappers
    assert len(wrapper.requests) == 2
    assert wrapper.requests[0] is wrapper.requests[1]  # the same request id, sent again
    assert [m.id for m in queued(backend)] == [out.strip()]


# --- pause and resume


def test_a_naive_until_is_refused(broker: str, schedules: Path) -> None:
    code, out, err = beatd(
        "pause", "tick", "--reason", "x", "--until", "2026-12-05T07:00",
        "-s", schedules, "--broker", broker,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        "beatd: --until: '2026-12-05T07:00' has no offset, so it could mean any zone: add one "
        "(Z for UTC, or such as +01:00)\n"
    )


def test_pause_all_or_by_glob_says_later_entries_are_not_paused_and_resume_lifts(
    broker: str, schedules: Path, backend: Backend
) -> None:
    code, out, err = beatd(
        "pause", "--match", "report-*", "--reason", "quarter close",
        "--until", "2030-01-01T00:00:00+01:00", "--by", "cy", "-s", schedules, "--broker", broker,
    )  # fmt: skip
    assert (code, err) == (0, "")
    pause = controls(backend).load_controls()["report-daily"].pause
    assert pause is not None and pause.until == datetime(2029, 12, 31, 23, tzinfo=UTC)
    assert out == (
        f"paused report-daily: by cy, reason 'quarter close', since "
        f"{pause.at:%Y-%m-%dT%H:%M:%SZ}, until 2029-12-31T23:00:00Z\n"
        "entries added to the schedule files later are not paused\n"
    )
    code, out, _ = beatd(
        "pause", "--all", "--reason", "freeze", "-s", schedules, "--broker", broker
    )
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "paused nightly",
        "paused report-daily",
        "paused slow-buffer",
        "paused slow-skip",
        "paused tick",
        "entries added to the schedule files later are not paused",
    ]
    assert "until resumed" in out.splitlines()[0]
    code, out, _ = beatd("resume", "tick", "nightly", "--by", "cy", "--broker", broker)
    assert (code, out) == (0, "resumed tick\nresumed nightly\n")
    assert set(controls(backend).load_controls()) >= {"report-daily"}
    assert beatd("resume", "tick", "--broker", broker)[1] == "tick was not paused\n"
    assert beatd("resume", "--all", "--broker", broker)[1] == (
        "resumed report-daily\nresumed slow-buffer\nresumed slow-skip\n"
    )
    actions = [(r.action, r.entry) for r in controls(backend).audit(limit=20)]
    # the last command's three resumes come first (in one step: one instant, any order)
    assert set(actions[:3]) == {("resume", e) for e in ("report-daily", "slow-buffer", "slow-skip")}
    assert actions.count(("pause", "report-daily")) == 2


def test_resume_of_a_lapsed_pause_says_it_was_no_longer_paused(
    broker: str, backend: Backend
) -> None:
    """Found with real processes: `beatd resume --all` printed `resumed tick` for a pause whose
    --until had passed, as if tick had been paused till then."""
    import time

    from beatd.backends.memory import MemoryBackend

    an_hour_ago = MemoryBackend(
        broker.removeprefix("memory://"), wall_clock=lambda: time.time() - 3600
    )
    [lapsed] = an_hour_ago.pause(["tick"], "was", timedelta(minutes=10), "cy")
    backend.pause(["nightly"], "is", timedelta(hours=1), "cy")
    until = lapsed.after["pause"]["until"] if lapsed.after and lapsed.after["pause"] else ""
    ended = datetime.fromisoformat(until).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, err = beatd("resume", "--all", "--by", "cy", "--broker", broker)
    assert (code, err) == (0, "")
    assert out == (
        "resumed nightly\n"
        f"tick was no longer paused: its pause ended at {ended}; the lapsed pause was cleared\n"
    )
    left = controls(backend).load_controls()
    assert [c.pause for c in left.values()] == [None, None]
    # kept as lifted until a leader's horizon passes them: no leader ran while they were in force
    assert sorted((name, [p.reason for p in c.lifted]) for name, c in left.items()) == [
        ("nightly", ["is"]),
        ("tick", ["was"]),
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "beatd: ENTRY/--all/--match: give entry names, --all or --match GLOB: exactly one"),
        (["tick", "--all"], "beatd: ENTRY/--all/--match: give entry names, --all or --match "
                            "GLOB: exactly one"),
        (["--match", "x*"], "beatd: --match: no entry matches 'x*'"),
        (["tock"], "beatd: ENTRY: no entry 'tock'; did you mean 'tick'?"),
    ],
    ids=["none", "two", "no_match", "unknown"],
)  # fmt: skip
def test_pause_refuses_an_unclear_selection(
    broker: str, schedules: Path, args: list[str], error: str
) -> None:
    code, out, err = beatd("pause", *args, "--reason", "r", "-s", schedules, "--broker", broker)
    assert (code, out, err) == (2, "", error + "\n")


def test_status_shows_who_paused_why_and_until(
    broker: str, schedules: Path, backend: Backend
) -> None:
    beatd("pause", "nightly", "--reason", "db", "--by", "dee", "-s", schedules, "--broker", broker)
    code, out, _ = beatd("status", "-s", schedules, "--broker", broker)
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith("paused")]
    assert re.fullmatch(
        r"paused   nightly: by dee, reason 'db', since \S+Z, until resumed", line
    ), line
    code, out, _ = beatd("status", "-s", schedules, "--broker", broker, "--json")
    rows = {row["entry"]: row for row in json.loads(out)["entries"]}
    assert rows["nightly"]["paused"]["by"] == "dee" and rows["nightly"]["paused"]["until"] is None
    assert rows["tick"]["paused"] is None and rows["tick"]["busy"] is None


# --- backfill


def arrange_horizon(
    store: Backend, schedules: Path, horizon: datetime, name: str = "report-daily"
) -> None:
    """Entry `name` accounted up to `horizon`, its last slot published by the scheduler."""
    entry = load_config([str(schedules)]).entries[name]
    lease = store.acquire_lease("node-a", 30)
    assert lease is not None
    state = EntryState(name, horizon, horizon, entry.identity)
    body = json.dumps({"task": entry.task})
    run = Outgoing(
        name, f"{name}@{horizon:%Y-%m-%dT%H:%M:%SZ}", BeatdQueue("default"),
        body, horizon, horizon,
    )  # fmt: skip
    assert store.commit(lease, [StateWrite(state, None)], [run]) == set()
    store.release_lease(lease)
    delivery = store.claim(["default"], "test", 30)  # the scheduler's run, done
    assert delivery is not None
    store.ack(delivery)


def test_backfill_publishes_what_is_not_there_once(
    broker: str, schedules: Path, backend: Backend
) -> None:
    horizon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    arrange_horizon(backend, schedules, horizon)
    start = horizon - timedelta(hours=2)
    ids = [f"report-daily@{start + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ}" for h in range(3)]
    base = [
        "backfill", "report-daily", "--from", f"{start:%Y-%m-%dT%H:%M:%SZ}",
        "--to", f"{horizon + timedelta(seconds=1):%Y-%m-%dT%H:%M:%SZ}",
        "-s", str(schedules), "--broker", broker,
    ]  # fmt: skip
    code, out, err = beatd(*base, "--dry-run")
    assert (code, err) == (0, "")
    assert out == "\n".join([*ids, "3 slot(s) would be published unless already there\n"])
    assert queued(backend) == []
    code, out, err = beatd(*base, "--by", "eve", "--rate", "100/s")
    assert (code, err) == (0, "")
    assert out == (
        f"published  {ids[0]}\npublished  {ids[1]}\nalready there  {ids[2]}\n"
        "published 2, already there 1\n"
    )
    messages = queued(backend)
    assert [(m.id, m.kind) for m in messages] == [(ids[0], "backfill"), (ids[1], "backfill")]
    again = beatd(*base)
    assert again[1].endswith("published 0, already there 3\n")
    assert queued(backend) == []
    code, out, _ = beatd("history", "report-daily", "--broker", broker)
    details = {line.split()[1]: line.split()[-1] for line in out.splitlines()[1:]}
    assert details == {
        f"{start:%Y-%m-%dT%H:%M:%SZ}": "backfill",
        f"{start + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}": "backfill",
        f"{horizon:%Y-%m-%dT%H:%M:%SZ}": "1",  # the scheduler's: its epoch ends the line
    }
    record = controls(backend).audit("report-daily", limit=10)[-1]
    assert (record.action, record.by, record.detail["slots"]) == ("backfill", "eve", 3)


def test_backfill_past_the_horizon_or_the_retention_is_refused(
    broker: str, schedules: Path, backend: Backend
) -> None:
    horizon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    arrange_horizon(backend, schedules, horizon)
    text = "%Y-%m-%dT%H:%M:%SZ"
    base = ["backfill", "report-daily", "-s", str(schedules), "--broker", broker]
    late = horizon + timedelta(hours=1)
    code, out, err = beatd(*base, "--from", f"{horizon:{text}}", "--to", f"{late:{text}}")
    assert (code, out) == (0, "already there  report-daily@" + f"{horizon:{text}}\n"
                           "published 0, already there 1\n")  # fmt: skip
    to = late + timedelta(seconds=1)
    code, out, err = beatd(*base, "--from", f"{horizon:{text}}", "--to", f"{to:{text}}")
    assert (code, out) == (2, "")
    assert err == (
        f"beatd: --to: {late:{text}} is past report-daily's horizon {horizon:{text}}: later "
        "slots are the scheduler's to publish; end the range at or before it\n"
    )
    old = horizon - timedelta(days=2)
    code, out, err = beatd(
        *base, "--from", f"{old:{text}}", "--to", f"{horizon:{text}}", "--history-max-age", "1d"
    )
    assert (code, out) == (2, "")
    assert err.startswith(f"beatd: --from: {old:{text}} is older than the run history's retention")
    code, _, err = beatd(
        *base, "--from", f"{old:{text}}", "--to", f"{horizon:{text}}", "--max", "5"
    )
    assert (code, err) == (
        2,
        f"beatd: --max: [{old:{text}}, {horizon:{text}}) holds more than 5 slots of "
        "report-daily; narrow the range or raise --max\n",
    )


def test_backfill_reads_a_time_without_offset_in_the_entrys_zone(
    broker: str, schedules: Path, backend: Backend
) -> None:
    base = ["backfill", "nightly", "-s", str(schedules), "--broker", broker, "--dry-run"]
    days = [datetime(2030, 3, 1, 1, 30, tzinfo=UTC) + timedelta(days=d) for d in range(3)]
    first, second = (f"{d:%Y-%m-%d}T00:00" for d in days[:2])
    # no horizon yet: every slot is the scheduler's
    assert beatd(*base, "--from", first, "--to", second) == (
        2,
        "",
        "beatd: --to: nightly has no persisted horizon yet (no scheduler has accounted for any "
        "of its slots): every slot is still the scheduler's\n",
    )
    arrange_horizon(backend, schedules, days[2], "nightly")
    code, out, err = beatd(*base, "--from", first, "--to", second, "--history-max-age", "36500d")
    assert (code, err) == (0, "")
    # 02:30 in Berlin is 01:30 UTC in March (before the clocks go forward)
    assert out == (
        "nightly@2030-03-01T01:30:00Z\n1 slot(s) would be published unless already there\n"
    )


# --- audit, dead retry, migrate


def test_audit_lists_every_action_newest_first(
    broker: str, schedules: Path, backend: Backend
) -> None:
    beatd("pause", "tick", "--reason", "r", "--by", "fay", "-s", schedules, "--broker", broker)
    beatd("trigger", "tick", "--force", "--by", "fay", "-s", schedules, "--broker", broker)
    beatd("resume", "tick", "--by", "fay", "--broker", broker)
    code, out, _ = beatd("audit", "tick", "--broker", broker)
    assert code == 0
    lines = out.splitlines()
    assert [line.split("  ")[1:3] for line in lines[:3]] == [
        ["fay", "resume tick"],
        ["fay", "trigger tick"],
        ["fay", "pause tick"],
    ]
    assert lines[-1] == "3 action(s)"
    code, out, _ = beatd("audit", "--json", "-n", "1", "--broker", broker)
    (record,) = json.loads(out)
    assert (record["action"], record["entry"], record["by"]) == ("resume", "tick", "fay")
    assert record["before"]["pause"]["reason"] == "r" and record["after"] == {"pause": None}


def test_dead_retry_records_who_requeued(broker: str, backend: Backend) -> None:
    lease = backend.acquire_lease("node-a", 30)
    assert lease is not None
    run = Outgoing("tick", "tick@1", BeatdQueue("default"), json.dumps({"task": "t.tick"}))
    backend.commit(lease, [], [run])
    delivery = backend.claim(["default"], "w", 30)
    assert delivery is not None
    backend.dead_letter(delivery, "failed for good")
    code, out, _ = beatd("dead", "retry", "tick@1", "--by", "gus", "--broker", broker)
    assert (code, out) == (0, "requeued 1 dead letter(s)\n")
    (record,) = controls(backend).audit()
    assert (record.action, record.entry, record.by, dict(record.detail)) == (
        "requeue_dead",
        "tick",
        "gus",
        {"run_id": "tick@1", "requeued": 1},
    )


def test_migrate_carries_pauses_audit_and_keys(
    broker: str, schedules: Path, backend: Backend
) -> None:
    beatd("pause", "tick", "--reason", "r", "-s", schedules, "--broker", broker)
    beatd("trigger", "nightly", "--idempotency-key", "k", "-s", schedules, "--broker", broker)
    target = f"memory://controls-cli-target-{uuid.uuid4().hex}"
    kept = open_backend(target)
    try:
        queued(backend)  # the source's queue must be empty to migrate
        code, out, err = beatd("migrate", "--from", broker, "--to", target)
        assert (code, err) == (0, ""), err
        assert (
            "1 pause(s), 0 busy mark(s), 0 held run(s), 2 audit record(s), 2 trigger key(s)" in out
        )
        code, out, _ = beatd("migrate", "--from", broker, "--to", target)
        assert (
            "0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), 0 trigger key(s)" in out
        )
        assert controls(kept).load_controls()["tick"].pause is not None
        again = beatd("trigger", "nightly", "--idempotency-key", "k", "-s", schedules,
                      "--broker", target)  # fmt: skip
        assert again[1] == "nightly@manual-k\n" and again[2].startswith("duplicate:")
    finally:
        kept.close()
        discard(target.removeprefix("memory://"))


def test_status_does_not_show_a_lapsed_pause_as_paused(schedules: Path, tmp_path: Path) -> None:
    """Found with real processes on SQLite and Redis: after `--until` passed (and the leader
    published the entry's slots again) `beatd status` kept printing `paused   tick: ...` and its
    JSON kept `paused` set."""
    import time

    broker = f"sqlite:///{tmp_path / 'b.db'}"
    code, _, err = beatd(
        "pause", "tick", "--reason", "short", "--until", "1s", "--by", "dee",
        "-s", schedules, "--broker", broker,
    )  # fmt: skip
    assert code == 0, err
    time.sleep(1.5)
    code, out, _ = beatd("status", "-s", schedules, "--broker", broker, "--json")
    rows = {row["entry"]: row for row in json.loads(out)["entries"]}
    assert rows["tick"]["paused"] is None


def test_pause_until_a_time_already_past_is_refused(broker: str, schedules: Path) -> None:
    """Found on SQLite: `--until 2026-12-01T06:00Z` four days ago paused nothing yet printed
    `paused tick: ... until 2026-12-01T06:00:00Z`, exit 0 (a mistyped month looks like a pause)."""
    code, out, err = beatd(
        "pause", "tick", "--reason", "x", "--until", "2000-01-01T06:00:00Z",
        "-s", schedules, "--broker", broker,
    )  # fmt: skip
    assert code == 2, out
    assert err.startswith("beatd: --until:")


def test_status_does_not_call_a_paused_entry_overdue(
    broker: str, schedules: Path, backend: Backend
) -> None:
    """Found on SQLite: while `tick` (every 10s here) was paused, `beatd status` printed its NEXT
    DUE as `(overdue 8 s)`, growing for the whole pause, as if the scheduler were stuck."""
    now = datetime.now(UTC).replace(microsecond=0)
    arrange_horizon(backend, schedules, now - timedelta(seconds=60), name="tick")
    code, _, err = beatd("pause", "tick", "--reason", "x", "-s", schedules, "--broker", broker)
    assert code == 0, err
    code, out, _ = beatd("status", "-s", schedules, "--broker", broker, "--json")
    rows = {row["entry"]: row for row in json.loads(out)["entries"]}
    assert rows["tick"]["paused"] is not None
    assert not rows["tick"]["overdue_seconds"]


# --- a reader that goes away (`beatd history | head`)


@pytest.mark.parametrize("command", [["audit"], ["history"], ["dead", "list"]])
def test_a_read_command_whose_reader_went_away_exits_141_quietly(
    tmp_path: Path, schedules: Path, command: list[str]
) -> None:
    """A real pipe whose reading end is closed before the command writes: the conventional
    status of a tool stopped by a closed pipe (128 + SIGPIPE), and nothing on stderr."""
    import subprocess
    import sys

    broker = f"sqlite:///{tmp_path / 'b.db'}"
    for request in ("r1", "r2"):
        assert (
            beatd("trigger", "tick", "-s", schedules, "--by", request, "--broker", broker)[0] == 0
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "beatd", *command, "--broker", broker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `head` does once it has its lines
    status = process.wait(timeout=60)
    assert (status, process.stderr.read()) == (141, b"")


# --- the README's example


README = Path(__file__).resolve().parents[1] / "README.md"
README_SCHEDULES = """\
entries:
  nightly-export:
    task: exports.nightly
    cron: "30 1 * * *"
  hourly-sync:
    task: sync.hourly
    cron: "0 * * * *"
"""
README_HORIZON = datetime(2026, 12, 5, 2, tzinfo=UTC)  # hourly-sync published up to then
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)?")
WITH_SCHEDULES = {"trigger", "pause", "backfill"}


def readme_session() -> list[tuple[str, list[str]]]:
    """The commands of the README's steering example, each with the lines it shows."""
    found = re.search(r"\n## Steering it.*?```\n(.*?)```", README.read_text(), flags=re.S)
    assert found is not None
    session: list[tuple[str, list[str]]] = []
    for line in found[1].splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        else:
            session[-1][1].append(line)
    return session


def test_the_readme_steering_example_shows_what_its_commands_print(
    broker: str, tmp_path: Path, backend: Backend
) -> None:
    """Every command of the example run as shown (its times moved to today), every line as
    printed but for the times."""
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(README_SCHEDULES)
    horizon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    arrange_horizon(backend, folder, horizon, "hourly-sync")

    def today(arg: str) -> str:
        if not TIME.fullmatch(arg):
            return arg
        moved = datetime.fromisoformat(arg).replace(tzinfo=UTC) + (horizon - README_HORIZON)
        return f"{moved:%Y-%m-%dT%H:%M}"

    session = readme_session()
    assert [command.split()[1] for command, _ in session] == [
        "trigger", "pause", "trigger", "resume", "backfill", "backfill", "audit",
    ]  # fmt: skip
    for command, shown in session:
        command, _, head = command.partition(" | head -")
        argv = [today(arg) for arg in shlex.split(command)[1:]]
        if argv[0] in WITH_SCHEDULES:
            argv += ["-s", str(folder)]
        code, out, err = beatd(*argv, "--broker", broker)
        printed = (out + err).splitlines()[: int(head) if head else None]
        exit_shown = re.fullmatch(r"\(exit (\d)\)", shown[-1]) if shown else None
        expected = shown[:-1] if exit_shown else shown
        assert code == (int(exit_shown[1]) if exit_shown else 0), command
        assert [TIME.sub("TIME", line) for line in printed] == [
            TIME.sub("TIME", line) for line in expected
        ], command
