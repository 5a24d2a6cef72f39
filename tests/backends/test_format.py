"""The persisted-state format version: data written by beatd before format versions (committed
fixtures, see tests/fixtures/write_format_0.py) is upgraded once, under the lease, and
published on from its horizons; data in a newer format is refused (exit status 2)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from beatd.backends.base import BeatdQueue, FormatTooNew, Outgoing, StateWrite
from beatd.backends.redis import RedisBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli import main
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry, MissedPolicy
from beatd.controls import Trigger, TriggerStatus
from beatd.history import HistoryQuery
from beatd.nodes import NodeRecord, NodeRole
from beatd.runtime_entries import ChangePage, EntryChange, resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.redis_server import RedisServer

FIXTURES = Path(__file__).parents[1] / "fixtures"
WRITTEN_AT = datetime(2026, 12, 4, 12, 0, 0, 500000, tzinfo=UTC)  # the fixtures' FakeClock
TICK = Entry(
    name="tick",
    task="t.tick",
    schedule=IntervalSchedule(timedelta(seconds=10)),
    missed=MissedPolicy.CATCH_UP,
)
# published by the old beatd before it stopped, then by the new one: a 30 s gap caught up
OLD = [f"tick@2026-12-04T12:00:{s}Z" for s in ("10", "20", "30")]
NEW = [f"tick@2026-12-04T12:00:{s}Z" for s in ("40", "50")] + [
    f"tick@2026-12-04T12:01:{s}Z" for s in ("00", "10", "20")
]


def publish_on(backend: SQLiteBackend | RedisBackend, clock: FakeClock, seconds: float) -> None:
    settings = SchedulerSettings(node="new", max_clock_skew=float("inf"))
    beat = Scheduler(backend, lambda: Config({"tick": TICK}), clock, settings)
    run_for(beat, seconds)
    assert beat.lease is not None
    backend.release_lease(beat.lease)


def upgrades(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("upgraded")]


# --- SQLite -----------------------------------------------------------------------------------


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    db = tmp_path / "beatd.db"
    shutil.copy(FIXTURES / "format-0.db", db)
    return db


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def test_a_sqlite_file_of_format_0_is_upgraded_once_and_published_on_from_its_horizon(
    old_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "beatd.backends")
    assert user_version(old_db) == 0
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))  # 30 s after the old beatd stopped
    backend = SQLiteBackend(old_db, wall_clock=lambda: clock.now().timestamp())
    publish_on(backend, clock, 20)
    publish_on(backend, clock, 1)  # a second leader: nothing left to upgrade
    bodies = backend._connection().execute("SELECT body FROM message ORDER BY seq").fetchall()
    assert [json.loads(body)["id"] for (body,) in bodies] == OLD + NEW
    assert user_version(old_db) == 2
    assert upgrades(caplog) == [f"upgraded the persisted state of {old_db} from format 0 to 2"]
    backend.close()


def test_a_sqlite_file_of_a_newer_format_is_refused_by_every_command(old_db: Path) -> None:
    with sqlite3.connect(old_db) as connection:
        connection.execute("PRAGMA user_version = 7")
    refusal = (
        f"{old_db} holds beatd's persisted state in format 7, but this beatd knows formats up "
        "to 2 only: a newer beatd upgraded it, and an older one must neither lead nor write "
        "there. Upgrade beatd on this host to the version the others run (docs/design.md, "
        "Persisted-state format)"
    )
    with pytest.raises(FormatTooNew) as caught:
        SQLiteBackend(old_db)
    assert str(caught.value) == refusal
    broker = f"sqlite:///{old_db}"
    for args in (["status", "--broker", broker], ["dead", "list", "--broker", broker]):
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, result.stderr) == (2, refusal + "\n"), args
    assert user_version(old_db) == 7


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    """Format 1, the last before the run history (tests/fixtures/write_format_1.py): `tick`
    published at :10, :20 and :30 by "old", the first run dead-lettered, two queued."""
    db = tmp_path / "beatd.db"
    shutil.copy(FIXTURES / "format-1.db", db)
    return db


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def publish_next(backend: SQLiteBackend) -> str:
    """Commit `tick`'s next run as a leader "next" does (with its slot, so with a record)."""
    lease = backend.acquire_lease("next", 10)
    assert lease is not None
    held = backend.load_states()["tick"]
    slot = held.last_slot + timedelta(seconds=10)
    run_id = f"tick@{slot:%Y-%m-%dT%H:%M:%SZ}"
    write = StateWrite(held._replace(last_slot=slot, last_published=slot), held.last_slot)
    sent = Outgoing("tick", run_id, BeatdQueue("default"), "{}", slot=slot, due=slot)
    assert backend.commit(lease, [write], [sent]) == set()
    backend.release_lease(lease)
    return run_id


