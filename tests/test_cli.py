"""`beatd check` and `beatd next`, in-process with click's runner."""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.memory import discard
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli import common, main
from beatd.cli.run import parse_run_settings
from beatd.entry_series import EntrySeries
from beatd.history import HistoryQuery, Retention
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]


def beatd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """`path` and the path of every command under it, groups included."""
    found = [path]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += command_paths(sub, (*path, name))
    return found


COMMANDS = command_paths(main)


def test_the_command_tree_is_what_the_help_tests_cover() -> None:
    assert COMMANDS == [
        (),
        ("api",),
        ("api", "token"),
        ("audit",),
        ("backfill",),
        ("check",),
        ("db",),
        ("db", "upgrade"),
        ("dead",),
        ("dead", "list"),
        ("dead", "retry"),
        ("dead", "rm"),
        ("diff",),
        ("entries",),
        ("entries", "add"),
        ("entries", "export"),
        ("entries", "list"),
        ("entries", "rm"),
        ("entries", "set"),
        ("history",),
        ("migrate",),
        ("next",),
        ("pause",),
        ("resume",),
        ("run",),
        ("schema",),
        ("status",),
        ("trigger",),
        ("worker",),
    ]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "beatd")
def test_help_on_every_command(path: tuple[str, ...]) -> None:
    code, out, _ = beatd(*path, "--help")
    assert code == 0 and out.startswith(f"Usage: main {' '.join(path)}".rstrip() + " ")


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "beatd")
def test_every_option_has_help_and_shows_its_variable(path: tuple[str, ...]) -> None:
    command, ctx = resolve(path)
    for option in (p for p in command.params if isinstance(p, click.Option)):
        record = option.get_help_record(ctx)
        if option.hidden:
            continue
        assert record is not None and option.help, f"{option.opts} has no help text"
        if option.envvar:
            assert f"env var: {option.envvar}" in record[1], f"{option.opts} hides its variable"


def resolve(path: tuple[str, ...]) -> tuple[click.Command, click.Context]:
    command: click.Command = main
    ctx = click.Context(main, info_name="beatd")
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return command, ctx


def test_the_command_list_shows_each_summary_uncut() -> None:
    code, out, _ = beatd("--help")
    commands = out.split("Commands:")[1]
    assert code == 0 and "..." not in commands
    listing = " ".join(commands.split())  # undo the wrapping
    for name, command in sorted(main.commands.items()):
        summary = (command.help or "").split("\n\n")[0]
        assert f"{name} {' '.join(summary.split())}" in listing


