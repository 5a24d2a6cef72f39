"""`beatd status` against both backends: a real SQLite file and a real redis-server."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.backends import Backend, open_backend
from beatd.backends.base import BeatdQueue, Outgoing, StateWrite
from beatd.cli import main
from beatd.config import load_config
from beatd.config.model import Entry
from beatd.controls import EntryControl, Pause
from beatd.errors import TransientBackendError
from beatd.nodes import NodeRecord, NodeRole
from beatd.operations.status import next_unpaused
from beatd.runtime_entries import RuntimeEntry, resolve_entry
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.redis_sentinel import SentinelCluster
from tests.redis_server import RedisServer, free_port

SCHEDULES = """\
entries:
  tick:
    task: t.tick
    every: 10s
  stalled:
    task: t.stalled
    every: 1m
  fresh:
    task: t.fresh
    every: 1h
"""


@pytest.fixture(params=["sqlite", "redis", "redis_sentinel"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'beatd.db'}"
        return
    if request.param == "redis_sentinel":
        cluster = SentinelCluster(tmp_path / "redis").start()
        try:
            yield cluster.url
        finally:
            cluster.stop()
        return
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def arrange(backend: Backend, schedules: Path, now: datetime) -> None:
    """A leader that published `tick` on time and last ran `stalled` ten minutes ago."""
    config = load_config([str(schedules)])
    lease = backend.acquire_lease("node-a", 30, config.fingerprint)
    assert lease is not None
    tick = now.replace(microsecond=0) - timedelta(seconds=now.second % 10)
    stalled = now.replace(second=0, microsecond=0) - timedelta(minutes=10)
    entries = config.entries
    writes = [
        StateWrite(EntryState("tick", tick, tick, entries["tick"].identity), None),
        StateWrite(EntryState("stalled", stalled, stalled, entries["stalled"].identity), None),
    ]
    messages = [
        Outgoing("tick", f"tick@{i}", BeatdQueue("default"), json.dumps({"task": "t.tick"}))
        for i in range(3)
    ]
    messages.append(
        Outgoing("stalled", "stalled@1", BeatdQueue("reports"), '{"task": "t.stalled"}')
    )
    assert backend.commit(lease, writes, messages) == set()
    delivery = backend.claim(["reports"], "test", 30)
    assert delivery is not None
    backend.dead_letter(delivery, "failed for good")
    leader = NodeRecord(
        "node-a", NodeRole.LEADER, "1.0", config.fingerprint, "2025b", "system", "127.0.0.1:9479"
    )
    backend.write_node(leader, 60)
    backend.write_node(
        NodeRecord("node-b", NodeRole.STANDBY, "1.0", "", "2026a", "tzdata", None), 60
    )


def test_status_shows_the_leader_entries_and_queues(broker: str, tmp_path: Path) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "s.yaml").write_text(SCHEDULES)
    backend = open_backend(broker)
    now = datetime.now(UTC)
    try:
        arrange(backend, schedules, now)
        runtime = {"task": "t.report", "cron": "0 6 * * *"}
        backend.put_entry(resolve_entry("weekly-report", runtime, now=now), "ops@host")
    finally:
        backend.close()
    args = ["status", "--broker", broker, "-s", str(schedules)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    fingerprint = load_config([str(schedules)]).fingerprint
    lease_left = report["leader"].pop("lease_left_seconds")
    assert 25 < lease_left <= 30
    assert report["leader"] == {
        "node": "node-a",
        "epoch": 1,
        "config": fingerprint,
        "same_config": True,
    }
    assert report["config"] == fingerprint and report["counts_from"] == []
    seen = [datetime.fromisoformat(row.pop("last_seen")) for row in report["nodes"]]
    assert all(now - timedelta(seconds=1) <= s <= datetime.now(UTC) for s in seen), seen
    assert report["nodes"] == [
        {
            "node": "node-a",
            "role": "leader",
            "version": "1.0",
            "config": fingerprint,
            "tz_version": "2025b",
            "tz_source": "system",
            "api_addr": "127.0.0.1:9479",
            "same_config": True,
            "same_tz": True,
        },
        {
            "node": "node-b",
            "role": "standby",
            "version": "1.0",
            "config": None,
            "tz_version": "2026a",
            "tz_source": "tzdata",
            "api_addr": None,
            "same_config": False,
            "same_tz": False,
        },
    ]
    rows = {row.pop("entry"): row for row in report["entries"]}
    tick = now.replace(microsecond=0) - timedelta(seconds=now.second % 10)
    stalled = now.replace(second=0, microsecond=0) - timedelta(minutes=10)
    text = "%Y-%m-%dT%H:%M:%SZ"
    unknown = {"due": None, "published": None, "late": None, "missed": None}
    # the messages here carry no slot: a requeue's, with no run record, so no run finished
    no_history = dict.fromkeys(
        [
            "last_status",
            "last_finished",
            "last_success",
            "last_failure",
            "last_duration_seconds",
            "consecutive_failures",
            "paused",  # no pause, busy mark or held run here (tests/test_controls_cli.py)
            "busy",
            "held",
        ]
    )
    assert rows["tick"] == {
        "last_published": tick.strftime(text),
        "horizon": tick.strftime(text),
        "next_due": (tick + timedelta(seconds=10)).strftime(text),
        "overdue_seconds": None,
        "adopted": True,
        "source": f"{schedules / 's.yaml'}:2",
        **unknown,
        **no_history,
    }
    overdue = rows["stalled"].pop("overdue_seconds")
    assert 9 * 60 - 1 <= overdue <= 9 * 60 + 60
    assert rows["stalled"] == {
        "last_published": stalled.strftime(text),
        "horizon": stalled.strftime(text),
        "next_due": (stalled + timedelta(minutes=1)).strftime(text),
        "adopted": True,
        "source": f"{schedules / 's.yaml'}:5",
        **unknown,
        **no_history,
    }
    fresh = datetime.fromisoformat(rows["fresh"].pop("next_due"))
    assert rows["fresh"] == {
        "last_published": None,
        "horizon": None,
        "overdue_seconds": None,
        "adopted": False,
        "source": f"{schedules / 's.yaml'}:8",
        **unknown,
        **no_history,
    }
    report_due = now.replace(hour=6, minute=0, second=0, microsecond=0)
    report_due += timedelta(days=1) if report_due <= now else timedelta(0)
    assert rows["weekly-report"] == {  # a runtime entry, not yet adopted by a leader
        "last_published": None,
        "horizon": None,
        "next_due": report_due.strftime(text),
        "overdue_seconds": None,
        "adopted": False,
        "source": "api",
        **unknown,
        **no_history,
    }
    assert now < fresh <= now + timedelta(hours=1) and fresh.minute == fresh.second == 0
    assert report["queues"] == [
        {"queue": "default", "depth": 3, "dead_letters": 0},
        {"queue": "reports", "depth": 0, "dead_letters": 1},
    ]

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("leader   node=node-a epoch=1 lease_left=")
    assert lines[1].endswith(f"s config={fingerprint}")
    table = [re.split(r"  +", line) for line in lines[3:6]]
    # written when the test began: "now", or seconds ago on a slow machine
    assert all(re.fullmatch(r"now|\d+ s ago", row.pop()) for row in table[1:]), lines[3:6]
    assert table == [
        ["NODE", "ROLE", "VERSION", "CONFIG", "TZ DATA", "API", "LAST SEEN"],
        ["node-a", "leader", "1.0", fingerprint, "2025b (system)", "127.0.0.1:9479"],
        [
            "node-b",
            "standby",
            "1.0",
            "? (differs)",
            "2026a (tzdata) (differs from the leader's)",
            "-",
        ],
    ]
    assert lines[6:8] == ["2 nodes", ""]
    del lines[3:8]
    header = ["ENTRY", "LAST PUBLISHED", "NEXT DUE", "LAST STATUS", "LAST SUCCESS"]
    assert re.split(r"  +", lines[3]) == [*header, "LAST DURATION", "LATE", "MISSED"]
    cells = re.split(r"  +", lines[5])
    assert cells[0] == "stalled"
    assert re.fullmatch(rf"{stalled.strftime(text)} \((10|9) min ago\)", cells[1]), cells[1]
    assert re.fullmatch(rf"{rows['stalled']['next_due']} \(overdue (9|8) min\)", cells[2])
    assert cells[3:] == ["-", "-", "-", "-", "-"]
    cells = re.split(r"  +", lines[6])
    assert cells[0] == "tick"
    assert re.fullmatch(rf"{tick.strftime(text)} \((now|\d+ s ago)\)", cells[1]), cells[1]
    assert re.fullmatch(rf"{rows['tick']['next_due']} \(in \d+ s\)", cells[2]), cells[2]
    assert cells[3:] == ["-", "-", "-", "-", "-"]
    cells = re.split(r"  +", lines[7])
    assert cells[:2] == ["weekly-report (api)", "never"]
    assert re.fullmatch(rf"{rows['weekly-report']['next_due']} \(new, in \d+ \w+\)", cells[2])
    assert lines[8:] == [
        "4 entries",
        "late/missed: unknown; pass --metrics-url of each `beatd run` (counted per process)",
        "",
        "QUEUE    DEPTH  DEAD LETTERS",
        "default  3      0",
        "reports  0      1",
    ]


def test_status_without_a_leader_or_schedule_files(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./schedules here: the entries come from the backend alone
    open_backend(broker).close()  # an empty database, as `beatd run` leaves it
    result = CliRunner().invoke(main, ["status", "--broker", broker])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "leader   none: no scheduler holds the lease, nothing is being published",
        "",
        "nodes    none: no `beatd run` wrote its record within 3 x its lease TTL",
        "",
        "ENTRY  LAST PUBLISHED  NEXT DUE  LAST STATUS  LAST SUCCESS  LAST DURATION  LATE  MISSED",
        "0 entries",
        "late/missed: unknown; pass --metrics-url of each `beatd run` (counted per process)",
        "",
        "QUEUE  DEPTH  DEAD LETTERS",
        "no messages waiting and no dead letters",
    ]


@pytest.mark.parametrize(
    "command", [["status"], ["dead", "list"], ["dead", "retry", "--all"]], ids=" ".join
)
@pytest.mark.parametrize("directory", ["missing", "existing"])
def test_a_mistyped_sqlite_path_is_bad_input_and_nothing_is_created(
    tmp_path: Path, command: list[str], directory: str
) -> None:
    parent = tmp_path / "typo"
    if directory == "existing":
        parent.mkdir()
    missing = parent / "beatd.db"
    result = CliRunner().invoke(main, [*command, "--broker", f"sqlite:///{missing}"])
    assert (result.exit_code, result.output) == (
        2,
        f"beatd: --broker: no database at {missing}: check the path (`beatd run` creates it)\n",
    )
    assert list(tmp_path.rglob("*")) == ([parent] if directory == "existing" else [])


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_other_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()


def write_text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 20)


NOT_BEATD = {
    "empty": "it holds no tables",
    "other": "it has no lease or entry_state table",
    "text": "it is not a SQLite database (or its first page is damaged)",
}


@pytest.mark.parametrize(
    "command", [["status"], ["dead", "list"], ["dead", "retry", "--all"]], ids=" ".join
)
@pytest.mark.parametrize(
    ("kind", "write"),
    [("empty", write_empty), ("other", write_other_database), ("text", write_text)],
)
def test_a_file_that_is_not_a_beatd_database_is_bad_input_and_left_as_it_is(
    tmp_path: Path, command: list[str], kind: str, write: Callable[[Path], None]
) -> None:
    path = tmp_path / "notes.db"
    write(path)
    before = path.read_bytes()
    result = CliRunner().invoke(main, [*command, "--broker", f"sqlite:///{path}"])
    assert (result.exit_code, result.output) == (
        2,
        f"beatd: --broker: {path} is not a beatd database: {NOT_BEATD[kind]}; check the path "
        "(`beatd run` creates the database)\n",
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_status_and_dead_list_open_the_database_read_only(tmp_path: Path) -> None:
    db = tmp_path / "beatd.db"
    open_backend(f"sqlite:///{db}").close()
    for command in (["status"], ["dead", "list"]):
        result = CliRunner().invoke(main, [*command, "--broker", f"sqlite:///{db}"])
        assert result.exit_code == 0, result.output
    looking = open_backend(f"sqlite:///{db}", read_only=True)
    with pytest.raises(TransientBackendError) as caught:
        looking.enqueue([Outgoing("e", "e@1", BeatdQueue("default"), "{}")])
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert caught.value.__cause__.sqlite_errorname == "SQLITE_READONLY"


def test_an_unreachable_metrics_url_is_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    open_backend(f"sqlite:///{tmp_path / 'db'}").close()
    result = CliRunner().invoke(
        main, ["status", "--broker", f"sqlite:///{tmp_path / 'db'}", "--metrics-url", url]
    )
    assert result.exit_code == 1
    with pytest.raises(urllib.error.URLError) as refused:  # the OS's words for it
        urllib.request.urlopen(f"{url}/metrics", timeout=5)
    assert result.output == (
        f"beatd: --metrics-url: cannot read {url}/metrics: {refused.value.reason}; is `beatd "
        "run` serving metrics there (--metrics-addr)?\n"
    )


def test_status_on_memory_warns_that_it_sees_only_its_own_process() -> None:
    """memory:// lives in one process: `beatd status` on it can only show an empty store, so it
    says why, as `beatd run` and `beatd worker` do at start."""
    from beatd.backends.memory import MemoryBackend, discard

    (warning,) = MemoryBackend("status-alone").persistence_warnings()
    discard("status-alone")
    result = CliRunner().invoke(main, ["status", "--broker", "memory://status-alone"])
    discard("status-alone")
    assert result.exit_code == 0, result.output
    assert f"WARNING beatd: {warning}" in result.stderr


# --- the next due time past pauses (beatd.operations.status.next_unpaused)

H0 = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)


def hourly(jitter: timedelta | None = None) -> Entry:
    return Entry(name="h", task="t", schedule=IntervalSchedule(timedelta(hours=1)), jitter=jitter)


def paused(at: int, until: int | None, *lifted: tuple[int, int]) -> EntryControl:
    def hour(h: int | None) -> datetime | None:
        return None if h is None else H0 + timedelta(hours=h)

    def pause(a: int, u: int | None) -> Pause:
        start = hour(a)
        assert start is not None
        return Pause(start, hour(u), "r", "ann@ops")

    return EntryControl(pause(at, until), lifted=tuple(pause(a, u) for a, u in lifted))


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        (None, 1),
        (EntryControl(), 1),
        (paused(0, 3), 3),  # 01:00 and 02:00 are covered: they end missed, never due
        (paused(0, None), None),  # paused till resumed: nothing is due
        (paused(5, 8, (0, 2), (2, 4)), 4),  # lifted pauses, back to back, then a gap
        (paused(5, 8), 1),  # a pause later on covers nothing yet
    ],
    ids=["no_control", "empty_control", "pause_until", "till_resumed", "lifted", "later_pause"],
)
def test_next_due_is_the_first_slot_no_pause_covers(
    control: EntryControl | None, expected: int | None
) -> None:
    first = H0 + timedelta(hours=1)
    found = next_unpaused(hourly(), first, control)
    assert found == (None if expected is None else H0 + timedelta(hours=expected))


def test_next_due_past_a_pause_counts_the_jitter() -> None:
    entry = hourly(jitter=timedelta(minutes=59))
    control = paused(0, 3)
    found = next_unpaused(entry, H0 + timedelta(hours=1), control)
    assert found is not None
    earlier = found - timedelta(hours=1)
    assert entry.due_for(found) >= H0 + timedelta(hours=3)
    assert earlier < H0 + timedelta(hours=1) or entry.due_for(earlier) < H0 + timedelta(hours=3)


def test_status_of_named_entries_builds_only_those_runtime_entries(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./schedules: runtime entries only
    now = datetime.now(UTC)
    backend = open_backend(broker)
    try:
        for n in range(30):
            raw = {"task": "t.report", "every": "1h"}
            backend.put_entry(resolve_entry(f"report-{n:02}", raw, now=now), "ops")
    finally:
        backend.close()
    built: list[str] = []
    entry = RuntimeEntry.entry

    def counted(self: RuntimeEntry) -> Entry:
        built.append(self.name)
        return entry(self)

    monkeypatch.setattr(RuntimeEntry, "entry", counted)
    result = CliRunner().invoke(main, ["status", "--broker", broker, "report-07", "report-11"])
    assert result.exit_code == 0, result.output
    assert sorted(built) == ["report-07", "report-11"]
    assert "report-07" in result.output and "report-11" in result.output
    assert "report-08" not in result.output
    unknown = CliRunner().invoke(main, ["status", "--broker", broker, "report-7"])
    assert unknown.exit_code != 0
    assert "no entry 'report-7'" in unknown.output


def test_status_counts_dead_letters_per_queue_without_reading_them() -> None:
    """The queues' rows take each queue's dead letters from the backend's counts: a read of every
    letter (a large, growing cost at scale) would fail here."""
    from beatd.backends.base import DeadLetter
    from beatd.backends.memory import MemoryBackend, discard
    from beatd.operations.status import queue_rows

    class CountsOnly(MemoryBackend):
        def dead_letters(self) -> list[DeadLetter]:
            raise AssertionError("every dead letter read to count them")

    discard("status-counts")
    store = CountsOnly("status-counts")
    at = datetime(2026, 3, 1, tzinfo=UTC)
    store.add_dead_letters([DeadLetter("a@1", "reports", "{}", "boom", at, 1)])
    store.enqueue([Outgoing("b", "b@1", BeatdQueue("default"), "{}")])
    assert queue_rows(store) == [
        {"queue": "default", "depth": 1, "dead_letters": 0},
        {"queue": "reports", "depth": 0, "dead_letters": 1},
    ]
    discard("status-counts")


def test_status_with_the_entries_known_reads_the_states_of_the_entries_it_shows_only() -> None:
    """With the schedule files given, the entries shown (at most `limit`) are known without
    the backend: their states are read by name, never every entry's (a million, say)."""
    from beatd.backends.memory import MemoryBackend, discard
    from beatd.config import Config
    from beatd.operations.status import status_report

    class ByNameOnly(MemoryBackend):
        def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
            raise AssertionError("every state read to show a few")

    discard("status-by-name")
    store = ByNameOnly("status-by-name")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    lease = store.acquire_lease("a", 60)
    assert lease is not None
    written = [EntryState(n, at, at, "every 60s") for n in ("a", "b", "c", "not-in-files")]
    store.commit(lease, [StateWrite(s, None) for s in written], [])
    hour = IntervalSchedule(timedelta(hours=1))
    config = Config({n: Entry(name=n, task="t.task", schedule=hour) for n in ("a", "b", "c")})
    status = status_report(store, config, [], 2, None, at + timedelta(minutes=1))
    rows = status.report["entries"]
    assert [(r["entry"], r["horizon"]) for r in rows] == [
        ("a", "2026-03-01T12:00:00Z"),
        ("b", "2026-03-01T12:00:00Z"),
    ]
    assert status.report["entries_total"] == 3
    discard("status-by-name")


