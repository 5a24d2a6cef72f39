"""The fields of a schedule entry, in one declarative table.

Everything that knows the fields reads them from `FIELDS`: the entry builder (which fields
exist, which `defaults:` may set, how each is converted and in what order), `beatd check`'s
"unknown field" suggestions, and the entry-field table of docs/configuration.md
(`markdown_table`, written by `python -m beatd.cli.reference` and compared whole by
tests/test_docs.py). A new field is one row here, plus its attribute on `Entry`.

The table is meant to feed two more readers, without a second description of any field:
- a JSON Schema of schedule files: one property per `Field`, with `schema` as its type
  fragment, `doc` as its `description` and `example` (read as YAML) in `examples`; `required`
  from `REQUIRED`, and `oneOf` over `SCHEDULE_FIELDS`;
- the flags of a future `beatd entries add`: one `--NAME` option per `Field` (`-` for `_`),
  `doc` as its help, its value read as YAML and passed to `convert`, so a flag's errors are
  the file's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from beatd.config.convert import (
    AMQP_KEYS,
    TASK_NAME,
    to_alert_after_failures,
    to_amqp,
    to_args,
    to_bool,
    to_duration,
    to_jitter,
    to_mapping,
    to_max_catch_up,
    to_missed,
    to_optional_duration,
    to_overlap,
    to_priority,
    to_protocol,
    to_queue_name,
    to_string,
    to_task_name,
    to_timezone,
)
from beatd.config.model import NO_ITEMS, MissedPolicy
from beatd.controls import Overlap

Converter = Callable[[Any], Any]
REQUIRED = object()  # the `default` of a field every entry must give
DERIVED = object()  # the `default` of a field whose value the builder derives (see `doc`)
DURATION = {"type": ["string", "number"], "examples": ["30s", "1h30m", 90]}
# No "format": "date-time": that is RFC 3339, which needs an offset, and naive times are valid.
DATE_TIME = {"type": "string"}


@dataclass(frozen=True, slots=True)
class Field:
    """One entry field: how it is read, what it is when not given, and how it is documented."""

    name: str
    kind: str  # its type as the docs name it
    # raw value -> value, or ValueError with the user's message; None for the schedule fields,
    # which `entries._read_schedule` reads together (one of them, and `anchor` with `every`)
    convert: Converter | None
    default: Any  # the value when not given: REQUIRED, DERIVED, or the value itself
    default_text: str  # the default as the docs show it
    in_defaults: bool  # whether a file's `defaults:` section may set it
    doc: str  # its meaning, Markdown
    example: str  # a value as written in YAML
    schema: Mapping[str, Any]  # its JSON Schema type fragment


FIELDS: tuple[Field, ...] = (
    Field(
        "task", "dotted name", to_task_name, REQUIRED, "required", False,
        "the registered task to run", "reports.nightly",
        {"type": "string", "pattern": TASK_NAME.pattern},
    ),
    Field(
        "args", "list", to_args, (), "`[]`", False,
        "positional arguments (JSON values)", "[2026, eu]", {"type": "array"},
    ),
    Field(
        "kwargs", "mapping", to_mapping, NO_ITEMS, "`{}`", False,
        "keyword arguments (JSON values)", "{region: eu}", {"type": "object"},
    ),
    Field(
        "description", "string", to_string, "", '`""`', False,
        "shown by `beatd check -v`, in a last column `DESCRIPTION`; nothing else reads it",
        "Nightly sales report", {"type": "string"},
    ),
    Field(
        "every", "duration", None, None, "—", False,
        "an interval: `30s`, `5m`, `1h30m`, `1d`, or seconds as a number; whole seconds",
        "1h30m", DURATION,
    ),
    Field(
        "cron", "string", None, None, "—", False,
        "a crontab expression (see the README's time semantics; `H` is a value spread by the "
        "entry's name, [below](#a-stable-spread-h)); quote it in YAML",
        '"30 7 * * mon-fri"', {"type": "string"},
    ),
    Field(
        "at", "ISO date-time", None, None, "—", False,
        "a one-off run; a naive value is read in the entry's timezone",
        '"2026-12-24T18:00:00"', DATE_TIME,
    ),
    Field(
        "anchor", "ISO date-time", None, DERIVED, "Unix epoch", False,
        "with `every`: slots are `anchor + k × every`; a naive value is read in the entry's "
        "timezone",
        '"2026-01-01T00:15:00"', DATE_TIME,
    ),
    Field(
        "start", "ISO date-time", None, None, "none", False,
        "with `every` or `cron`: slots before it do not exist (they are not missed); a naive "
        "value is read in the entry's timezone ([active windows](#active-windows))",
        '"2026-12-01T00:00:00"', DATE_TIME,
    ),
    Field(
        "end", "ISO date-time", None, None, "none", False,
        "with `every` or `cron`: slots at or after it do not exist; `beatd check` warns once it "
        "has passed",
        '"2027-01-01T00:00:00"', DATE_TIME,
    ),
    Field(
        "timezone", "IANA name", to_timezone, DERIVED,
        "`defaults.timezone`, then `--timezone`, then UTC", True,
        "the zone `cron` and naive times are read in", "Europe/Berlin", {"type": "string"},
    ),
    Field(
        "queue", "string", to_queue_name, "default", "`default`", True,
        "the queue the run is published to", "reports", {"type": "string"},
    ),
    Field(
        "protocol", "`beatd`, `celery`", to_protocol, DERIVED, "the queue's, else `beatd`", True,
        "the wire format: `beatd` for beatd's worker, `celery` for stock Celery workers on "
        "Redis, or on RabbitMQ with `amqp` ([celery.md](celery.md))",
        "celery", {"enum": ["beatd", "celery"]},
    ),
    Field(
        "amqp", "URL or mapping", to_amqp, None, "the queue's, else none", True,
        "with `protocol: celery`: publish to RabbitMQ instead of `--broker`, through the "
        "leader's outbox: `url` (`amqp://`, no password), `exchange` and `routing_key` "
        "(both default to the queue's name, as Celery's do) ([celery.md](celery.md#rabbitmq))",
        '"amqp://celery@rabbit.internal:5672//"',
        {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {k: {"type": "string"} for k in AMQP_KEYS},
                    "required": ["url"],
                    "additionalProperties": False,
                },
            ]
        },
    ),
    Field(
        "priority", "0–9 or null", to_priority, None, "null", True,
        "9 is highest; null is read as 5 by the bundled worker", "7",
        {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
    ),
    Field(
        "headers", "mapping", to_mapping, NO_ITEMS, "`{}`", True,
        "carried in the run message untouched", "{team: sales}", {"type": "object"},
    ),
    Field(
        "enabled", "`true`/`false`", to_bool, True, "`true`", True,
        "a disabled entry publishes nothing; its slots count as missed (`disabled`)", "false",
        {"type": "boolean"},
    ),
    Field(
        "jitter", "duration", to_jitter, DERIVED, "`0s`", True,
        "delay each run by up to this much, derived from a hash of the entry and the slot so "
        "every node agrees; must be shorter than the period. The message's `scheduled_for` "
        "stays the un-jittered slot",
        "2m", DURATION,
    ),
    Field(
        "expires", "duration", to_optional_duration, None, "none", True,
        "the worker discards a run not started within this time after it was published "
        "(`expires_at = published_at + expires`, so catch-up runs are not born expired)",
        "10m", {**DURATION, "type": ["string", "number", "null"]},
    ),
    Field(
        "missed", "`skip`, `run_once`, `catch_up`", to_missed, MissedPolicy.RUN_ONCE,
        "`run_once`", True,
        "what to publish for slots missed while no scheduler could publish (downtime, an outage, a "
        "stopped process); not for an operator's pause, whose slots are always missed (`paused`) "
        "([below](#missed-runs))",
        "catch_up", {"enum": [p.value for p in MissedPolicy]},
    ),
    Field(
        "max_catch_up", "integer ≥ 1", to_max_catch_up, 100, "`100`", True,
        "with `catch_up`: at most this many missed runs are published", "24",
        {"type": "integer", "minimum": 1},
    ),
    Field(
        "misfire_grace", "duration", to_duration, DERIVED, "the smaller of the period and 60 s",
        True,
        "a run published later than this after it was due counts as late, and a slot overdue "
        "by more than this is *missed* and handled by `missed`",
        "5m", DURATION,
    ),
    Field(
        "deadline", "duration", to_optional_duration, None, "none", True,
        "a run not finished this long after it was due (slot plus jitter), by the leader's "
        "clock, is marked overdue: also one never started, and the first slot of slots missed "
        "for any reason but `disabled` or `paused` "
        "([deadlines](metrics.md#deadlines-and-failing-entries))",
        "30m", {**DURATION, "type": ["string", "number", "null"]},
    ),
    Field(
        "alert_after_failures", "integer ≥ 1 or null", to_alert_after_failures, None, "none",
        True,
        "after this many runs in a row that ended failed or dead-lettered, the entry is "
        "reported failing (`beatd_entry_failing`, a log line) until a run succeeds",
        "3", {"type": ["integer", "null"], "minimum": 1},
    ),
    Field(
        "overlap", "`allow`, `skip`, `buffer_one`", to_overlap, Overlap.ALLOW, "`allow`", True,
        "a slot due while the entry's previous run has not ended: `allow` publishes it, `skip` "
        "records it missed (`overlap`), `buffer_one` holds the newest such slot and publishes it "
        "when the run ends ([controls.md](controls.md)); Celery entries need workers started "
        "with `-E`",
        "skip", {"enum": [o.value for o in Overlap]},
    ),
    Field(
        "overlap_timeout", "duration", to_optional_duration, None,
        "`expires`, else 24 h", True,
        "with `skip` or `buffer_one`: a run busy for longer than this no longer blocks the next "
        "slot (its mark is dropped, logged and counted)",
        "2h", {**DURATION, "type": ["string", "number", "null"]},
    ),
    Field(
        "pause_after_failures", "integer ≥ 1 or null", to_alert_after_failures, None, "none",
        True,
        "after this many runs in a row that ended failed or dead-lettered, the leader pauses the "
        "entry (by `beatd@NODE`, the reason saying so) until `beatd resume`; resumed, again "
        "after this many more since the resume",
        "5", {"type": ["integer", "null"], "minimum": 1},
    ),
)  # fmt: skip

BY_NAME: Mapping[str, Field] = {f.name: f for f in FIELDS}
ENTRY_FIELDS = tuple(f.name for f in FIELDS)
QUEUE_FIELDS = ("protocol", "amqp")  # what a `queues:` section may set for its entries
SCHEDULE_FIELDS = ("every", "cron", "at")  # exactly one of them
WINDOW_FIELDS = ("start", "end")  # with every or cron
DEFAULTABLE_FIELDS = tuple(f.name for f in FIELDS if f.in_defaults)
# What the builder reads in its hot loop, in table order: (name, convert) of the fields
# `defaults:` may set, and (name, convert, default) of the entry's own other fields.
DEFAULTABLE: tuple[tuple[str, Converter], ...] = tuple(
    (f.name, f.convert) for f in FIELDS if f.in_defaults and f.convert is not None
)
OWN: tuple[tuple[str, Converter, Any], ...] = tuple(
    (f.name, f.convert, None if f.default is REQUIRED else f.default)
    for f in FIELDS
    if not f.in_defaults and f.convert is not None
)

HEADER = (
    "| field | type | default | in `defaults:` | example | meaning |\n|---|---|---|---|---|---|"
)


def markdown_table() -> str:
    """The entry-field table of docs/configuration.md, one row per field, in table order."""
    rows = [
        f"| `{f.name}` | {f.kind} | {f.default_text} | {'yes' if f.in_defaults else 'no'} "
        f"| `{f.name}: {f.example}` | {f.doc} |"
        for f in FIELDS
    ]
    return "\n".join([HEADER, *rows])