def test_check_prints_the_table_of_the_shipped_examples() -> None:
    code, out, err = beatd("check", str(REPO / "schedules"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ENTRY", "TASK", "SCHEDULE", "TIMEZONE", "NEXT", "DUE", "(UTC)"]
    report = next(line for line in lines if line.startswith("daily-report "))
    assert "examples.tasks.daily_report" in report
    assert "at 08:00, every day" in report and "Asia/Shanghai" in report
    assert report.rstrip().endswith("T00:00:00Z")  # 08:00 in Shanghai is midnight UTC
    assert lines[-1] == "5 entries OK in 1 file(s)"


def test_check_reports_every_error_on_stderr_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            entries:
              a:
                task: x.y
                every: -5s
              b:
                task: x.y
                cron: "61 * * * *"
            """
        )
    )
    code, out, err = beatd("check", str(path))
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{path}:4:12: entry a: field every: must be positive, got '-5s'",
        f"{path}:7:11: entry b: field cron: invalid cron expression '61 * * * *': minute field: "
        "61 is out of range 0-59",
    ]


ONE_OFFS = """\
entries:
  launch:
    task: x.y
    description: the launch, long gone
    at: 2020-01-01T10:00:00
    timezone: Europe/Paris
  later:
    task: x.z
    at: 2999-01-01T00:00:00
"""
PAST = (
    "5:9: entry launch: field at: warning: 2020-01-01T10:00:00+01:00 is in the past, so this "
    "one-off run will never happen; move it into the future or remove the entry"
)


def test_check_warns_of_a_one_off_run_in_the_past(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(ONE_OFFS)
    code, out, err = beatd("check", str(path))
    assert (code, err) == (0, f"{path}:{PAST}\n")
    assert out.splitlines()[-1] == "2 entries OK in 1 file(s), 1 warning(s)"
    code, out, err = beatd("check", "--strict", str(path))
    assert (code, err) == (2, f"{path}:{PAST}\nbeatd: --strict: failing because of 1 warning(s)\n")
    assert out.splitlines()[-1] == "2 entries read in 1 file(s), 1 warning(s): not OK with --strict"
    path.write_text(ONE_OFFS.replace("2020-", "2998-"))
    assert beatd("check", "--strict", str(path))[::2] == (0, "")


def test_check_verbose_shows_each_description(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(ONE_OFFS)
    code, out, _ = beatd("check", "-v", str(path))
    assert code == 0
    assert out.splitlines()[:3] == [
        "ENTRY   TASK  SCHEDULE                           TIMEZONE      NEXT DUE (UTC)        "
        "DESCRIPTION",
        "launch  x.y   once at 2020-01-01T10:00:00+01:00  Europe/Paris  never                 "
        "the launch, long gone",
        "later   x.z   once at 2999-01-01T00:00:00+00:00  UTC           2999-01-01T00:00:00Z",
    ]
    assert "DESCRIPTION" not in beatd("check", str(path))[1]


TASK_MODULE = """\
import beatd


@beatd.task
def ping() -> None: ...
"""


def test_check_tasks_reports_modules_that_fail_and_tasks_nobody_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # found there, as the worker finds them
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "check_tasks_ok.py").write_text(TASK_MODULE)
    (tmp_path / "check_tasks_broken.py").write_text("\n\nraise RuntimeError('half deployed')\n")
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            imports: [check_tasks_ok, check_tasks_broken]
            entries:
              fine: {task: check_tasks_ok.ping, every: 1m}
              typo:
                task: check_tasks_ok.pong
                every: 1m
              elsewhere: {task: proj.celery_task, every: 1m, protocol: celery}
            """
        )
    )
    code, out, err = beatd("check", "--tasks", "-A", "check_tasks_nowhere", str(path))
    missing = "check_tasks_nowhere"
    with pytest.raises(ModuleNotFoundError) as not_found:  # Python's words, as it says them
        importlib.import_module(missing)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"beatd: cannot import task module {missing!r} (from -A/--app or imports:): "
        f"ModuleNotFoundError: {not_found.value}; the current directory and PYTHONPATH are "
        "searched",
        "beatd: cannot import task module 'check_tasks_broken' (from -A/--app or imports:): "
        f"RuntimeError: half deployed at {tmp_path / 'check_tasks_broken.py'}:3; the current "
        "directory and PYTHONPATH are searched",
        f"{path}:5:11: entry typo: field task: 'check_tasks_ok.pong' is not registered by the "
        f"task modules {missing}, check_tasks_ok, check_tasks_broken; did you mean "
        "'check_tasks_ok.ping'?",
    ]
    assert beatd("check", str(path))[0] == 0  # without --tasks, nothing is imported


def test_check_tasks_without_task_modules_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("entries:\n  a: {task: x.y, every: 1m}\n")
    assert beatd("check", "--tasks", str(path)) == (
        2,
        "",
        "beatd: --tasks: no task modules to import: name them with -A/--app pkg.module or under "
        "imports: in a schedule file\n",
    )


def test_next_cron_json_naive_after_is_read_in_tz() -> None:
    code, out, _ = beatd(
        "next",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--after",
        "2026-03-28T12:00",
        "-n",
        "3",
        "--json",
    )
    assert code == 0
    moved = {
        "rule": "spring_gap_fixed_time",
        "note": "for 02:30:00, which does not exist (clocks go forward, 02:00-03:00): a "
        "fixed-time job runs at the jump",
    }
    assert json.loads(out) == [
        {"slot": "2026-03-29T01:00:00Z", "dst": moved},
        {"slot": "2026-03-30T00:30:00Z", "dst": None},
        {"slot": "2026-03-31T00:30:00Z", "dst": None},
    ]


