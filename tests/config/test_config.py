"""Schedule files to entries: every field, every error, located and reported together."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.config import ConfigError, MissedPolicy, load_config
from beatd.controls import Guard, Overlap
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors(paths: list[str], **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(paths, **kw)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def test_shipped_examples_load() -> None:
    config = load_config([str(REPO / "schedules")])
    assert set(config.entries) >= {"daily-report", "cleanup", "monday-digest", "new-year-greeting"}
    report = config.entries["daily-report"]
    assert report.timezone == "Asia/Shanghai"
    assert isinstance(report.schedule, CronSchedule)
    assert report.schedule.next_after(datetime(2026, 11, 26, tzinfo=UTC)) == datetime(
        2026, 11, 27, 0, 0, tzinfo=UTC
    )  # 08:00 in Shanghai
    assert isinstance(config.entries["cleanup"].schedule, IntervalSchedule)
    assert isinstance(config.entries["new-year-greeting"].schedule, OnceSchedule)
    assert config.imports == ("examples.tasks",)


def test_every_field_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """
        defaults:
          timezone: Europe/Berlin
          queue: reports
          missed: catch_up
        entries:
          full:
            task: reports.nightly
            args: [1, "two"]
            kwargs: {fmt: pdf}
            priority: 9
            headers: {team: data}
            description: Nightly report
            cron: "30 2 * * *"
            jitter: 30s
            expires: 10m
            max_catch_up: 5
            misfire_grace: 2m
          minimal:
            task: x.y
            every: 1h30m
            queue: other
            timezone: UTC
            anchor: "2026-01-01T00:15:00"
        """,
    )
    config = load_config([path])
    full, minimal = config.entries["full"], config.entries["minimal"]
    assert (full.task, full.args, dict(full.kwargs)) == (
        "reports.nightly",
        (1, "two"),
        {"fmt": "pdf"},
    )
    assert (full.queue, full.priority, dict(full.headers)) == ("reports", 9, {"team": "data"})
    assert full.timezone == "Europe/Berlin" and full.missed is MissedPolicy.CATCH_UP
    assert (full.jitter, full.expires) == (timedelta(seconds=30), timedelta(minutes=10))
    assert (full.max_catch_up, full.misfire_grace) == (5, timedelta(minutes=2))
    assert full.source == f"{path}:7"
    assert minimal.queue == "other" and minimal.missed is MissedPolicy.CATCH_UP
    assert minimal.misfire_grace == timedelta(seconds=60)
    assert minimal.schedule.next_after(datetime(2026, 1, 1, 0, 20, tzinfo=UTC)) == datetime(
        2026, 1, 1, 1, 45, tzinfo=UTC
    )


def test_misfire_grace_defaults_to_the_smaller_of_period_and_a_minute(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """
        entries:
          fast: {task: a.b, every: 10s}
          seconds: {task: a.b, cron: "*/15 * * * * *"}
          slow: {task: a.b, cron: "0 * * * *"}
        """,
    )
    entries = load_config([path]).entries
    assert entries["fast"].misfire_grace == timedelta(seconds=10)
    assert entries["seconds"].misfire_grace == timedelta(seconds=15)
    assert entries["slow"].misfire_grace == timedelta(seconds=60)


def test_all_errors_of_all_files_are_reported_together(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """\
        defaults:
          timezone: Europe/Berln
        entries:
          nightly:
            task: reports.nightly
            cronn: "0 8 * * *"
          broken-cron:
            task: reports.x
            cron: "0 25 * * *"
          two:
            task: x.y
            every: 5m
            cron: "* * * * *"
          bad-types:
            task: x.y
            every: 0
            priority: high
            enabled: NO
            missed: catchup
            timezone: Mars/Base
          time:
            task: x.y
            every: 12:30
          never:
            task: x.y
            cron: "0 0 31 2 *"
          notask:
            every: 10s
          jit:
            task: a.b
            every: 10s
            jitter: 20s
          bad-task:
            task: "not a task"
            at: tomorrow
        """,
    )
    b = write(tmp_path, "b.yaml", "entries:\n  nightly:\n    task: other.task\n    every: 1h\n")
    assert errors([a, b]) == [
        f"{a}:2:13: field timezone: unknown timezone 'Europe/Berln'; did you mean 'Europe/Berlin'?",
        f"{a}:4:3: entry nightly: no schedule: give exactly one of every, cron or at",
        f"{a}:6:5: entry nightly: field cronn: unknown field; did you mean 'cron'?",
        f"{a}:9:11: entry broken-cron: field cron: invalid cron expression '0 25 * * *': "
        "hour field: 25 is out of range 0-23",
        f"{a}:13:5: entry two: field cron: over-determined schedule: specify only one of every, "
        "cron or at (got every and cron)",
        f"{a}:16:12: entry bad-types: field every: must be positive, got 0",
        f"{a}:17:15: entry bad-types: field priority: expected a whole number 0-9 (9 highest), "
        "got string 'high'",
        f"{a}:18:14: entry bad-types: field enabled: expected true or false, got string 'NO'",
        f"{a}:19:13: entry bad-types: field missed: expected one of skip, run_once, catch_up, "
        "got string 'catchup'; did you mean 'catch_up'?",
        f"{a}:20:15: entry bad-types: field timezone: unknown timezone 'Mars/Base'",
        f"{a}:23:12: entry time: field every: cannot read '12:30' as a duration: use a number of "
        "seconds or units ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)",
        f"{a}:26:11: entry never: field cron: invalid cron expression '0 0 31 2 *': it can never "
        "fire: February never has day 31",
        f"{a}:27:3: entry notask: missing required field 'task'",
        f"{a}:32:13: entry jit: field jitter: jitter 20s must be shorter than the schedule's "
        "period 10s",
        f"{a}:34:11: entry bad-task: field task: 'not a task' is not a dotted task name such as "
        "'reports.nightly'",
        f"{a}:35:9: entry bad-task: field at: 'tomorrow' is not an ISO date and time such as "
        "2026-12-24T18:00:00",
        f"{b}:2:3: entry nightly: also defined in {a}:4; entry names must be unique across "
        "schedule files",
    ]


def test_unknown_section_and_wrong_shapes(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "entry:\n  x: {}\nentries:\n  a: 5\nimports: tasks\n")
    assert errors([path]) == [
        f"{path}:1:1: field entry: unknown section; did you mean 'entries'?",
    ]
    path = write(tmp_path, "t.yaml", "entries:\n  a: 5\nimports: tasks\n")
    assert errors([path]) == [
        f"{path}:2:6: entry a: expected a mapping of fields, got number 5",
        f"{path}:3:10: field imports: expected a list of module names such as myapp.tasks",
    ]


def test_missing_paths_and_empty_directories(tmp_path: Path) -> None:
    assert errors([str(tmp_path / "nope")]) == [
        f"{tmp_path / 'nope'}:1:1: no such file or directory"
    ]
    assert errors([str(tmp_path)]) == [f"{tmp_path}:1:1: no schedule files (*.yaml or *.py)"]


def test_naive_at_is_read_in_the_entry_timezone(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        'entries:\n  once: {task: a.b, at: "2027-01-01T00:00:00", timezone: Pacific/Auckland}\n',
    )
    schedule = load_config([path]).entries["once"].schedule
    assert schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2026, 12, 31, 11, 0, tzinfo=UTC
    )


# --- Python schedule files ----------------------------------------------------------------------


def test_python_beat_schedule_in_celerys_format(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "celeryconfig.py",
        """\
        from datetime import timedelta
        from beatd import crontab

        timezone = "Europe/Berlin"
        beat_schedule = {
            "every-30s": {"task": "tasks.add", "schedule": 30.0, "args": (16, 16)},
            "every-5m": {"task": "tasks.ping", "schedule": timedelta(minutes=5)},
            "monday-morning": {
                "task": "tasks.report",
                "schedule": crontab(hour=7, minute=30, day_of_week=1),
                "kwargs": {"fmt": "pdf"},
                "options": {"queue": "reports", "expires": 600, "priority": 9},
            },
            "first-monday": {
                "task": "tasks.report",
                "schedule": crontab(minute=0, hour=9, day_of_month="1-7", day_of_week="mon"),
            },
        }
        """,
    )
    entries = load_config([path]).entries
    assert entries["every-30s"].args == (16, 16)
    assert entries["every-30s"].schedule == IntervalSchedule(timedelta(seconds=30))
    assert entries["every-5m"].schedule == IntervalSchedule(timedelta(minutes=5))
    monday = entries["monday-morning"]
    assert (monday.queue, monday.expires, monday.priority) == ("reports", timedelta(minutes=10), 9)
    assert monday.timezone == "Europe/Berlin"
    assert monday.schedule.next_after(datetime(2026, 11, 25, tzinfo=UTC)) == datetime(
        2026, 11, 30, 6, 30, tzinfo=UTC
    )
    # Celery's crontab: both day fields must match, so the first Monday of the month only
    first = entries["first-monday"].schedule
    assert first.next_after(datetime(2026, 11, 25, tzinfo=UTC)) == datetime(
        2026, 12, 7, 8, 0, tzinfo=UTC
    )


def test_python_file_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.py",
        """\
        beat_schedule = {
            "solar": {"task": "a.b", "schedule": object()},
            "opts": {"task": "a.b", "schedule": 10, "options": {"queu": "x"}},
            "rel": {"task": "a.b", "schedule": 10, "relative": True},
        }
        """,
    )
    assert errors([path]) == [
        f"{path}:2:5: entry solar: field schedule: expected seconds, a timedelta or "
        "beatd.crontab(...), got an object",
        f"{path}:3:5: entry opts: field options.queu: unknown option; did you mean 'queue'?",
        f"{path}:4:5: entry rel: field relative: relative=True is not supported: beatd's slots "
        "are anchored",
    ]


def test_python_file_with_text_no_message_can_carry(tmp_path: Path) -> None:
    # a lone surrogate is a Python str but not Unicode text: no run message could be sent
    path = write(
        tmp_path,
        "surrogates.py",
        """\
        beat_schedule = {
            "a": {"task": "a.b", "schedule": 10, "args": ["\\ud800"]},
            "k": {"task": "a.b", "schedule": 10, "kwargs": {"x": ["\\udfff"]}},
        }
        """,
    )
    assert errors([path]) == [
        f"{path}:2:5: entry a: field args: must be valid Unicode text, got '\\ud800'",
        f"{path}:3:5: entry k: field kwargs: must be valid Unicode text, got '\\udfff'",
    ]


def test_python_file_that_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "boom.py", "x = 1\nraise RuntimeError('no config today')\n")
    assert errors([path]) == [
        f"{path}:2:1: running this Python schedule file failed: RuntimeError: no config today"
    ]


def test_yaml_only_never_runs_python(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write(tmp_path, "code.py", f"open({str(marker)!r}, 'w').close()\nbeat_schedule = {{}}\n")
    write(tmp_path, "s.yaml", "entries:\n  a: {task: a.b, every: 1m}\n")
    config = load_config([str(tmp_path)], yaml_only=True)
    assert list(config.entries) == ["a"] and not marker.exists()


def test_fingerprint_is_computed_once_per_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A standby announces it every second: recomputing it for 100,000 entries took a core.
    from beatd.config import model

    calls = []
    original = model._entry_fields
    monkeypatch.setattr(model, "_entry_fields", lambda e: calls.append(e) or original(e))
    path = write(
        tmp_path, "s.yaml", "entries:\n  a: {task: a.b, every: 1m}\n  b: {task: a.b, every: 2m}\n"
    )
    config = load_config([path])
    first = config.fingerprint
    assert [config.fingerprint for _ in range(5)] == [first] * 5
    assert len(calls) == 2


# --- protocols, section order and anchors in YAML files ----------------------------------------


def test_an_entry_without_a_protocol_takes_its_queues(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "a.yaml",
        """\
        entries:
          unset: {task: a.b, every: 1m, queue: reports}
          explicit: {task: a.b, every: 1m, queue: reports, protocol: beatd}
          unconfigured: {task: a.b, every: 1m, queue: other}
          default-queue: {task: a.b, every: 1m}
        queues:
          other: {}
        """,
    )
    second = write(tmp_path, "b.yaml", "entries: {}\nqueues:\n  reports: {protocol: celery}\n")
    third = write(
        tmp_path,
        "c.yaml",
        """\
        defaults: {protocol: beatd}
        entries:
          by-default: {task: a.b, every: 1m, queue: reports}
        """,
    )
    entries = load_config([first, second, third]).entries
    assert {name: entry.protocol for name, entry in entries.items()} == {
        "unset": "celery",
        "explicit": "beatd",
        "unconfigured": "beatd",
        "default-queue": "beatd",
        "by-default": "beatd",
    }


def test_defaults_after_the_entries_still_apply(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        entries:
          a: {task: a.b, cron: "0 8 * * *"}
          b: {task: a.b, every: 1m, priority: high}
        defaults:
          timezone: Asia/Shanghai
          queue: reports
          missed: catchup
        """,
    )
    assert errors([path]) == [
        f"{path}:3:39: entry b: field priority: expected a whole number 0-9 (9 highest), got "
        "string 'high'",
        f"{path}:7:11: field missed: expected one of skip, run_once, catch_up, got string "
        "'catchup'; did you mean 'catch_up'?",
    ]
    fixed = Path(path).read_text().replace("catchup", "catch_up").replace(", priority: high", "")
    entries = load_config([write(tmp_path, "t.yaml", fixed)]).entries
    assert [(e.timezone, e.queue, e.missed) for e in entries.values()] == [
        ("Asia/Shanghai", "reports", MissedPolicy.CATCH_UP)
    ] * 2
    assert entries["a"].schedule.next_after(datetime(2026, 11, 26, tzinfo=UTC)) == datetime(
        2026, 11, 27, 0, 0, tzinfo=UTC
    )


