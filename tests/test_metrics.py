"""Metric values after real events, read back through the Prometheus text format."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beatd.backends.base import DeadLetter
from beatd.backends.memory import MemoryBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli.common import metrics_option, start_metrics
from beatd.clock import FakeClock
from beatd.config import Config, ConfigError
from beatd.config.model import Entry, MissedPolicy
from beatd.entry_series import EntryFilter, EntrySeries
from beatd.errors import Problem
from beatd.metrics import (
    MetricsServer,
    PublishDelay,
    SchedulerCollector,
    register_scheduler,
    register_worker,
)
from beatd.node_reports import NodeIdentity
from beatd.nodes import TzDatabase
from beatd.outcomes import WorkerStats
from beatd.runtime_entries import resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.in_process import discard, memory_backend, scheduler

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


def every(name: str, seconds: int, **kw: object) -> Entry:
    schedule = IntervalSchedule(timedelta(seconds=seconds))
    return Entry(name=name, task="t.task", schedule=schedule, **kw)  # type: ignore[arg-type]


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_db(tmp_path: Path, clock: FakeClock) -> Callable[[], SQLiteBackend]:
    return lambda: SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())


TZ_2025B, TZ_2026A = TzDatabase("2025b", "system", ""), TzDatabase("2026a", "tzdata", "")


def observed(
    backend: SQLiteBackend,
    clock: FakeClock,
    config: Config,
    node: str = "a",
    identity: NodeIdentity | None = None,
):
    configs = [config]

    def load() -> Config:
        if isinstance(configs[-1], ConfigError):
            raise configs[-1]
        return configs[-1]

    registry = CollectorRegistry()
    observers = [PublishDelay(registry)]
    settings = SchedulerSettings(node=node)
    beat = Scheduler(
        backend, load, clock, settings, config=config, observers=observers, identity=identity
    )
    register_scheduler(registry, beat)
    return beat, registry, configs


def test_published_late_and_delay(open_db: Callable[[], SQLiteBackend], clock: FakeClock) -> None:
    grace = timedelta(seconds=2)
    cfg = Config({"a": every("a", 10, misfire_grace=grace)})
    beat, registry, _ = observed(open_db(), clock, cfg)
    run_for(beat, 25)  # 12:00:10 and 12:00:20 on time
    clock.advance(7)  # the process stalls past 12:00:30 + grace: that run goes out late
    beat.step()
    s = scrape(registry)
    assert value(s, "beatd_runs_published_total", entry="a") == 3
    assert value(s, "beatd_runs_late_total", entry="a") == 1
    assert value(s, "beatd_runs_due_total", entry="a") == 3
    assert value(s, "beatd_publish_delay_seconds_count") == 3
    assert value(s, "beatd_publish_delay_seconds_bucket", le="0.001") == 2
    assert value(s, "beatd_publish_delay_seconds_sum") == pytest.approx(2.5)
    assert value(s, "beatd_is_leader") == 1 and value(s, "beatd_leader_epoch") == 1
    assert value(s, "beatd_entries") == 1 and value(s, "beatd_backend_up") == 1
    assert (
        value(s, "beatd_last_published_timestamp_seconds", entry="a")
        == datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC).timestamp()
    )
    assert (
        value(s, "beatd_next_due_timestamp_seconds", entry="a")
        == datetime(2026, 3, 1, 12, 0, 40, tzinfo=UTC).timestamp()
    )


@pytest.mark.parametrize(
    ("policy", "published", "missed"),
    [(MissedPolicy.SKIP, 0, 12), (MissedPolicy.RUN_ONCE, 1, 11), (MissedPolicy.CATCH_UP, 5, 7)],
    ids=["skip", "run_once", "catch_up"],
)
def test_total_outage_of_every_scheduler_gives_exact_missed_counts(
    open_db: Callable[[], SQLiteBackend],
    clock: FakeClock,
    policy: MissedPolicy,
    published: int,
    missed: int,
) -> None:
    entry = every("a", 10, missed=policy, max_catch_up=5, misfire_grace=timedelta(seconds=1))
    cfg = Config({"a": entry})
    first, _, _ = observed(open_db(), clock, cfg)
    run_for(first, 15)
    first.shutdown()
    clock.advance(120)  # every scheduler is down for 12 slots
    second, registry, _ = observed(open_db(), clock, cfg, node="b")
    second.step()
    s = scrape(registry)
    reason = "beyond_catch_up" if policy is MissedPolicy.CATCH_UP else "skipped"
    assert value(s, "beatd_runs_due_total", entry="a") == 12
    assert value(s, "beatd_runs_published_total", entry="a") == published
    assert value(s, "beatd_runs_missed_total", entry="a", reason=reason) == missed
    assert value(s, "beatd_runs_late_total", entry="a") == published


def test_reload_failure(open_db: Callable[[], SQLiteBackend], clock: FakeClock) -> None:
    beat, registry, configs = observed(open_db(), clock, Config({"a": every("a", 10)}))
    beat.step()
    configs.append(ConfigError([Problem("s.yaml", 1, 1, "broken")]))  # type: ignore[arg-type]
    beat.request_reload()
    beat.step()
    s = scrape(registry)
    assert value(s, "beatd_config_reloads_total", result="failure") == 1
    assert value(s, "beatd_config_reloads_total", result="success") == 0
    assert value(s, "beatd_config_last_reload_success") == 0


def test_standby_shows_persisted_last_published(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    cfg = Config({"a": every("a", 10)})
    leader, _, _ = observed(open_db(), clock, cfg, node="a")
    standby, registry, _ = observed(open_db(), clock, cfg, node="b")
    for _ in range(25):
        leader.step()
        standby.step()
        clock.advance(1)
    s = scrape(registry)
    assert value(s, "beatd_is_leader") == 0
    assert (
        value(s, "beatd_last_published_timestamp_seconds", entry="a")
        == datetime(2026, 3, 1, 12, 0, 20, tzinfo=UTC).timestamp()
    )
    assert (
        value(s, "beatd_next_due_timestamp_seconds", entry="a")
        == datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC).timestamp()
    )


class StatesCounted(SQLiteBackend):
    """Counts the reads of every entry's state."""

    every_state_reads = 0

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        StatesCounted.every_state_reads += 1
        return super().load_states(pace)


