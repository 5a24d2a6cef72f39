"""The timezone database a process uses, found as zoneinfo finds it, and the node record's
own logic (beatd.nodes); fake zoneinfo trees in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from beatd.nodes import NodeRecord, NodeRole, TzDatabase, tz_database, tz_drift


def tree(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def no_package() -> str | None:
    return None


def package() -> str | None:
    return "2026f"


@pytest.mark.parametrize(
    ("files", "version"),
    [
        pytest.param({"tzdata.zi": "# version 2025b\nR d 1916 o\n"}, "2025b", id="tzdata_zi"),
        pytest.param({"+VERSION": "2024a\n", "UTC": "TZif"}, "2024a", id="plus_version"),
        pytest.param(
            {"tzdata.zi": "# version 2025c\n", "+VERSION": "2019x\n"}, "2025c", id="zi_first"
        ),
        pytest.param(
            {"tzdata.zi": "# not a version line\n", "+VERSION": "2023d"}, "2023d", id="zi_odd"
        ),
        pytest.param({"UTC": "TZif"}, "unknown", id="zone_files_without_version"),
    ],
)
def test_a_system_directory_and_its_version(
    tmp_path: Path, files: dict[str, str], version: str
) -> None:
    root = tree(tmp_path / "zoneinfo", files)
    found = tz_database([str(root)], package)
    assert found == TzDatabase(version, "system", str(root))


def test_the_first_directory_of_the_path_that_holds_zone_files_wins(tmp_path: Path) -> None:
    empty = tree(tmp_path / "empty")
    first = tree(tmp_path / "first", {"tzdata.zi": "# version 2025a\n"})
    second = tree(tmp_path / "second", {"tzdata.zi": "# version 2025b\n"})
    missing = tmp_path / "missing"
    assert tz_database([str(missing), str(empty), str(first), str(second)], package) == (
        TzDatabase("2025a", "system", str(first))
    )


def test_no_directory_falls_back_to_the_tzdata_package(tmp_path: Path) -> None:
    empty = tree(tmp_path / "empty")
    assert tz_database([str(empty)], package) == TzDatabase("2026f", "tzdata", "")
    assert tz_database([], package) == TzDatabase("2026f", "tzdata", "")
    assert tz_database([], no_package) == TzDatabase("unknown", "tzdata", "")


def record(node: str, tz: str, role: NodeRole = NodeRole.STANDBY) -> NodeRecord:
    return NodeRecord(node, role, "1.0", "cfg", tz, "system", None)


def test_tz_drift_names_the_other_nodes_whose_version_differs() -> None:
    own = record("a", "2025b", NodeRole.LEADER)
    others = [own, record("b", "2025b"), record("c", "2026a"), record("d", "unknown")]
    assert [r.node for r in tz_drift(own, others)] == ["c", "d"]


def test_a_record_reads_back_from_its_stored_text() -> None:
    written = NodeRecord("a", NodeRole.LEADER, "1.0", "cfg", "2025b", "tzdata", "[::1]:9479")
    assert NodeRecord.from_json("a", written.to_json(), last_seen=None) == written