def test_entries_share_fields_through_anchors_and_merges(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        entries:
          base: &base {task: a.b, every: 1m, queue: reports}
          copy:
            <<: *base
            queue: other
          <<: {merged: {task: c.d, cron: "0 * * * *"}, base: {task: ignored}}
        """,
    )
    entries = load_config([path]).entries
    assert [(n, e.task, e.queue, e.source) for n, e in entries.items()] == [
        ("base", "a.b", "reports", f"{path}:2"),
        ("copy", "a.b", "other", f"{path}:3"),
        ("merged", "c.d", "default", f"{path}:6"),
    ]
    anchored = write(tmp_path, "t.yaml", "entries: &all\n  a: {task: a.b, every: 1m}\n")
    assert list(load_config([anchored]).entries) == ["a"]


def test_the_fingerprint_is_stable_across_versions(tmp_path: Path) -> None:
    # Nodes compare fingerprints: a new version must hash an unchanged configuration alike.
    path = write(
        tmp_path,
        "s.yaml",
        """\
        defaults:
          queue: reports
        entries:
          plain: {task: a.b, every: 1m}
          full:
            task: reports.nightly
            args: [1, "two", null, 2.5]
            kwargs: {fmt: pdf, pages: [1, 2]}
            headers: {team: data}
            priority: 9
            cron: "30 2 * * *"
            timezone: Europe/Berlin
            jitter: 30s
            expires: 10m
            missed: catch_up
            max_catch_up: 5
            misfire_grace: 2m
            description: ignored by the fingerprint
          celery: {task: c.d, every: 1h, protocol: celery, queue: other, enabled: false}
        """,
    )
    assert load_config([path]).fingerprint == "3323a393d7788ae1"


def test_entries_without_kwargs_or_headers_cannot_change_each_others(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "entries:\n  a: {task: a.b, every: 1m}\n")
    entry = load_config([path]).entries["a"]
    assert entry.kwargs == {} and entry.headers == {}
    with pytest.raises(TypeError):
        entry.kwargs["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        entry.headers["x"] = 1  # type: ignore[index]


def test_an_entry_defined_in_several_files_names_the_first(tmp_path: Path) -> None:
    text = "entries:\n  other: {task: a.b, every: 1m}\n  x: {task: a.b, every: 1m}\n"
    a, b, c = (write(tmp_path, f"{n}.yaml", text.replace("other", n)) for n in "abc")
    message = "entry names must be unique across schedule files"
    assert errors([a, b, c]) == [
        f"{b}:3:3: entry x: also defined in {a}:3; {message}",
        f"{c}:3:3: entry x: also defined in {a}:3; {message}",
    ]


BOUND = "must be finite and at most 100 years (36525d)"
DURATION_FIELDS = ["every", "jitter", "expires", "misfire_grace", "deadline"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("inf", "'inf'"),
        (".inf", "inf"),
        ("-.inf", "-inf"),
        (".nan", "nan"),
        ("nan", "'nan'"),
        ("1e20", "1e+20"),
        ("100000000000000000000000000000", "100000000000000000000000000000"),
        ("36526d", "'36526d'"),
    ],
    ids=["inf", "yaml_inf", "yaml_minus_inf", "yaml_nan", "nan", "1e20", "huge_int", "a_day_over"],
)
@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_every_yaml_duration_field_is_bounded(
    tmp_path: Path, field: str, text: str, shown: str
) -> None:
    schedule = "" if field == "every" else "    cron: '0 0 1 1 *'\n"
    path = write(
        tmp_path, "s.yaml", f"entries:\n  a:\n    task: x.y\n{schedule}    {field}: {text}\n"
    )
    line = 4 if field == "every" else 5
    column = len(f"    {field}: ") + 1
    assert errors([path]) == [
        f"{path}:{line}:{column}: entry a: field {field}: {BOUND}, got {shown}"
    ]


@pytest.mark.parametrize(
    ("spec", "field", "shown"),
    [
        ("{'schedule': float('inf')}", "every", "inf"),
        ("{'schedule': float('nan')}", "every", "nan"),
        ("{'schedule': 1e20}", "every", "100000000000000000000"),
        ("{'schedule': timedelta(days=36526)}", "every", "3155846400"),
        ("{'schedule': 60, 'options': {'expires': float('inf')}}", "expires", "inf"),
    ],
    ids=["inf", "nan", "1e20", "timedelta", "expires"],
)
def test_every_python_duration_field_is_bounded(
    tmp_path: Path, spec: str, field: str, shown: str
) -> None:
    path = write(
        tmp_path,
        "s.py",
        f"from datetime import timedelta\nbeat_schedule = {{'a': {{'task': 'x.y', **{spec}}}}}\n",
    )
    assert errors([path]) == [f"{path}:2:18: entry a: field {field}: {BOUND}, got {shown}"]


NO_ENTRIES = (
    "refusing it: it may be half written, and loading it would remove every entry; write "
    "entries: {} if it is meant to schedule nothing"
)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("", "1:1", "empty file"),
        ("# all entries moved elsewhere\n", "1:1", "empty file"),
        ("defaults:\n  queue: q\n", "1:1", "no entries: section"),
        ("queues:\n  q: {}\n", "1:1", "no entries: section"),
        ("entries:\n", "1:9", "field entries: empty section"),
    ],
    ids=["empty", "comment_only", "defaults_only", "queues_only", "null_section"],
)
def test_a_file_without_entries_is_refused(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    path = write(tmp_path, "s.yaml", text)
    assert errors([path]) == [f"{path}:{where}: {what}; {NO_ENTRIES}"]


def test_a_file_that_says_it_has_no_entries_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "entries: {}\nqueues:\n  q: {protocol: celery}\n")
    config = load_config([path])
    assert (dict(config.entries), list(config.queues)) == ({}, ["q"])


def test_deadline_and_alert_after_failures_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        defaults:
          deadline: 10m
          alert_after_failures: 3
        entries:
          inherits: {task: a.b, every: 1m}
          own: {task: a.b, every: 1m, deadline: 1h30m, alert_after_failures: 1}
          unset: {task: a.b, every: 1m, deadline: null, alert_after_failures: null}
        """,
    )
    entries = load_config([path]).entries
    assert (entries["inherits"].deadline, entries["inherits"].alert_after_failures) == (
        timedelta(minutes=10),
        3,
    )
    assert (entries["own"].deadline, entries["own"].alert_after_failures) == (
        timedelta(hours=1, minutes=30),
        1,
    )
    assert (entries["unset"].deadline, entries["unset"].alert_after_failures) == (None, None)


