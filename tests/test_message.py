from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import pytest

from beatd.message import MessageError, RunMessage, RunTemplate, format_slot, format_time, run_id

SLOT = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


class Priority(int, Enum):  # what a Python schedule file may pass as a priority
    HIGH = 9


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
        ("nope", "not JSON: {cause}"),  # the json module's words, from its own error
        ("[]", "a run message is a JSON object"),
        ('{"id": "x"}', "missing field 'task'"),
        ('{"id": 5}', "field 'id' must be str, got int"),
    ],
    ids=["not_json", "not_object", "missing", "mistyped"],
)
def test_bad_messages(text: str, error: str) -> None:
    with pytest.raises(MessageError) as info:
        RunMessage.from_json(text)
    cause = info.value.__context__
    assert str(info.value) == error.format(cause=cause)
    assert isinstance(cause, json.JSONDecodeError) == ("{cause}" in error)


@pytest.mark.parametrize(
    "fields",
    [
        {"entry": "tick", "task": "t.tick", "queue": "default"},
        {
            "entry": 'naïve "quoted" \\ entry\n',
            "task": "reports.nightly",
            "queue": "rapports-été",
            "args": (1, "a", [2.5, None, True], {"k": "ü"}),
            "kwargs": {"fmt": "pdf", "nested": {"x": [1, 2]}},
            "priority": 0,
            "headers": {"team": "data", "trace": None},
        },
        {"entry": "e", "task": "t", "queue": "q", "priority": 9, "kwargs": {}, "headers": {}},
        {"entry": "e", "task": "t", "queue": "q", "priority": Priority.HIGH},
        {"entry": "e", "task": "t", "queue": "q", "args": ("a", 'é "b"\n', "")},
    ],
    ids=["plain", "unicode_quotes_and_nesting", "empty_mappings", "int_enum_priority", "str_args"],
)
@pytest.mark.parametrize("expires", [None, timedelta(minutes=10)], ids=["no_expiry", "expiry"])
def test_template_writes_what_the_message_writes(
    fields: dict[str, Any], expires: timedelta | None
) -> None:
    published = SLOT + timedelta(seconds=0.125)
    expires_at = published + expires if expires else None
    message = RunMessage(
        id=run_id(fields["entry"], SLOT),
        scheduled_for=SLOT,
        published_at=published,
        expires_at=expires_at,
        kind="caught_up",
        **fields,
    )
    template = RunTemplate(**fields)
    text = template.render(
        format_slot(SLOT),
        format_time(published),
        format_time(expires_at) if expires_at else None,
        "caught_up",
    )
    assert text == message.to_json()
    assert RunMessage.from_json(text) == message


# A message as beatd wrote it before `kind` (v 1, 2026-11): byte for byte, from docs/design.md.
GOLDEN_BEFORE_KIND = (
    '{"v":1,"id":"daily-report@2026-11-27T00:00:00Z","task":"examples.tasks.daily_report",'
    '"args":[],"kwargs":{"fmt":"pdf"},"entry":"daily-report",'
    '"scheduled_for":"2026-11-27T00:00:00Z","published_at":"2026-11-27T00:00:00.004Z",'
    '"expires_at":null,"queue":"default","priority":null,"headers":{},"attempt":1}'
)
FIELDS_BEFORE_KIND = [
    "v",
    "id",
    "task",
    "args",
    "kwargs",
    "entry",
    "scheduled_for",
    "published_at",
    "expires_at",
    "queue",
    "priority",
    "headers",
    "attempt",
]


def test_a_message_from_before_kind_is_read_and_written_back_unchanged() -> None:
    message = RunMessage.from_json(GOLDEN_BEFORE_KIND)
    assert message.kind is None and message.extra == {}
    assert message.entry == "daily-report" and message.kwargs == {"fmt": "pdf"}
    assert message.to_json() == GOLDEN_BEFORE_KIND
    assert "kind" not in json.loads(message.next_attempt().to_json())


@pytest.mark.parametrize("kind", ["scheduled", "caught_up", "manual", "backfill"])
def test_new_messages_carry_the_old_fields_then_kind(kind: str) -> None:
    template = RunTemplate("daily-report", "examples.tasks.daily_report", "default")
    text = template.render("2026-11-27T00:00:00Z", "2026-11-27T00:00:00.004Z", None, kind)
    data = json.loads(text)
    assert list(data) == [*FIELDS_BEFORE_KIND, "kind"]
    assert data["kind"] == kind
    # what an older reader (the fields before kind, unknown ones kept aside) makes of it
    old = {key: value for key, value in data.items() if key in FIELDS_BEFORE_KIND}
    assert json.loads(GOLDEN_BEFORE_KIND).keys() == old.keys()
    assert RunMessage.from_json(text).kind == kind


def test_an_unknown_kind_is_read_as_it_is() -> None:
    data = json.loads(GOLDEN_BEFORE_KIND)
    data["kind"] = "replayed"  # a later beatd's kind: kept, not refused
    assert RunMessage.from_json(json.dumps(data)).kind == "replayed"