def test_a_sqlite_file_of_format_1_is_read_as_it_is_read_only_and_holds_no_history(
    v1_db: Path,
) -> None:
    """`beatd status` and `beatd history` on a file no beatd with history has written yet: the
    states and queues as they are, an empty history, and the file left untouched."""
    backend = SQLiteBackend(v1_db, read_only=True)
    assert [s.last_slot for s in backend.load_states().values()] == [
        datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC)
    ]
    assert backend.queue_depths() == {"default": 2}
    assert [d.id for d in backend.dead_letters()] == OLD[:1]
    assert backend.runs(HistoryQuery()) == []
    assert backend.run(OLD[1]) is None
    assert (backend.summaries(), backend.missed(), backend.history_size()) == ({}, [], (0, 0))
    assert list(backend.export_runs()) == []
    backend.close()
    assert user_version(v1_db) == 1
    assert "run" not in tables(v1_db)


def test_a_sqlite_file_of_format_1_is_worked_on_before_and_upgraded_with_a_history(
    v1_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started before the leader claims and acks an old run (which has no record, so
    none is written); the leader upgrades to format 2 as it takes the lease, keeps the states,
    the queue and the dead letter, and records what it publishes from then on."""
    caplog.set_level(logging.INFO, "beatd.backends")
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    wall = lambda: clock.now().timestamp()  # noqa: E731
    worker = SQLiteBackend(v1_db, wall_clock=wall)
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == OLD[1]
    worker.ack(delivery)
    assert (user_version(v1_db), worker.history_size()) == (1, (0, 0))
    backend = SQLiteBackend(v1_db, wall_clock=wall)
    publish_on(backend, clock, 20)
    publish_on(backend, clock, 1)  # a second leader: nothing left to upgrade
    bodies = backend._connection().execute("SELECT body FROM message ORDER BY seq").fetchall()
    assert [json.loads(body)["id"] for (body,) in bodies] == OLD[2:] + NEW
    assert [d.id for d in backend.dead_letters()] == OLD[:1]
    assert user_version(v1_db) == 2
    assert upgrades(caplog) == [f"upgraded the persisted state of {v1_db} from format 1 to 2"]
    ran = publish_next(backend)  # by the next leader, as the scheduler hands it a run
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == OLD[2]  # an old run: still no record
    worker.ack(delivery)
    for _ in NEW:
        delivery = worker.claim(["default"], "w", 30)
        assert delivery is not None
        worker.ack(delivery)
    record = backend.run(ran)
    assert record is not None
    assert (record.node, record.status, len(record.attempts)) == ("next", "queued", 0)
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == ran
    worker.ack(delivery)
    record = backend.run(ran)
    assert record is not None
    assert (record.status, [a.consumer for a in record.attempts]) == ("succeeded", ["w"])
    assert backend.summaries()["tick"].last_status == "succeeded"
    worker.close()
    backend.close()


def test_a_sqlite_file_of_format_1_has_no_controls_read_only_and_gets_them_with_format_2(
    v1_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator controls' tables come with format 2 (issue 16, folded into the run
    history's unreleased format): read-only, a file of format 1 has no control, audit record or
    trigger key, and is left as it is; the leader's upgrade adds them, and a pause then refuses
    the scheduler's next run until resumed, and a trigger publishes a manual run with its record."""
    caplog.set_level(logging.INFO, "beatd.backends")
    reader = SQLiteBackend(v1_db, read_only=True)
    assert (reader.load_controls(), reader.audit(), reader.trigger_keys()) == ({}, [], [])
    reader.close()
    assert "entry_control" not in tables(v1_db)
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = SQLiteBackend(v1_db, wall_clock=lambda: clock.now().timestamp())
    publish_on(backend, clock, 1)
    assert upgrades(caplog) == [f"upgraded the persisted state of {v1_db} from format 1 to 2"]
    [paused] = backend.pause(["tick"], "maintenance", None, "ops@host")
    assert backend.audit("tick") == [paused]
    held = backend.load_states()["tick"]
    slot = held.last_slot + timedelta(seconds=10)
    write = StateWrite(held._replace(last_slot=slot, last_published=slot), held.last_slot)
    sent = Outgoing("tick", f"tick@{slot:%Y-%m-%dT%H:%M:%SZ}", BeatdQueue("default"), "{}", slot)
    lease = backend.acquire_lease("next", 10)
    assert lease is not None
    assert backend.commit(lease, [write], [sent]) == {"tick"}
    assert backend.load_states()["tick"] == held
    backend.resume(["tick"], "ops@host")
    assert backend.commit(lease, [write], [sent]) == set()
    result = backend.trigger(
        Trigger("tick", "tick@manual-r1", "default", False, None, "{}", "r1", "ops", None)
    )
    assert result.status == "published"
    record = backend.run(result.run_id)
    assert record is not None and (record.kind, record.audit) == ("manual", result.audit_id)
    backend.close()


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture
def old_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    shutil.copy(FIXTURES / "format-0.rdb", tmp_path / "redis" / "dump.rdb")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def stream_ids(admin: redis.Redis) -> list[str]:
    entries = admin.xrange("beatd:queue:default:normal")
    return [fields["id"] for _, fields in entries]


def test_a_redis_dump_of_format_1_is_upgraded_once_and_published_on_from_its_horizon(
    old_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "beatd.backends")
    admin = old_redis.client()
    assert admin.get("beatd:format") == "1"  # beatd before format versions marked its data so
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = RedisBackend(old_redis.url)
    publish_on(backend, clock, 20)
    publish_on(backend, clock, 1)
    assert stream_ids(admin) == OLD + NEW
    # the version in its own key; the marker as beatd before format versions reads it
    assert admin.mget("beatd:format-version", "beatd:format") == ["3", "1"]
    assert upgrades(caplog) == [
        f"upgraded the persisted state of {old_redis.url} (namespace beatd) from format 1 to 3"
    ]
    backend.close()
    admin.close()


def test_a_redis_dump_of_format_1_upgraded_takes_the_controls_and_enforces_them(
    old_redis: RedisServer,
) -> None:
    """The controls' keys (`beatd:ctl:*`) came with format 3 (folded into the history's
    migration, unreleased): a namespace upgraded from format 1 pauses, triggers and refuses."""
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = RedisBackend(old_redis.url)
    publish_on(backend, clock, 1)
    [audit] = backend.pause(["tick"], "upgrade check", None, "ops@host")
    assert (audit.action, audit.entry) == ("pause", "tick")
    lease = backend.acquire_lease("new", 30)
    assert lease is not None
    horizon = backend.load_states()["tick"].last_slot
    due = datetime.fromtimestamp(backend.server_time(), UTC) + timedelta(seconds=5)
    run = Outgoing("tick", "tick@later", BeatdQueue("default"), "{}", due, due)
    write = StateWrite(EntryState("tick", due, due, "every 10s"), horizon)
    assert backend.commit(lease, [write], [run]) == {"tick"}
    manual = Trigger("other", "other@manual-1", "default", False, None, "{}", "r1", "ops", None)
    assert backend.trigger(manual).status == TriggerStatus.PUBLISHED
    assert [a.action for a in backend.audit()] == ["trigger", "pause"]
    backend.close()


def test_a_redis_of_a_newer_format_is_refused_by_readers_and_by_a_leader(
    old_redis: RedisServer,
) -> None:
    admin = old_redis.client()
    admin.set("beatd:format-version", "7")  # as a newer beatd writes it
    refusal = (
        f"Redis at {old_redis.url} (namespace beatd) holds beatd's persisted state in format 7, "
        "but this beatd knows formats up to 3 only: a newer beatd upgraded it, and an older "
        "one must neither lead nor write there. Upgrade beatd on this host to the version the "
        "others run (docs/design.md, Persisted-state format)"
    )
    for call in ("leader", "load_states", "queue_depths", "dead_letters"):
        backend = RedisBackend(old_redis.url)
        with pytest.raises(FormatTooNew) as caught:
            getattr(backend, call)()
        assert (str(caught.value), caught.value.exit_status) == (refusal, 2), call
        backend.close()
    backend = RedisBackend(old_redis.url)
    with pytest.raises(FormatTooNew) as caught:
        backend.claim(["default"], "w", 30)
    assert str(caught.value) == refusal
    with pytest.raises(FormatTooNew) as caught:
        backend.acquire_lease("new", 10)
    assert str(caught.value) == refusal
    backend.close()
    result = CliRunner().invoke(main, ["status", "--broker", old_redis.url])
    assert (result.exit_code, result.stderr) == (2, refusal + "\n")
    assert (admin.get("beatd:format-version"), admin.exists("beatd:lease")) == ("7", 0)
    admin.close()


def test_a_scheduler_on_a_redis_of_a_newer_format_neither_leads_nor_writes_and_exits_2(
    old_redis: RedisServer,
) -> None:
    admin = old_redis.client()
    admin.set("beatd:format-version", "7")  # as a newer beatd writes it
    before = admin.hgetall("beatd:state")
    backend = RedisBackend(old_redis.url)
    settings = SchedulerSettings(node="new", max_clock_skew=float("inf"))
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    beat = Scheduler(backend, lambda: Config({"tick": TICK}), clock, settings)
    with pytest.raises(FormatTooNew) as caught:
        beat.run(threading.Event())
    assert caught.value.exit_status == 2
    assert (admin.get("beatd:format-version"), admin.exists("beatd:lease")) == ("7", 0)
    assert admin.hgetall("beatd:state") == before
    assert stream_ids(admin) == OLD
    backend.close()
    admin.close()


def test_a_redis_upgraded_once_is_not_upgraded_again_after_a_beatd_of_before_versions_led(
    old_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade: a beatd of before format versions still runs beside the new ones. At
    every fresh take of the lease its acquire script SETs `beatd:format` to "1" (that beatd's
    redis_scripts.py: `redis.call('SET', KEYS[3], FORMAT)`, FORMAT = "1"), so while the format
    version is that same key, each new leader after it "upgrades" the data again: once a real
    migration exists, it runs again on data it already migrated."""
    caplog.set_level(logging.INFO, "beatd.backends")
    admin = old_redis.client()
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = RedisBackend(old_redis.url)
    publish_on(backend, clock, 1)  # upgraded to format 3
    admin.set("beatd:format", "1")  # an old beatd's fresh take of the lease, as it does it
    publish_on(backend, clock, 1)
    assert upgrades(caplog) == [
        f"upgraded the persisted state of {old_redis.url} (namespace beatd) from format 1 to 3"
    ]
    backend.close()
    admin.close()


@pytest.fixture
def format_2_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    shutil.copy(FIXTURES / "format-2.rdb", tmp_path / "redis" / "dump.rdb")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_redis_dump_of_format_2_is_upgraded_to_3_and_records_the_history_of_new_runs_only(
    format_2_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 3 adds the run history's keys (beatd:h:*). Runs queued before it have no record,
    so a worker that claims and acks one records nothing; a run committed with its slot after
    the upgrade (the scheduler's, and one committed here) has its record, and its claim and ack
    are recorded in it."""
    caplog.set_level(logging.INFO, "beatd.backends")
    admin = format_2_redis.client()
    assert admin.get("beatd:format-version") == "2"
    assert admin.keys("beatd:h:*") == []
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = RedisBackend(format_2_redis.url)
    publish_on(backend, clock, 20)
    assert stream_ids(admin) == OLD[1:] + NEW
    assert admin.mget("beatd:format-version", "beatd:format") == ["3", "1"]
    assert upgrades(caplog) == [
        f"upgraded the persisted state of {format_2_redis.url} (namespace beatd) from format 2 to 3"
    ]
    lease = backend.acquire_lease("new", 10)
    assert lease is not None
    horizon = backend.load_states()["tick"]
    slot = horizon.last_slot + timedelta(seconds=10)
    run_id = f"tick@{slot:%Y-%m-%dT%H:%M:%SZ}"
    later = EntryState("tick", slot, slot, horizon.identity)
    run = Outgoing("tick", run_id, BeatdQueue("default"), "{}", slot, slot)
    assert backend.commit(lease, [StateWrite(later, horizon.last_slot)], [run]) == set()
    assert [r.id for r in backend.runs(HistoryQuery())] == [run_id, *reversed(NEW)]
    for expected in [*OLD[1:], *NEW, run_id]:
        delivery = backend.claim(["default"], "w", 30)
        assert delivery is not None and delivery.id == expected
        backend.ack(delivery)
    assert [backend.run(i) for i in OLD] == [None] * len(OLD)
    assert backend.history_size() == (len(NEW) + 1, 0)
    assert {r.status for r in backend.runs(HistoryQuery())} == {"succeeded"}
    record = backend.run(run_id)
    assert record is not None
    assert (record.status, [a.consumer for a in record.attempts]) == ("succeeded", ["w"])
    backend.close()
    admin.close()


def test_a_redis_dump_of_format_2_with_dead_letters_gets_their_counts_in_the_upgrade(
    format_2_redis: RedisServer,
) -> None:
    """Format 3 keeps the dead letters' counts per queue (beatd:dead-count) beside the stream.
    Letters of format 2 have none: before the upgrade they are counted by reading them, the
    upgrading take counts them, and a letter added after is counted in its own step."""
    admin = format_2_redis.client()
    old = {"id": "tick@x", "band": 1, "body": "{}", "reason": "boom", "deliveries": 1}
    for queue in ("default", "default", "other"):  # the fields format 2's DEAD_LETTER wrote
        admin.xadd("beatd:dead", {**old, "queue": queue, "failed_at": 0})
    backend = RedisBackend(format_2_redis.url)
    assert backend.dead_letter_counts() == {"default": 2, "other": 1}
    assert admin.exists("beatd:dead-count") == 0  # a reader writes nothing
    lease = backend.acquire_lease("new", 10)
    assert lease is not None
    assert admin.mget("beatd:format-version") == ["3"]
    assert admin.hgetall("beatd:dead-count") == {"default": "2", "other": "1"}
    delivery = backend.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == OLD[1]
    backend.dead_letter(delivery, "boom")
    assert admin.hgetall("beatd:dead-count") == {"default": "3", "other": "1"}
    assert backend.dead_letter_counts() == {"default": 3, "other": 1}
    backend.close()
    admin.close()


def test_a_sqlite_file_of_format_1_has_no_runtime_entries_read_only_and_gets_them_with_2(
    v1_db: Path,
) -> None:
    """The runtime entries' tables come with format 2 too (issue 18, folded in unreleased):
    read-only, a file of format 1 holds none and its feed says reload at cursor 0; once opened
    for writing it keeps them, with their feed and audit records."""
    reader = SQLiteBackend(v1_db, read_only=True)
    assert (reader.list_entries(), reader.get_entry("a"), reader.file_entries()) == ([], None, {})
    assert reader.get_entries(["a"]) == {}
    assert reader.entry_changes(None) == ChangePage((), 0, reload=True)
    reader.close()
    assert "runtime_entry" not in tables(v1_db)
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    backend = SQLiteBackend(v1_db, wall_clock=lambda: clock.now().timestamp())
    publish_on(backend, clock, 1)
    resolved = resolve_entry("a", {"task": "t.a", "every": "1m"}, now=clock.now())
    stored = backend.put_entry(resolved, "ops@host")
    assert backend.list_entries() == [stored]
    assert backend.entry_changes(0) == ChangePage((EntryChange(1, "a", 1),), 1)
    assert [a.action for a in backend.audit("a")] == ["entry.add"]
    backend.close()


def test_a_redis_dump_of_format_1_upgraded_holds_runtime_entries_and_their_feed(
    old_redis: RedisServer,
) -> None:
    """The runtime entries' keys (`beatd:rt:*`) came with format 3 too (issue 18, folded in
    unreleased): an old namespace holds none, and once upgraded keeps them with their feed."""
    backend = RedisBackend(old_redis.url)
    assert (backend.list_entries(), backend.entry_changes(None)) == (
        [],
        ChangePage((), 0, reload=True),
    )
    clock = FakeClock(WRITTEN_AT + timedelta(seconds=65))
    publish_on(backend, clock, 1)
    now = datetime.fromtimestamp(backend.server_time(), UTC)
    stored = backend.put_entry(resolve_entry("a", {"task": "t.a", "every": "1m"}, now=now), "ops")
    assert backend.list_entries() == [stored]
    assert backend.entry_changes(0) == ChangePage((EntryChange(1, "a", 1),), 1)
    assert [a.action for a in backend.audit("a")] == ["entry.add"]
    backend.close()


def test_a_sqlite_file_of_format_1_lists_no_nodes_read_only_and_keeps_them_once_opened(
    v1_db: Path,
) -> None:
    """The node records' table comes with format 2 too (issue 18, folded in unreleased): a file
    of format 1 read-only lists none; opened for writing (a standby, before any leader upgraded
    it) it keeps them."""
    reader = SQLiteBackend(v1_db, read_only=True)
    assert reader.nodes() == []
    reader.close()
    assert "node" not in tables(v1_db)
    backend = SQLiteBackend(v1_db)
    record = NodeRecord("b", NodeRole.STANDBY, "1", "cfg", "2025b", "system", None)
    backend.write_node(record, 60)
    assert [dataclasses.replace(r, last_seen=None) for r in backend.nodes()] == [record]
    backend.close()


def test_a_redis_dump_of_format_1_lists_no_nodes_and_keeps_them(old_redis: RedisServer) -> None:
    """The node records' hash (`beatd:nodes`) came with format 3 (folded in unreleased)."""
    backend = RedisBackend(old_redis.url)
    assert backend.nodes() == []
    record = NodeRecord("b", NodeRole.STANDBY, "1", "cfg", "2025b", "tzdata", "[::1]:9479")
    backend.write_node(record, 60)
    assert [dataclasses.replace(r, last_seen=None) for r in backend.nodes()] == [record]
    backend.close()
