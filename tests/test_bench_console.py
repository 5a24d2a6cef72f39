"""The pure parts of issue 19's console scenario in the bench: which jobs run, the pages it
times, and the report's targets."""

from __future__ import annotations

import time
from typing import Any

from bench import consolereport, plan
from bench.scenarios.console import _timed, pages


def test_the_full_run_times_every_page_at_100000_and_1000000_entries_and_five_load_runs() -> None:
    jobs = [params for group, _, params in plan.jobs(False) if group == "console"]
    longer = {"count": 1_000_000, "timeout_s": 2_400}
    assert jobs == [
        {"url": "sqlite", "mode": "pages", "count": 100_000, "requests": 100},
        {"url": "redis", "mode": "pages", "count": 100_000, "requests": 100},
        {"url": "sqlite", "mode": "pages", **longer, "requests": 100},
        {"url": "redis", "mode": "pages", **longer, "requests": 100},
        {"url": "sqlite", "mode": "load", "count": 10_000, "window": 20, "runs": 5},
        {"url": "redis", "mode": "load", "count": 10_000, "window": 20, "runs": 5},
    ]
    quick = [params for group, _, params in plan.jobs(True) if group == "console"]
    assert [(p["mode"], p["count"]) for p in quick] == [
        ("pages", 2_000), ("pages", 2_000), ("load", 1_000), ("load", 1_000),
    ]  # fmt: skip


def test_the_pages_timed_name_an_entry_that_was_seeded_and_reach_the_last_page() -> None:
    assert pages(100_000) == [
        ("overview", "/ui/"),
        ("entries", "/ui/entries"),
        ("entries, name filter", "/ui/entries?name=rt-0050000"),
        ("entries, by next due", "/ui/entries?sort=next_due"),
        ("entries, last page", "/ui/entries?sort=name&offset=99950"),
        ("entry", "/ui/entries/rt-0050000"),
        ("dead letters", "/ui/dead"),
    ]


def page_row(p95: dict[str, float]) -> dict[str, Any]:
    times = {name: {"n": 100, "p50": 1.0, "p95": v, "p99": v, "max": v} for name, v in p95.items()}
    return {"mode": "pages", "backend": "redis", "entries": 100_000, "requests": 100,
            "index_built_s": 3.0, "pages_ms": times}  # fmt: skip


def load_row(idle: float, busy: float) -> dict[str, Any]:
    return {"mode": "load", "backend": "sqlite", "entries": 10_000, "rate_per_s": 10.0,
            "runs_each": 5, "window_s": 20, "idle_p99_ms_median": idle, "busy_p99_ms_median": busy,
            "difference_ms": busy - idle}  # fmt: skip


def test_the_targets_take_the_worst_page_and_the_larger_of_10_percent_and_5_ms() -> None:
    rows = [
        page_row({"overview": 40.0, "entries": 201.5}),
        load_row(idle=20.0, busy=24.9),  # 5 ms floor
        load_row(idle=100.0, busy=111.0),  # 10 % of 100 ms
    ]
    assert consolereport.targets(rows) == [
        [
            "each page's p95 over 100 requests (fewer if slow), 100,000 entries on redis: ≤ 200 ms",
            "worst 201.5 ms (entries)",
            "**missed**",
        ],
        [
            "steady-load p99 publish delay (10,000 entries on sqlite) with the entries page "
            "fetched 10/s: within max(10 %, 5 ms) of the idle console's (5 runs each of 20 s, "
            "medians)",
            "24.9 ms against 20.0 ms (+4.9 ms; allowed 5.0)",
            "**met**",
        ],
        [
            "steady-load p99 publish delay (10,000 entries on sqlite) with the entries page "
            "fetched 10/s: within max(10 %, 5 ms) of the idle console's (5 runs each of 20 s, "
            "medians)",
            "111.0 ms against 100.0 ms (+11.0 ms; allowed 10.0)",
            "**missed**",
        ],
    ]


def test_a_run_without_the_console_scenario_says_so() -> None:
    assert consolereport.section({}) == "Not measured in this run.\n"


class _Answering:
    """A console that answers every GET at once and notes when it was asked."""

    host = "127.0.0.1:1"

    def __init__(self) -> None:
        self.asked: list[float] = []

    def get(self, path: str, connection: Any = None) -> tuple[int, str]:
        self.asked.append(time.monotonic())
        return 200, "ok"


def test_the_pages_can_be_timed_with_a_gap_between_the_requests() -> None:
    console = _Answering()
    figures = _timed(console, "/ui/", 5, budget=60.0, gap=0.05)  # type: ignore[arg-type]
    assert figures["n"] == 5
    apart = [b - a for a, b in zip(console.asked[1:], console.asked[2:], strict=False)]
    assert len(apart) == 4 and min(apart) >= 0.05