def test_next_marks_runs_a_dst_rule_moved_or_kept_as_text() -> None:
    code, out, _ = beatd(
        "next", "--cron", "30 * * * *", "--timezone", "Europe/Berlin", "--after",
        "2026-10-25T02:00:00+02:00", "-n", "3",
    )  # fmt: skip
    assert (code, out.splitlines()) == (
        0,
        [
            "at minute 30 of every hour, every day",
            "2026-10-25T00:30:00Z  2026-10-25T02:30:00+02:00  DST autumn_repeat_wildcard: first "
            "of two 02:30:00 (clocks go back): a wildcard job runs at both",
            "2026-10-25T01:30:00Z  2026-10-25T02:30:00+01:00  DST autumn_repeat_wildcard: second "
            "of two 02:30:00 (clocks go back): a wildcard job runs at both",
            "2026-10-25T02:30:00Z  2026-10-25T03:30:00+01:00",
        ],
    )


def test_next_after_is_exclusive() -> None:
    code, out, _ = beatd(
        "next", "--every", "10s", "--after", "2026-01-01T00:00:10Z", "-n", "2", "--json"
    )
    assert code == 0 and json.loads(out) == [
        {"slot": "2026-01-01T00:00:20Z", "dst": None},
        {"slot": "2026-01-01T00:00:30Z", "dst": None},
    ]


def test_next_for_configured_entries_as_json() -> None:
    code, out, _ = beatd(
        "next",
        "-s",
        str(REPO / "schedules"),
        "--after",
        "2026-11-26T00:00:00Z",
        "-n",
        "2",
        "--json",
    )
    assert code == 0
    data = {name: [run["slot"] for run in runs] for name, runs in json.loads(out).items()}
    assert data["daily-report"] == ["2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z"]
    assert data["cleanup"] == ["2026-11-26T00:30:00Z", "2026-11-26T01:00:00Z"]
    assert data["new-year-greeting"] == ["2029-12-31T11:00:00Z"]


def test_next_one_entry_as_text() -> None:
    code, out, _ = beatd(
        "next",
        "daily-report",
        "-s",
        str(REPO / "schedules"),
        "--after",
        "2026-11-26T00:00:00Z",
        "-n",
        "1",
    )
    assert code == 0
    assert out.splitlines() == [
        "daily-report: at 08:00, every day (Asia/Shanghai)",
        "  2026-11-27T00:00:00Z  2026-11-27T08:00:00+08:00",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cron", "0 25 * * *"],
            "beatd: --cron: invalid cron expression '0 25 * * *': hour field: "
            "25 is out of range 0-23",
        ),
        (
            ["--every", "soon"],
            "beatd: --every: cannot read 'soon' as a duration: use a number of "
            "seconds or units ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)",
        ),
        (
            ["--cron", "* * * * *", "--timezone", "Mars/Base"],
            "beatd: --timezone: unknown timezone 'Mars/Base'",
        ),
        (
            ["--cron", "* * * * *", "--after", "yesterday"],
            "beatd: --after: 'yesterday' is not an ISO date and time such as 2026-12-24T18:00:00",
        ),
        (
            ["nosuch", "-s", str(REPO / "schedules")],
            f"beatd: ENTRY: no entry named 'nosuch' in {REPO / 'schedules' / 'examples.yaml'}; "
            "without --broker (BEATD_BROKER) only the schedule files' entries are shown, not "
            "runtime entries",
        ),
    ],
    ids=["bad_cron", "bad_every", "bad_tz", "bad_after", "unknown_entry"],
)
def test_next_bad_input_exits_2(args: list[str], message: str) -> None:
    code, out, err = beatd("next", *args)
    assert (code, out, err.strip()) == (2, "", message)


