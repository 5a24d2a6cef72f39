"""Hearing Celery's task events on a real redis-server: the channels kombu's Redis fanout uses,
the payloads as published (bytes), an outage and a restart, a frozen server, and the ACL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from beatd.backends.base import CeleryQueue, HearsCeleryEvents, Outgoing, StateWrite
from beatd.backends.redis import RedisBackend
from beatd.backends.redis_events import PING_AFTER
from beatd.celery_listener import CeleryEventListener
from beatd.clock import FakeClock
from beatd.errors import BackendError, NotApplied, OutcomeUnknown, TransientBackendError
from beatd.history import RunStatus
from beatd.state import EntryState
from tests.backends.test_redis import documented_acl
from tests.redis_server import RedisServer
from tests.waiting import wait_for

FIXTURES = Path(__file__).parents[1] / "fixtures" / "celery_events"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path / "redis").start()
    yield started
    started.stop()


def captured() -> list[tuple[str, bytes]]:
    lines = (FIXTURES / "prefork.jsonl").read_text().splitlines()
    return [(d["channel"], d["data"].encode()) for d in map(json.loads, lines)]


def heard(backend: RedisBackend, count: int, timeout: float = 5.0) -> list[bytes]:
    found: list[bytes] = []
    wait_for(lambda: found.extend(backend.celery_events(0.2)) or len(found) >= count, timeout)
    return found


def test_the_task_channels_of_the_brokers_database_and_nothing_else(
    server: RedisServer,
) -> None:
    backend = RedisBackend(server.url.replace("/0", "/2"))
    assert isinstance(backend, HearsCeleryEvents)
    assert backend.celery_events(0.05) == []  # subscribed now
    admin = server.client()
    (channel, data), *_ = captured()
    admin.publish(channel.replace("/0.", "/2."), data)  # kombu's default layout
    admin.publish("/2.celeryev", b"\xff not text")  # without fanout_patterns; any bytes
    for elsewhere in ("/0.celeryev/task.multi", "/2.celeryev/worker.heartbeat", "celeryev"):
        admin.publish(elsewhere, b"not for beatd")
    assert heard(backend, 2) == [data, b"\xff not text"]
    assert backend.celery_events(0.2) == []
    backend.stop_celery_events()
    backend.stop_celery_events()  # idempotent
    admin.publish(channel.replace("/0.", "/2."), data)  # nobody listens: lost
    assert backend.celery_events(0.2) == []  # subscribed again
    backend.close()


def test_a_burst_comes_back_in_order_in_few_calls(server: RedisServer) -> None:
    backend = RedisBackend(server.url)
    backend.celery_events(0.01)
    with server.client().pipeline(transaction=False) as pipe:
        for n in range(2500):
            pipe.publish("/0.celeryev/task.multi", str(n))
        pipe.execute()
    got = heard(backend, 2500)
    assert [int(x) for x in got] == list(range(2500))
    backend.close()


def test_a_restarted_redis_is_subscribed_to_again(server: RedisServer) -> None:
    backend = RedisBackend(server.url, op_timeout=0.5)
    backend.celery_events(0.01)
    server.kill()
    with pytest.raises(TransientBackendError):
        backend.celery_events(1.0)
    with pytest.raises(NotApplied):  # refused: nothing to subscribe to
        backend.celery_events(0.1)
    server.start()
    assert backend.celery_events(0.1) == []
    server.client().publish("/0.celeryev/task.started", b"after")
    assert heard(backend, 1) == [b"after"]
    backend.close()


def test_a_frozen_redis_is_noticed_by_its_unanswered_ping(server: RedisServer) -> None:
    backend = RedisBackend(server.url, op_timeout=0.5)
    backend.celery_events(0.01)
    server.pause()
    try:
        with pytest.raises(OutcomeUnknown) as caught:
            for _ in range(int(PING_AFTER / 0.5) + 4):
                backend.celery_events(0.5)
        assert str(caught.value) == (f"{backend.url}: celery events: no reply to PING within 0.5 s")
    finally:
        server.resume()
    assert backend.celery_events(0.05) == []  # subscribed again
    backend.close()


def test_the_documented_acl_user_hears_the_events(server: RedisServer) -> None:
    admin = server.client()
    admin.execute_command(*documented_acl("beatd", "s3cret"))
    backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
    backend.celery_events(0.01)
    admin.publish("/0.celeryev/task.multi", b"x")
    assert heard(backend, 1) == [b"x"]
    backend.close()


def test_a_refused_subscription_names_the_acl_fix(server: RedisServer) -> None:
    admin = server.client()
    acl = [w for w in documented_acl("beatd", "s3cret") if not w.startswith("&/0.celeryev")]
    admin.execute_command(*acl)
    backend = RedisBackend(f"redis://beatd:s3cret@127.0.0.1:{server.port}/0")
    with pytest.raises(BackendError) as refused:
        backend.celery_events(0.01)
    assert not isinstance(refused.value, TransientBackendError)
    cause = refused.value.__cause__
    assert cause is not None and isinstance(cause.__cause__, redis.exceptions.NoPermissionError)
    assert str(refused.value) == (
        f"{backend.url}: PSUBSCRIBE to Celery's event channels /0.celeryev/task.*, /0.celeryev "
        f"refused ({cause.__cause__}): the outcomes of Celery runs are not recorded and their "
        "history shows them unknown; grant the patterns to beatd's ACL user: add "
        "&/0.celeryev/task.* &/0.celeryev to its ACL SETUSER line (docs/redis.md)"
    )
    backend.close()


def test_events_sent_while_nobody_listens_are_lost_and_the_run_stays_unknown(
    server: RedisServer,
) -> None:
    """The documented limit: pub/sub keeps nothing for a leader that subscribes later."""
    backend = RedisBackend(server.url)
    lease = backend.acquire_lease("n1", 60)
    assert lease is not None
    slot = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
    write = StateWrite(EntryState("c", slot, slot, "once"), None)
    run = Outgoing("c", "c@1", CeleryQueue("celery"), "{}", slot, slot)
    assert backend.commit(lease, [write], [run]) == set()
    event = {"type": "task-received", "uuid": "c@1", "hostname": "celery@w", "timestamp": 9.0}
    body = base64.b64encode(json.dumps([event]).encode()).decode()
    payload = json.dumps(
        {
            "body": body,
            "content-type": "application/json",
            "properties": {"body_encoding": "base64"},
        }
    )
    admin = server.client()
    admin.publish("/0.celeryev/task.multi", payload)  # before anyone subscribed
    ear = CeleryEventListener(backend, backend, FakeClock(slot), poll=0.05)
    ear.handle(backend.celery_events(0.2))
    record = backend.run("c@1")
    assert record is not None and record.status == RunStatus.UNKNOWN
    admin.publish("/0.celeryev/task.multi", payload)  # now the leader listens
    wait_for(lambda: ear.handle(backend.celery_events(0.2)) or ear.stats.recorded == 1, 5)
    record = backend.run("c@1")
    assert record is not None and record.status == RunStatus.QUEUED
    assert record.received_at == datetime.fromtimestamp(9.0, UTC)
    backend.close()
