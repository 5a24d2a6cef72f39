"""Celery's task events decoded as real workers publish them on Redis (captured payloads in
tests/fixtures/celery_events, see its README), and what each means for the run history."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from beatd.celery_events import (
    AmqpMessage,
    TaskEvent,
    Undecodable,
    channel_patterns,
    decode,
    ending_of,
    may_be_beatds,
    split_exception,
)
from beatd.history import Ending
from beatd.outcomes import Outcome

FIXTURES = Path(__file__).parent / "fixtures" / "celery_events"
FOREIGN = "0b1e6a3c-9d43-4d7e-a6a7-1c2d3e4f5a6b"


def captured(pool: str) -> list[tuple[str, str]]:
    lines = (FIXTURES / f"{pool}.jsonl").read_text().splitlines()
    return [(d["channel"], d["data"]) for d in map(json.loads, lines)]


def events_of(pool: str) -> list[TaskEvent]:
    return [event for _, data in captured(pool) for event in decode(data)]


def envelope(body: Any, content_type: str = "application/json", **kw: Any) -> str:
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    properties = {"body_encoding": "base64", "delivery_info": {"exchange": "celeryev"}}
    return json.dumps(
        {"body": encoded, "content-type": content_type, "properties": properties, **kw}
    )


def test_the_channels_of_kombus_redis_fanout_for_the_brokers_database() -> None:
    assert channel_patterns(0) == ("/0.celeryev/task.*", "/0.celeryev")
    assert channel_patterns(3, "ev[1]*") == ("/3.ev\\[1\\]\\*/task.*", "/3.ev\\[1\\]\\*")
    channels = {channel for pool in ("prefork", "solo") for channel, _ in captured(pool)}
    assert channels == {"/0.celeryev/task.multi"}  # what the pattern must match, and did


def test_a_prefork_workers_batches_decode_in_the_order_it_sent_them() -> None:
    events = events_of("prefork")
    assert [(e.type.removeprefix("task-"), e.uuid) for e in events] == [
        ("received", "ok@1"),
        ("received", "fail@1"),
        ("received", "retry@1"),
        ("started", "ok@1"),
        ("succeeded", "ok@1"),
        ("revoked", "exp@1"),
        ("received", "slow@1"),
        ("started", "fail@1"),
        ("received", FOREIGN),
        ("failed", "fail@1"),
        ("started", "retry@1"),
        ("received", "retry@1"),  # the retry's message, before the first attempt's end
        ("retried", "retry@1"),
        ("started", "slow@1"),
        ("failed", "slow@1"),
        ("failed", "slow@1"),  # a time-limit kill is reported twice
        ("started", FOREIGN),
        ("succeeded", FOREIGN),
        ("started", "retry@1"),
        ("succeeded", "retry@1"),
    ]
    first = events[0]
    assert (first.hostname, first.host, first.pid) == ("w1@test", "test", 23518)
    assert first.at == datetime(2026, 12, 5, 1, 29, 3, 8224, tzinfo=UTC)
    assert all(e.at.tzinfo is UTC for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


def endings(pool: str) -> dict[tuple[str, str], Ending]:
    found = {}
    for event in events_of(pool):
        ending = ending_of(event)
        if ending is not None and may_be_beatds(event.uuid):
            found[event.uuid, event.type] = ending
    return found


def test_how_each_attempt_ended_in_the_workers_own_words() -> None:
    assert endings("prefork") == {
        ("ok@1", "task-succeeded"): Ending(Outcome.SUCCEEDED),
        ("exp@1", "task-revoked"): Ending(Outcome.EXPIRED, "expired"),
        ("fail@1", "task-failed"): Ending(Outcome.FAILED, "", "ValueError", "boom 'x'\nline2"),
        ("retry@1", "task-retried"): Ending(Outcome.RETRIED, "", "KeyError", "again"),
        ("slow@1", "task-failed"): Ending(
            Outcome.FAILED, "time_limit", "TimeLimitExceeded", "TimeLimitExceeded(1,)"
        ),
        ("retry@1", "task-succeeded"): Ending(Outcome.SUCCEEDED),
    }
    # the solo pool names Celery's Retry wrapper: its traceback says what it retries for
    solo = endings("solo")
    assert solo["retry@1", "task-retried"] == Ending(Outcome.RETRIED, "", "KeyError", "again")
    assert solo["slow@1", "task-succeeded"] == Ending(Outcome.SUCCEEDED)


def test_a_revoked_task_killed_while_running_ends_expired_revoked() -> None:
    event = {"type": "task-revoked", "uuid": "e@1", "hostname": "celery@h", "timestamp": 1.5}
    [revoked] = decode(envelope({**event, "terminated": True, "signum": 15, "expired": False}))
    assert ending_of(revoked) == Ending(Outcome.EXPIRED, "revoked")
    assert revoked.pid is None and revoked.terminated


def test_one_event_per_message_without_batches_nor_base64() -> None:
    """A worker without an event loop sends each event alone; a body may come unencoded."""
    event = {"type": "task-started", "uuid": "e@1", "hostname": "celery@h", "pid": 7}
    plain = json.dumps(
        {"body": json.dumps({**event, "timestamp": 0}), "content-type": "application/json"}
    )
    assert decode(plain) == [
        TaskEvent("task-started", "e@1", "celery@h", 7, datetime(1970, 1, 1, tzinfo=UTC))
    ]


def amqp(body: Any, content_type: str | None = "application/json", **kw: Any) -> AmqpMessage:
    """A message as RabbitMQ delivers a worker's event: the JSON itself, its type in the
    properties."""
    return AmqpMessage(json.dumps(body).encode(), content_type, kw.get("encoding", "utf-8"))


def test_an_amqp_message_is_the_event_itself_or_a_batch() -> None:
    """On RabbitMQ the body is not a kombu envelope: it is the event (or the batch) as JSON."""
    started = {"type": "task-started", "uuid": "e@1", "hostname": "celery@h", "pid": 7}
    expected = TaskEvent("task-started", "e@1", "celery@h", 7, datetime(1970, 1, 1, tzinfo=UTC))
    assert decode(amqp({**started, "timestamp": 0})) == [expected]
    heartbeat = {"type": "worker-heartbeat", "hostname": "celery@h", "timestamp": 1.0}
    batch = [{**started, "timestamp": 0}, heartbeat, {**started, "timestamp": 0, "uuid": "f@1"}]
    assert decode(amqp(batch)) == [expected, expected._replace(uuid="f@1")]
    # no content_encoding property: JSON is UTF-8
    assert decode(amqp({**started, "timestamp": 0}, encoding=None)) == [expected]


@pytest.mark.parametrize(
    ("message", "said"),
    [
        pytest.param(
            AmqpMessage(b"\x80\x04K\x01.", "application/x-python-serialize", "binary"),
            "the event is encoded as 'application/x-python-serialize', not application/json: "
            "set Celery's event_serializer to json (its default)",
            id="pickle",
        ),
        pytest.param(
            AmqpMessage(b"{}", None, None),
            "the event is encoded as None, not application/json: set Celery's event_serializer "
            "to json (its default)",
            id="no_content_type",
        ),
        pytest.param(
            AmqpMessage(b"\xff{", "application/json", "utf-8"),
            "the event body is not utf-8 JSON",
            id="not_utf8",
        ),
        pytest.param(
            AmqpMessage(b"{}", "application/json", "no-such-charset"),
            "the event body is not no-such-charset JSON",
            id="unknown_charset",
        ),
        pytest.param(
            amqp({"type": "task-succeeded", "hostname": "celery@h", "timestamp": 1}),
            "a task-succeeded event without its uuid or hostname",
            id="no_uuid",
        ),
    ],
)
def test_an_amqp_message_that_cannot_be_read_says_why(message: AmqpMessage, said: str) -> None:
    with pytest.raises(Undecodable) as caught:
        decode(message)
    text = str(caught.value)
    # the messages that quote the parser's own complaint end with it in parentheses
    assert text == said or (text.startswith(said + " (") and text.endswith(")"))


def test_worker_events_are_left_out() -> None:
    heartbeat = {"type": "worker-heartbeat", "hostname": "celery@h", "timestamp": 1.0}
    assert decode(envelope(heartbeat)) == []
    assert decode(envelope([heartbeat, {"type": "task-sent", "uuid": "x"}])) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"\xff{", "the message is not a JSON kombu envelope", id="not_utf8"),
        pytest.param("[1]", "the message is not a kombu envelope (no `body` text)", id="list"),
        pytest.param(
            json.dumps({"body": "gAN9cQ==", "content-type": "application/x-python-serialize"}),
            "the event is encoded as 'application/x-python-serialize', not application/json: "
            "set Celery's event_serializer to json (its default)",
            id="pickle",
        ),
        pytest.param(
            json.dumps(
                {
                    "body": "not base64!",
                    "content-type": "application/json",
                    "properties": {"body_encoding": "base64"},
                }
            ),
            "the event body is not base64 JSON",
            id="bad_base64",
        ),
        pytest.param(
            envelope({"type": "task-started", "hostname": "celery@h", "timestamp": 1}),
            "a task-started event without its uuid or hostname",
            id="no_uuid",
        ),
        pytest.param(
            envelope({"type": "task-failed", "uuid": "e@1", "hostname": "h", "timestamp": "x"}),
            "a task-failed event of task e@1 without its timestamp",
            id="bad_timestamp",
        ),
    ],
)
def test_what_cannot_be_read_says_why(payload: bytes | str, message: str) -> None:
    with pytest.raises(Undecodable) as caught:
        decode(payload)
    said = str(caught.value)
    # the messages that quote the parser's own complaint end with it in parentheses
    assert said == message or (said.startswith(message + " (") and said.endswith(")"))


@pytest.mark.parametrize(
    ("exception", "traceback", "expected"),
    [
        pytest.param("ValueError('boom')", "", ("ValueError", "boom"), id="plain"),
        pytest.param("KeyError(3)", "", ("KeyError", "3"), id="not_a_string"),
        pytest.param("Oops('a', 1)", "", ("Oops", "'a', 1"), id="several_arguments"),
        pytest.param("Oops()", "", ("Oops", ""), id="no_arguments"),
        pytest.param("mod.Oops('x')", "", ("Oops", "x"), id="qualified"),
        pytest.param("<object at 0x1>", "", ("", "<object at 0x1>"), id="not_a_repr"),
        pytest.param(
            "ExceptionWithTraceback()",
            "Traceback (most recent call last):\n  File x\n    raise E\n"
            "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(5,)\n",
            ("TimeLimitExceeded", "TimeLimitExceeded(5,)"),
            id="wrapped",
        ),
        pytest.param(
            "ExceptionWithTraceback()", "", ("ExceptionWithTraceback", ""), id="wrapped_no_tb"
        ),
        pytest.param(
            "Retry('at 2026-12-05 01:00:00+00:00', OSError(5, 'io'))",
            "Traceback (most recent call last):\n  File x\ncelery.exceptions.Retry: Retry at "
            "2026-12-05 01:00:00+00:00: OSError(5, 'io')\n",
            ("OSError", "5, 'io'"),
            id="retry_at",
        ),
        pytest.param("Retry()", "", ("Retry", ""), id="retry_without_exception"),
    ],
)
def test_an_exceptions_type_and_message(
    exception: str, traceback: str, expected: tuple[str, str]
) -> None:
    assert split_exception(exception, traceback) == expected


def test_a_long_failure_is_cut_as_the_history_keeps_it() -> None:
    event = {"type": "task-failed", "uuid": "e@1", "hostname": "h", "timestamp": 1}
    [failed] = decode(envelope({**event, "exception": f"ValueError({'x' * 5000!r})"}))
    ending = ending_of(failed)
    assert ending is not None and len(ending.error) == 1024 and ending.error.endswith("…")


def test_only_ids_with_an_at_can_be_beatds_runs() -> None:
    assert may_be_beatds("nightly@2026-12-05T01:00:00Z")
    assert not may_be_beatds(FOREIGN)