def test_next_tz_is_a_deprecated_alias_of_timezone() -> None:
    args = ["--cron", "30 2 * * *", "--after", "2026-03-28T12:00", "-n", "1", "--json"]
    code, out, err = beatd("next", *args, "--tz", "Europe/Berlin")
    assert (code, json.loads(out)[0]["slot"]) == (0, "2026-03-29T01:00:00Z")
    assert err == (
        "beatd: warning: --tz is deprecated and will be removed in the next release; "
        "use --timezone (BEATD_TIMEZONE)\n"
    )
    code, out, err = beatd("next", *args, "--timezone", "Europe/Berlin")
    assert (code, json.loads(out)[0]["slot"], err) == (0, "2026-03-29T01:00:00Z", "")
    code, _, _ = beatd("next", "--help")
    assert code == 0 and "--tz" not in beatd("next", "--help")[1]


def test_next_cron_with_h_hashes_the_name_given_by_name() -> None:
    args = ["next", "--cron", "H H * * *", "--after", "2026-01-01T00:00:00Z", "-n", "1"]
    code, out, _ = beatd(*args, "--name", "backup")
    assert (code, out.splitlines()) == (
        0,
        ["at 03:29, every day (H: 29 3 * * *)", "2026-01-01T03:29:00Z  2026-01-01T03:29:00+00:00"],
    )
    assert beatd(*args) == (
        2,
        "",
        "beatd: --name: --cron uses H, which is hashed from an entry name: give it with --name\n",
    )
    assert beatd("next", "--every", "5m", "--name", "backup")[::2] == (
        2,
        "beatd: --name: --name only applies to --cron (the name H is hashed from)\n",
    )


@pytest.mark.parametrize(
    ("expr", "described"),
    [("0 9 * * THU", "at 09:00, on Thursday"), ("@HOURLY", "at minute 0 of every hour, every day")],
)
def test_next_cron_without_an_h_item_needs_no_name(expr: str, described: str) -> None:
    # A capital H in a day name or an upper-case macro is not an `H` item: as before issue 17,
    # the ad-hoc expression runs without --name.
    code, out, err = beatd("next", "--cron", expr, "--after", "2026-01-01T00:00:00Z", "-n", "1")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == described


