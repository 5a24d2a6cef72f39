"""Python schedule files: a `beat_schedule` in Celery's dictionary format.

A Python file is code and runs as such when loaded; `beatd check --yaml-only` reviews changes
without executing anything.
"""

from __future__ import annotations

import math
import runpy
import traceback
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from beatd.config.convert import describe_value, suggest, to_priority, to_timezone
from beatd.config.entries import EntryReader, build_entry
from beatd.config.fields import ENTRY_FIELDS
from beatd.config.model import AmqpTarget
from beatd.config.source import SourceFile
from beatd.errors import Problem
from beatd.schedules.crontab import CronSpec, crontab

DEFAULT_QUEUE = "celery"  # Celery's task_default_queue

CELERY_FIELDS = ("schedule", "options", "relative")
OPTION_FIELDS = {"queue": "queue", "expires": "expires", "priority": "priority"}


def read_python_file(path: str, default_timezone: str) -> SourceFile:
    source = SourceFile(path)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        namespace = runpy.run_path(path, run_name="beatd_schedule")
    except Exception as exc:  # the user's code: report whatever it raised
        line = _failing_line(exc, path)
        message = f"running this Python schedule file failed: {type(exc).__name__}: {exc}"
        source.problems.append(Problem(path, line, 1, message))
        return source
    schedule = namespace.get("beat_schedule")
    if not isinstance(schedule, Mapping):
        message = "defines no beat_schedule dictionary (Celery's format: {'name': {...}})"
        source.problems.append(Problem(path, 1, 1, message))
        return source
    zone = default_timezone
    zone_value = namespace.get("timezone")
    if zone_value is not None:
        try:
            zone = to_timezone(zone_value)
        except ValueError as exc:
            source.problems.append(Problem(path, *_line_of(text, "timezone"), f"timezone: {exc}"))
    for name, spec in schedule.items():
        position = _line_of(text, str(name))
        source.entry_lines[str(name)] = position
        _read_entry(source, str(name), spec, zone, lambda _f, _k, p=position: p)
    return source


def _read_entry(
    source: SourceFile,
    name: str,
    spec: Any,
    zone: str,
    locate: Any,
    *,
    celery: bool = False,
    amqp: AmqpTarget | None = None,
) -> None:
    """One beat_schedule entry; `celery` reads it as `celery beat` would (see read_celery_config).

    A Celery config's entries default to Celery's queue `celery` and protocol. Its `priority`
    option is Celery's: on Redis 0 is highest, turned into beatd's 9 - p; on RabbitMQ (`amqp`,
    the broker_url's destination) 9 is highest, as in beatd, taken unchanged. With `amqp`, the
    `exchange` and `routing_key` options route the entry's runs there.
    """
    if not isinstance(spec, Mapping):
        message = f"expected a dictionary of fields, got {describe_value(spec)}"
        line, column = locate(None, True)
        source.problems.append(Problem(source.path, line, column, message, name))
        return
    checker = EntryReader(source.path, name, spec, locate)
    checker.check_keys((*ENTRY_FIELDS, *CELERY_FIELDS))
    raw = {k: v for k, v in spec.items() if k in ENTRY_FIELDS}
    if spec.get("relative"):
        checker.problem("relative", "relative=True is not supported: beatd's slots are anchored")
    if "schedule" in spec:
        _translate_schedule(checker, spec["schedule"], raw)
    options = spec.get("options", {})
    if not isinstance(options, Mapping):
        checker.problem("options", f"expected a dictionary, got {describe_value(options)}")
    else:
        _read_options(checker, options, raw, celery, amqp is not None)
    if celery:
        raw.setdefault("queue", DEFAULT_QUEUE)
        raw.setdefault("protocol", "celery")
    routing_key = options.get("routing_key") if isinstance(options, Mapping) else None
    queue = raw.get("queue", "default")
    if amqp is not None and isinstance(options, Mapping):
        amqp = _amqp_route(checker, options, amqp)
    elif routing_key is not None and routing_key != queue:
        checker.problem(
            "options.routing_key",
            f"routing_key {routing_key!r} differs from the queue {queue!r}: beatd writes each "
            "run onto its queue's Redis list directly, as Celery does for a direct exchange "
            "(where the routing key is the queue name); give the target as queue instead",
        )
    reader = EntryReader(source.path, name, raw, locate)
    entry = None if checker.problems else build_entry(reader, {}, zone, source.unset_protocol)
    source.problems.extend(checker.problems + reader.problems)
    if entry is not None:
        if amqp is not None and entry.protocol == "celery" and entry.amqp is None:
            entry = replace(entry, amqp=amqp)
        source.entries.append(entry)