def test_a_standby_scrape_reads_the_states_of_the_entries_it_shows_only(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A standby shows each entry's persisted last published time: it reads those entries'
    states by name, never every entry's (a million runtime entries, say), and none at all
    when it shows no entry (--metrics-entries none)."""
    cfg = Config({"a": every("a", 10), "b": every("b", 10)})
    wall = lambda: clock.now().timestamp()  # noqa: E731
    leader, _, _ = observed(SQLiteBackend(tmp_path / "db", wall_clock=wall), clock, cfg)
    standby, registry, _ = observed(
        StatesCounted(tmp_path / "db", wall_clock=wall), clock, cfg, node="b"
    )
    hidden = CollectorRegistry()
    register_scheduler(hidden, standby, EntryFilter(EntrySeries.NONE))
    for _ in range(15):
        leader.step()
        standby.step()
        clock.advance(1)
    before = StatesCounted.every_state_reads
    s = scrape(registry)
    shown = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC).timestamp()
    assert value(s, "beatd_last_published_timestamp_seconds", entry="a") == shown
    assert value(s, "beatd_last_published_timestamp_seconds", entry="b") == shown
    assert not [k for k in scrape(hidden) if k[0] == "beatd_last_published_timestamp_seconds"]
    assert StatesCounted.every_state_reads == before


def test_http_endpoints(open_db: Callable[[], SQLiteBackend], clock: FakeClock) -> None:
    beat, registry, _ = observed(open_db(), clock, Config({"a": every("a", 10)}))
    beat.step()
    ready = {"ok": True}
    server = MetricsServer("127.0.0.1:0", registry, lambda: (ready["ok"], "backend down"))
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics") as response:
            assert b"beatd_is_leader 1.0" in response.read()
        with urllib.request.urlopen(f"{base}/healthz") as response:
            assert response.read() == b"ok\n"
        with urllib.request.urlopen(f"{base}/readyz") as response:
            assert response.status == 200
        ready["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/readyz")
        assert info.value.code == 503 and info.value.read() == b"backend down\n"
    finally:
        server.stop()


def test_clock_skew_and_config_drift(tmp_path: Path, clock: FakeClock) -> None:
    skewed = SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp() - 5)
    beat, registry, _ = observed(skewed, clock, Config({"a": every("a", 10)}))
    beat.step()
    s = scrape(registry)
    assert value(s, "beatd_clock_skew_seconds") == pytest.approx(5)
    assert value(s, "beatd_is_leader") == 0
    leader_db = SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    leader, _, _ = observed(leader_db, clock, Config({"a": every("a", 20)}), node="l")
    leader.step()
    standby, registry, _ = observed(
        SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp()),
        clock,
        Config({"a": every("a", 10)}),
        node="s",
    )
    standby.step()
    s = scrape(registry)
    assert value(s, "beatd_config_drift") == 1 and value(s, "beatd_clock_skew_seconds") == 0


def test_the_leader_counts_a_node_with_other_tz_data_as_drift(
    tmp_path: Path, clock: FakeClock
) -> None:
    def db() -> SQLiteBackend:
        return SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())

    cfg = Config({"a": every("a", 10)})
    leader, registry, _ = observed(db(), clock, cfg, "l", NodeIdentity("1", TZ_2025B, None))
    standby, _, _ = observed(db(), clock, cfg, "s", NodeIdentity("1", TZ_2026A, None))
    leader.step()
    s = scrape(registry)
    assert (
        value(s, "beatd_nodes_tz_drift") == 0 and value(s, "beatd_node_records_failed_total") == 0
    )
    standby.step()
    clock.advance(leader.settings.renew_interval)
    leader.step()
    assert value(scrape(registry), "beatd_nodes_tz_drift") == 1


def test_a_taken_default_metrics_port_is_a_warning_a_taken_explicit_one_a_runtime_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"

    @click.command()
    @metrics_option(address)
    def serve_one(metrics_addr: str) -> None:
        server = start_metrics(metrics_addr, CollectorRegistry(), lambda: (True, "ok"))
        click.echo("serving" if server else "not serving")

    try:
        # the variable set for the test suite would override the default: clear it here
        default = CliRunner().invoke(serve_one, [], env={"BEATD_METRICS_ADDR": None})
        assert (default.exit_code, default.stdout) == (0, "not serving\n")
        assert "serving no metrics: the default address" in caplog.text
        explicit = CliRunner().invoke(serve_one, ["--metrics-addr", address])
        error = bind_error(address)
        # a runtime failure (exit 1): systemd restarts the unit once the port is free
        assert (explicit.exit_code, explicit.stderr) == (
            1,
            f"beatd: --metrics-addr: cannot serve metrics at {address!r}: {error}\n",
        )
    finally:
        taken.close()


def bind_error(address: str) -> str:
    """What the OS says when `address` is taken, to build the expected message from."""
    host, _, port = address.rpartition(":")
    probe = socket.socket()
    try:
        probe.bind((host, int(port)))
    except OSError as exc:
        return str(exc)
    finally:
        probe.close()
    raise AssertionError(f"{address} is not taken")


@pytest.mark.parametrize(
    ("given", "host", "family"),
    [
        ("0", "127.0.0.1", socket.AF_INET),  # a port alone is loopback, never every interface
        (":0", "127.0.0.1", socket.AF_INET),
        ("127.0.0.1:0", "127.0.0.1", socket.AF_INET),
        ("0.0.0.0:0", "0.0.0.0", socket.AF_INET),
        ("[::1]:0", "::1", socket.AF_INET6),
    ],
    ids=["port_alone", "empty_host", "loopback", "every_ipv4_interface", "ipv6_loopback"],
)
def test_metrics_address_binds_where_named_and_logs_the_real_port(
    given: str, host: str, family: socket.AddressFamily, caplog: pytest.LogCaptureFixture
) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    caplog.set_level(logging.INFO, logger="beatd.metrics")
    server = MetricsServer(given, CollectorRegistry(), lambda: (True, "ok"))
    try:
        bound = server.address
        assert bound[0] == host and bound[1] == server.port and server.port > 0
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        assert caplog.messages == [f"metrics on http://{shown}:{server.port}/metrics"]
        target = "127.0.0.1" if host == "0.0.0.0" else shown
        with urllib.request.urlopen(f"http://{target}:{server.port}/healthz") as response:
            assert response.read() == b"ok\n"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("nine", "beatd: --metrics-addr: 'nine' is not HOST:PORT or a port such as 9477\n"),
        (
            "127.0.0.1:70000",
            "beatd: --metrics-addr: port 70000 in '127.0.0.1:70000' is not between 0 and 65535\n",
        ),
    ],
    ids=["not_a_port", "port_out_of_range"],
)
def test_a_malformed_metrics_address_is_bad_input(given: str, message: str) -> None:
    @click.command()
    @metrics_option("127.0.0.1:0")
    def serve_one(metrics_addr: str) -> None:
        start_metrics(metrics_addr, CollectorRegistry(), lambda: (True, "ok"))

    result = CliRunner().invoke(serve_one, ["--metrics-addr", given])
    assert (result.exit_code, result.stderr) == (2, message)


class ChangingFilter(EntryFilter):
    """Shows every entry, and changes the runtime entries at the first one it is asked about:
    what the loop's thread may do while another thread scrapes."""

    def __init__(self, runtime: dict[str, Entry]) -> None:
        super().__init__()
        self.runtime = runtime

    def shown(self, config: Config, runtime: int = 0) -> Callable[[str], bool]:
        def changing(_name: str) -> bool:
            self.runtime[f"added-{len(self.runtime)}"] = every("added", 60)
            return True

        return changing


@pytest.fixture
def memory(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend("scrape-while-changing", clock)


def test_a_scrape_while_the_runtime_entries_change_shows_those_it_started_with(
    memory: MemoryBackend, clock: FakeClock
) -> None:
    sched = scheduler(memory, clock, every("file", 60))
    sched.step()  # leads, its runtime entries read (none): the next due times are the planner's
    held = sched.runtime.entries
    held.update({f"api-{i}": every(f"api-{i}", 60) for i in range(3)})
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(sched, ChangingFilter(held)))
    samples = scrape(registry)
    due = {
        dict(labels)["entry"]
        for name, labels in samples
        if name == "beatd_next_due_timestamp_seconds"
    }
    assert due == {"file"}  # runtime entries not planned here have no next due, and no error
    assert len(held) > 3  # the entries did change during the scrape


class CountsOnly(MemoryBackend):
    """A store whose dead letters can be counted but not read: a read of them all fails."""

    def dead_letters(self) -> list[DeadLetter]:
        raise AssertionError("every dead letter read to count them")


@dataclass(frozen=True)
class QueuesSettings:
    queues: tuple[str, ...] = ("default", "idle")


@dataclass(frozen=True)
class IdleWorker:
    stats: WorkerStats = field(default_factory=WorkerStats)
    settings: QueuesSettings = QueuesSettings()


def test_the_scrape_counts_dead_letters_per_queue_without_reading_them(clock: FakeClock) -> None:
    discard("counts-only")
    backend = CountsOnly("counts-only", wall_clock=lambda: clock.now().timestamp())
    backend.add_dead_letters(
        [
            DeadLetter(f"{name}@1", queue, "{}", "boom", T0, 1)
            for name, queue in (("a", "default"), ("b", "default"), ("c", "reports"))
        ]
    )
    registry = CollectorRegistry()
    register_worker(registry, IdleWorker(), backend)
    s = scrape(registry)
    assert {q: value(s, "beatd_dead_letters", queue=q) for q in ("default", "idle", "reports")} == {
        "default": 2,
        "idle": 0,  # a queue the worker serves is shown with none
        "reports": 1,
    }
    discard("counts-only")


class CountedRuntime(dict[str, Entry]):
    """The runtime entries held, counting the walks over every one of them."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountedRuntime.walks += 1
        return super().__iter__()


def test_a_scrape_showing_the_files_entries_or_none_walks_no_runtime_entry(
    tmp_path: Path, clock: FakeClock
) -> None:
    """At a million runtime entries, a walk over them all cost a scrape seconds of the loop's
    interpreter: showing the files' entries (or none), a scrape looks at those only."""
    backend = SQLiteBackend(tmp_path / "db", wall_clock=lambda: clock.now().timestamp())
    for i in range(300):
        backend.put_entry(resolve_entry(f"rt-{i:03}", {"task": "t", "every": "10s"}, now=T0), "t")
    cfg = Config({"a": every("a", 10), "b": every("b", 10)})
    beat, _, _ = observed(backend, clock, cfg)
    files, nothing = CollectorRegistry(), CollectorRegistry()
    register_scheduler(files, beat, EntryFilter(EntrySeries.FILE))
    register_scheduler(nothing, beat, EntryFilter(EntrySeries.NONE))
    backend.pause(["a", "rt-007"], "maintenance", None, "ops")
    for _ in range(25):
        beat.step()
        clock.advance(1)
    beat.runtime.entries = CountedRuntime(beat.runtime.entries)
    walks = CountedRuntime.walks
    shown, hidden = scrape(files), scrape(nothing)
    assert CountedRuntime.walks == walks
    entries = {dict(labels).get("entry") for _, labels in shown} - {None}
    assert entries == {"a", "b"}
    assert value(shown, "beatd_entry_paused", entry="a") == 1
    assert value(shown, "beatd_runs_published_total", entry="b") == 2
    assert not [k for k in hidden if dict(k[1]).get("entry")]
    assert beat.paused_entries() == ["a", "rt-007"]
    assert beat.paused_entries(["rt-007", "b"]) == ["rt-007"]
