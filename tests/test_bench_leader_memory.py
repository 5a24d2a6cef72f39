"""bench.leader_memory at a small size: it seeds, leads, builds the index and reports."""

from __future__ import annotations

from pathlib import Path

from bench.leader_memory import main


def test_the_leader_and_its_index_are_measured_per_entry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'beatd.db'}"
    out = main([url, "40", "--index", "--trace"])
    assert (out["planned"], out["index_rows"]) == (40, 40)
    assert out["traced_after_index_bytes_per_entry"] > out["traced_after_leader_bytes_per_entry"]
    assert out["peak_rss_mb"] >= out["rss_before_mb"] > 0
    again = main([url, "40", "--index", "--own-view"])  # seeded already: nothing added
    assert (again["planned"], again["index_rows"]) == (40, 40)
