"""The pure parts of issue 18's scale scenario in the bench: the entries' mix, which jobs run,
and the report's targets."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from beatd.runtime_entries import resolve_entry
from bench import plan, scalereport
from bench.workload import ZONES_50, runtime_mix


def test_the_mix_is_four_daily_in_fifty_zones_four_hourly_and_two_intervals_in_ten() -> None:
    mix = runtime_mix(1000)
    kinds = Counter(
        "interval" if "every" in f else "hourly" if f["cron"].split()[1] == "*" else "daily"
        for f in mix.values()
    )
    assert kinds == {"daily": 400, "hourly": 400, "interval": 200}
    zones = {f["timezone"] for f in mix.values() if "timezone" in f}
    assert zones == set(ZONES_50) and len(zones) == 50
    seconds = [int(f["every"].rstrip("s")) for f in mix.values() if "every" in f]
    assert min(seconds) >= 60 and max(seconds) <= 86_400


def test_a_slice_of_the_mix_is_the_same_entries_as_the_whole() -> None:
    whole = runtime_mix(300)
    assert runtime_mix(100, start=200) == dict(list(whole.items())[200:])


def test_every_entry_of_the_mix_is_a_valid_runtime_entry() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for name, fields in runtime_mix(500).items():
        assert resolve_entry(name, fields, now=now).name == name


def test_quick_imports_2000_over_each_way_on_each_backend_and_redbeat() -> None:
    jobs = [params for group, _, params in plan.jobs(True) if group == "scale"]
    assert jobs == [
        {"url": "sqlite", "way": "backend", "count": 2_000, "batch": 2_000},
        {"url": "sqlite", "way": "http", "count": 2_000, "batch": 2_000},
        {"url": "redis", "way": "backend", "count": 2_000, "batch": 2_000},
        {"url": "redis", "way": "http", "count": 2_000, "batch": 2_000},
        {"url": "redis", "way": "redbeat", "count": 2_000},
    ]


def _row(way: str, backend: str, entries: int, seconds: float, **extra: Any) -> dict[str, Any]:
    batch = min(entries, 100_000)
    return {
        "way": way,
        "backend": backend,
        "entries": entries,
        "batch": batch,
        "import_s": seconds,
        "import_us_per_entry": round(seconds / batch * 1e6, 1),
        "import_s_per_100k": seconds / batch * 100_000,
        "bytes_per_entry": 1000.0,
        **extra,
    }


def test_the_import_target_is_ten_seconds_per_100000_and_the_leader_ones_wait() -> None:
    rows = [
        _row("backend", "redis", 300_000, 9.5),
        _row("http", "sqlite", 100_000, 12.0),
        _row("redbeat", "redis", 100_000, 95.0),
    ]
    assert scalereport._targets(rows) == [
        [
            "import of 100,000 through `Client.add_many` over the backend URL into redis "
            "holding 200,000: ≤ 10 s per 100,000",
            "9.50 s per 100,000 (95 µs/entry)",
            "**met**",
        ],
        [
            "import of 100,000 through `Client.add_many` over HTTP into sqlite holding 0: "
            "≤ 10 s per 100,000",
            "12.00 s per 100,000 (120 µs/entry)",
            "**missed**",
        ],
        *[[target, "not measured", "n/a"] for target in scalereport.NOT_YET],
    ]


def test_storage_for_a_million_is_extrapolated_from_the_largest_run_of_each() -> None:
    rows = [
        _row("backend", "redis", 100_000, 9.0),
        _row("http", "redis", 300_000, 9.0, bytes_per_entry=2000.0),
        _row("redbeat", "redis", 300_000, 90.0, bytes_per_entry=860.0),
    ]
    assert scalereport._extrapolated(rows) == (
        "Storage at 1,000,000 entries:\n\n"
        "- beatd on redis: 2,000 bytes per entry at 300,000 entries, so about 1.86 GiB for "
        "1,000,000 (extrapolated)\n"
        "- redbeat on redis: 860 bytes per entry at 300,000 entries, so about 0.80 GiB for "
        "1,000,000 (extrapolated)\n"
    )


def test_the_leader_figures_are_held_to_the_targets_at_a_million() -> None:
    row = {
        "way": "leader",
        "backend": "redis",
        "entries": 300_000,
        "first_publish_s": 42.0,
        "daemon_peak_rss_mb": 376.0,
        "change_to_slot_s": {"p99": 0.9},
    }
    where = "(300,000 runtime entries, redis)"
    assert scalereport._leader_targets([row]) == [
        [f"spawn to first publish ≤ 15 s {where}", "42.00 s", "**missed**"],
        [f"peak RSS ≤ 1 GiB {where}", "376 MiB", "n/a (met here)"],
        [
            f"a change held by the leader ≤ 1 s p99 (write to its first slot) {where}",
            "0.90 s",
            "n/a (met here)",
        ],
    ]
