"""The Redis backend against the contract, and what only Redis can do.

Every test talks to a real `redis-server` on a free port: one shared by the module (flushed
before each test) or, for the tests that pause, kill or reconfigure it, one of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from beatd import celery_protocol
from beatd.backends import open_backend, redis_history
from beatd.backends import redis as redis_backend
from beatd.backends.base import (
    Backend,
    BeatdQueue,
    CeleryQueue,
    DeadLetter,
    Delivery,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    StoreIdentity,
    to_micros,
)
from beatd.backends.redis import RECLAIM_IDLE_MS, SCRIPTS, RedisBackend
from beatd.backends.redis_history_log_lua import FOLD_BATCH
from beatd.backends.redis_queue import FOLD_BOUND, FOLD_EVERY
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.controls import (
    AuditRecord,
    Busy,
    Guard,
    HeldRun,
    Overlap,
    Trigger,
    TriggerStatus,
)
from beatd.errors import (
    BackendError,
    BeatdError,
    LeaseLost,
    NotApplied,
    OutcomeUnknown,
    TransientBackendError,
)
from beatd.history import Ending, HistoryQuery, MissedSlots, Retention, RunKind
from beatd.nodes import NodeRecord, NodeRole
from beatd.outcomes import Outcome
from beatd.runtime_entries import resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.schedules import IntervalSchedule
from beatd.tasks import Registry
from beatd.worker import Worker, WorkerSettings
from tests.backends.contract import BackendContract, message, state
from tests.backends.controls_contract import BUFFER, finish, held, queued_ids, trigger, write
from tests.backends.entries_contract import BY, defined
from tests.backends.history_contract import lead, run, run_id, slot_of
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_for

DOCS = Path(__file__).parents[2] / "docs" / "redis.md"
NO_PERSISTENCE = (
    "Redis at {url} does not persist anything (appendonly no, save ''): a Redis restart loses "
    "every entry's last published slot, every queued run and every dead letter (beatd notices, "
    "keeps the fencing epoch rising and restores the positions a node still holds; the queued "
    "runs never run); enable AOF (appendonly yes in redis.conf, or CONFIG SET appendonly yes)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    client.flushall()
    yield client
    client.close()


def backends_of(
    url: str, kind: type[RedisBackend] = RedisBackend, **options: Any
) -> Iterator[Callable[[], RedisBackend]]:
    """Makes backends of `kind` on `url`, closed afterwards (a fixture's body: `yield from`)."""
    made: list[RedisBackend] = []

    def make() -> RedisBackend:
        made.append(kind(url, **options))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend_factory(server: RedisServer, admin: redis.Redis) -> Iterator[Callable[[], Backend]]:
    yield from backends_of(server.url)


@pytest.fixture
def backend(backend_factory: Callable[[], RedisBackend]) -> RedisBackend:
    return backend_factory()


@pytest.fixture
def history_off_backend(server: RedisServer, admin: redis.Redis) -> Iterator[RedisBackend]:
    for make in backends_of(server.url, history=False):
        yield make()


@pytest.fixture
def advance() -> Callable[[float], None]:
    return time.sleep  # Redis keeps time itself: the only way to move it on is to wait


class TestRedisContract(BackendContract):
    @pytest.fixture
    def unit(self) -> float:
        return 0.5


def snapshot(server: RedisServer) -> dict[bytes, bytes]:
    """Every key's serialized value: equal snapshots mean nothing was written."""
    raw = redis.Redis(port=server.port)
    try:
        return {key: raw.dump(key) for key in sorted(raw.keys())}  # type: ignore[misc]
    finally:
        raw.close()


def redis_ms(admin: redis.Redis) -> int:
    seconds, micros = admin.time()
    return int(seconds) * 1000 + int(micros) // 1000


def pending(admin: redis.Redis, stream: str) -> list[tuple[str, int]]:
    return [
        (p["consumer"], p["times_delivered"])
        for p in admin.xpending_range(stream, "workers", "-", "+", 10)
    ]


# --- fencing ------------------------------------------------------------------------------


def test_commit_script_called_directly_with_a_stale_token_or_epoch_changes_nothing(
    backend: RedisBackend, server: RedisServer, admin: redis.Redis
) -> None:
    old = backend.acquire_lease("a", 30)
    assert old is not None
    backend.release_lease(old)
    new = backend.acquire_lease("a", 30)
    assert new is not None and new.epoch == 2 and new.token != old.token
    backend.commit(new, [StateWrite(state("e", 0), None)], [])
    before = snapshot(server)
    keys = ["beatd:lease", "beatd:state", "beatd:queues", "beatd:queue:default:normal"]
    slot = admin.hget("beatd:state", "e")
    assert slot is not None
    expected = slot.split(",")[0] + ","

    def call(token: str, epoch: int) -> object:
        writes = json.dumps(["e", expected, '[1,null,"x"]'])
        messages = json.dumps([4, "e", "e@2026-03-01T12:01:00Z"])
        args = [token, epoch, '["default"]', writes, messages, 1, "{}"]
        return admin.eval(SCRIPTS["commit"].source, len(keys), *keys, *args)

    for token, epoch in [
        (old.token, old.epoch),  # the previous holder, as it was
        (old.token, new.epoch),  # an old token with the current epoch
        (new.token, old.epoch),  # the current token with an old epoch
        ("0" * 32, new.epoch),  # a guessed token
    ]:
        with pytest.raises(redis.ResponseError) as caught:
            call(token, epoch)
        assert str(caught.value) == "LEASELOST node a holds epoch 2"
        assert snapshot(server) == before
    assert call(new.token, new.epoch) == []
    assert admin.hget("beatd:state", "e") == '[1,null,"x"]'
    assert admin.xlen("beatd:queue:default:normal") == 1


def test_a_scheduler_never_takes_an_epoch_below_one_it_has_seen(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = SchedulerSettings(node="a", lease_ttl=30, max_clock_skew=3600)
    beat = Scheduler(backend, lambda: Config({}), clock, settings)
    admin.set("beatd:epoch", 2)
    beat.step()
    assert beat.lease is not None and beat.lease.epoch == 3
    admin.flushall()  # Redis lost its data: the lease and the epoch are gone
    clock.advance(settings.renew_interval)
    beat.step()  # the renewal finds no lease
    assert beat.lease is None
    clock.advance(settings.standby_interval)
    beat.step()
    assert beat.lease is not None and beat.lease.epoch == 4
    assert admin.get("beatd:epoch") == "4"


def test_a_standby_that_holds_no_positions_counts_the_lost_slots_as_state_lost(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()  # no persistence
    leader, standby = RedisBackend(server.url), RedisBackend(server.url)
    try:
        assert leader.acquire_lease("a", 30) is not None
        clock = FakeClock(datetime.now(UTC))
        settings = SchedulerSettings(node="b", lease_ttl=30, max_clock_skew=3600)
        tick = Entry(name="tick", task="t.task", schedule=IntervalSchedule(timedelta(seconds=1)))
        beat = Scheduler(standby, lambda: Config({"tick": tick}), clock, settings)
        beat.step()  # a standby: it sees a's lease, so the data is whole now
        assert beat.lease is None and beat.leadership.epoch_seen == 1
        server.restart()  # SIGKILL, then an empty redis-server on the same port

        clock.advance(10)
        beat.step()  # the loss is noticed; the lease is left to a node holding positions
        assert (beat.lease, beat.totals.data_lost) == (None, 1)
        clock.advance(settings.lease_ttl)
        beat.step()  # nobody came: it leads, above the epoch it saw
        assert beat.lease is not None and beat.lease.epoch == 2
        assert beat.counts.get("tick")["missed_state_lost"] == 40
        assert beat.counts.get("tick")["published"] == 0
    finally:
        leader.close()
        standby.close()
        server.stop()


def test_commit_with_an_expired_lease_is_refused_with_who_holds_it(
    backend: RedisBackend,
) -> None:
    lease = backend.acquire_lease("a", 0.2)
    assert lease is not None
    wait_for(lambda: backend.leader() is None, timeout=5, what="the 0.2 s lease to lapse")
    with pytest.raises(LeaseLost) as caught:
        backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
    assert str(caught.value) == "lease epoch 1 of a is no longer held (nobody holds it)"
    taken = backend.acquire_lease("b", 10)
    assert taken is not None and taken.epoch == 2
    with pytest.raises(LeaseLost) as caught:
        backend.forget(lease, ["e"])
    assert str(caught.value) == "lease epoch 1 of a is no longer held (node b holds epoch 2)"
    assert backend.load_states() == {}
    assert backend.queue_depths() == {}


def test_holder_reacquiring_extends_the_lease_and_stores_its_config_hash(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    first = backend.acquire_lease("a", 0.5, "cfg1")
    again = backend.acquire_lease("a", 30, "cfg2", held=first)
    assert first == again
    assert 29_000 < admin.pttl("beatd:lease") <= 30_000
    info = backend.leader()
    assert info is not None
    assert (info.node, info.epoch, info.config_hash) == ("a", 1, "cfg2")
    assert 29 < info.expires_in <= 30
    assert admin.get("beatd:epoch") == "1"


def test_a_batch_refused_for_memory_writes_nothing_and_passes_once_memory_is_back(
    backend: RedisBackend, admin: redis.Redis, server: RedisServer
) -> None:
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [])
    write = StateWrite(state("e", 1, 1), state("e", 0).last_slot)
    before = snapshot(server)
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(TransientBackendError) as caught:
            backend.commit(lease, [write], [message("e", 1)])
    finally:
        admin.config_set("maxmemory", 0)
    refusal = caught.value.__cause__  # redis-server's own words, whatever its release
    assert isinstance(refusal, redis.exceptions.OutOfMemoryError)
    assert str(caught.value) == f"{server.url}: commit: {refusal}"
    assert snapshot(server) == before
    assert backend.commit(lease, [write], [message("e", 1)]) == set()
    assert backend.queue_depths() == {"default": 1}


# --- connection: URLs, namespaces, users, TLS --------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://beatd:s3cret@10.0.0.5:6390/2", "redis://beatd:***@10.0.0.5:6390/2"),
        ("rediss://:s3cret@cache.example:6380/0", "rediss://:***@cache.example:6380/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
    ],
    ids=["user_and_password", "password_only_tls", "unix_query_password", "no_password"],
)
def test_url_for_logs_never_shows_the_password(url: str, shown: str) -> None:
    backend = RedisBackend(url)
    assert backend.url == shown
    backend.close()


def test_url_options_that_would_unbound_calls_are_refused() -> None:
    with pytest.raises(BackendError) as caught:
        RedisBackend("redis://:pw@10.0.0.5/0?socket_timeout=30&retry_on_timeout=yes")
    assert str(caught.value) == (
        "cannot use Redis URL redis://:***@10.0.0.5/0?socket_timeout=30&retry_on_timeout=yes: "
        "socket_timeout, retry_on_timeout would override the per-call timeout of 2.0 s that "
        "keeps every call well inside the lease; remove it from the URL (the timeout follows "
        "the lease TTL)"
    )


def test_open_backend_by_scheme(server: RedisServer, admin: redis.Redis) -> None:
    backend = open_backend(f"unix://{server.socket}?db=0", namespace="blue", op_timeout=0.5)
    assert isinstance(backend, RedisBackend)
    assert (backend.namespace, backend.op_timeout) == ("blue", 0.5)
    assert backend.acquire_lease("a", 10) is not None
    assert admin.hget("blue:lease", "node") == "a"
    backend.close()
    with pytest.raises(BeatdError) as caught:
        open_backend("amqp://guest:guest@localhost//")
    assert str(caught.value) == (
        "unsupported broker URL scheme 'amqp' in 'amqp://guest:***@localhost//': "
        "use sqlite://, redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
        "postgresql:// or postgres://"
    )


def test_namespaces_share_one_redis_without_seeing_each_other(
    server: RedisServer, admin: redis.Redis
) -> None:
    blue = RedisBackend(server.url, namespace="blue")
    green = RedisBackend(server.url, namespace="green")
    lease = blue.acquire_lease("a", 10)
    other = green.acquire_lease("b", 10)
    assert lease is not None and other is not None
    assert (lease.epoch, other.epoch) == (1, 1)
    blue.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
    assert green.load_states() == {}
    assert green.queue_depths() == {}
    assert green.claim(["default"], "w", 30) is None
    assert blue.queue_depths() == {"default": 1}
    assert sorted(admin.keys()) == [
        "blue:epoch",
        "blue:format",
        "blue:format-version",
        "blue:lease",
        "blue:queue:default:normal",
        "blue:queues",
        "blue:state",
        "green:epoch",
        "green:format",
        "green:format-version",
        "green:lease",
    ]
    blue.close()
    green.close()


@pytest.mark.parametrize("how", ["commit", "trigger"])
def test_a_held_celery_run_goes_to_kombus_list_of_its_priority(
    backend: RedisBackend, admin: redis.Redis, how: str
) -> None:
    lease = lead(backend)
    write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
    body = '{"body": "e@2"}'
    if how == "commit":
        task = held("e", 2)._replace(destination_queue="c", body=body, celery=True, priority=1)
        write(backend, lease, "e", guard=BUFFER, busy=True, hold=task)
    else:
        request = dataclasses.replace(
            trigger("e", guard=BUFFER), queue="c", body=body, celery=True, priority=1
        )
        assert backend.trigger(request).status == TriggerStatus.HELD
        assert backend.load_controls()["e"].held.priority == 1
    finish(backend, "ack", run_id("e", 1))
    assert celery_protocol.list_name("c", 1) == "c\x06\x166"  # kombu's list of priority 6
    assert admin.lrange("c\x06\x166", 0, -1) == [body]
    assert admin.lrange("c", 0, -1) == []


def test_a_run_held_before_its_priority_was_kept_is_published_in_the_normal_band(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    lease = lead(backend)
    write(backend, lease, "e", run("e", 1, "q"), guard=BUFFER)
    at = str(to_micros(slot_of(2)))
    old = json.dumps([run_id("e", 2), at, at, "scheduled", "q", "{}", ""])
    admin.hset("beatd:ctl:held", "e", old)  # as beatd stored it before the held run's priority
    assert backend.load_controls()["e"].held == held("e", 2)._replace(body="{}")
    finish(backend, "ack", run_id("e", 1))
    assert queued_ids(backend) == [run_id("e", 2)]


def exercise(backend: Backend) -> None:
    """Every operation once, as the scheduler and a worker use them."""
    lease = backend.acquire_lease("a", 10, "cfg")
    assert lease is not None and backend.renew_lease(lease, 10)
    assert backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)]) == set()
    backend.forget(lease, ["gone"])
    assert backend.leader() is not None and set(backend.load_states()) == {"e"}
    backend.enqueue([message("f", 0, priority=9)], delay=0.05)
    # the delay ends on Redis's clock (polling claim would take the other run first)
    queued_by = backend.server_time()
    wait_for(lambda: backend.server_time() > queued_by + 0.05, timeout=5, what="the delay")
    first = backend.claim(["default"], "w", 30)
    assert first is not None and first.id.startswith("f@") and backend.extend(first, 30)
    backend.retry(first, "{}", 0)
    again = backend.claim(["default"], "w", 30)
    assert again is not None
    backend.dead_letter(again, "boom")
    assert backend.requeue_dead(None) == 1
    while (delivery := backend.claim(["default"], "w", 30)) is not None:
        backend.release(delivery)
        delivery = backend.claim(["default"], "w", 30)
        assert delivery is not None
        backend.ack(delivery)
    assert backend.queue_depths() == {} and backend.dead_letters() == []
    backend.add_dead_letters([DeadLetter("g@1", "default", "{}", "moved", datetime.now(UTC), 1)])
    assert [d.id for d in backend.dead_letters()] == ["g@1"]
    backend.release_lease(lease)
    backend.server_time()
    if isinstance(backend, RedisBackend):  # what only Redis does: restarts, wake-ups
        assert backend.identity().marked
        assert backend.wait_for_work(["default"], 0.1)  # subscribed: claim once
        backend.enqueue([message("h", 0)])
        assert backend.wait_for_work(["default"], 1.0)  # woken by the enqueue


