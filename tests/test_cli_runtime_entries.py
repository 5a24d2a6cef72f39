"""`beatd next` and `beatd check` with runtime entries (issue 18), in-process with click's runner,
on a SQLite file and a real redis-server: `next` previews them when given the backend
(--broker / BEATD_BROKER) and says it knows file entries only without one; `check` refuses a file
entry whose name a runtime entry has, in the scheduler's words."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from beatd.backends import Backend
from beatd.cli import main
from beatd.runtime_entries import resolve_entry
from tests.entries_backends import broker, redis_server, store

__all__ = ["broker", "redis_server", "store"]  # fixtures
ENV = {"BEATD_BROKER": None, "BEATD_SCHEDULES": None}
AFTER = ("--after", "2026-11-26T00:00:00Z", "-n", "2")
FILE = "entries:\n  daily:\n    task: t.daily\n    cron: '0 6 * * *'\n"
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def beatd(*args: str, env: dict[str, str | None] = ENV) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def schedules(tmp_path: Path, text: str = FILE) -> Path:
    path = tmp_path / "schedules" / "s.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def add(store: Backend, name: str, **fields: object) -> None:
    store.put_entry(resolve_entry(name, fields, now=NOW), "ops@host")


def test_next_previews_a_runtime_entry_from_the_backend(
    tmp_path: Path, broker: str, store: Backend
) -> None:
    path = schedules(tmp_path)
    add(store, "hourly", task="t.hourly", every="1h", timezone="Europe/Paris")
    code, out, err = beatd("next", "hourly", "-s", str(path), "--broker", broker, *AFTER)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "hourly: every 1h (Europe/Paris), source api",
        "  2026-11-26T01:00:00Z  2026-11-26T02:00:00+01:00",
        "  2026-11-26T02:00:00Z  2026-11-26T03:00:00+01:00",
    ]
    # the same through BEATD_BROKER
    env = {**ENV, "BEATD_BROKER": broker}
    assert beatd("next", "hourly", "-s", str(path), *AFTER, env=env) == (0, out, "")


def test_next_without_a_backend_says_it_knows_file_entries_only(tmp_path: Path) -> None:
    path = schedules(tmp_path)
    code, out, err = beatd("next", "hourly", "-s", str(path), *AFTER)
    assert (code, out) == (2, "")
    assert err == (
        f"beatd: ENTRY: no entry named 'hourly' in {path}; without --broker (BEATD_BROKER) "
        "only the schedule files' entries are shown, not runtime entries\n"
    )
    code, out, err = beatd("next", "-s", str(path), *AFTER)
    assert code == 0 and out.splitlines()[0] == "daily: at 06:00, every day (UTC)"
    assert err == (
        "beatd: note: schedule files' entries only: give --broker (BEATD_BROKER) to show "
        "runtime entries too\n"
    )


def test_next_says_it_looked_in_the_backend_too(
    tmp_path: Path, broker: str, store: Backend
) -> None:
    path = schedules(tmp_path)
    code, out, err = beatd("next", "hourly", "-s", str(path), "--broker", broker, *AFTER)
    assert (code, out) == (2, "")
    assert err == (
        f"beatd: ENTRY: no entry named 'hourly' in {path}, nor a runtime entry of that name\n"
    )


def test_next_lists_file_and_runtime_entries_with_their_source(
    tmp_path: Path, broker: str, store: Backend
) -> None:
    path = schedules(tmp_path)
    add(store, "hourly", task="t.hourly", every="1h")
    add(store, "at-noon", task="t.noon", cron="0 12 * * *", timezone="Asia/Tokyo")
    code, out, err = beatd("next", "-s", str(path), "--broker", broker, *AFTER)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"daily: at 06:00, every day (UTC), source {path}",
        "  2026-11-26T06:00:00Z  2026-11-26T06:00:00+00:00",
        "  2026-11-27T06:00:00Z  2026-11-27T06:00:00+00:00",
        "at-noon: at 12:00, every day (Asia/Tokyo), source api",
        "  2026-11-26T03:00:00Z  2026-11-26T12:00:00+09:00",
        "  2026-11-27T03:00:00Z  2026-11-27T12:00:00+09:00",
        "hourly: every 1h (UTC), source api",
        "  2026-11-26T01:00:00Z  2026-11-26T01:00:00+00:00",
        "  2026-11-26T02:00:00Z  2026-11-26T02:00:00+00:00",
    ]
    code, out, err = beatd("next", "-s", str(path), "--broker", broker, "--json", *AFTER)
    assert (code, err) == (0, "")
    assert list(json.loads(out)) == ["daily", "at-noon", "hourly"]


def test_check_refuses_a_file_entry_named_like_a_runtime_entry(
    tmp_path: Path, broker: str, store: Backend
) -> None:
    path = schedules(tmp_path, FILE + "  hourly:\n    task: t.other\n    every: 2h\n")
    add(store, "hourly", task="t.hourly", every="1h")
    code, out, err = beatd("check", str(path), "--broker", broker)
    assert (code, out) == (2, "")
    assert err == (
        f"{path}:5:1: entry hourly: the name is taken by a runtime entry (source api); names "
        "are unique across schedule files and runtime entries: rename the entry in this file, "
        "or remove the runtime entry first\n"
    )
    # without the backend, the files alone are fine
    code, out, err = beatd("check", str(path))
    assert (code, err) == (0, "") and out.endswith("2 entries OK in 1 file(s)\n")


def test_check_with_a_backend_and_no_clash_is_ok(
    tmp_path: Path, broker: str, store: Backend
) -> None:
    path = schedules(tmp_path)
    add(store, "hourly", task="t.hourly", every="1h")
    code, out, err = beatd("check", str(path), "--broker", broker)
    assert (code, err) == (0, "") and out.endswith("1 entry OK in 1 file(s)\n")