def _amqp_route(checker: EntryReader, options: Mapping[Any, Any], amqp: AmqpTarget) -> AmqpTarget:
    """The broker_url's destination with the entry's `exchange` and `routing_key` options (on
    RabbitMQ, as `celery beat` publishes them); unset, Celery's default route by queue."""
    route: dict[str, str] = {}
    for key in ("exchange", "routing_key"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            route[key] = value
        else:
            checker.problem(f"options.{key}", f"expected a name, got {describe_value(value)}")
    return replace(amqp, **route) if route else amqp


def _read_options(
    checker: EntryReader,
    options: Mapping[Any, Any],
    raw: dict[str, Any],
    celery: bool,
    amqp: bool = False,
) -> None:
    routed = ("exchange", "routing_key") if amqp else ("routing_key",)
    for key, value in options.items():
        if key in routed:
            continue  # read once the queue (and the AMQP destination) is known
        if key not in OPTION_FIELDS:
            hint = suggest(str(key), [*OPTION_FIELDS, *routed])
            checker.problem(f"options.{key}", "unknown option" + hint)
        elif key == "priority" and celery:
            scale = "9 highest on RabbitMQ" if amqp else "0 highest on Redis"
            try:
                celery_value = to_priority(value)
            except ValueError as exc:
                checker.problem("options.priority", f"{exc} (Celery's scale: {scale})")
                continue
            if celery_value is not None:
                # RabbitMQ's scale is beatd's; on Redis, the inverse of beatd's 9 - p
                raw.setdefault("priority", celery_value if amqp else 9 - celery_value)
        else:
            raw.setdefault(OPTION_FIELDS[key], value)


def _translate_schedule(checker: EntryReader, value: Any, raw: dict[str, Any]) -> None:
    kind = type(value)
    celery_kind = kind.__name__ if kind.__module__ == "celery.schedules" else ""
    if isinstance(value, bool):
        checker.problem("schedule", f"expected seconds, a timedelta or crontab(), got {value!r}")
    elif isinstance(value, int | float | timedelta):
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        # as a whole number where it is one; infinity and NaN are left for `every` to refuse
        raw["every"] = int(seconds) if math.isfinite(seconds) and seconds % 1 == 0 else seconds
    elif isinstance(value, CronSpec):
        raw["cron"] = value
    elif celery_kind == "crontab":
        fields = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        raw["cron"] = crontab(*(getattr(value, f"_orig_{f}") for f in fields))
    elif celery_kind == "schedule":
        if value.relative:
            checker.problem(
                "schedule", "schedule(relative=True) is not supported: beatd's slots are anchored"
            )
        else:
            _translate_schedule(checker, value.run_every, raw)
    elif celery_kind:
        checker.problem(
            "schedule",
            f"a Celery {celery_kind} schedule cannot be honoured: beatd has intervals and cron "
            "expressions only; replace it with crontab(...) or seconds, or keep this entry in "
            "celery beat",
        )
    else:
        checker.problem(
            "schedule",
            f"expected seconds, a timedelta or beatd.crontab(...), got {describe_value(value)}",
        )


def _line_of(text: str, name: str) -> tuple[int, int]:
    """Where `name` first appears as a quoted literal; the start of the file otherwise."""
    for quote in ("'", '"'):
        index = text.find(f"{quote}{name}{quote}")
        if index >= 0:
            line = text.count("\n", 0, index) + 1
            return line, index - (text.rfind("\n", 0, index) + 1) + 1
    return 1, 1


def _failing_line(exc: BaseException, path: str) -> int:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return frames[-1].lineno or 1 if frames else 1