def exercise_history(backend: RedisBackend) -> None:
    """Every operation of the run history once: its writes in the commit, claim and settling
    scripts, its reads, marks, trimming and copying."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    runs = [Outgoing(e, f"{e}@1", BeatdQueue("hist"), "{}", slot, slot) for e in ("p", "q")]
    gone = MissedSlots("p", "skipped", slot - timedelta(minutes=2), slot - timedelta(minutes=1), 2)
    writes = [StateWrite(state("p", 0), None, (gone,)), StateWrite(state("q", 0), None)]
    assert backend.commit(lease, writes, runs) == set()
    first = backend.claim(["hist"], "w", 30)
    assert first is not None
    backend.note_ending(first, Ending.failure(Outcome.CRASHED, "SystemExit", "died"))
    backend.retry(first, "{}", 0)
    again = backend.claim(["hist"], "w", 30)
    assert again is not None
    backend.ack(again, Ending(Outcome.SUCCEEDED))
    third = backend.claim(["hist"], "w", 30)
    assert third is not None
    backend.dead_letter(third, "boom")
    backend.release_lease(lease)
    assert backend.history_size() == (2, 1)
    assert {r.status for r in backend.runs(HistoryQuery())} == {"succeeded", "dead_lettered"}
    assert set(backend.summaries()) == {"p", "q"} == set(backend.summaries(["p", "q"]))
    assert [m.slots for m in backend.missed("p")] == [gone]
    at = slot + timedelta(minutes=5)
    assert backend.mark_missed_overdue("p", "skipped", gone.first, at)
    assert backend.run_received("p@1", "celery@h", at)
    assert backend.attempt_started("p@1", "celery@h", "h", 1, at)
    assert backend.mark_overdue("p@1", at)
    assert backend.attempt_ended("p@1", Ending(Outcome.SUCCEEDED), at)
    copied = [r for batch in backend.export_runs() for r in batch]
    missed = backend.export_missed()
    summaries = list(backend.summaries().values())
    assert backend.trim(Retention(per_entry=0)) == 2
    assert backend.trim(Retention(max_age=timedelta(0), max_records=0)) == 1
    assert backend.history_size() == (0, 0)
    assert backend.import_history(copied, missed, summaries) == 3
    assert backend.run("p@1") == next(r for r in copied if r.id == "p@1")


def exercise_controls(backend: RedisBackend) -> None:
    """Every operation of the operator controls once: their checks and writes in the commit
    and the final settling steps, and each script and read of the `Controls` role."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    guard = Guard(Overlap.BUFFER_ONE, 3600)
    first = Outgoing("c", "c@1", BeatdQueue("ctl"), "{}", slot, slot)
    assert backend.commit(lease, [StateWrite(state("c", 0), None, guard=guard)], [first]) == set()
    hold = HeldRun("c@2", slot, slot, "scheduled", "ctl", "{}")
    write = StateWrite(state("c", 1), backend.load_states()["c"].last_slot)
    assert backend.commit(lease, [write._replace(guard=guard, busy=True, hold=hold)], []) == set()
    backend.release_lease(lease)
    delivery = backend.claim(["ctl"], "w", 30)
    assert delivery is not None
    backend.ack(delivery)
    assert backend.load_controls()["c"].busy == Busy("c@2", backend.load_controls()["c"].busy.since)
    delivery = backend.claim(["ctl"], "w", 30)
    assert delivery is not None
    backend.dead_letter(delivery, "boom")
    backend.attempt_ended("c@2", Ending(Outcome.SUCCEEDED), slot)
    backend.pause(["c"], "r", timedelta(hours=1), "ops")
    request = Trigger("c", "c@manual-1", "ctl", False, None, "{}", "r1", "ops", guard, "k")
    assert backend.trigger(request).status == TriggerStatus.REFUSED_PAUSED
    backend.resume(["c"], "ops")
    assert (
        backend.trigger(dataclasses.replace(request, request_id="r2")).status
        == TriggerStatus.PUBLISHED
    )
    backfill = Outgoing("c", "c@3", BeatdQueue("ctl"), "{}", slot, slot, RunKind.BACKFILL)
    assert backend.backfill("c", [backfill], "ops", {})[0] == ["c@3"]
    backend.record_audit(AuditRecord("x", slot, "requeue_dead", None, "ops"))
    assert len(backend.audit()) == 5 and len(backend.audit("c")) == 4
    keys = backend.trigger_keys()
    assert len(keys) == 3
    control = backend.load_controls()
    assert backend.import_controls(control, backend.audit(), keys) == 0
    assert backend.trim_audit(timedelta(0)) == 5


