"""Review of issue 16 (operator controls): defects found, each a strict xfail until fixed."""

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
from beatd.backends.memory import MemoryBackend, discard
from beatd.cli.controls import controls_of
from beatd.clock import FakeClock
from beatd.config import load_config
from beatd.config.model import Entry, MissedPolicy
from beatd.controls import Busy, EntryControl, Overlap
from beatd.history import HistoryQuery, MissedSlots, Retention, RunKind
from beatd.message import run_id
from beatd.operations.backfill import BackfillRange, plan_backfill, send
from beatd.operations.controls import BadRequest
from beatd.publisher import encode_run
from beatd.scheduler import run_for
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.in_process import (
    T0,
    beatd,
    memory_backend,
    memory_broker,
    queued,
    scheduler,
    schedules_folder,
)
from tests.test_controls_cli import readme_session

M = timedelta(minutes=1)
NAME = "review16"


def every_minute(name: str = "tick", **kw: Any) -> Entry:
    return Entry(name=name, task="t.task", schedule=IntervalSchedule(M), **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend(NAME, clock)


def test_a_resumed_entry_is_not_paused_again_by_the_next_leader(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(pause_after_failures=2)
    first = scheduler(backend, clock, entry)
    for _ in range(2):
        run_for(first, 65)
        delivery = backend.claim(["default"], "w1", 3600)
        assert delivery is not None
        backend.dead_letter(delivery, "boom")
    run_for(first, 60)
    assert backend.load_controls(["tick"])["tick"].pause is not None
    backend.resume(["tick"], "ann@ops")  # the operator fixed the cause and resumed
    first.shutdown()
    second = scheduler(backend, clock, entry, node="b")
    run_for(second, 60)  # no run has failed since the resume
    assert [c.pause for c in backend.load_controls(["tick"]).values()] in ([], [None])
    assert [r.action for r in backend.audit("tick")] == ["resume", "pause"]


# --- the command line, in-process against the in-memory backend

SCHEDULES = """\
entries:
  report-hourly:
    task: t.report
    cron: "0 * * * *"
  slow-skip:
    task: t.slow
    cron: "0 * * * *"
    overlap: skip
  slow-buffer:
    task: t.slow
    cron: "0 * * * *"
    overlap: buffer_one
"""
SLOT = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture
def broker() -> Iterator[str]:
    yield from memory_broker("review16-cli")


@pytest.fixture
def schedules(tmp_path: Path) -> Path:
    return schedules_folder(tmp_path, SCHEDULES)


@pytest.fixture
def store(broker: str) -> Iterator[Backend]:
    opened = open_backend(broker)  # holds the memory store open for the test
    yield opened
    opened.close()


def queued_ids(store: Backend) -> list[str]:
    return [message.id for message in queued(store)]


def publish_as_scheduler(store: Backend, schedules: Path, name: str, slots: list[datetime]) -> None:
    """The scheduler published (and a worker ran) each of `slots` of entry `name`."""
    entry = load_config([str(schedules)]).entries[name]
    lease = store.acquire_lease("node-a", 30)
    assert lease is not None
    previous = None
    for slot in slots:
        state = EntryState(name, slot, slot, entry.identity)
        run = Outgoing(name, run_id(name, slot), BeatdQueue("default"), "{}", slot, slot)
        assert store.commit(lease, [StateWrite(state, previous)], [run]) == set()
        previous = slot
        delivery = store.claim(["default"], "test", 30)
        assert delivery is not None
        store.ack(delivery)
    store.release_lease(lease)


def hours_back(count: int) -> list[datetime]:
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return [top - timedelta(hours=h) for h in reversed(range(count))]


def test_backfill_never_republishes_slots_whose_records_the_count_cap_trimmed(
    broker: str, schedules: Path, store: Backend
) -> None:
    slots = hours_back(3)
    publish_as_scheduler(store, schedules, "report-hourly", slots)
    store.trim(Retention(per_entry=1))  # `beatd run --history-keep 1`: the newest record stays
    code, _, _ = beatd(
        "backfill", "report-hourly", "--from", f"{slots[0]:{SLOT}}",
        "--to", f"{slots[-1] + timedelta(seconds=1):{SLOT}}",
        "-s", schedules, "--broker", broker, "--by", "rev",
    )  # fmt: skip
    assert code in (0, 2)  # published nothing more, or refused naming the bound
    assert queued_ids(store) == []  # every slot had been published and run already


def test_backfill_of_a_busy_skip_entry_publishes_nothing_beside_the_busy_run(
    broker: str, schedules: Path, store: Backend
) -> None:
    slots = hours_back(3)
    publish_as_scheduler(store, schedules, "slow-skip", slots[-1:])
    code, out, _ = beatd("trigger", "slow-skip", "-s", schedules, "--broker", broker)
    assert code == 0  # its manual run is queued: the entry is busy until it ends
    running = out.strip()
    code, _, _ = beatd(
        "backfill", "slow-skip", "--from", f"{slots[0]:{SLOT}}", "--to", f"{slots[-1]:{SLOT}}",
        "-s", schedules, "--broker", broker, "--by", "rev",
    )  # fmt: skip
    assert code == 1  # refused as a trigger is: the entry is busy
    assert queued_ids(store) == [running]


@pytest.mark.parametrize("key", ["", "two words", "line\nbreak"], ids=["empty", "space", "newline"])
def test_an_idempotency_key_that_cannot_be_part_of_a_run_id_is_refused(
    broker: str, schedules: Path, store: Backend, key: str
) -> None:
    code, out, err = beatd(
        "trigger", "report-hourly", "--idempotency-key", key, "-s", schedules, "--broker", broker
    )
    assert (code, out) == (2, "")
    assert err.startswith("beatd: --idempotency-key: ")
    assert queued_ids(store) == []


def test_the_history_of_paused_slots_says_who_paused_why_and_until_when(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat = scheduler(backend, clock, every_minute())
    backend.pause(["tick"], "db migration OPS-12", T0 + timedelta(minutes=2, seconds=30), "ann@ops")
    run_for(beat, 190)
    code, out, _ = beatd("history", "tick", "--json", "--broker", f"memory://{NAME}")
    assert code == 0
    (line,) = [line for line in out.splitlines() if '"paused"' in line]
    assert "ann@ops" in line
    assert "db migration OPS-12" in line
    assert "2026-03-01T12:02:30" in line


def test_migrate_counts_pauses_apart_from_other_controls(
    broker: str, schedules: Path, store: Backend
) -> None:
    beatd(
        "pause", "report-hourly", "slow-skip", "--reason", "r", "-s", schedules, "--broker", broker
    )
    target = f"memory://review16-target-{uuid.uuid4().hex}"
    kept = open_backend(target)
    try:
        code, out, err = beatd("migrate", "--from", broker, "--to", target)
        assert (code, err) == (0, "")
        assert re.search(r"\b2 pauses?\b", out), out
    finally:
        kept.close()
        discard(target.removeprefix("memory://"))


def test_a_held_manual_run_does_not_vanish_under_a_later_pause(
    broker: str, schedules: Path, store: Backend
) -> None:
    base = ["-s", str(schedules), "--broker", broker]
    assert beatd("trigger", "slow-buffer", *base)[0] == 0  # published: the entry is busy
    code, out, _ = beatd("trigger", "slow-buffer", *base)
    assert code == 0
    held = out.strip()
    assert store.load_controls(["slow-buffer"])["slow-buffer"].held is not None
    assert beatd("pause", "slow-buffer", "--reason", "db migration", *base)[0] == 0
    busy = store.claim(["default"], "w", 30)
    assert busy is not None
    store.ack(busy)  # the busy run ends, under the pause
    control = store.load_controls(["slow-buffer"])["slow-buffer"]
    assert store.run(held) is not None or control.held is not None


def test_a_requeue_of_all_dead_letters_shows_in_each_entrys_audit(
    broker: str, schedules: Path, store: Backend
) -> None:
    base = ["-s", str(schedules), "--broker", broker]
    code, out, _ = beatd("trigger", "report-hourly", *base)
    assert code == 0
    delivery = store.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == out.strip()
    store.dead_letter(delivery, "boom")
    assert beatd("dead", "retry", "--all", "--by", "rev", "--broker", broker)[0] == 0
    code, out, _ = beatd("audit", "report-hourly", "--json", "--broker", broker)
    assert code == 0
    actions = [record["action"] for record in json.loads(out)]
    assert actions == ["requeue_dead", "trigger"]


def paused_slots(first: int, last: int, count: int) -> MissedSlots:
    return MissedSlots("tick", "paused", T0 + first * M, T0 + last * M, count)


def published_slots(backend: MemoryBackend) -> list[str]:
    runs = backend.runs(HistoryQuery(entry="tick"))
    return sorted(r.slot.strftime("%H:%M") for r in runs if r.slot is not None)


def test_slots_paused_and_resumed_while_no_leader_ran_stay_missed_paused(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(missed=MissedPolicy.CATCH_UP)
    first = scheduler(backend, clock, entry)
    run_for(first, 70)  # 12:01 published
    first.shutdown()  # nobody leads from here
    backend.pause(["tick"], "incident", None, "ann@ops")  # 12:01:10
    clock.advance(180)
    backend.resume(["tick"], "ann@ops")  # 12:04:10: 12:02, 12:03 and 12:04 were paused
    clock.advance(30)
    second = scheduler(backend, clock, entry, node="b")
    run_for(second, 60)  # 12:04:40 to 12:05:40
    assert published_slots(backend) == ["12:01", "12:05"]
    assert sorted(m.slots for m in backend.missed(entry="tick")) == [paused_slots(2, 4, 3)]


def test_a_pause_replaced_while_no_leader_ran_still_covers_the_first_pauses_slots(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(missed=MissedPolicy.CATCH_UP)
    first = scheduler(backend, clock, entry)
    run_for(first, 70)  # 12:01 published
    first.shutdown()
    backend.pause(["tick"], "incident", None, "ann@ops")  # 12:01:10
    clock.advance(180)
    backend.pause(["tick"], "incident, longer", None, "bob@ops")  # 12:04:10, a new reason
    clock.advance(30)
    second = scheduler(backend, clock, entry, node="b")
    run_for(second, 60)  # to 12:05:40: the first pause's slots are decided at adoption
    assert published_slots(backend) == ["12:01"]
    assert sorted(m.slots for m in backend.missed(entry="tick")) == [paused_slots(2, 4, 3)]
    backend.resume(["tick"], "bob@ops")  # 12:05:40: the second pause's slot 12:05 ends with it
    run_for(second, 60)  # to 12:06:40
    assert published_slots(backend) == ["12:01", "12:06"]
    missed = sorted(m.slots for m in backend.missed(entry="tick"))
    assert missed == [paused_slots(2, 4, 3), paused_slots(5, 5, 1)]


def test_status_never_shows_a_slot_the_pause_covers_as_next_due(
    broker: str, schedules: Path, store: Backend
) -> None:
    this_hour = hours_back(1)[0] + timedelta(hours=1)
    publish_as_scheduler(store, schedules, "report-hourly", [this_hour])
    base = ["-s", str(schedules), "--broker", broker]
    assert beatd("pause", "report-hourly", "--reason", "r", "--until", "3h", *base)[0] == 0
    code, out, _ = beatd("status", "--json", *base)
    assert code == 0
    (row,) = [r for r in json.loads(out)["entries"] if r["entry"] == "report-hourly"]
    pause = row["paused"]
    assert pause is not None
    next_due = datetime.fromisoformat(row["next_due"])
    assert (
        not datetime.fromisoformat(pause["at"]) <= next_due < datetime.fromisoformat(pause["until"])
    )


def test_a_backfilled_held_slot_is_not_published_again_when_the_busy_run_ends(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    entry = every_minute(overlap=Overlap.BUFFER_ONE)
    beat = scheduler(backend, clock, entry)
    beat.steering.interval = 3600.0
    run_for(beat, 65)  # 12:01 published
    busy = backend.claim(["default"], "w1", 3600)
    assert busy is not None
    run_for(beat, 60)  # 12:02 held behind it
    held = backend.load_controls(["tick"])["tick"].held
    assert held is not None and held.slot == T0 + 2 * M
    slot = held.slot
    assert backend.load_states()["tick"].last_slot == slot  # so `beatd backfill` takes it
    run = encode_run(entry, run_id("tick", slot), slot, clock.now(), RunKind.BACKFILL, "h")
    assert backend.backfill("tick", [run], "rev", {})[0] == [run.id]
    backend.ack(busy)  # the busy run ends
    ids = []
    while (delivery := backend.claim(["default"], "w1", 3600)) is not None:
        ids.append(delivery.id)
        backend.ack(delivery)
    assert ids == [run.id]


def test_backfill_beside_a_scheduler_without_history_republishes_nothing(
    broker: str, schedules: Path, store: Backend
) -> None:
    slots = hours_back(3)
    leader_side = open_backend(broker, history=False)  # `beatd run --no-history`
    try:
        publish_as_scheduler(leader_side, schedules, "report-hourly", slots)
    finally:
        leader_side.close()
    code, _, _ = beatd(
        "backfill", "report-hourly", "--from", f"{slots[0]:{SLOT}}",
        "--to", f"{slots[-1] + timedelta(seconds=1):{SLOT}}",
        "-s", schedules, "--broker", broker, "--by", "rev",
    )  # fmt: skip
    assert code in (0, 2)  # published nothing, or refused: the history cannot tell
    assert queued_ids(store) == []


def test_pause_after_failures_pauses_again_after_n_more_failures_since_the_resume(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat = scheduler(backend, clock, every_minute(pause_after_failures=2))
    for _ in range(2):
        run_for(beat, 65)
        delivery = backend.claim(["default"], "w1", 3600)
        assert delivery is not None
        backend.dead_letter(delivery, "boom")
    run_for(beat, 60)
    backend.resume(["tick"], "ann@ops")  # resumed: the fix did not work
    failed_since = 0
    for _ in range(2):
        run_for(beat, 60)
        while (delivery := backend.claim(["default"], "w1", 3600)) is not None:
            backend.dead_letter(delivery, "boom")
            failed_since += 1
    assert failed_since >= 2
    run_for(beat, 60)
    control = backend.load_controls(["tick"]).get("tick")
    assert control is not None and control.pause is not None


def test_the_readme_steering_example_shows_each_control_command() -> None:
    shown = {command.split()[1] for command, _ in readme_session()}
    assert {"trigger", "pause", "resume", "backfill", "audit"} <= shown


def test_migrate_does_not_keep_a_busy_mark_for_a_run_it_turned_into_a_dead_letter(
    schedules: Path, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    code, out, _ = beatd("trigger", "slow-skip", "-s", schedules, "--broker", source)
    assert code == 0  # queued, so the entry is busy on the source
    target = f"memory://review16-target-{uuid.uuid4().hex}"
    kept = open_backend(target)
    try:
        code, _, err = beatd(
            "migrate", "--from", source, "--to", target, "--queued-as-dead-letters"
        )
        assert (code, err) == (0, "")
        assert [letter.id for letter in kept.dead_letters()] == [out.strip()]
        control = kept.load_controls(["slow-skip"]).get("slow-skip")
        assert control is None or control.busy is None
    finally:
        kept.close()
        discard(target.removeprefix("memory://"))


def test_migrate_copies_the_run_held_behind_a_dead_lettered_run_as_a_dead_letter(
    schedules: Path, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    base = ["-s", str(schedules), "--broker", source]
    busy = beatd("trigger", "slow-buffer", *base)[1].strip()
    held = beatd("trigger", "slow-buffer", *base)[1].strip()  # held behind the queued one
    target = f"memory://review16-target-{uuid.uuid4().hex}"
    kept = open_backend(target)
    try:
        code, out, err = beatd(
            "migrate", "--from", source, "--to", target, "--queued-as-dead-letters"
        )
        assert (code, err) == (0, "")
        assert "0 busy mark(s), 0 held run(s)" in out
        letters = {letter.id: letter.reason for letter in kept.dead_letters()}
        assert letters[held] == (
            f"held in {source} behind run {busy}, which was queued when it was migrated (copied "
            "as a dead letter); run it with `beatd dead retry` after that one"
        )
        assert sorted(letters) == sorted([busy, held])
        assert kept.load_controls(["slow-buffer"]) == {}
    finally:
        kept.close()
        discard(target.removeprefix("memory://"))


def test_a_trigger_over_a_stale_busy_mark_says_it_dropped_it(
    broker: str, schedules: Path, store: Backend
) -> None:
    stale = "slow-skip@2026-01-01T00:00:00Z"
    since = datetime.now(UTC) - timedelta(days=2)  # past the default 24 h overlap_timeout
    assert store.import_controls({"slow-skip": EntryControl(busy=Busy(stale, since))}) == 1
    code, out, err = beatd("trigger", "slow-skip", "-s", schedules, "--broker", broker)
    assert code == 0
    assert queued_ids(store) == [out.strip()]
    assert stale in err


def test_backfill_names_the_trimmed_bound_the_missing_history_and_the_busy_run(
    broker: str, schedules: Path, store: Backend
) -> None:
    slots = hours_back(3)
    text = [f"{slot:{SLOT}}" for slot in slots]
    base = ["-s", schedules, "--broker", broker, "--by", "rev"]
    span = ["--from", text[0], "--to", f"{slots[-1] + timedelta(seconds=1):{SLOT}}"]
    leader_side = open_backend(broker, history=False)  # `beatd run --no-history`
    publish_as_scheduler(leader_side, schedules, "report-hourly", slots)
    leader_side.close()
    assert beatd("backfill", "report-hourly", *span, *base) == (
        2,
        "",
        "beatd: --from: the run history holds no record of a scheduled run of report-hourly: if "
        "its scheduler runs with --no-history, what it published cannot be checked, and every "
        "slot would go out again; run the scheduler with the history on, then backfill\n",
    )
    publish_as_scheduler(store, schedules, "slow-skip", slots)
    store.trim(Retention(per_entry=2))  # the first slot's record goes
    assert beatd("backfill", "slow-skip", *span, *base) == (
        2,
        "",
        f"beatd: --from: {text[0]} is not after {text[0]}, the newest slot of slow-skip whose "
        "run record the history's retention trimmed (--history-keep, --history-max-records): "
        "what was published up to it can no longer be checked; start the range after it\n",
    )
    code, running, _ = beatd("trigger", "slow-skip", "-s", schedules, "--broker", broker)
    assert code == 0
    later = ["--from", text[1], span[2], span[3]]
    assert beatd("backfill", "slow-skip", *later, *base) == (
        1,
        "",
        f"beatd: slow-skip is busy: run {running.strip()} has not ended, and its overlap is "
        "skip; nothing was published: wait for it, or add --force\n",
    )
    code, out, _ = beatd("backfill", "slow-skip", *later, "--force", *base)
    assert (code, out.splitlines()[-1]) == (0, "published 0, already there 2")


def test_a_trim_between_a_backfills_plan_and_its_step_publishes_nothing(
    schedules: Path, store: Backend
) -> None:
    slots = hours_back(3)
    publish_as_scheduler(store, schedules, "report-hourly", slots)
    entry = load_config([str(schedules)]).entries["report-hourly"]
    asked = BackfillRange(slots[1], slots[-1] + timedelta(seconds=1), 10)
    runs = plan_backfill(store, entry, asked, timedelta(days=30))
    store.trim(Retention(per_entry=1))  # the leader trims meanwhile: slots[1] loses its record
    with pytest.raises(BadRequest) as refused:
        send(controls_of(store), entry, runs, None, "rev", asked)
    assert refused.value.option == "--from"
    assert refused.value.message.startswith(f"{slots[1]:{SLOT}} is not after {slots[1]:{SLOT}}")
    assert queued_ids(store) == []
