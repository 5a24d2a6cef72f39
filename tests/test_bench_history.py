"""The bench's report of Redis's memory with the run history on (issue 15): the job in the plan,
the scenario against a redis-server of its own, and the report's section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import plan, report
from bench.scenarios import history_memory
from tests.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path / "redis").start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize(("quick", "entries"), [(False, 100_000), (True, 2_000)])
def test_the_plan_measures_redis_memory_with_history(quick: bool, entries: int) -> None:
    jobs = [job for job in plan.jobs(quick) if job[0] == "history_memory"]
    assert jobs == [("history_memory", "history_memory", {"url": "redis", "entries": entries})]


def test_the_scenario_measures_used_memory_with_and_without_history(server: RedisServer) -> None:
    result = history_memory.run({"url": server.url, "entries": 500})
    on, off = result["used_memory_mib_history"], result["used_memory_mib_no_history"]
    assert result["backend"] == "redis"
    assert result["entries"] == 500
    assert result["runs_per_entry"] == 1
    assert on > off
    # a record, its index entries and its entry's summary: hundreds of bytes, not tens or MBs
    assert 200 < result["bytes_per_record"] < 5_000
    assert server.client().dbsize() == 0  # left empty for the next job


def test_the_report_shows_the_memory_section() -> None:
    row = {
        "backend": "redis",
        "entries": 100_000,
        "runs_per_entry": 1,
        "used_memory_mib_history": 81.9,
        "used_memory_mib_no_history": 13.1,
        "bytes_per_record": 721,
    }
    text = report._scenarios({"history_memory": [row]})
    assert text.split("### 7. ")[1] == (
        "Run history's memory on Redis (one finished run per entry; `--quick`: 2,000 entries "
        "instead of 100,000)\n"
        "\n"
        "| backend | entries | runs_per_entry | used_memory_mib_history "
        "| used_memory_mib_no_history | bytes_per_record |\n"
        "|---|---|---|---|---|---|\n"
        "| redis | 100,000 | 1 | 81.9 | 13.1 | 721 |\n"
    )
