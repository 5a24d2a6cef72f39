"""Runs of Celery entries with an AMQP destination go to the outbox, scheduled or triggered,
in the backend's atomic commit; nothing here needs RabbitMQ."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from beatd.backends.sqlite import SQLiteBackend
from beatd.celery_amqp import OUTBOX_QUEUE, decode
from beatd.cli import main

SCHEDULE = """\
queues:
  reports:
    protocol: celery
    amqp: {url: "amqp://app@rabbit.internal/prod", exchange: tasks}
entries:
  nightly:
    task: reports.nightly
    cron: "0 2 * * *"
    queue: reports
    priority: 7
    expires: 10m
    args: [eu]
"""


def amqp_schedule(folder: Path) -> Path:
    """SCHEDULE written to `folder`/s.yaml: a Celery entry whose runs go to RabbitMQ."""
    schedule = folder / "s.yaml"
    schedule.write_text(SCHEDULE)
    return schedule


def test_a_triggered_run_goes_to_the_outbox_routed_as_configured(tmp_path: Path) -> None:
    schedule = amqp_schedule(tmp_path)
    db = tmp_path / "b.db"
    result = CliRunner().invoke(
        main, ["trigger", "nightly", "-s", str(schedule), "--broker", f"sqlite:///{db}"]
    )
    assert result.exit_code == 0, result.output
    backend = SQLiteBackend(db)
    try:
        assert backend.queue_depths() == {OUTBOX_QUEUE: 1}
        delivery = backend.claim([OUTBOX_QUEUE], "test", 30)
        assert delivery is not None
        run = decode(delivery.body)
    finally:
        backend.close()
    assert delivery.id == run.id and run.id.startswith("nightly@manual-")
    assert (run.broker, run.exchange, run.routing_key, run.queue, run.priority) == (
        "amqp://app@rabbit.internal:5672/prod",
        "tasks",
        "reports",
        "reports",
        7,
    )
    assert (run.headers["task"], run.headers["beatd_kind"], run.body) == (
        "reports.nightly",
        "manual",
        '[["eu"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
    )
    expires = datetime.fromisoformat(run.headers["expires"])
    assert expires - run.published_at == timedelta(minutes=10)
    properties = run.properties(run.published_at + timedelta(minutes=4))
    assert properties == {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "correlation_id": run.id,
        "reply_to": "",
        "delivery_mode": 2,
        "headers": run.headers,
        "priority": 7,
        "expiration": "360000",
    }
    assert run.properties(expires + timedelta(seconds=1))["expiration"] == "0"


def test_check_accepts_amqp_entries_on_sqlite(tmp_path: Path) -> None:
    schedule = amqp_schedule(tmp_path)
    result = CliRunner().invoke(main, ["check", "-s", str(schedule)])
    assert result.exit_code == 0, result.output


def test_outbox_messages_no_relay_can_send_are_dead_lettered_with_why(tmp_path: Path) -> None:
    import json

    from beatd.amqp_link import Logins
    from beatd.amqp_relay import AmqpRelay
    from beatd.backends.base import BeatdQueue, Outgoing
    from beatd.clock import SystemClock

    schedule = amqp_schedule(tmp_path)
    db = tmp_path / "b.db"
    broker = ["trigger", "nightly", "-s", str(schedule), "--broker", f"sqlite:///{db}"]
    assert CliRunner().invoke(main, broker).exit_code == 0
    backend = SQLiteBackend(db)
    try:
        good = backend.claim([OUTBOX_QUEUE], "test", 30)
        assert good is not None
        backend.release(good)
        newer = json.dumps({**json.loads(good.body), "format": 2})
        elsewhere = json.dumps({**json.loads(good.body), "broker": "redis://h/0"})
        outbox = BeatdQueue(OUTBOX_QUEUE)
        backend.enqueue([Outgoing("nightly", "x@1", outbox, newer)])
        backend.enqueue([Outgoing("nightly", "x@2", outbox, elsewhere)])
        backend.ack(backend.claim([OUTBOX_QUEUE], "test", 30))  # the good one: not this test's
        relay = AmqpRelay(lambda: backend, Logins().link, SystemClock())
        assert (relay.relay_one(), relay.relay_one(), relay.relay_one()) == (True, True, False)
        reasons = {d.id: d.reason for d in backend.dead_letters()}
    finally:
        backend.close()
    assert relay.stats.unreadable == 2
    assert reasons == {
        "x@1": "outbox format 2, this beatd reads 1",
        "x@2": "cannot use AMQP URL redis://h/0: the scheme must be amqp://, amqps:// or pyamqp://",
    }
