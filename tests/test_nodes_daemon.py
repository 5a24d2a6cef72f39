"""Node records between real `beatd run` processes on one SQLite file: one started with another
timezone database (PYTHONTZPATH pointing at a small zoneinfo tree whose tzdata.zi says another
version) is flagged by the leader, and its record expires 3 x TTL after it stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from beatd.cli import main
from tests.redis_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

SCHEDULE = "entries:\n  tick:\n    task: t.tick\n    every: 1s\n"
TTL = 1.0


def other_tz_tree(root: Path) -> Path:
    """A zoneinfo tree of one zone (UTC, copied from the system's or the package's) whose
    tzdata.zi says version 2099z."""
    root.mkdir()
    source = next((Path(p) / "UTC" for p in zoneinfo.TZPATH if (Path(p) / "UTC").is_file()), None)
    if source is None:
        import tzdata  # type: ignore[import-untyped]

        source = Path(tzdata.__file__).parent / "zoneinfo" / "UTC"
    shutil.copyfile(source, root / "UTC")
    (root / "tzdata.zi").write_text("# version 2099z\n")
    return root


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(
    tmp_path: Path, node: str, procs: list[subprocess.Popen[bytes]], *args: str, **env: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "beatd", "run", "--node", node, "--lease-ttl", f"{TTL}s"]
    command += ["--broker", f"sqlite:///{tmp_path / 'beatd.db'}", "-s", str(tmp_path / "s.yaml")]
    command += ["--api-addr", "off", *args]
    with (tmp_path / f"{node}.log").open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, **env}
        )
    procs.append(proc)
    return proc


def status_nodes(tmp_path: Path) -> list[dict[str, Any]]:
    """The nodes `beatd status --json` lists."""
    args = ["status", "--json", "--broker", f"sqlite:///{tmp_path / 'beatd.db'}"]
    result = CliRunner().invoke(main, [*args, "-s", str(tmp_path / "s.yaml")])
    assert result.exit_code == 0, result.output
    nodes: list[dict[str, Any]] = json.loads(result.stdout)["nodes"] or []
    return nodes


def gauge(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None  # not serving yet
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_a_node_with_another_tz_database_is_flagged_and_its_record_expires_after_it_stops(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "s.yaml").write_text(SCHEDULE)
    port = free_port()
    run(tmp_path, "a", launched, "--metrics-addr", f"127.0.0.1:{port}")
    wait_for(lambda: gauge(port, "beatd_is_leader") == 1, what="a to lead")
    assert [(n["node"], n["role"]) for n in status_nodes(tmp_path)] == [("a", "leader")]
    assert gauge(port, "beatd_nodes_tz_drift") == 0
    tree = other_tz_tree(tmp_path / "zoneinfo")
    b = run(tmp_path, "b", launched, "--metrics-addr", "off", PYTHONTZPATH=str(tree))
    nodes = wait_for(lambda: [n for n in status_nodes(tmp_path) if n["node"] == "b"], what="b")
    assert (nodes[0]["role"], nodes[0]["tz_version"], nodes[0]["tz_source"]) == (
        "standby",
        "2099z",
        "system",
    )
    assert nodes[0]["same_tz"] is False
    wait_for(lambda: gauge(port, "beatd_nodes_tz_drift") == 1, what="the leader to flag b")
    drift = "timezone database drift: leader node=a has tz="
    assert (tmp_path / "a.log").read_text().count(drift) == 1
    b.send_signal(signal.SIGTERM)
    assert b.wait(timeout=10) == 0
    wait_for(
        lambda: [n["node"] for n in status_nodes(tmp_path)] == ["a"],
        timeout=3 * TTL + 5,
        what="b's record to expire",
    )
    wait_for(lambda: gauge(port, "beatd_nodes_tz_drift") == 0, what="the drift to be over")