def exercise_entries(backend: RedisBackend) -> None:
    """Every script and read of the `RuntimeEntries` role once, the feed's trim included."""
    backend.feed_retention = 2
    now = datetime.fromtimestamp(backend.server_time(), UTC)
    resolved = resolve_entry("rt", {"task": "t.rt", "every": "1m"}, now=now)
    stored = backend.put_entry(resolved, "ops", request_id="r")
    assert backend.put_entry(resolved, "ops", request_id="r") == stored
    assert backend.put_entry(resolved, "ops", expected_version=1).version == 2
    assert backend.get_entry("rt") is not None and len(backend.list_entries()) == 1
    assert list(backend.get_entries(["rt", "none"])) == ["rt"]
    assert backend.remove_entry("rt", "ops").version == 2
    assert backend.import_entries([stored]) == 1
    page = backend.entry_changes(None)
    assert backend.entry_changes(page.cursor - 2).changes[-1] == (page.cursor, "rt", 1)
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    assert backend.register_file_entries(lease, {"rt": "x.yaml"}) == ["rt"]
    assert backend.register_file_entries(lease, {"f": "x.yaml"}) == []
    assert backend.file_entries() == {"f": "x.yaml"}
    backend.release_lease(lease)


def exercise_nodes(backend: RedisBackend) -> None:
    """Both scripts of the `Nodes` role, an expired record's deletion included."""
    record = NodeRecord("gone", NodeRole.STANDBY, "1", "cfg", "2025b", "system", None)
    backend.write_node(record, 0.001)
    wait_for(lambda: backend.nodes() == [], what="the record to expire")
    backend.write_node(dataclasses.replace(record, node="here"), 60)  # deletes the expired one
    assert [r.node for r in backend.nodes()] == ["here"]


def committed(backend: RedisBackend, writes: list[StateWrite]) -> None:
    """`writes` committed by a new leader, 250 a commit."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    for start in range(0, len(writes), 250):
        assert backend.commit(lease, writes[start : start + 250], []) == set()


def command_calls(admin: redis.Redis) -> dict[str, int]:
    """How many times each command ran since the last CONFIG RESETSTAT."""
    return {k: v["calls"] for k, v in admin.info("commandstats").items()}


def test_states_are_read_in_pages_never_all_in_one_call(
    backend: RedisBackend, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader restarting with 1,000,000 entries read every state in one HGETALL, which held
    Redis past the 2 s per-call limit: the states are read by HSCAN, STATE_PAGE at a time, each
    call bounded however many there are (here 1,000 in pages of 100)."""
    monkeypatch.setattr(redis_backend, "STATE_PAGE", 100)
    writes = [StateWrite(state(f"e{i}", i % 7, i % 3 or None), None) for i in range(1000)]
    committed(backend, writes)
    admin.config_resetstat()
    paced: list[None] = []
    assert backend.load_states(lambda: paced.append(None)) == {
        w.state.entry: w.state for w in writes
    }
    calls = command_calls(admin)
    assert "cmdstat_hgetall" not in calls
    assert calls["cmdstat_hscan"] >= 5  # about 1,000 / 100 (COUNT is a hint)
    assert len(paced) == calls["cmdstat_hscan"] - 1  # between the pages: the lease renewed


