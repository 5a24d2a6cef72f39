"""`beatd entries` in-process (click's CliRunner), on SQLite and on a real redis-server: a flag
for every field of the table, the exit statuses and whole messages, and export / --from-yaml."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from beatd.backends import Backend
from beatd.cli import main
from beatd.cli.entry_flags import flag_name
from beatd.config.fields import FIELDS
from tests.entries_backends import broker, redis_server, register_files, store

__all__ = ["broker", "redis_server", "store"]  # fixtures
ENV = {"BEATD_BROKER": None, "BEATD_SCHEDULES": None}


def beatd(broker: str, *args: str) -> tuple[int, str, str]:
    writes = args[1] in ("add", "set", "rm")
    by = ["--by", "ops@host"] if writes else []
    result = CliRunner().invoke(main, [*args, "--broker", broker, *by], env=ENV)
    return result.exit_code, result.stdout, result.stderr


def options(command: str) -> list[str]:
    group = main.commands["entries"]
    assert isinstance(group, click.Group)
    found = group.commands[command]
    return [o.opts[0] for o in found.params if isinstance(o, click.Option)]


def test_add_and_set_have_a_flag_for_every_field_of_the_table() -> None:
    wanted = [flag_name(f) for f in FIELDS]
    assert [o for o in options("add") if o in wanted] == wanted
    assert [o for o in options("set") if o in wanted] == wanted
    assert wanted[:3] == ["--task", "--args", "--kwargs"]
    assert "--max-catch-up" in wanted


def test_add_set_list_and_rm(broker: str) -> None:
    added = beatd(
        broker,
        *("entries", "add", "nightly", "--task", "reports.nightly", "--cron", "30 2 * * *"),
        *("--kwargs", "{region: eu}", "--priority", "7"),
    )
    assert added == (0, "added nightly (version 1)\n", "")
    assert beatd(broker, "entries", "set", "nightly", "--every", "2h") == (
        0,
        "changed nightly (version 2)\n",
        "",
    )
    code, out, err = beatd(broker, "entries", "list", "--json", "--source", "api")
    (entry,) = json.loads(out)
    assert (code, err) == (0, "")
    assert (entry["version"], entry["updated_by"], entry["definition"]["every"]) == (
        2,
        "ops@host",
        "2h",
    )
    assert entry["definition"]["kwargs"] == {"region": "eu"}
    assert entry["definition"]["priority"] == 7
    assert beatd(broker, "entries", "list", "--source", "api") == (
        0,
        "NAME     SOURCE  VERSION  SCHEDULE  TASK\n"
        "nightly  api     2        every 2h  reports.nightly\n"
        "1 entry\n",
        "",
    )
    assert beatd(broker, "entries", "rm", "nightly") == (0, "removed nightly (version 2)\n", "")
    assert beatd(broker, "entries", "rm", "nightly") == (1, "", "no runtime entry nightly\n")


def test_bad_input_exits_2_naming_entry_and_field(broker: str) -> None:
    code, out, err = beatd(
        broker, "entries", "add", "x", "--task", "a.b", "--every", "1h", "--jitter", "2h"
    )
    assert (code, out, err) == (
        2,
        "",
        "entry x: field jitter: jitter 2h must be shorter than the schedule's period 1h\n",
    )
    code, out, err = beatd(broker, "entries", "add", "x", "--task", "a.b", "--kwargs", "{a: [")
    assert code == 2 and out == ""
    assert err.startswith("beatd: --kwargs: cannot read '{a: [' as a YAML value: ")
    assert beatd(broker, "entries", "add", "--task", "a.b") == (
        2,
        "",
        "beatd: NAME: give the entry's name and its fields (or --from-yaml FILE)\n",
    )


def test_a_name_taken_exits_1(broker: str, store: Backend) -> None:
    register_files(store, {"nightly": "schedules/app.yaml"})
    code, out, err = beatd(broker, "entries", "add", "nightly", "--task", "a.b", "--every", "1h")
    assert (code, out, err) == (
        1,
        "",
        "entry nightly: the name is taken by a file entry in schedules/app.yaml; names are "
        "unique across schedule files and runtime entries: choose another name\n",
    )
    assert beatd(broker, "entries", "add", "a", "--task", "a.b", "--every", "1h")[0] == 0
    assert beatd(broker, "entries", "add", "a", "--task", "a.b", "--every", "1h") == (
        1,
        "",
        "entry a exists already (version 1); nothing was written\n",
    )
    assert beatd(broker, "entries", "set", "a", "--queue", "q", "--if-version", "3") == (
        1,
        "",
        "entry a is at version 1, not the expected 3: it changed since it was read; nothing was "
        "written: read it again and retry\n",
    )


def test_export_then_from_yaml_adds_back_the_same_entries(broker: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert beatd(broker, "entries", "add", name, "--task", "x.y", "--every", "90")[0] == 0
    out_dir = tmp_path / "export"
    assert beatd(broker, "entries", "export", "--out", str(out_dir)) == (
        0,
        f"{out_dir / 'entries-0001.yaml'}\nexported 2 entries\n",
        "",
    )
    before = json.loads(beatd(broker, "entries", "list", "--json", "--source", "api")[1])
    assert beatd(broker, "entries", "rm", "a", "b")[0] == 0
    path = out_dir / "entries-0001.yaml"
    assert beatd(broker, "entries", "add", "--from-yaml", str(path)) == (
        0,
        f"added 2 entries from {path}\n",
        "",
    )
    after = json.loads(beatd(broker, "entries", "list", "--json", "--source", "api")[1])
    assert [e["definition"] for e in after] == [e["definition"] for e in before]


def test_from_yaml_errors_name_file_line_entry_and_field(broker: str, tmp_path: Path) -> None:
    assert beatd(broker, "entries", "add", "first", "--task", "x.y", "--every", "1h")[0] == 0
    path = tmp_path / "new.yaml"
    path.write_text(
        "entries:\n  ok:\n    task: x.y\n    every: 1h\n"
        "  bad:\n    task: x.y\n    every: 1h\n    jitter: 2h\n"
    )
    assert beatd(broker, "entries", "add", "--from-yaml", str(path)) == (
        2,
        "",
        f"{path}:8:13: entry bad: field jitter: jitter 2h must be shorter than the schedule's "
        "period 1h\n",
    )
    listed = json.loads(beatd(broker, "entries", "list", "--json", "--source", "api")[1])
    assert [e["name"] for e in listed] == ["first"]  # all or none: `ok` was not added


def test_the_schedule_files_names_are_refused_and_listed(broker: str, tmp_path: Path) -> None:
    app = tmp_path / "app.yaml"
    app.write_text("entries:\n  nightly:\n    task: x.y\n    cron: '0 3 * * *'\n")
    files = ("--schedules", str(app))
    assert beatd(broker, "entries", "add", "nightly", "--task", "a.b", "--every", "1h", *files) == (
        1,
        "",
        f"entry nightly: the name is taken by a file entry in {app}; names are unique across "
        "schedule files and runtime entries: choose another name\n",
    )
    assert (
        beatd(broker, "entries", "add", "hourly", "--task", "a.b", "--every", "1h", *files)[0] == 0
    )
    assert beatd(broker, "entries", "list", *files) == (
        0,
        f"NAME     SOURCE{' ' * (len(str(app)) - 6)}  VERSION  SCHEDULE        TASK\n"
        f"hourly   api{' ' * (len(str(app)) - 3)}  1        every 1h        a.b\n"
        f"nightly  {app}  -        cron 0 3 * * *  x.y\n"
        "2 entries\n",
        "",
    )


def test_rm_removes_every_name_it_can_and_names_the_others(broker: str) -> None:
    for name in ("a", "c"):
        assert beatd(broker, "entries", "add", name, "--task", "x.y", "--every", "1h")[0] == 0
    assert beatd(broker, "entries", "rm", "a", "b", "c") == (
        1,
        "removed a (version 1)\nremoved c (version 2)\n",  # created at its change record's seq
        "no runtime entry b\n",
    )
