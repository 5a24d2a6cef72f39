"""bench.status_reads at a small size: it seeds, checks that the counted and by-name reads
agree with the full ones (an AssertionError otherwise), and reports on what it seeded."""

from __future__ import annotations

from pathlib import Path

from bench.status_reads import main


def test_the_counted_and_by_name_reads_are_measured_beside_the_full_reads(tmp_path: Path) -> None:
    out = main([f"sqlite:///{tmp_path / 'beatd.db'}", "30", "40", "--shown", "5", "--repeat", "1"])
    assert (out["url"], out["letters"], out["entries"], out["shown"]) == ("sqlite", 30, 40, 5)
