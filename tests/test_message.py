from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from beatd.message import MessageError, RunMessage, run_id

SLOT = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def sample() -> RunMessage:
    published = SLOT + timedelta(seconds=0.25)
    return RunMessage(
        id=run_id("nightly", SLOT),
        task="reports.nightly",
        entry="nightly",
        scheduled_for=SLOT,
        published_at=published,
        queue="reports",
        args=(1, "a"),
        kwargs={"fmt": "pdf"},
        expires_at=published + timedelta(minutes=10),
        priority=9,
        headers={"team": "data"},
    )


def test_documented_json() -> None:
    assert json.loads(sample().to_json()) == {
        "v": 1,
        "id": "nightly@2026-03-29T01:30:00Z",
        "task": "reports.nightly",
        "args": [1, "a"],
        "kwargs": {"fmt": "pdf"},
        "entry": "nightly",
        "scheduled_for": "2026-03-29T01:30:00Z",
        "published_at": "2026-03-29T01:30:00.250Z",
        "expires_at": "2026-03-29T01:40:00.250Z",
        "queue": "reports",
        "priority": 9,
        "headers": {"team": "data"},
        "attempt": 1,
    }


def test_round_trip_keeps_unknown_fields_for_rolling_upgrades() -> None:
    data = json.loads(sample().to_json())
    data["trace"] = {"span": "abc"}
    message = RunMessage.from_json(json.dumps(data))
    assert message.extra == {"trace": {"span": "abc"}}
    assert message.task == "reports.nightly" and message.scheduled_for == SLOT
    assert json.loads(message.to_json()) == data
    assert json.loads(message.next_attempt().to_json())["attempt"] == 2


def test_expiry() -> None:
    message = sample()
    assert not message.is_expired(SLOT + timedelta(minutes=5))
    assert message.is_expired(SLOT + timedelta(minutes=11))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nope", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[]", "a run message is a JSON object"),
        ('{"id": "x"}', "missing field 'task'"),
        ('{"id": 5}', "field 'id' must be str, got int"),
    ],
    ids=["not_json", "not_object", "missing", "mistyped"],
)
def test_bad_messages(text: str, error: str) -> None:
    with pytest.raises(MessageError) as info:
        RunMessage.from_json(text)
    assert str(info.value) == error
