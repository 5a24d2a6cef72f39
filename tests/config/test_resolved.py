"""Entries built from stored resolved definitions without the validator
(beatd.config.resolved): one truth — the same entry the validator builds, for the bench's mix
and for generated definitions; a definition not in the resolved form is left to the validator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from beatd.config.resolved import EntryBuilder
from beatd.runtime_entries import InvalidEntry, RuntimeEntry, resolve_entry
from bench.workload import runtime_mix

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def stored(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The definition as a backend gives it back: resolved, through JSON."""
    definition = resolve_entry(name, fields, now=NOW).definition
    return dict(json.loads(json.dumps(definition)))


def validated(name: str, definition: dict[str, Any]) -> Any:
    return RuntimeEntry(name, definition, 1, NOW, "t", NOW, "t").entry()


def test_the_bench_mix_builds_the_same_entries_either_way() -> None:
    builder = EntryBuilder()
    for name, fields in runtime_mix(3_000, start=0).items():
        definition = stored(name, fields)
        assert builder.build(name, definition) == validated(name, definition)


def test_equal_schedules_are_one_object_and_equal_durations_too() -> None:
    builder = EntryBuilder()
    fields = {"task": "t.a", "cron": "5 4 * * *", "timezone": "Europe/Paris"}
    one = builder.build("one", stored("one", fields))
    two = builder.build("two", stored("two", fields))
    assert one is not None and two is not None
    assert one.schedule is two.schedule
    assert one.misfire_grace is two.misfire_grace
    hashed = {"task": "t.a", "cron": "H 4 * * *"}  # `H` is spread by the name: not shared
    three, four = (builder.build(n, stored(n, hashed)) for n in ("three", "four"))
    assert three is not None and four is not None
    assert three.schedule == validated("three", stored("three", hashed)).schedule
    assert three.schedule is not four.schedule


def test_a_definition_not_in_the_resolved_form_is_left_to_the_validator() -> None:
    builder = EntryBuilder()
    older = {"task": "t.a", "every": "1h"}  # as an older beatd might have stored it
    assert builder.build("old", older) is None
    definition = stored("odd", {"task": "t.a", "every": 60})
    assert builder.build("odd", {**definition, "jitter": [5]}) is None  # not a duration
    assert builder.build("odd", {**definition, "shiny": 1}) is None  # not a field this knows
    assert builder.build("odd", {**definition, "cron": "* * * * *"}) is None  # two schedules


_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
_TIMES = st.sampled_from(
    ["2027-03-28T02:30:00", "2026-11-01T01:30:00-04:00", "2030-01-01T00:00:00+00:00"]
)
_DURATIONS = st.sampled_from([1, 30, 90.5, "45s", "10m", "1h30m", "2d"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
_SCHEDULES = st.one_of(
    st.fixed_dictionaries(
        {"cron": st.sampled_from(["*/5 * * * *", "30 2 * * *", "H H * * 1-5", "0 0 L * *"])},
        optional={"timezone": _ZONES, "start": _TIMES, "end": st.just("2031-01-01T00:00:00")},
    ),
    st.fixed_dictionaries(
        {"every": st.sampled_from([60, 3600, "90s", "1h", "1d"])},
        optional={"anchor": _TIMES, "timezone": _ZONES, "end": st.just("2031-01-01T00:00:00Z")},
    ),
    st.fixed_dictionaries({"at": st.sampled_from(["2027-01-01T09:00:00", "2028-02-29T12:00Z"])}),
)
_OTHERS = st.fixed_dictionaries(
    {},
    optional={
        "args": st.lists(_JSON, max_size=3),
        "kwargs": st.dictionaries(st.text(max_size=4), _JSON, max_size=3),
        "headers": st.dictionaries(st.text(max_size=4), _JSON, max_size=2),
        "description": st.text(max_size=10),
        "queue": st.sampled_from(["default", "reports", "q.1"]),
        "protocol": st.sampled_from(["beatd", "celery"]),
        "amqp": st.sampled_from(
            ["amqp://rabbit:5672//", {"url": "amqp://r//", "exchange": "x", "routing_key": "k"}]
        ),
        "priority": st.none() | st.integers(0, 9),
        "enabled": st.booleans(),
        "jitter": st.sampled_from([0, "0s", 5, "20s"]),
        "expires": st.none() | _DURATIONS,
        "missed": st.sampled_from(["skip", "run_once", "catch_up"]),
        "max_catch_up": st.integers(1, 500),
        "misfire_grace": _DURATIONS,
        "deadline": st.none() | _DURATIONS,
        "alert_after_failures": st.none() | st.integers(1, 9),
        "overlap": st.sampled_from(["allow", "skip", "buffer_one"]),
        "overlap_timeout": st.none() | _DURATIONS,
        "pause_after_failures": st.none() | st.integers(1, 9),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=_SCHEDULES, others=_OTHERS, name=st.sampled_from(["a", "tenant-7:poll"]))
def test_generated_definitions_build_the_same_entries_either_way(
    schedule: dict[str, Any], others: dict[str, Any], name: str
) -> None:
    try:
        definition = stored(name, {"task": "t.run", **schedule, **others})
    except InvalidEntry:
        assume(False)
        raise
    built = EntryBuilder().build(name, definition)
    assert built is not None
    assert built == validated(name, definition)
    assert built.schedule.spec == validated(name, definition).schedule.spec
