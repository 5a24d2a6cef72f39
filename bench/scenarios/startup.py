"""Scenario 4: start-up with a large schedule file, and the daemon's resident memory.

In this process: `load_config` on a generated N-entry YAML file (read, validate, build), the
configuration fingerprint and `Planner.load`, each timed. Then a real `beatd run` on that file:
seconds from spawning it until its first run reaches the queue. The file holds N - 1 daily
entries, none due soon, and one probe entry every second, so the first publish comes within
about a second of the daemon being ready (`first_slot_late_s` says how late that probe run was:
a slot that fell due while the daemon was still adopting). Peak RSS (VmHWM) of the daemon after
its first publish is the memory figure for N entries. With `standby_window`, a second daemon on
the same file is started as a standby and its CPU share measured once it has started up.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import daemons
from bench.common import (
    arrivals,
    measure,
    proc_cpu,
    proc_hwm_mb,
    queued_count,
    reset_backend,
    wait_until,
)
from bench.workload import daily, write_yaml


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, count = params["url"], params["count"]
    work = Path(params["workdir"])
    spec = daily(count - 1, avoid=datetime.now(UTC), window=600)
    spec.append({"name": "probe", "every": 1, "offset": 0})
    path = write_yaml(spec, work / f"startup-{count}.yaml")
    del spec
    load = _load_in_process(path)

    reset_backend(url)
    spawned = time.time()
    process = daemons.run(path, url, work / f"startup-{count}.log")
    try:
        if not wait_until(lambda: queued_count(url) > 0, timeout=300, interval=0.05):
            raise RuntimeError("beatd published nothing within 300 s")
        first = min(arrivals(url), key=lambda a: a.arrived)
        cpu = proc_cpu(process.pid)
        time.sleep(1.0)
        rss = proc_hwm_mb(process.pid)
        standby = _standby_cpu(path, url, work, params.get("standby_window", 0), load)
    finally:
        daemons.stop(process)
    return {
        "backend": url.split(":", 1)[0],
        "entries": count,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        **load,
        "first_publish_s": round(first.arrived - spawned, 3),
        "first_slot_late_s": round(first.arrived - first.slot, 3),
        "daemon_cpu_to_first_publish_s": round(cpu, 3),
        "daemon_peak_rss_mb": round(rss, 1),
        **standby,
    }


def _standby_cpu(path: Path, url: str, work: Path, window: float, load: dict) -> dict:
    """A second `beatd run` on the same file and backend: the CPU it uses as a standby."""
    if not window:
        return {}
    process = daemons.run(path, url, work / "standby.log", node="standby")
    try:
        time.sleep(2 * load["load_config_wall_s"] + 3)  # past its own start-up
        cpu0 = proc_cpu(process.pid)
        time.sleep(window)
        cpu = proc_cpu(process.pid) - cpu0
    finally:
        daemons.stop(process)
    return {"standby_cpu_share_of_core": round(cpu / window, 3)}


def _load_in_process(path: Path) -> dict[str, float]:
    from beatd.config import load_config
    from beatd.core import Planner

    with measure() as loading:
        cfg = load_config([str(path)])
    with measure() as fingerprint:
        _ = cfg.fingerprint
    with measure() as planning:
        Planner().load(cfg.entries, {}, datetime.now(UTC))
    return {
        "load_config_wall_s": round(loading.wall, 3),
        "load_config_cpu_s": round(loading.cpu, 3),
        "fingerprint_s": round(fingerprint.wall, 3),
        "planner_load_s": round(planning.wall, 3),
    }