def test_the_history_trim_reads_the_entry_names_in_pages_never_all_in_one_call(
    backend: RedisBackend, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trim per entry read every name of the state hash in one HKEYS: with 1,000,000 it
    held Redis past the 2 s per-call limit a minute into a leader's start, the leader's next
    calls timed out behind it and it lost its lease. It reads them by HSCAN, TRIM_ENTRIES at a
    time, each page one trim call."""
    monkeypatch.setattr(redis_history, "TRIM_ENTRIES", 100)
    committed(backend, [StateWrite(state(f"e{i}", 1), None) for i in range(1000)])
    admin.config_resetstat()
    assert backend.trim(Retention()) == 0
    calls = command_calls(admin)
    assert "cmdstat_hkeys" not in calls
    assert calls["cmdstat_hscan"] >= 5  # about 1,000 / 100 (COUNT is a hint)


def test_the_history_trim_per_entry_goes_on_where_the_last_call_stopped(
    backend: RedisBackend, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trim call walked every entry (1,000 scripts at 1,000,000 entries: 5-15 s at load, in
    the leader's loop, right after each first publish: it lost its lease each time). A call
    looks at TRIM_PAGES pages of entries at most and the next goes on from there."""
    monkeypatch.setattr(redis_history, "TRIM_ENTRIES", 100)
    monkeypatch.setattr(redis_history, "TRIM_PAGES", 3)
    committed(backend, [StateWrite(state(f"e{i}", 1), None) for i in range(1000)])
    admin.config_resetstat()
    assert backend.trim(Retention()) == 0
    calls = command_calls(admin)
    assert calls["cmdstat_hscan"] == 3
    assert 200 <= calls["cmdstat_zcard"] <= 400  # about 300 entries looked at
    for _ in range(4):
        assert backend.trim(Retention()) == 0
    calls = command_calls(admin)
    assert calls["cmdstat_zcard"] >= 1000  # every entry looked at once in the pass


def test_the_index_of_the_controls_records_is_trimmed_with_the_log(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    backend.pause(["a"], "r", None, BY)
    backend.put_entries([defined("a"), defined("b")], BY)
    assert admin.zcard("beatd:ctl:audit-ctl") == 1
    time.sleep(0.01)
    assert backend.trim_audit(timedelta(microseconds=1)) == 3
    assert admin.zcard("beatd:ctl:audit-ctl") == 0
    assert backend.audit(controls_only=True) == []


def documented_acl(user: str, password: str) -> list[str]:
    """The `ACL SETUSER beatd ...` line of docs/redis.md, for `user` with `password`."""
    line = next(x for x in DOCS.read_text().splitlines() if x.startswith("ACL SETUSER beatd "))
    words = line.split()
    words[2] = user
    return [">" + password if w == ">CHANGE-ME" else w for w in words]


def test_acl_user_with_the_documented_permissions_can_do_everything(
    server: RedisServer, admin: redis.Redis
) -> None:
    admin.execute_command(*documented_acl("beatd", "s3cret"))
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        exercise(backend)
        exercise_history(backend)
        exercise_controls(backend)
        exercise_entries(backend)
        exercise_nodes(backend)
        assert backend.session_key() == backend.session_key()  # SET NX GET, then GET's answer
        assert backend.persistence_warnings() == [NO_PERSISTENCE.format(url=backend.url)]
        backend.close()
    finally:
        admin.acl_deluser("beatd")


def test_acl_user_with_the_documented_line_publishes_celery_runs_to_kombus_lists(
    server: RedisServer, admin: redis.Redis
) -> None:
    """review18: the commit script LPUSHes a `protocol: celery` run to kombu's lists of its
    queue, whose keys are the queue's own name (`celery`, `celery\\x06\\x166`), outside
    `~beatd:*`: the documented line allows them for the default queue `celery`."""
    admin.delete("celery", "celery\x06\x166")
    admin.execute_command(*documented_acl("beatd", "s3cret"))
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        plain = run("c", 1)._replace(destination=CeleryQueue("celery"), body='{"n": 1}')
        high = run("d", 1)._replace(destination=CeleryQueue("celery", 1), body='{"n": 2}')
        writes = [StateWrite(state(e, 1), None) for e in ("c", "d")]
        assert backend.commit(lease, writes, [plain, high]) == set()
        assert admin.lrange("celery", 0, -1) == ['{"n": 1}']
        assert admin.lrange(celery_protocol.list_name("celery", 1), 0, -1) == ['{"n": 2}']
        backend.close()
    finally:
        admin.acl_deluser("beatd")
        admin.delete("celery", "celery\x06\x166")


def test_acl_user_on_the_line_before_the_history_loses_no_run_and_reads_say_what_is_refused(
    server: RedisServer, admin: redis.Redis
) -> None:
    """An upgrade that keeps the previous ACL line loses no run: the commit, claim and ack
    append to the history's log with pcall, so a refused RPUSH loses the record, not the run.
    Reading the history (which folds the log first) says which command is refused; once the
    line is updated the history records again; trimming per entry needs +hkeys, and trims by
    age and count before it says so."""
    new = ("+hkeys", "+zmscore", "+rpush", "+lrange", "+ltrim", "+llen")
    later = ("+hscan",)  # not on that line either: the trim falls back to HKEYS
    acl = [w for w in documented_acl("beatd", "s3cret") if w not in (*new, *later)]
    admin.execute_command(*acl)
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

        def publish_and_run(n: int) -> None:
            run = Outgoing("e", f"e@{n}", BeatdQueue("default"), "{}", slot, slot)
            expected = None if n == 1 else state("e", n - 1).last_slot
            write = StateWrite(state("e", n), expected)
            assert backend.commit(lease, [write], [run]) == set()
            delivery = backend.claim(["default"], "w", 30)
            assert delivery is not None and delivery.id == f"e@{n}"
            backend.ack(delivery)
            assert backend.queue_depths() == {}

        publish_and_run(1)
        with pytest.raises(BackendError) as caught:
            backend.history_size()
        refusal = caught.value.__cause__  # inside a script: a ResponseError naming the script
        assert isinstance(refusal, redis.exceptions.ResponseError)
        assert str(caught.value) == f"{backend.url}: fold: {refusal}"
        admin.acl_setuser("beatd", commands=list(new[1:]))
        assert backend.history_size() == (0, 0)  # its record was refused, not its run
        publish_and_run(2)
        record = backend.run("e@2")
        assert record is not None and record.status == "succeeded"
        assert backend.summaries()["e"].last_status == "succeeded"
        with pytest.raises(BackendError) as caught:
            backend.trim(Retention(max_age=timedelta(0)))
        refusal = caught.value.__cause__
        assert isinstance(refusal, redis.exceptions.NoPermissionError)
        assert str(caught.value) == f"{backend.url}: hkeys: {refusal}"
        assert backend.history_size() == (0, 0)  # trimmed by age before HKEYS was refused
        backend.close()
    finally:
        admin.acl_deluser("beatd")


def test_acl_user_without_config_get_gets_one_warning_not_a_crash(
    server: RedisServer, admin: redis.Redis
) -> None:
    acl = [w for w in documented_acl("beatd", "s3cret") if w != "+config|get"]
    admin.execute_command(*acl)
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        assert backend.persistence_warnings() == [
            f"cannot check the persistence settings of Redis at {backend.url}: CONFIG GET "
            f"failed ({refusal_of_config_get(server.port)}); beatd's guarantees need "
            "appendonly yes and maxmemory-policy noeviction: check them by hand, or allow "
            "beatd's user CONFIG GET (+config|get)"
        ]
        wrong = RedisBackend(f"redis://beatd:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(BackendError) as caught:
            wrong.ping()
        assert type(caught.value) is BackendError  # not transient: waiting will not fix it
        refusal = caught.value.__cause__  # redis-server's WRONGPASS text, as redis-py gives it
        assert isinstance(refusal, redis.AuthenticationError)
        assert str(caught.value) == (
            f"redis://beatd:***@127.0.0.1:{server.port}/0: ping: {refusal}"
        )
        backend.close()
        wrong.close()
    finally:
        admin.acl_deluser("beatd")


def test_acl_user_on_the_line_before_hscan_reads_the_states_whole_and_says_so_once(
    server: RedisServer, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade that keeps the previous ACL line (no +hscan) still adopts: the states are
    read in one HGETALL as before, with one warning saying what to add."""
    admin.execute_command(*[w for w in documented_acl("beatd", "s3cret") if w != "+hscan"])
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        assert backend.commit(lease, [StateWrite(state("e", 1), None)], []) == set()
        with caplog.at_level("WARNING", logger="beatd.backends.redis"):
            assert backend.load_states() == {"e": state("e", 1)}
            assert backend.load_states() == {"e": state("e", 1)}
        assert [r.getMessage() for r in caplog.records] == [
            f"Redis at {backend.url} refuses HSCAN to beatd's user: the entries' states are "
            "read in one HGETALL, which with a great many entries can outlast the per-call "
            "limit (a leader then cannot adopt); add +hscan to the user's ACL (docs/redis.md)"
        ]
        backend.close()
    finally:
        admin.acl_deluser("beatd")


def refusal_of_config_get(port: int) -> str:
    """What redis-server answers user beatd's CONFIG GET, in the words of this release."""
    client = redis.Redis(port=port, username="beatd", password="s3cret")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as caught:
            client.config_get("appendonly")
        return str(caught.value)
    finally:
        client.close()


def test_acl_user_without_info_still_reads_the_marker_and_epoch(
    server: RedisServer, admin: redis.Redis
) -> None:
    admin.execute_command(*[w for w in documented_acl("beatd", "s3cret") if w != "+info"])
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        assert backend.acquire_lease("a", 10) is not None
        assert backend.identity() == StoreIdentity("", "beatd:format", True, 1)
        backend.close()
    finally:
        admin.acl_deluser("beatd")


def test_a_commit_refused_its_publish_never_leaves_a_state_written_without_its_run(
    server: RedisServer, admin: redis.Redis
) -> None:
    """An ACL user as documented before this round (no `&beatd:queue:*`: the CHANGELOG's upgrade
    note). The commit script writes every state, then XADDs and PUBLISHes message by message;
    the first PUBLISH is refused and the script stops there, so the entries after the first
    have their slot recorded as published with no run queued: lost, and counted published."""
    acl = [w for w in documented_acl("beatd", "s3cret") if w != "&beatd:queue:*"]
    admin.execute_command(*acl)
    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        writes = [StateWrite(state("e", 1), None), StateWrite(state("f", 1), None)]
        with contextlib.suppress(BackendError):  # refused: nothing or everything written
            backend.commit(lease, writes, [message("e", 1), message("f", 1)])
        backend.close()
        recorded = set(admin.hkeys("beatd:state"))
        queued = {
            fields["id"].partition("@")[0]
            for _, fields in admin.xrange("beatd:queue:default:normal")
        }
        assert recorded <= queued, f"states written for {recorded}, runs queued for {queued}"
    finally:
        admin.acl_deluser("beatd")


def test_a_refused_publish_never_leaves_a_run_queued_twice_or_not_at_all(
    server: RedisServer, admin: redis.Redis
) -> None:
    """The same ACL: enqueue, and a worker's release, retry (no delay) and requeue all add the
    run to a stream and then publish; the run ends queued exactly once, whatever PUBLISH says."""
    acl = [w for w in documented_acl("beatd", "s3cret") if w != "&beatd:queue:*"]
    admin.execute_command(*acl)
    stream = "beatd:queue:default:normal"

    def queued() -> list[str]:
        return [fields["id"] for _, fields in admin.xrange(stream)]

    try:
        backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
        run = message("e", 1)
        backend.enqueue([run])
        assert queued() == [run.id]
        for give_back in (
            backend.release,
            lambda d: backend.retry(d, d.body, 0),
            lambda d: (backend.dead_letter(d, "failed"), backend.requeue_dead(d.id)),
        ):
            delivery = backend.claim(["default"], "w1", 30)
            assert delivery is not None
            give_back(delivery)
            assert queued() == [run.id]
        delivery = backend.claim(["default"], "w1", 30)
        assert delivery is not None
        backend.retry(delivery, delivery.body, 0.05)  # a claim moves it back once it is ready
        moved = wait_for(lambda: backend.claim(["default"], "w1", 30), what="the delayed retry")
        assert (moved.id, queued()) == (run.id, [run.id])
        backend.close()
    finally:
        admin.acl_deluser("beatd")


def test_a_scheduler_under_that_acl_publishes_every_run_and_logs_no_outage(
    server: RedisServer, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The refused PUBLISH made each commit fail after its writes: the scheduler logged the
    backend unavailable, then reachable again, every second. Now it only publishes."""
    acl = [w for w in documented_acl("beatd", "s3cret") if w != "&beatd:queue:*"]
    admin.execute_command(*acl)
    backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
    try:
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        settings = SchedulerSettings(node="a", lease_ttl=30, max_clock_skew=3600)
        tick = Entry(name="tick", task="t.task", schedule=IntervalSchedule(timedelta(seconds=1)))
        beat = Scheduler(backend, lambda: Config({"tick": tick}), clock, settings)
        with caplog.at_level("INFO", logger="beatd.scheduler"):
            for _ in range(5):
                beat.step()
                clock.advance(1)
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
        assert beat.counts.get("tick")["published"] == admin.xlen("beatd:queue:default:normal")
        assert admin.xlen("beatd:queue:default:normal") >= 4
    finally:
        backend.close()
        admin.acl_deluser("beatd")


def test_a_worker_refused_its_subscribe_warns_once_naming_the_acl_fix(
    server: RedisServer, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The same ACL: the idle worker's SUBSCRIBE is refused on every try; it says so once, as a
    warning that names the fix, and keeps claiming on its visibility timeout."""
    acl = [w for w in documented_acl("beatd", "s3cret") if w != "&beatd:queue:*"]
    admin.execute_command(*acl)
    url = f"redis://beatd:s3cret@127.0.0.1:{server.port}/0"
    backend = RedisBackend(url)
    with pytest.raises(BackendError) as refused:
        while True:  # the first call subscribes; the refusal comes with the reply
            backend.wait_for_work(["default"], 0.5)
    backend.close()
    channels = "beatd:queue:default:high, beatd:queue:default:low, beatd:queue:default:normal"
    expected = (
        f"{backend.url}: SUBSCRIBE to {channels} refused ({refused.value.__cause__.__cause__}): "
        "idle workers are not woken when a run is added and claim it only after their "
        "visibility timeout; grant the channels to beatd's ACL user: add &beatd:queue:* to "
        "its ACL SETUSER line (docs/redis.md)"
    )
    assert str(refused.value) == expected
    settings = WorkerSettings(pool="thread", visibility_timeout=5, block_period=0.1)
    worker = Worker(RedisBackend(url), Registry(), settings)
    thread = threading.Thread(target=worker.run)
    try:
        with caplog.at_level("DEBUG", logger="beatd.worker"):
            thread.start()
            wait_for(
                lambda: (
                    sum("waiting for runs failed" in r.getMessage() for r in caplog.records) >= 2
                ),
                what="two more refusals after the first",
            )
    finally:
        worker.stop()
        thread.join(10)
        admin.acl_deluser("beatd")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"cannot wait for runs: {expected}"]


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1, via openssl."""
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for command in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout s.key -out s.csr",
        "x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile san.ext -out s.pem",
    ]:
        subprocess.run(
            ["openssl", *command.split()], cwd=directory, check=True, capture_output=True
        )
    return directory / "ca.pem", directory / "s.pem", directory / "s.key"


def test_rediss_verifies_the_server_certificate_by_default(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-auth-clients", "no"]
    tls += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
    server = RedisServer(tmp_path / "redis", extra=tls).start()
    try:
        untrusted = RedisBackend(f"rediss://localhost:{tls_port}/0")
        with pytest.raises(BackendError) as caught:
            untrusted.ping()
        assert type(caught.value) is BackendError  # not transient: waiting will not fix it
        failure = caught.value.__cause__  # redis-py's words around OpenSSL's
        assert isinstance(failure, redis.ConnectionError)
        assert isinstance(failure.__cause__ or failure.__context__, ssl.SSLCertVerificationError)
        assert str(caught.value) == (
            f"rediss://localhost:{tls_port}/0: ping: ConnectionError: {failure}"
        )
        trusted = RedisBackend(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}")
        exercise(trusted)
        untrusted.close()
        trusted.close()
    finally:
        server.stop()


# --- outages: a paused Redis, a restarted Redis, persistence settings ---------------------


# the step of each call that meets the paused Redis first, as beatd's errors name it
PAUSED_CALL_FAILS_IN = {
    "ping": "ping",
    "server_time": "time",
    "persistence_warnings": "config get",
    "acquire_lease": "acquire",
    "renew_lease": "renew",
    "release_lease": "release",
    "leader": "leader",
    "load_states": "hscan",
    "commit": "commit",
    "forget": "forget",
    "enqueue": "enqueue",
    "claim": "claim",
    "extend": "extend",
    "ack": "ack",
    "release": "release_claim",
    "retry": "retry",
    "dead_letter": "dead_letter",
    "dead_letters": "xrange",
    "requeue_dead": "xrange",
    "queue_depths": "smembers",
}


def test_every_call_to_a_paused_redis_fails_fast_then_all_works_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    op_timeout = 0.2
    try:
        backend = RedisBackend(server.url, op_timeout=op_timeout)
        backend.ping()
        ghost = Lease("a", "0" * 32, 7)
        claimed = Delivery("x@1", "q2", "{}", 1, "1/0-1/1/ghost")  # never held: late runs no-op
        calls: dict[str, Callable[[], object]] = {
            "ping": backend.ping,
            "server_time": backend.server_time,
            "persistence_warnings": backend.persistence_warnings,
            "acquire_lease": lambda: backend.acquire_lease("b", 3),
            "renew_lease": lambda: backend.renew_lease(ghost, 30),
            "release_lease": lambda: backend.release_lease(ghost),
            "leader": backend.leader,
            "load_states": backend.load_states,
            "commit": lambda: backend.commit(ghost, [StateWrite(state("e", 0), None)], []),
            "forget": lambda: backend.forget(ghost, ["e"]),
            "enqueue": lambda: backend.enqueue([message("e", 1)]),
            "claim": lambda: backend.claim(["q2"], "w", 30),
            "extend": lambda: backend.extend(claimed, 30),
            "ack": lambda: backend.ack(claimed),
            "release": lambda: backend.release(claimed),
            "retry": lambda: backend.retry(claimed, "{}", 0),
            "dead_letter": lambda: backend.dead_letter(claimed, "boom"),
            "dead_letters": backend.dead_letters,
            "requeue_dead": lambda: backend.requeue_dead(None),
            "queue_depths": backend.queue_depths,
        }
        admin = server.client()
        for script in SCRIPTS.values():  # as on a Redis in use, so late calls do run
            admin.script_load(script.source)
        admin.close()
        server.pause()
        slow = {}
        try:
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(TransientBackendError) as caught:
                    call()
                slow[name] = time.monotonic() - started
                timeout = caught.value.__cause__  # redis-py words it anew in some releases
                assert isinstance(timeout, redis.TimeoutError), name
                assert isinstance(caught.value, OutcomeUnknown), name  # sent: may still run
                assert str(caught.value) == (
                    f"{server.url}: {PAUSED_CALL_FAILS_IN[name]}: TimeoutError: {timeout}"
                )
        finally:
            server.resume()
        assert {name: took for name, took in slow.items() if took > op_timeout + 0.2} == {}
        assert min(slow.values()) >= op_timeout - 0.05

        # Redis now runs what it had received while stopped: the acquire whose reply was lost
        # and the late enqueue are the calls that change anything; the others are refused
        def late_calls_ran() -> LeaderInfo | None:
            info = backend.leader()
            return info if backend.queue_depths() == {"default": 1} else None

        info = wait_for(late_calls_ran, timeout=5, what="the calls sent while paused to run")
        # "b" holds a lease whose token it never saw: the lease belongs to that token, so "b"
        # can neither publish nor take it again until that take expires, then takes it afresh
        assert (info.node, info.epoch) == ("b", 1)
        assert backend.acquire_lease("b", 30) is None
        lease = wait_for(
            lambda: backend.acquire_lease("b", 30), timeout=5, what="the unseen take to expire"
        )
        assert lease.epoch == 2
        assert backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)]) == set()
        assert backend.queue_depths() == {"default": 2}  # the late enqueue, and this commit
        assert set(backend.load_states()) == {"e"}
        assert backend.persistence_warnings() == [NO_PERSISTENCE.format(url=server.url)]
        backend.close()
    finally:
        server.stop()


def test_a_waiting_connection_notices_a_paused_redis_and_the_next_claim_says_so_at_once(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    block_period, op_timeout = 0.3, 0.4
    try:
        backend = RedisBackend(server.url, op_timeout=op_timeout)
        assert backend.wait_for_work(["default"], block_period)  # subscribed: claim once
        assert backend.claim(["default"], "w", 30) is None
        assert not backend.wait_for_work(["default"], block_period)  # idle, Redis answers
        server.pause()
        paused = time.monotonic()
        try:
            while time.monotonic() < paused + 5:  # idle calls, as a worker's waiting thread
                if backend.wait_for_work(["default"], block_period):
                    break
            noticed = time.monotonic() - paused
            with pytest.raises(NotApplied) as caught:
                backend.claim(["default"], "w", 30)
            said_in = time.monotonic() - paused - noticed
        finally:
            server.resume()
        timeout = caught.value.__cause__
        assert isinstance(timeout, redis.TimeoutError)
        assert str(caught.value) == f"{server.url}: wait: TimeoutError: {timeout}"
        # a PING after a little over a block period of silence, unanswered for the op timeout
        assert noticed <= block_period * 7 / 6 + op_timeout + 0.3, noticed
        assert said_in < 0.3, said_in  # the claim did not wait for Redis again (0.4 s)
        assert backend.claim(["default"], "w", 30) is None  # resumed: claims as before
        backend.close()
    finally:
        server.stop()


def test_a_redis_that_refuses_the_connection_is_not_applied_and_says_why() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", op_timeout=0.5)
    with pytest.raises(NotApplied) as caught:
        backend.acquire_lease("a", 10)
    refused = caught.value.__cause__
    assert isinstance(refused, redis.ConnectionError)
    assert str(caught.value) == f"{backend.url}: acquire: ConnectionError: {refused}"
    backend.close()


def test_a_write_refused_for_memory_is_not_applied_and_writes_nothing(
    server: RedisServer, admin: redis.Redis, backend: RedisBackend
) -> None:
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    before = snapshot(server)
    admin.config_set("maxmemory", 1)  # below what Redis holds already: every write is refused
    try:
        for name, call in (
            ("commit", lambda: backend.commit(lease, [StateWrite(state("e", 0), None)], [])),
            ("enqueue", lambda: backend.enqueue([message("e", 1)])),
        ):
            with pytest.raises(NotApplied) as caught:
                call()
            assert str(caught.value) == f"{server.url}: {name}: {caught.value.__cause__}"
    finally:
        admin.config_set("maxmemory", 0)
    assert snapshot(server) == before


def test_restart_with_aof_keeps_lease_epoch_state_queues_and_claims(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persistent=True).start()
    try:
        backend = RedisBackend(server.url)
        assert backend.persistence_warnings() == []
        lease = backend.acquire_lease("a", 60)
        assert lease is not None
        backend.commit(
            lease, [StateWrite(state("e", 3, 2), None)], [message("e", 2), message("e", 3)]
        )
        claimed = backend.claim(["default"], "w1", 60)
        assert claimed is not None
        backend.dead_letter(claimed, "boom")
        claimed = backend.claim(["default"], "w1", 60)
        assert claimed is not None

        server.kill()  # SIGKILL: only what the AOF already holds survives
        with pytest.raises(TransientBackendError):
            backend.ping()
        server.start()

        assert backend.load_states() == {"e": state("e", 3, 2)}
        info = backend.leader()
        assert info is not None and (info.node, info.epoch) == ("a", 1)
        assert backend.renew_lease(lease, 60)
        assert [(d.id, d.reason) for d in backend.dead_letters()] == [
            ("e@2026-03-01T12:02:00Z", "boom")
        ]
        assert backend.queue_depths() == {"default": 1}
        assert backend.claim(["default"], "w2", 60) is None  # the claim and its deadline survived
        assert backend.extend(claimed, 60)
        backend.ack(claimed)
        assert backend.queue_depths() == {}
        backend.release_lease(lease)
        taken = backend.acquire_lease("b", 60)
        assert taken is not None and taken.epoch == 2  # the fencing epoch did not go back
        backend.close()
    finally:
        server.stop()


def test_persistence_warnings_say_what_breaks_and_how_to_fix_it(
    backend: RedisBackend, admin: redis.Redis, server: RedisServer
) -> None:
    assert backend.persistence_warnings() == [NO_PERSISTENCE.format(url=server.url)]
    admin.config_set("save", "900 1")
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert backend.persistence_warnings() == [
            f"Redis at {server.url} persists only RDB snapshots (appendonly no, save '900 1'): "
            "a crash loses every write since the last snapshot, so the fencing epoch and the run "
            "state go back in time and runs already published can be published again; enable "
            "AOF (appendonly yes in redis.conf, or CONFIG SET appendonly yes)",
            f"Redis at {server.url} evicts keys when memory is full (maxmemory-policy "
            "allkeys-lru): the lease, the run state or queued runs can vanish without an error, "
            "so runs can be skipped or repeated; set maxmemory-policy noeviction (in redis.conf, "
            "or CONFIG SET)",
        ]
    finally:
        admin.config_set("save", "")
        admin.config_set("maxmemory-policy", "noeviction")


# --- queues: bands, delays, reclaim --------------------------------------------------------


def test_priority_bands_are_read_highest_first_then_oldest_across_queues(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    for entry, queue, priority in [
        ("p0", "q1", 0),
        ("p9", "q2", 9),
        ("none", "q1", None),
        ("p3", "q2", 3),
        ("p7", "q1", 7),
        ("p4", "q2", 4),
        ("p6", "q1", 6),
    ]:
        backend.enqueue([message(entry, 1, queue=queue, priority=priority)])
        # stream ids are Redis's milliseconds: across queues, age is to the ms, so the next
        # message waits for the next millisecond on Redis's clock
        enqueued_by = redis_ms(admin)
        wait_for(lambda t=enqueued_by: redis_ms(admin) > t, timeout=5, what="Redis's clock")
    assert {k: admin.xlen(k) for k in sorted(admin.keys("beatd:queue:*"))} == {
        "beatd:queue:q1:high": 1,
        "beatd:queue:q1:low": 1,
        "beatd:queue:q1:normal": 2,
        "beatd:queue:q2:high": 1,
        "beatd:queue:q2:low": 1,
        "beatd:queue:q2:normal": 1,
    }
    assert backend.queue_depths() == {"q1": 4, "q2": 3}
    order = []
    while (delivery := backend.claim(["q1", "q2"], "w", 30)) is not None:
        order.append((delivery.id.split("@")[0], delivery.queue))
        backend.ack(delivery)
    assert order == [
        ("p9", "q2"),
        ("p7", "q1"),
        ("none", "q1"),
        ("p4", "q2"),
        ("p6", "q1"),
        ("p0", "q1"),
        ("p3", "q2"),
    ]
    assert backend.queue_depths() == {}


def test_retry_waits_in_the_delayed_set_then_returns_to_its_band(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    backend.enqueue([message("e", 1, priority=8)])
    first = backend.claim(["default"], "w", 30)
    assert first is not None
    backend.retry(first, '{"attempt": 2}', 0.6)
    assert admin.zcard("beatd:delayed:default") == 1
    assert admin.xlen("beatd:queue:default:high") == 0
    assert backend.queue_depths() == {"default": 1}
    assert backend.claim(["default"], "w", 30) is None
    again = wait_for(lambda: backend.claim(["default"], "w", 30), timeout=5, what="the delay")
    assert (again.id, again.body, again.deliveries) == (first.id, '{"attempt": 2}', 1)
    assert admin.zcard("beatd:delayed:default") == 0
    assert admin.xlen("beatd:queue:default:high") == 1
    backend.retry(again, '{"attempt": 3}', 0)  # no delay: straight back into the stream
    third = backend.claim(["default"], "w", 30)
    assert third is not None and (third.body, third.deliveries) == ('{"attempt": 3}', 1)


def test_a_delayed_retry_that_cannot_be_read_is_dead_lettered_and_claims_go_on(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    raw = redis.Redis(port=admin.connection_pool.connection_kwargs["port"])
    junk = [b"not json", b'{"a": 1}', b'[7, "x@1", "{}", "n"]', b'[1, 2, 3, "n"]', b"\xed\xa0"]
    raw.zadd("beatd:delayed:default", {member: 0 for member in junk})
    backend.enqueue([message("e", 1)])
    good = backend.claim(["default"], "w", 30)
    assert good is not None and good.id == "e@2026-03-01T12:01:00Z"
    assert backend.claim(["default"], "w", 30) is None
    assert admin.zcard("beatd:delayed:default") == 0
    letters = sorted((d.body, d.reason) for d in backend.dead_letters())
    reason = "a delayed retry that is not [band, id, body, nonce] JSON"
    assert letters == sorted((member.decode(errors="replace"), reason) for member in junk)
    assert admin.hgetall("beatd:dead-count") == {"default": "5"}  # counted in the claim's step
    raw.close()


def test_lapsed_claims_are_taken_over_with_counted_deliveries(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    stream = "beatd:queue:default:normal"
    backend.enqueue([message("e", 1)])
    first = backend.claim(["default"], "w1", 0.3)
    assert first is not None and first.deliveries == 1
    assert pending(admin, stream) == [("w1", 1)]
    # XAUTOCLAIM takes it once the claim lapses, and counts the delivery
    second = wait_for(lambda: backend.claim(["default"], "w2", 0.3), timeout=5, what="lapse")
    assert second.deliveries == 2
    assert pending(admin, stream) == [("w2", 2)]
    third = wait_for(lambda: backend.claim(["default"], "w3", 30), timeout=5, what="lapse")
    assert third.deliveries == 3
    assert pending(admin, stream) == [("w3", 3)]
    idle = admin.xpending_range(stream, "workers", "-", "+", 1)[0]["time_since_delivered"]
    assert RECLAIM_IDLE_MS - 30_000 <= idle < RECLAIM_IDLE_MS - 29_000
    assert backend.claim(["default"], "w4", 30) is None  # the third claim's own 30 s hold
    backend.release(third)  # handing it back does not count as a delivery
    fourth = backend.claim(["default"], "w4", 30)
    assert fourth is not None and (fourth.id, fourth.deliveries) == (first.id, 3)
    assert pending(admin, stream) == [("w4", 1)]
    assert [f["d"] for _, f in admin.xrange(stream)] == ["2"]


def test_a_deposed_claimant_changes_nothing(backend: RedisBackend, admin: redis.Redis) -> None:
    stream = "beatd:queue:default:normal"
    backend.enqueue([message("e", 1)])
    first = backend.claim(["default"], "w1", 0.3)
    assert first is not None
    # the same worker name claims it again: the receipt's claim count tells the claims apart
    second = wait_for(lambda: backend.claim(["default"], "w1", 30), timeout=5, what="lapse")
    assert second.deliveries == 2
    before = admin.xrange(stream)
    assert not backend.extend(first, 30)
    backend.ack(first)
    backend.release(first)
    backend.retry(first, "{}", 0)
    backend.dead_letter(first, "boom")
    assert admin.xrange(stream) == before
    assert pending(admin, stream) == [("w1", 2)]
    assert backend.dead_letters() == []
    assert admin.zcard("beatd:delayed:default") == 0
    backend.ack(second)
    assert backend.queue_depths() == {}
    assert admin.xlen(stream) == 0


def test_dead_letters_added_by_a_migration_read_back_and_requeue(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    failed = datetime(2026, 3, 1, 12, 0, 0, 125000, tzinfo=UTC)
    letters = [
        DeadLetter("e@2026-03-01T12:00:00Z", "q1", '{"a": 1}', "boom", failed, 3),
        DeadLetter("f@2026-03-01T12:00:00Z", "q2", '{"b": 2}', "expired", failed, 1),
    ]
    backend.add_dead_letters(letters)
    assert backend.dead_letters() == letters
    assert backend.requeue_dead("f@2026-03-01T12:00:00Z") == 1
    delivery = backend.claim(["q2"], "w", 30)
    assert delivery is not None
    assert (delivery.id, delivery.body, delivery.deliveries) == (letters[1].id, '{"b": 2}', 1)
    assert backend.dead_letters() == letters[:1]
    assert admin.hgetall("beatd:dead-count") == {"q1": "1"}


def test_dead_letters_are_counted_per_queue_in_the_steps_that_add_and_remove_them(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    backend.enqueue([message("a", 1, "q1"), message("b", 1, "q1"), message("c", 1, "q2")])
    for _ in range(3):
        delivery = backend.claim(["q1", "q2"], "w", 30)
        assert delivery is not None
        backend.dead_letter(delivery, "boom")
    assert admin.hgetall("beatd:dead-count") == {"q1": "2", "q2": "1"}
    [q2] = [letter for letter in backend.dead_letters() if letter.queue == "q2"]
    assert backend.delete_dead(q2.id) == 1
    assert admin.hgetall("beatd:dead-count") == {"q1": "2"}  # a queue with none: no field
    # the counts are what is read, not the letters: a count that agrees with the stream's
    # length is believed (here one set by hand to another queue's name)
    admin.hset("beatd:dead-count", mapping={"elsewhere": 2})
    admin.hdel("beatd:dead-count", "q1")
    assert backend.dead_letter_counts() == {"elsewhere": 2}


def test_dead_letters_written_without_counts_are_read_until_a_fresh_take_recounts_them(
    backend: RedisBackend, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker of format 2 (or a namespace not yet upgraded) adds dead letters without their
    counts: the sum of the counts is then not the stream's length, so they are counted by
    reading the letters, and the next fresh take of the lease makes the counts again."""
    backend.enqueue([message("a", 1, "q1")])
    delivery = backend.claim(["q1"], "w", 30)
    assert delivery is not None
    backend.dead_letter(delivery, "boom")
    for queue in ("q1", "q2", "q2"):  # as DEAD_LETTER of format 2 wrote them
        admin.xadd(
            "beatd:dead",
            {
                "id": "x",
                "queue": queue,
                "band": 1,
                "body": "{}",
                "reason": "old",
                "deliveries": 1,
                "failed_at": 0,
            },
        )
    assert admin.hgetall("beatd:dead-count") == {"q1": "1"}
    assert backend.dead_letter_counts() == {"q1": 2, "q2": 2}
    assert backend.dead_letter_counts() == {"q1": 2, "q2": 2}
    said = [r.getMessage() for r in caplog.records if r.name == "beatd.backends.redis_queue"]
    assert said == [  # once per handle
        f"Redis at {backend.url}: the dead letters' counts per queue (beatd:dead-count) add up "
        "to 1, but beatd:dead holds 4 letters: a worker of an older beatd added or removed "
        "letters without counting them. Status and the metrics scrape read every letter to "
        "count them until the next fresh take of the lease counts them again; upgrade every "
        "worker"
    ]
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    assert admin.hgetall("beatd:dead-count") == {"q1": "2", "q2": "2"}
    assert backend.dead_letter_counts() == {"q1": 2, "q2": 2}
    assert backend.delete_dead("x") == 3
    assert admin.hgetall("beatd:dead-count") == {"q1": "1"}


def test_bodies_travel_unchanged_through_every_path(backend: RedisBackend) -> None:
    body = '{"k": "é 🎉 \\"quoted\\" back\\\\slash /\\n\\u0001 ✓", "n": [1, null]}'
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    outgoing = Outgoing("e", "e@1", BeatdQueue("default"), body)
    backend.commit(lease, [StateWrite(state("e", 1, 1), None)], [outgoing])
    first = backend.claim(["default"], "w", 30)
    assert first is not None and first.body == body
    backend.retry(first, body + " ", 0.05)
    again = wait_for(lambda: backend.claim(["default"], "w", 30), timeout=5, what="the delay")
    assert again.body == body + " "
    backend.dead_letter(again, "boom ✗")
    assert [(d.body, d.reason) for d in backend.dead_letters()] == [(body + " ", "boom ✗")]
    backend.requeue_dead(None)
    last = backend.claim(["default"], "w", 30)
    assert last is not None and last.body == body + " "


def test_commit_carries_any_json_body_unchanged(backend: RedisBackend) -> None:
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    bodies = ['{"note":"naïve \\"quoted\\" \\u001e"}', "{}", '{"emoji":"🕐","nl":"a\\nb"}']
    writes = [StateWrite(state(f"e{i}", 0), None) for i in range(3)]
    outgoing = [
        Outgoing(f"e{i}", f"e{i}@1", BeatdQueue("default"), b) for i, b in enumerate(bodies)
    ]
    assert backend.commit(lease, writes, outgoing) == set()
    claimed = [backend.claim(["default"], "w", 30) for _ in bodies]
    assert [d.body for d in claimed if d is not None] == bodies


def test_commit_refuses_a_body_that_is_not_json_text(backend: RedisBackend) -> None:
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    with pytest.raises(BackendError) as caught:
        backend.commit(
            lease,
            [StateWrite(state("e", 0), None)],
            [Outgoing("e", "e@1", BeatdQueue("default"), "raw\x1ebytes")],
        )
    assert str(caught.value) == "a message body holds U+001E: bodies are JSON, which never does"
    assert backend.load_states() == {} and backend.queue_depths() == {}


def test_a_call_redis_py_cannot_encode_returns_its_connection(backend: RedisBackend) -> None:
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    unencodable = Outgoing("e", "e@1", BeatdQueue("default"), '{"x":"\ud800"}')
    for _ in range(3):
        with pytest.raises(UnicodeEncodeError):
            backend.commit(lease, [StateWrite(state("e", 0), None)], [unencodable])
    pool = backend._redis.connection_pool
    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    assert backend.load_states() == {}


# --- the run history's memory -------------------------------------------------------------


def test_a_run_record_with_its_attempts_keeps_redis_compact_hash_encoding(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    """Redis keeps the history in memory: a record whose values all fit
    hash-max-listpack-value (64 bytes) is a listpack, about half the bytes of a hashtable
    (docs/history.md). A run retried once on an error and then succeeded, with a worker's real
    consumer name, stays one."""
    lease = backend.acquire_lease("beat-node-01.example.com", 10)
    assert lease is not None
    slot = datetime.fromtimestamp(backend.server_time() // 60 * 60, UTC)  # a slot of now
    entry = "nightly-report-for-the-finance-team"
    run = Outgoing(entry, f"{entry}@1", BeatdQueue("default"), "{}", slot, slot)
    assert backend.commit(lease, [StateWrite(state(entry, 0), None)], [run]) == set()
    consumer = "worker-host-01.example.com-123456"
    first = backend.claim(["default"], consumer, 30)
    assert first is not None
    backend.retry(first, "{}", 0, Ending.failure(Outcome.RETRIED, "TimeoutError", "timed out"))
    again = backend.claim(["default"], consumer, 30)
    assert again is not None
    backend.ack(again)
    record = backend.run(f"{entry}@1")
    assert record is not None and [a.outcome for a in record.attempts] == ["retried", "succeeded"]
    assert admin.object("encoding", f"beatd:h:run:{entry}@1") == "listpack"


def test_with_history_off_a_pause_still_fails_a_commit_by_the_due_times_the_client_sends(
    history_off_backend: RedisBackend,
) -> None:
    """Without the history's p fields the client sends each message's due time for the pause
    check (redis_controls.commit_controls); a run due before the pause passes."""
    off = history_off_backend
    lease = off.acquire_lease("a", 30)
    assert lease is not None
    [audit] = off.pause(["e"], "r", None, "ops")
    paused_at = datetime.fromisoformat(audit.after["pause"]["at"])
    later = paused_at + timedelta(seconds=5)
    earlier = paused_at - timedelta(seconds=5)
    covered = Outgoing("e", "e@later", BeatdQueue("q"), "{}", later, later)
    before = Outgoing("e", "e@earlier", BeatdQueue("q"), "{}", earlier, earlier)
    assert off.commit(lease, [], [covered]) == {"e"}
    assert off.commit(lease, [], [before]) == set()
    assert off.queue_depths() == {"q": 1}


def published_run(entry: str) -> Outgoing:
    """A run of `entry` at 2026-03-01 12:00 as a leader publishes it: with its slot (a record)."""
    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    return Outgoing(entry, f"{entry}@1", BeatdQueue("default"), "{}", slot, slot)


def test_a_commit_logs_its_records_in_one_element_that_a_read_folds(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    """The commit appends one log record for all its runs (no key per run); a read of the
    summaries leaves it (a published record changes none), a read of the runs folds it."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    names = [f"e{i}" for i in range(100)]
    writes = [StateWrite(state(n, 0), None) for n in names]
    assert backend.commit(lease, writes, [published_run(n) for n in names]) == set()
    # P, the published time, the node, the messages, their p, the entries skipped
    assert admin.llen("beatd:h:published") == 6
    assert admin.keys("beatd:h:run:*") == []
    assert backend.summaries() == {}
    assert admin.llen("beatd:h:published") == 6
    assert backend.history_size() == (100, 0)
    assert admin.llen("beatd:h:published") == 0
    record = backend.run("e7@1")
    assert record is not None and record.entry == "e7" and record.node == "a"


def test_a_workers_claims_fold_the_attempts_log_only_past_its_bound(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    """Workers fold what they log: after every FOLD_EVERY log records of its own, a claim folds
    a batch if the attempts' log holds more than FOLD_BOUND elements (a batch), and leaves it
    alone otherwise. The batch is FOLD_BATCH starts and ends, the oldest, with their runs'
    published records taken off the published log as they need them: each of those runs is
    written once, published record and attempt together; the runs of that published record
    that no start or end of the batch names go back to the published log's head."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    runs = FOLD_EVERY // 2 + 1  # the last claim is the first after FOLD_EVERY records
    names = [f"e{i}" for i in range(2 * runs)]
    writes = [StateWrite(state(n, 0), None) for n in names]
    assert backend.commit(lease, writes, [published_run(n) for n in names]) == set()

    def work_off() -> None:
        for _ in range(runs):
            delivery = backend.claim(["default"], "w", 30)
            assert delivery is not None
            backend.ack(delivery)

    work_off()
    per_run = 6 + 7  # a start and an end
    assert admin.llen("beatd:h:attempts") == runs * per_run  # under the bound: not folded
    assert admin.llen("beatd:h:published") == 6
    nobody = ["E", "nobody@1", "0", "succeeded", "", "", ""]  # an end of a run with no record
    filler = FOLD_BOUND // len(nobody) + 1
    admin.rpush("beatd:h:attempts", *nobody * filler)
    before = admin.llen("beatd:h:attempts")
    work_off()  # a claim finds the log past the bound: it folds FOLD_BATCH starts and ends,
    # the first runs' (with their published records) then as many of the filler's ends
    fillers = FOLD_BATCH - 2 * runs
    folded = runs * per_run + fillers * len(nobody)
    assert admin.llen("beatd:h:attempts") == before + runs * per_run - folded
    assert admin.hmget("beatd:h:run:e0@1", "e", "n", "c1") == ["e0", "1", "w"]
    assert admin.exists(f"beatd:h:run:{names[runs]}@1") == 0  # not claimed before that fold:
    assert admin.llen("beatd:h:published") == 6  # back in the log, in one record
    assert backend.summaries()[names[0]].last_status == "succeeded"
    assert (admin.llen("beatd:h:published"), admin.llen("beatd:h:attempts")) == (0, 0)
    record = backend.run(f"{names[-1]}@1")
    assert record is not None and record.entry == names[-1] and record.status == "succeeded"
    assert backend.history_size() == (2 * runs, 0)


def test_a_start_whose_published_record_is_past_the_pull_budget_waits_for_the_next_batch(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    """A fold pulls published records off the log until the run a start names is among them,
    up to about a batch of runs; past that the start waits at the head of the attempts' log and
    the runs pulled go into the records (so every batch makes progress): the next batch finds
    the run, and its record has the published fields and the attempt."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    size = FOLD_BATCH * 6 // 10
    for c in range(3):  # three published records of `size` runs each
        names = [f"c{c}-e{i}" for i in range(size)]
        writes = [StateWrite(state(n, 0), None) for n in names]
        assert backend.commit(lease, writes, [published_run(n) for n in names]) == set()
    assert admin.llen("beatd:h:published") == 3 * 6
    last = f"c2-e{size - 1}@1"
    admin.rpush("beatd:h:attempts", "S", last, "w", "host", "1", "1772366700000000")
    fold = SCRIPTS["fold"]
    assert admin.eval(fold.source, 0, "beatd:", "0") == 6 + 6  # the start, the third record
    assert admin.exists("beatd:h:run:c1-e0@1") == 1  # the two pulled: in the records
    assert admin.exists(f"beatd:h:run:{last}") == 0
    assert admin.eval(fold.source, 0, "beatd:", "0") == 0
    fields = admin.hmget(f"beatd:h:run:{last}", "e", "n", "c1")
    assert fields == [f"c2-e{size - 1}", "1", "w"]
    assert backend.history_size() == (3 * size, 0)


def test_a_mark_folds_a_log_longer_than_a_batch_before_it_reads_the_record(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    """The scripts that read a record to write it fold a batch a call and reply FOLDMORE, doing
    nothing else, until the logs are empty: the backend calls them again until they act."""
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    assert backend.commit(lease, [StateWrite(state("e", 0), None)], [published_run("e")]) == set()
    nobody = ["E", "nobody@1", "0", "succeeded", "", "", ""]  # an end of a run with no record
    admin.rpush("beatd:h:attempts", *nobody * (FOLD_BATCH + 500))
    assert backend.mark_overdue("e@1", datetime(2026, 3, 1, 12, 5, tzinfo=UTC))
    assert (admin.llen("beatd:h:published"), admin.llen("beatd:h:attempts")) == (0, 0)
    record = backend.run("e@1")
    assert record is not None and record.overdue_at == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