def test_status_with_a_limit_builds_the_runtime_entries_it_shows_only() -> None:
    """Building a runtime entry is the costly part of reading it (100,000 took a minute): with
    a limit, the names are listed and only the entries shown are built, so one that cannot be
    built is warned of when it would be shown; without a limit every one is, as before."""
    from beatd.backends.memory import MemoryBackend, discard
    from beatd.config import Config
    from beatd.operations.status import status_report
    from beatd.runtime_entries import ResolvedEntry

    discard("status-built")
    store = MemoryBackend("status-built")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    good = resolve_entry("b-runtime", {"task": "t.task", "every": "1h"}, now=at)
    store.put_entries([good, ResolvedEntry("zz-broken", {"bogus": 1})], "ops@host")
    hour = IntervalSchedule(timedelta(hours=1))
    config = Config({n: Entry(name=n, task="t.task", schedule=hour) for n in ("a", "c")})
    shown = status_report(store, config, [], 2, None, at)
    assert [r["entry"] for r in shown.report["entries"]] == ["a", "b-runtime"]
    assert (shown.report["entries_total"], shown.warnings) == (4, [])
    every = status_report(store, config, [], None, None, at)
    assert [r["entry"] for r in every.report["entries"]] == ["a", "b-runtime", "c"]
    assert every.report["entries_total"] == 3
    [warning] = every.warnings
    assert warning.startswith("runtime entry zz-broken cannot be shown: entry zz-broken: ")
    last = status_report(store, config, [], 4, None, at)
    assert [r["entry"] for r in last.report["entries"]] == ["a", "b-runtime", "c"]
    assert (last.report["entries_total"], last.warnings) == (3, every.warnings)
    discard("status-built")