def test_deadline_and_alert_after_failures_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        defaults:
          alert_after_failures: 2.5
        entries:
          a: {task: a.b, every: 1m, deadline: soon}
          b: {task: a.b, every: 1m, deadline: 0s, alert_after_failures: 0}
          c: {task: a.b, every: 1m, alert_after_failures: true}
        """,
    )
    assert errors([path]) == [
        f"{path}:2:25: field alert_after_failures: expected a whole number of at least 1, "
        "got number 2.5",
        f"{path}:4:39: entry a: field deadline: cannot read 'soon' as a duration: use a number "
        "of seconds or units ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)",
        f"{path}:5:39: entry b: field deadline: must be positive, got '0s'",
        f"{path}:5:65: entry b: field alert_after_failures: expected a whole number of at "
        "least 1, got number 0",
        f"{path}:6:51: entry c: field alert_after_failures: expected a whole number of at "
        "least 1, got boolean True",
    ]


def test_deadline_and_failures_change_the_fingerprint_only_when_set(tmp_path: Path) -> None:
    plain = write(tmp_path, "a.yaml", "entries:\n  a: {task: a.b, every: 1m}\n")
    judged = write(tmp_path, "b.yaml", "entries:\n  a: {task: a.b, every: 1m, deadline: 5m}\n")
    failing = write(
        tmp_path, "c.yaml", "entries:\n  a: {task: a.b, every: 1m, alert_after_failures: 2}\n"
    )
    prints = {load_config([p]).fingerprint for p in (plain, judged, failing)}
    assert len(prints) == 3


def test_overlap_fields_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        defaults:
          overlap: skip
          pause_after_failures: 4
        entries:
          inherits: {task: a.b, every: 1m}
          expiring: {task: a.b, every: 1m, overlap: buffer_one, expires: 10m}
          own: {task: a.b, every: 1m, overlap_timeout: 2h, pause_after_failures: null}
          plain: {task: a.b, every: 1m, overlap: allow}
        """,
    )
    entries = load_config([path]).entries
    assert (entries["inherits"].guard, entries["inherits"].pause_after_failures) == (
        Guard(Overlap.SKIP, 86400.0),
        4,
    )
    assert entries["expiring"].guard == Guard(Overlap.BUFFER_ONE, 600.0)
    assert (entries["own"].guard, entries["own"].pause_after_failures) == (
        Guard(Overlap.SKIP, 7200.0),
        None,
    )
    assert (entries["plain"].overlap, entries["plain"].guard) == (Overlap.ALLOW, None)


def test_overlap_field_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """\
        entries:
          a: {task: a.b, every: 1m, overlap: buffer}
          b: {task: a.b, every: 1m, overlap_timeout: 0s, pause_after_failures: 0}
        """,
    )
    assert errors([path]) == [
        f"{path}:2:38: entry a: field overlap: expected one of allow, skip, buffer_one, got "
        "string 'buffer'; did you mean 'buffer_one'?",
        f"{path}:3:46: entry b: field overlap_timeout: must be positive, got '0s'",
        f"{path}:3:72: entry b: field pause_after_failures: expected a whole number of at "
        "least 1, got number 0",
    ]
