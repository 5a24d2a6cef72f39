"""Scenario 7: Redis's `used_memory` with the run history on, at N entries (issue 15: the bench
reports it at 100,000 entries; `--quick` at 10,000).

Each entry's run is committed as a leader commits it, with one attempt that succeeded (written by
the same Lua as a claim and an ack), the queues emptied and the history's log folded; then the
same without history (bench.redis_history measures more shapes).
"""

from __future__ import annotations

from typing import Any

from bench.common import reset_backend
from bench.redis_history import memory


def run(params: dict[str, Any]) -> dict[str, Any]:
    url, entries = params["url"], params["entries"]
    on = memory(url, entries, 1, history=True)
    off = memory(url, entries, 1, history=False)
    reset_backend(url)
    return {
        "backend": url.split(":", 1)[0],
        "entries": entries,
        "runs_per_entry": 1,
        "used_memory_mib_history": round(on / 2**20, 1),
        "used_memory_mib_no_history": round(off / 2**20, 1),
        "bytes_per_record": round((on - off) / entries),
    }
