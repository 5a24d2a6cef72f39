"""`beatd run` as real processes sharing one SQLite file: kills, reloads, a full disk."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import click
import pytest

from beatd.backends.sqlite import SCHEMA, SQLiteBackend
from beatd.cli import main
from tests.redis_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

EVERY_SECOND = """\
entries:
  tick:
    task: t.tick
    every: 1s
    missed: catch_up
"""


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def launch(
        node: str, *args: str, preexec: Callable[[], None] | None = None, name: str = ""
    ) -> Daemon:
        log = tmp_path / f"{name or node}.log"
        command = [
            sys.executable,
            "-m",
            "beatd",
            "run",
            "--node",
            node,
            "--broker",
            f"sqlite:///{tmp_path / 'beatd.db'}",
            "-s",
            str(tmp_path / "schedules"),
            "--log-level",
            "debug",
            *args,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, preexec_fn=preexec
            )
        daemon = Daemon(proc, log)
        daemons.append(daemon)
        return daemon

    (tmp_path / "schedules").mkdir()
    yield launch
    for daemon in daemons:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


TABLES = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    """Read the daemon's database; nothing yet while the daemon is still creating it (told by
    the tables present, not by SQLite's wording of the error)."""
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        present = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if not {name for (name,) in present} >= TABLES:
            return []
        return conn.execute(sql, params).fetchall()


def messages(db: Path) -> list[dict]:
    return [json.loads(body) for (body,) in query(db, "SELECT body FROM message ORDER BY seq")]


def slots(db: Path) -> list[datetime]:
    return [datetime.fromisoformat(m["scheduled_for"]) for m in messages(db)]


def leader_node(db: Path) -> str | None:
    rows = query(db, "SELECT node FROM lease WHERE expires_at > ?", time.time())
    return rows[0][0] if rows else None


def assert_contiguous(found: list[datetime], step: timedelta) -> None:
    assert len(found) == len(set(found)), "a slot was published twice"
    ordered = sorted(found)
    gaps = [b - a for a, b in pairwise(ordered) if b - a != step]
    assert not gaps, f"slots lost: gaps {gaps}"


def test_kill_9_of_the_leader_standby_takes_over_no_slot_lost_or_repeated(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a", "--lease-ttl", "2s")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    b = start("b", "--lease-ttl", "2s")
    standing_by = "standby node=b: lease held by node=a epoch=1"
    wait_for(lambda: b.text().count(standing_by) >= 2, what="b to try for the lease twice")
    assert leader_node(db) == "a"
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    killed_at = time.time()
    before = len(messages(db))
    wait_for(lambda: leader_node(db) == "b", what="b to take over")
    took_over = time.time() - killed_at
    wait_for(lambda: len(messages(db)) >= before + 3, what="b to publish")
    assert took_over <= 2 + 1 + 0.5  # the TTL plus a second of standby attempts
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=10) == 0
    assert_contiguous(slots(db), timedelta(seconds=1))
    assert "became leader node=b" in b.text()


def test_sigterm_releases_the_lease_at_once(tmp_path: Path, start: Callable[..., Daemon]) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a", "--lease-ttl", "30s")
    wait_for(lambda: len(messages(db)) >= 1, what="a to publish")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0
    assert leader_node(db) is None
    assert "released the lease node=a" in a.text()


def test_reload_with_a_broken_file_keeps_running_the_last_good_one(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    schedule = tmp_path / "schedules" / "s.yaml"
    schedule.write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a")
    wait_for(lambda: len(messages(db)) >= 1, what="a to publish")
    schedule.write_text(EVERY_SECOND + "  broken:\n    task: t.x\n    every: soon\n")
    wait_for(lambda: "reload refused" in a.text(), what="the reload to be refused")
    assert f"{schedule}:8:12: entry broken: field every: cannot read 'soon'" in a.text()
    count = len(messages(db))
    wait_for(lambda: len(messages(db)) >= count + 2, what="publishing to go on")
    # fixed and extended: the new entry starts from now, via SIGHUP this time
    schedule.write_text(EVERY_SECOND + "  added:\n    task: t.added\n    every: 1s\n")
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(m["entry"] == "added" for m in messages(db)), what="the added entry")
    assert a.proc.poll() is None
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0
    assert_contiguous(
        [s for s, m in zip(slots(db), messages(db), strict=True) if m["entry"] == "tick"],
        timedelta(seconds=1),
    )


