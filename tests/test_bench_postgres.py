"""The pure parts of PostgreSQL in the bench: which jobs run, how re-runs merge, the report's
section (issue 20's targets, the ratios to SQLite and Redis, the tables' sizes)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import pgreport, plan
from bench.pgdatabase import cpu_between
from bench.run import merge_scenarios


def _throughput(backend: str, entries: int, rate: float, wall: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "entries": entries,
        "runs_per_s": rate,
        "publish_wall_s": wall,
        "cpu_us_per_run": 10.0 if backend != "postgresql" else 50.0,
    }


def _delay(backend: str, p99: float, lost: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "backend": backend,
        "entries": 10_000,
        "expected_runs": 192_000,
        "landed_pct": 100.0 if not lost else 99.5,
        "lost": lost,
        "duplicates": 0,
        "delay_s": {"p99": p99},
        "cpu_us_per_run": 25.0,
        **extra,
    }


def _worker(backend: str, rate: float, p99: float, tool: str = "beatd") -> dict[str, Any]:
    return {
        "tool": tool,
        "backend": backend,
        "tasks_per_s": rate,
        "latency_p50_ms": p99 / 2,
        "latency_p99_ms": p99,
    }


TABLES = {
    "before": {"bytes": {"entry_state": 2 * 2**20, "message": 3 * 2**20}, "messages": 1_000},
    "after": {"bytes": {"entry_state": 3 * 2**20, "message": 13 * 2**20}, "messages": 21_480},
}

SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "throughput": [
        _throughput("sqlite", 10_000, 50_000.0, 0.2),
        _throughput("redis", 10_000, 80_000.0, 0.125),
        _throughput("postgresql", 1_000, 12_000.0, 0.083),
        _throughput("postgresql", 10_000, 10_000.0, 1.0),
        {"error": "timed out", "params": {"backend_name": "postgresql", "count": 100_000}},
    ],
    "delay": [
        _delay("sqlite", 0.1),
        _delay("redis", 0.08),
        _delay("postgresql", 0.2, tables=TABLES),
    ],
    "worker": [
        _worker("sqlite", 2_800.0, 12.0),
        _worker("redis", 1_400.0, 4.0),
        _worker("redis", 700.0, 30.0, tool="celery"),
        _worker("postgresql", 140.0, 16.0),
    ],
}


def test_the_targets_of_issue_20_with_their_verdicts_and_ratios_to_the_other_backends() -> None:
    assert pgreport.targets(SCENARIOS) == [
        [
            "≥ 20,000 published runs/s in bursts",
            "12,000 runs/s (×0.24 SQLite, ×0.15 Redis)",
            "**missed**",
        ],
        [
            "10,000 simultaneous runs queued within 1 s",
            "1.00 s (×5 SQLite, ×8 Redis)",
            "**met**",
        ],
        [
            "steady 10,000 mixed entries: 100 % landed",
            "100 % (0 lost, 0 repeated of 192,000)",
            "**met**",
        ],
        [
            "queue-to-start latency p99 ≤ 20 ms (bundled worker, LISTEN/NOTIFY)",
            "16.0 ms (×1.33 SQLite, ×4 Redis)",  # beatd's worker on Redis, not Celery's
            "**met**",
        ],
    ]


def test_a_run_lost_misses_the_landed_target() -> None:
    scenarios = {**SCENARIOS, "delay": [_delay("postgresql", 0.2, lost=3)]}

    assert pgreport.targets(scenarios)[2] == [
        "steady 10,000 mixed entries: 100 % landed",
        "99.5 % (3 lost, 0 repeated of 192,000)",
        "**missed**",
    ]


def test_targets_not_measured_say_so_and_no_ratio_without_a_peer() -> None:
    only_postgres = {"throughput": [_throughput("postgresql", 1_000, 25_000.0, 0.04)]}

    assert pgreport.targets(only_postgres) == [
        ["≥ 20,000 published runs/s in bursts", "25,000 runs/s", "**met**"],
        ["10,000 simultaneous runs queued within 1 s", "not measured", "n/a"],
        ["steady 10,000 mixed entries: 100 % landed", "not measured", "n/a"],
        [
            "queue-to-start latency p99 ≤ 20 ms (bundled worker, LISTEN/NOTIFY)",
            "not measured",
            "n/a",
        ],
    ]


def test_a_p99_of_few_samples_is_called_the_worst_beside_p90_and_the_queueing() -> None:
    measured = {
        **_worker("postgresql", 140.0, 16.0),
        "latency_samples": 100,
        "latency_p90_ms": 9.5,
        "latency_max_ms": 16.0,
        "enqueue_p50_ms": 3.3,
    }
    scenarios = {**SCENARIOS, "worker": [_worker("redis", 1_400.0, 4.0), measured]}

    assert pgreport.targets(scenarios)[3] == [
        "queue-to-start latency p99 ≤ 20 ms (bundled worker, LISTEN/NOTIFY)",
        "16.0 ms (×4 Redis): the worst of 100 runs; p90 9.5 ms; the queueing call itself, "
        "p50 3.3 ms",
        "**met**",
    ]


def test_postgresql_beside_sqlite_and_redis_row_by_row() -> None:
    assert pgreport.beside(SCENARIOS) == [
        [
            "publish rate in bursts, best",
            "50,000 runs/s",
            "80,000 runs/s",
            "12,000 runs/s (×0.24 SQLite, ×0.15 Redis)",
        ],
        [
            "10,000 due at once: all queued after",
            "0.20 s",
            "0.12 s",
            "1.00 s (×5 SQLite, ×8 Redis)",
        ],
        [
            "10,000 due at once: scheduler CPU per run",
            "10 µs",
            "10 µs",
            "50 µs (×5 SQLite, ×5 Redis)",
        ],
        ["steady load: runs landed", "100 %", "100 %", "100 % (×1 SQLite, ×1 Redis)"],
        [
            "steady load: delay p99",
            "100.0 ms",
            "80.0 ms",
            "200.0 ms (×2 SQLite, ×2.5 Redis)",
        ],
        [
            "steady load: scheduler CPU per run",
            "25 µs",
            "25 µs",
            "25 µs (×1 SQLite, ×1 Redis)",
        ],
        [
            "worker: no-op tasks per second",
            "2,800",
            "1,400",
            "140 (×0.05 SQLite, ×0.1 Redis)",
        ],
        ["worker: queue to start, p50", "6.0 ms", "2.0 ms", "8.0 ms (×1.33 SQLite, ×4 Redis)"],
        ["worker: queue to start, p99", "12.0 ms", "4.0 ms", "16.0 ms (×1.33 SQLite, ×4 Redis)"],
    ]


def test_the_tables_before_and_after_the_steady_run_with_growth_per_queued_run() -> None:
    assert pgreport.tables(SCENARIOS) == (
        "| table | before | after | growth | growth per run queued (20,480) |\n"
        "|---|---|---|---|---|\n"
        "| entry_state | 2.0 MiB | 3.0 MiB | 1.0 MiB | 51 B |\n"
        "| message | 3.0 MiB | 13.0 MiB | 10.0 MiB | 512 B |\n"
        "| **all** | 5.0 MiB | 16.0 MiB | 11.0 MiB | 563 B |\n"
    )


def test_a_run_without_postgresql_says_so_once() -> None:
    without = {"throughput": [_throughput("redis", 10_000, 80_000.0, 0.125)]}

    assert pgreport.section(without, {}) == "Not measured in this run.\n"


def test_the_section_names_the_server_and_its_settings() -> None:
    machine = {
        "postgresql_server": "PostgreSQL 15.20",
        "postgresql_settings": {"fsync": "on", "synchronous_commit": "on"},
    }

    first = pgreport.section(SCENARIOS, machine).split("\n", 1)[0]

    assert first == (
        "A scratch database on the machine's PostgreSQL 15.20 server (`fsync = on`, "
        "`synchronous_commit = on`), created by the bench and dropped after it; the server is "
        "shared with the test suites running on the machine. The other backends' figures are "
        "from the same run, one scenario at a time; × = PostgreSQL's figure / that backend's."
    )


def test_postgresql_runs_the_scenarios_of_issue_20_only() -> None:
    for quick in (True, False):
        jobs = plan.for_backends(plan.jobs(quick), ["postgresql"])

        assert sorted({group for group, _, _ in jobs}) == ["delay", "throughput", "worker"]


def test_an_unknown_backend_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(SystemExit) as raised:
        plan.for_backends(plan.jobs(True), ["postgres", "redis"])

    assert str(raised.value) == (
        "bench: unknown backend postgres; choose from sqlite, redis, postgresql"
    )


def test_a_merge_of_one_backend_keeps_the_other_backends_rows_of_its_groups() -> None:
    old = {
        "throughput": [{"backend": "sqlite", "n": 1}, {"backend": "postgresql", "n": 2}],
        "worker": [{"tool": "celery", "backend": "redis"}],
        "cost": [{"backend": "redis"}],
    }
    new = {
        "throughput": [{"error": "x", "params": {"backend_name": "postgresql"}}],
        "worker": [{"tool": "beatd", "backend": "postgresql"}],
    }

    merged = merge_scenarios(old, new, ["postgresql"])

    assert merged == {
        "throughput": [
            {"backend": "sqlite", "n": 1},
            {"error": "x", "params": {"backend_name": "postgresql"}},
        ],
        "worker": [
            {"tool": "celery", "backend": "redis"},
            {"tool": "beatd", "backend": "postgresql"},
        ],
        "cost": [{"backend": "redis"}],
    }
    assert merge_scenarios(old, new, None)["throughput"] == new["throughput"]


def test_server_cpu_counts_a_process_that_started_between_readings_from_zero() -> None:
    assert cpu_between({10: 1.0, 11: 2.0}, {10: 1.5, 12: 0.25}) == 0.75


def test_postgresql_merged_from_a_later_run_says_the_ratios_compare_two_runs() -> None:
    machine = {
        "reruns": [
            {
                "postgresql_server": "PostgreSQL 15.20",
                "groups": ["delay"],
                "backends": ["postgresql"],
                "date": "2026-12-05T01:40:00+00:00",
                "beatd_commit": "abc1234",
                "load_before": [3.5, 3.0, 2.0],
                "load_after": [4.25, 3.0, 2.0],
            }
        ],
    }

    first = pgreport.section(SCENARIOS, machine).split("\n", 1)[0]

    assert first == (
        "A scratch database on the machine's PostgreSQL 15.20 server, created by the bench and "
        "dropped after it; the server is shared with the test suites running on the machine. "
        "PostgreSQL's figures are from a later run (delay: 2026-12-05T01:40:00+00:00, beatd "
        "abc1234, load average 3.50/4.25) than SQLite's and Redis's, so the ratios compare runs "
        "and carry the machine's drift between them; × = PostgreSQL's figure / that backend's."
    )