def test_check_and_next_show_what_h_resolves_to_per_entry(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  backup: {task: t.backup, cron: 'H H * * *'}\n"
        "  nightly-report: {task: t.report, cron: 'H H * * *'}\n"
    )
    code, out, _ = beatd("check", str(path))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "at 03:29, every day (H: 29 3 * * *)" in rows["backup"]
    assert "at 10:07, every day (H: 7 10 * * *)" in rows["nightly-report"]
    code, out, _ = beatd("next", "backup", "-s", str(path), "--after", "2026-01-01", "-n", "1")
    assert (code, out.splitlines()[0]) == (0, "backup: at 03:29, every day (H: 29 3 * * *) (UTC)")


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server that wants the password `s3cret`."""
    started = RedisServer(tmp_path / "redis").start()
    with redis.Redis(port=started.port) as admin:
        admin.config_set("requirepass", "s3cret")
    yield started
    started.stop()


def invoke(args: list[str], env: dict[str, str | None]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_a_broker_password_on_the_command_line_warns_once_and_never_shows(
    locked_redis: RedisServer,
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{locked_redis.port}/0"
    code, out, err = invoke(["dead", "list", "--broker", url], env={"BEATD_BROKER": None})
    assert (code, out, err) == (
        0,
        "ID  TASK  QUEUE  FAILED AT (UTC)  DELIVERIES  REASON\n0 dead letter(s)\n",
        "beatd: warning: --broker: the URL holds a password, which every user of this host can "
        "read in ps; give the URL in BEATD_BROKER instead\n",
    )
    code, out, err = invoke(["dead", "list"], env={"BEATD_BROKER": url})
    assert (code, err) == (0, "")
    assert out.endswith("0 dead letter(s)\n")
    unlocked = f"redis://127.0.0.1:{locked_redis.port}/0"  # no password: nothing to warn about
    code, _, err = invoke(["dead", "list", "--broker", unlocked], env={"BEATD_BROKER": None})
    assert code == 1 and "warning" not in err and "s3cret" not in err


def test_migrate_takes_its_target_from_beatd_broker_and_warns_about_a_password_in_to(
    locked_redis: RedisServer, tmp_path: Path
) -> None:
    SQLiteBackend(tmp_path / "beatd.db").close()
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    url = f"redis://:s3cret@127.0.0.1:{locked_redis.port}/0"
    code, out, err = invoke(["migrate", "--from", source], env={"BEATD_BROKER": url})
    assert (code, err) == (0, "")
    assert "s3cret" not in out
    code, out, err = invoke(["migrate", "--from", source, "--to", url], env={"BEATD_BROKER": None})
    assert code == 0 and "s3cret" not in out
    assert err == (
        "beatd: warning: --to: the URL holds a password, which every user of this host can "
        "read in ps; give the URL in BEATD_BROKER instead\n"
    )


# --- the shared flags, parsed once into typed settings


def settings_probe() -> tuple[click.Command, list[object]]:
    """A command with the shared flags that records the settings it is handed."""
    seen: list[object] = []

    @click.command()
    @common.schedule_options
    @common.backend_options
    @common.logging_options()
    def probe(
        schedule: common.ScheduleSettings, backend: common.BackendSettings, log: common.LogSettings
    ) -> None:
        seen.extend([schedule, backend, log])

    return probe, seen


def test_the_shared_flags_arrive_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEATD_NAMESPACE", "staging")
    probe, seen = settings_probe()
    args = ["-s", "a.yaml", "-s", "b", "--timezone", "Europe/Berlin", "--max-file-size", "9"]
    args += ["--celery-config", "celeryconfig", "--broker", "redis://127.0.0.1:1/0"]
    result = CliRunner().invoke(probe, [*args, "--log-level", "debug", "--log-format", "json"])
    assert result.exit_code == 0, result.output
    assert seen == [
        common.ScheduleSettings(("a.yaml", "b"), "Europe/Berlin", 9, "celeryconfig"),
        common.BackendSettings("redis://127.0.0.1:1/0", "staging"),
        common.LogSettings("debug", "json"),
    ]


def test_history_flag_is_folded_into_the_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[common.BackendSettings] = []

    @click.command()
    @common.backend_options
    @common.history_option
    def probe(backend: common.BackendSettings) -> None:
        seen.append(backend)

    url = ["--broker", "memory://flags"]
    assert CliRunner().invoke(probe, url).exit_code == 0
    assert CliRunner().invoke(probe, [*url, "--no-history"]).exit_code == 0
    monkeypatch.setenv("BEATD_HISTORY", "false")
    assert CliRunner().invoke(probe, url).exit_code == 0
    assert CliRunner().invoke(probe, [*url, "--history"]).exit_code == 0
    assert [s.history for s in seen] == [True, False, False, True]
    assert {(s.url, s.namespace) for s in seen} == {("memory://flags", "beatd")}


def test_without_history_the_opened_backend_writes_none() -> None:
    for history in (True, False):
        discard("no-history")
        backend = common.open_broker(common.BackendSettings("memory://no-history", "b", history))
        lease = backend.acquire_lease("n", 60)
        assert lease is not None
        slot = datetime(2026, 3, 1, tzinfo=UTC)
        backend.commit(lease, [], [Outgoing("a", "a@1", BeatdQueue("q"), "{}", slot, slot)])
        assert len(backend.runs(HistoryQuery())) == (1 if history else 0)
    discard("no-history")


def test_run_parses_the_retention_flags() -> None:
    flags = {"lease_ttl": "10s", "node": "n", "watch": False, "max_clock_skew": "1s"}
    flags |= {"removed_grace": "1h", "metrics_addr": "off", "with_worker": False}
    flags |= {"metrics_entries": "none"}
    settings = parse_run_settings(
        **flags,
        history_keep=5,
        history_max_age="1h",
        history_max_records=100,
        audit_retention="90d",
    )
    assert settings.retention == Retention(5, timedelta(hours=1), 100)
    assert settings.audit_retention == timedelta(days=90)
    assert settings.metrics_entries is EntrySeries.NONE


def test_run_refuses_a_bad_audit_retention_before_it_starts() -> None:
    code, out, err = beatd("run", "--broker", "memory://bad", "--audit-retention", "0")
    assert (code, out, err) == (2, "", "beatd: --audit-retention: must be positive, got '0'\n")


def test_run_refuses_an_unknown_fault_point_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("entries: {}\n")
    broker = f"sqlite:///{tmp_path / 'beatd.db'}"
    args = ["run", "--broker", broker, "-s", str(tmp_path / "s.yaml"), "--metrics-addr", "off"]
    result = CliRunner().invoke(main, args, env={"BEATD_FAULT_POINT": "relay-before-confirm"})
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "beatd: BEATD_FAULT_POINT: 'relay-before-confirm' is no fault point: the one beatd "
        "knows is relay-after-confirm (for tests only); unset it\n",
    )


def test_run_refuses_a_bad_history_age_before_it_starts(tmp_path: Path) -> None:
    code, out, err = beatd("run", "--broker", "memory://bad", "--history-max-age", "soon")
    assert (code, out, err) == (
        2,
        "",
        "beatd: --history-max-age: cannot read 'soon' as a duration: use a number of seconds "
        "or units ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)\n",
    )


def test_a_celery_config_alone_reads_no_default_schedules_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    probe, seen = settings_probe()
    assert CliRunner().invoke(probe, ["--celery-config", "celeryconfig"]).exit_code == 0
    (tmp_path / "schedules").mkdir()
    assert CliRunner().invoke(probe, ["--celery-config", "celeryconfig"]).exit_code == 0
    assert CliRunner().invoke(probe, []).exit_code == 0
    schedules = [s for s in seen if isinstance(s, common.ScheduleSettings)]
    assert [(s.paths, s.celery_config) for s in schedules] == [
        ((), "celeryconfig"),
        (("schedules",), "celeryconfig"),
        (("schedules",), None),
    ]


def test_check_and_next_say_a_cron_never_fires(tmp_path: Path) -> None:
    # Every 02:xx on the last Sunday of March lies in Berlin's spring gap: a wildcard job there
    # never runs, and the search ends at year 9999 with a clear word rather than a traceback.
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n  gap: {task: t.a, cron: '*/30 2 * 3 0L', timezone: Europe/Berlin}\n"
    )
    code, out, err = beatd("check", str(path))
    assert (code, err) == (
        0,
        f"{path}:2:26: entry gap: field cron: warning: it never fires before the end of year 9999 "
        "(in Europe/Berlin), so this entry will never run; change the expression or remove "
        "the entry\n",
    )
    code, out, err = beatd("next", "gap", "-s", str(path), "--after", "2026-01-01T00:00:00Z")
    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == ["  never fires before the end of year 9999"]


def test_next_name_follows_the_entry_name_rules() -> None:
    # H is hashed from an entry's name: a name no schedule file accepts resolves nothing real.
    code, out, err = beatd("next", "--cron", "H * * * *", "--name", "nightly report")
    assert (code, out, err) == (
        2,
        "",
        "beatd: --name: 'nightly report': entry names use letters, digits and _ . : / -, with "
        "no empty, '.' or '..' part between slashes (a run's id is NAME@SLOT)\n",
    )


def test_run_refuses_a_redis_wait_that_is_neither_auto_nor_a_number() -> None:
    code, out, err = beatd("run", "--broker", "memory://bad", "--redis-wait-replicas", "all")
    assert (code, out, err) == (
        2,
        "",
        "beatd: --redis-wait-replicas: 'all' is neither auto nor a number of replicas (0, 1...)\n",
    )


def test_a_bad_sentinel_broker_url_is_refused_naming_it_without_its_password() -> None:
    code, out, err = beatd("status", "--broker", "redis+sentinel://:pw@s1:26379")
    assert (code, out) == (2, "")
    assert err == (
        "beatd: warning: --broker: the URL holds a password, which every user of this host can "
        "read in ps; give the URL in BEATD_BROKER instead\n"
        "beatd: --broker: cannot use Redis Sentinel URL redis+sentinel://:***@s1:26379: no "
        "service name (the name in Sentinel's `sentinel monitor` line) in the path; the form is "
        "redis+sentinel://[user:password@]host1:26379,host2:26379/SERVICE/DB\n"
    )