OTHER_EVERY_SECOND = "entries:\n  other:\n    task: t.other\n    every: 1s\n"


def test_an_emptied_or_shortened_schedule_file_loses_no_slot(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    schedule = tmp_path / "schedules" / "s.yaml"
    schedule.write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    schedule.write_text("")  # an editor's non-atomic rewrite, caught half way
    wait_for(lambda: "reload refused" in a.text(), what="the empty file to be refused")
    assert (
        f"{schedule}:1:1: empty file; refusing it: it may be half written, and loading it would "
        "remove every entry; write entries: {} if it is meant to schedule nothing"
    ) in a.text()
    count = len(messages(db))
    wait_for(lambda: len(messages(db)) >= count + 2, what="publishing to go on")
    # Now a removal that is loaded: the entry's position is kept, and re-added it catches up.
    schedule.write_text(OTHER_EVERY_SECOND)
    wait_for(lambda: "keeping the state of 1 entries" in a.text(), what="tick to be removed")
    wait_for(lambda: sum(m["entry"] == "other" for m in messages(db)) >= 2, what="other to run")
    schedule.write_text(EVERY_SECOND)
    wait_for(lambda: a.text().count("reloaded 1 entries") >= 2, what="tick to be re-added")
    count = len(messages(db))
    wait_for(lambda: len(messages(db)) >= count + 2, what="tick to publish again")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0
    assert "forgot" not in a.text()
    assert_contiguous(
        [s for s, m in zip(slots(db), messages(db), strict=True) if m["entry"] == "tick"],
        timedelta(seconds=1),
    )


def test_full_disk_is_reported_and_survived_nothing_committed_lost(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(timeout=10)
    committed = slots(db)
    # Files may not grow past their current size: SQLite's next WAL append fails (EFBIG).
    limit = max(p.stat().st_size for p in tmp_path.glob("beatd.db*"))

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    b = start("b", preexec=cap_file_size)
    wait_for(lambda: "unavailable, retrying with backoff" in b.text(), what="the error to show")
    retried = "still unavailable; next try in"
    wait_for(lambda: b.text().count(retried) >= 3, what="three more failed tries")
    assert b.proc.poll() is None, "the daemon died on a full disk"
    assert b.text().count("unavailable, retrying with backoff") == 1, "logged once, not per retry"
    assert slots(db)[: len(committed)] == committed
    resource.prlimit(b.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    wait_for(lambda: "reachable again" in b.text(), what="recovery")
    wait_for(lambda: len(slots(db)) >= len(committed) + 2, what="publishing to resume")
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=10) == 0
    assert_contiguous(slots(db), timedelta(seconds=1))  # catch_up filled the outage


def test_bad_config_exits_2_without_touching_the_database(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text("entries:\n  x:\n    task: a.b\n")
    a = start("a")
    assert a.proc.wait(timeout=20) == 2
    assert "entry x: no schedule" in a.text()
    assert not (tmp_path / "beatd.db").exists()


def test_python_dash_m_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # one width for both, whatever the terminal
    out = subprocess.run(
        [sys.executable, "-m", "beatd", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    # the same command tree as in-process: beatd's help, whatever words click lays it out with
    shown = main.get_help(click.Context(main, info_name="python -m beatd", **main.context_settings))
    assert (out.stdout, out.stderr) == (shown + "\n", "")


def test_a_deleted_database_file_stops_every_daemon_still_using_it(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a", "--lease-ttl", "3s")
    b = start("b", "--lease-ttl", "3s")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    wait_for(lambda: "beatd run node=b" in b.text(), what="b to start as a standby")
    opened = db.stat()
    for path in tmp_path.glob("beatd.db*"):  # as `rm beatd.db*` would
        path.unlink()
    assert a.proc.wait(timeout=10) == 1
    assert b.proc.wait(timeout=10) == 1
    for daemon in (a, b):
        assert (
            "ERROR beatd.scheduler: storage failed, stepping down and exiting with status 1: "
            f"{db} is not the database file this process opened (device {opened.st_dev} inode "
            f"{opened.st_ino}): it was deleted or replaced; a process still using it would "
            "lead or work apart from every process using the file at that path now. Restart "
            "beatd (systemd does) to use the file there now"
        ) in daemon.text()
    # a new daemon on the same path leads alone in the new file
    c = start("c", "--lease-ttl", "3s")
    wait_for(lambda: len(messages(db)) >= 3, what="c to publish in a new file")
    assert query(db, "SELECT node, epoch FROM lease") == [("c", 1)]
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(timeout=10) == 0
    assert_contiguous(slots(db), timedelta(seconds=1))


def test_a_backup_moved_over_the_database_stops_the_daemon_using_it(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    """docs/deployment.md, When storage fails: a file moved over the database (`mv`, a new
    inode) makes the daemon step down and exit 1. A copy into the same inode (`cp backup.db
    beatd.db`) is not noticed, and the docs say so: in WAL mode the running process keeps its
    own view of the pages and its WAL (which the reviewer's test of it showed), so no check
    from inside it can be reliable; the docs' restore stops every beatd first."""
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a", "--lease-ttl", "3s")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    backup = tmp_path / "backup.db"
    with sqlite3.connect(db) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    opened = db.stat()
    os.replace(backup, db)  # as `mv backup.db beatd.db` restores it
    assert a.proc.wait(timeout=10) == 1
    assert (
        "ERROR beatd.scheduler: storage failed, stepping down and exiting with status 1: "
        f"{db} is not the database file this process opened (device {opened.st_dev} inode "
        f"{opened.st_ino}): it was deleted or replaced; a process still using it would "
        "lead or work apart from every process using the file at that path now. Restart "
        "beatd (systemd does) to use the file there now"
    ) in a.text()


def corrupt_entry_states(db: Path) -> str:
    """Overwrite the cells of the entry_state table's first page; what quick_check says."""
    with sqlite3.connect(db) as conn:
        page = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'entry_state'"
        ).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as file:
        file.seek((page - 1) * size + 8)  # past the page header: the cells point nowhere
        file.write(b"\x07" * (size - 8))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    return "; ".join(line for (row,) in rows for line in row.splitlines())


def test_a_corrupt_database_stops_the_scheduler_with_status_3_and_says_what_is_damaged(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    a = start("a")
    wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0
    found = corrupt_entry_states(db)
    b = start("b")
    assert b.proc.wait(timeout=20) == 3
    assert (
        "ERROR beatd.scheduler: storage failed, stepping down and exiting with status 3: "
        f"{db} is damaged: PRAGMA quick_check found: {found}. Retrying cannot repair it: "
        "restore the file from a backup, or copy what is readable to a new file (see "
        "docs/deployment.md, When storage fails)"
    ) in b.text()
    assert b.text().count("storage failed") == 1
    assert "unavailable, retrying" not in b.text()


def test_run_creates_the_database_file_but_not_a_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "typo" / "beatd.db"
    command = [sys.executable, "-m", "beatd", "run", "--broker", f"sqlite:///{db}", "-s"]
    out = subprocess.run(
        [*command, str(tmp_path / "schedules")], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        f"beatd: --broker: cannot create the database {db}: there is no directory {db.parent}; "
        "create it, or correct the path"
    )
    assert not db.parent.exists()


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# Root writes whatever a file's mode says; without CAP_DAC_OVERRIDE it obeys the mode.
OBEYING_FILE_MODES = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    if os.geteuid() == 0
    else []
)


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="as root, the daemon needs setpriv to drop CAP_DAC_OVERRIDE",
)
def test_a_database_opened_read_only_is_opened_again_once_its_mode_is_fixed(
    tmp_path: Path,
) -> None:
    (tmp_path / "s.yaml").write_text(EVERY_SECOND)
    db, port = tmp_path / "beatd.db", free_port()
    command = [
        *OBEYING_FILE_MODES,
        *(sys.executable, "-m", "beatd", "run", "--node", "a", "--broker", f"sqlite:///{db}"),
        *("-s", str(tmp_path / "s.yaml"), "--metrics-addr", f"127.0.0.1:{port}"),
    ]
    log = tmp_path / "a.log"

    def launch() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)

    first = launch()
    try:
        wait_for(lambda: len(messages(db)) >= 2, what="a to publish")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
    finally:
        first.kill()
    # The file cannot be written when the daemon opens it: SQLite opens it read-only.
    db.chmod(0o444)
    daemon = launch()
    try:
        reopening = "; opening it again at the next attempt"
        wait_for(lambda: reopening in log.read_text(), what="the write to fail")
        assert readyz(port) == (503, f"backend sqlite:///{db} unavailable\n")
        before = len(messages(db))
        for path in tmp_path.glob("beatd.db*"):
            path.chmod(0o600)  # the mode fixed, as `chmod 600 beatd.db*` would
        wait_for(lambda: "reachable again" in log.read_text(), what="the daemon to recover")
        wait_for(lambda: len(messages(db)) >= before + 2, what="publishing to resume")
        assert readyz(port) == (200, "leader, 1 entries\n")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
    finally:
        daemon.kill()
    assert_contiguous(slots(db), timedelta(seconds=1))


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="as root, the daemon needs setpriv to drop CAP_DAC_OVERRIDE",
)
def test_the_worker_is_not_ready_while_its_database_cannot_be_written(tmp_path: Path) -> None:
    db, port = tmp_path / "beatd.db", free_port()
    SQLiteBackend(db).close()  # the database exists, made by an earlier `beatd run`
    for path in tmp_path.glob("beatd.db*"):
        path.chmod(0o444)
    command = [
        *OBEYING_FILE_MODES,
        *(sys.executable, "-m", "beatd", "worker", "--broker", f"sqlite:///{db}"),
        *("-A", "tests.worker_tasks", "-c", "1", "--metrics-addr", f"127.0.0.1:{port}"),
    ]
    log = tmp_path / "w.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        )
    try:
        reopening = "; opening it again at the next attempt"
        wait_for(lambda: reopening in log.read_text(), what="the claim to fail")
        assert readyz(port) == (503, f"backend sqlite:///{db} unavailable\n")
        for path in tmp_path.glob("beatd.db*"):
            path.chmod(0o600)
        wait_for(lambda: "reachable again" in log.read_text(), what="the worker to recover")
        assert readyz(port) == (200, "worker running\n")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()


@pytest.mark.parametrize("unit", ["beatd.service", "beatd-worker@.service"])
def test_the_units_do_not_restart_on_bad_input_or_a_corrupt_database(unit: str) -> None:
    text = (Path(__file__).resolve().parents[1] / "systemd" / unit).read_text()
    settings = [line for line in text.splitlines() if line.startswith("RestartPreventExitStatus=")]
    assert settings == ["RestartPreventExitStatus=2 3"]


def test_two_daemons_given_the_same_node_name_do_not_both_lead(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    first = start("same", "--lease-ttl", "3s")
    wait_for(lambda: len(messages(db)) >= 1, what="the first to publish")
    second = start("same", "--lease-ttl", "3s", name="second")
    taken = "node name is taken: another process holds the lease as node=same epoch=1"
    wait_for(lambda: taken in second.text(), what="the second to see the name taken")
    count = len(messages(db))
    wait_for(lambda: len(messages(db)) >= count + 3, what="publishing to go on")
    for daemon in (second, first):
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=10) == 0
    assert "became leader" in first.text() and "became leader" not in second.text()
    assert second.text().count("node name is taken") == 1
    assert_contiguous(slots(db), timedelta(seconds=1))


@pytest.mark.parametrize("command", ["run"])  # status says "not a beatd database": test_status
def test_a_file_that_is_not_a_database_is_corrupt_storage_exit_3(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    db.write_bytes(bytes(range(256)) * 32)  # 8 KB that are no SQLite file
    argv = [sys.executable, "-m", "beatd", command, "--broker", f"sqlite:///{db}", "-s"]
    out = subprocess.run(
        [*argv, str(tmp_path / "schedules")], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 3
    assert out.stderr.splitlines()[-1].startswith(
        f"{db} is damaged: PRAGMA quick_check found: nothing, it could not run ("
    )


def test_a_worker_on_memory_warns_as_beatd_run_does(tmp_path: Path) -> None:
    """memory:// lives in one process: a `beatd worker` alone on it can never receive a run, so
    it says so at start at least as `beatd run` does (it starts silently today)."""
    from beatd.backends.memory import MemoryBackend, discard

    url = "memory://alone"
    (warning,) = MemoryBackend("alone").persistence_warnings()
    discard("alone")
    command = [
        *(sys.executable, "-m", "beatd", "worker", "--broker", url, "-A", "tests.worker_tasks"),
        *("-c", "1", "--pool", "thread", "--metrics-addr", "off"),
    ]
    log = tmp_path / "w.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        )
    try:
        wait_for(lambda: "ready: 1 thread slot(s) started" in log.read_text(), what="the worker")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert f"WARNING beatd: {warning}" in log.read_text()
    finally:
        worker.kill()
