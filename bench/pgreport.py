"""The report's PostgreSQL section: issue 20's targets met or missed, and PostgreSQL's figures
beside SQLite's and Redis's from the same run, as ratios, and beatd's tables' sizes before and
after the steady run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Result = dict[str, Any]
Scenarios = dict[str, list[Result]]
PEERS = ("sqlite", "redis")
NAMES = {"sqlite": "SQLite", "redis": "Redis", "postgresql": "PostgreSQL"}
PG = "postgresql"


def section(s: Scenarios, machine: Result) -> str:
    """The whole section's body (without its heading)."""
    if not any(_rows(s, group, PG) for group in ("throughput", "delay", "worker")):
        return "Not measured in this run.\n"
    later = [r for r in machine.get("reruns", []) if PG in r.get("backends", [])]
    source = later[-1] if later else machine  # where PostgreSQL's figures come from
    server = source.get("postgresql_server", "PostgreSQL")
    settings = ", ".join(f"`{k} = {v}`" for k, v in source.get("postgresql_settings", {}).items())
    return "\n".join(
        [
            f"A scratch database on the machine's {server} server"
            + (f" ({settings})" if settings else "")
            + ", created by the bench and dropped after it; the server is shared with the "
            "test suites running on the machine. "
            + _provenance(machine)
            + " × = PostgreSQL's figure / that backend's.",
            "",
            _table(["target (issue 20)", "measured", ""], targets(s)),
            _table(["", *(NAMES[b] for b in (*PEERS, PG))], beside(s)),
            "**beatd's tables before and after the steady run** (10,000 mixed entries, no "
            "worker: every run published stays queued; `pg_total_relation_size`, indexes and "
            "TOAST included)",
            "",
            tables(s),
        ]
    )


def _provenance(machine: Result) -> str:
    later = [r for r in machine.get("reruns", []) if PG in r.get("backends", [])]
    if not later:
        return "The other backends' figures are from the same run, one scenario at a time;"
    runs = "; ".join(
        f"{', '.join(r['groups'])}: {r['date']}, beatd {r['beatd_commit']}, load average "
        f"{r['load_before'][0]:.2f}/{r['load_after'][0]:.2f}"
        for r in later
    )
    return (
        f"PostgreSQL's figures are from {'a later run' if len(later) == 1 else 'later runs'} "
        f"({runs}) than SQLite's and Redis's, so the ratios compare runs and carry the "
        "machine's drift between them;"
    )


# --- the measures, one value per backend ---------------------------------------------------------


def _rows(s: Scenarios, group: str, backend: str) -> list[Result]:
    return [
        r
        for r in s.get(group, [])
        if "error" not in r and r.get("backend") == backend and r.get("tool", "beatd") == "beatd"
    ]


def best_rate(s: Scenarios, backend: str) -> float | None:
    """The highest publish rate of the backend's bursts (any number of entries)."""
    return max((r["runs_per_s"] for r in _rows(s, "throughput", backend)), default=None)


def _burst(s: Scenarios, backend: str, key: str, entries: int = 10_000) -> Any:
    found = [r for r in _rows(s, "throughput", backend) if r["entries"] == entries]
    return found[0][key] if found else None


def _steady(s: Scenarios, backend: str, get: Callable[[Result], Any]) -> Any:
    found = _rows(s, "delay", backend)
    return get(found[0]) if found else None


def _worker(s: Scenarios, backend: str, key: str) -> Any:
    found = _rows(s, "worker", backend)
    return found[0].get(key) if found else None


Measure = tuple[str, Callable[[Scenarios, str], Any], Callable[[Any], str]]

MEASURES: list[Measure] = [
    ("publish rate in bursts, best", best_rate, lambda v: f"{v:,.0f} runs/s"),
    (
        "10,000 due at once: all queued after",
        lambda s, b: _burst(s, b, "publish_wall_s"),
        lambda v: f"{v:.2f} s",
    ),
    (
        "10,000 due at once: scheduler CPU per run",
        lambda s, b: _burst(s, b, "cpu_us_per_run"),
        lambda v: f"{v:,.0f} µs",
    ),
    (
        "steady load: runs landed",
        lambda s, b: _steady(s, b, lambda r: r["landed_pct"]),
        lambda v: f"{v:g} %",
    ),
    (
        "steady load: delay p99",
        lambda s, b: _steady(s, b, lambda r: r["delay_s"]["p99"]),
        lambda v: f"{v * 1000:,.1f} ms",
    ),
    (
        "steady load: scheduler CPU per run",
        lambda s, b: _steady(s, b, lambda r: r["cpu_us_per_run"]),
        lambda v: f"{v:,.0f} µs",
    ),
    (
        "worker: no-op tasks per second",
        lambda s, b: _worker(s, b, "tasks_per_s"),
        lambda v: f"{v:,.0f}",
    ),
    (
        "worker: queue to start, p50",
        lambda s, b: _worker(s, b, "latency_p50_ms"),
        lambda v: f"{v:,.1f} ms",
    ),
    (
        "worker: queue to start, p99",
        lambda s, b: _worker(s, b, "latency_p99_ms"),
        lambda v: f"{v:,.1f} ms",
    ),
]


def ratios(s: Scenarios, get: Callable[[Scenarios, str], Any], value: float) -> str:
    """` (×a SQLite, ×b Redis)` for the peers measured in the run, or nothing."""
    parts = []
    for peer in PEERS:
        other = get(s, peer)
        if isinstance(other, int | float) and other:
            parts.append(f"×{value / other:.3g} {NAMES[peer]}")
    return f" ({', '.join(parts)})" if parts else ""


def beside(s: Scenarios) -> list[list[str]]:
    rows = []
    for label, get, fmt in MEASURES:
        row = [label]
        for backend in (*PEERS, PG):
            value = get(s, backend)
            text = "—" if value is None else fmt(value)
            if backend == PG and isinstance(value, int | float):
                text += ratios(s, get, value)
            row.append(text)
        rows.append(row)
    return rows


# --- the targets ---------------------------------------------------------------------------------


def targets(s: Scenarios) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(target: str, measure: Measure, ok: Callable[[Any], bool]) -> None:
        _, get, fmt = measure
        value = get(s, PG)
        if value is None:
            rows.append([target, "not measured", "n/a"])
            return
        verdict = "**met**" if ok(value) else "**missed**"
        rows.append([target, fmt(value) + ratios(s, get, value), verdict])

    by_label = {m[0]: m for m in MEASURES}
    add(
        "≥ 20,000 published runs/s in bursts",
        by_label["publish rate in bursts, best"],
        _at_least(20_000),
    )
    add(
        "10,000 simultaneous runs queued within 1 s",
        by_label["10,000 due at once: all queued after"],
        lambda v: v <= 1.0,
    )
    landed = _rows(s, "delay", PG)
    if landed:
        r = landed[0]
        verdict = "**met**" if r["lost"] == 0 and r["duplicates"] == 0 else "**missed**"
        rows.append(
            [
                f"steady {r['entries']:,} mixed entries: 100 % landed",
                f"{r['landed_pct']:g} % ({r['lost']} lost, {r['duplicates']} repeated of "
                f"{r['expected_runs']:,})",
                verdict,
            ]
        )
    else:
        rows.append(["steady 10,000 mixed entries: 100 % landed", "not measured", "n/a"])
    add(
        "queue-to-start latency p99 ≤ 20 ms (bundled worker, LISTEN/NOTIFY)",
        by_label["worker: queue to start, p99"],
        lambda v: v <= 20.0,
    )
    worker = _rows(s, "worker", PG)
    if worker and worker[0].get("latency_samples"):
        rows[-1][1] += _latency_detail(worker[0])
    return rows


def _latency_detail(r: Result) -> str:
    """What a p99 of few samples is: the worst of them, one stall of the machine decides it;
    p90 beside it, and the queueing call's own part (a durable commit on PostgreSQL)."""
    n = r["latency_samples"]
    text = f": the worst of {n} runs" if n <= 100 else f" of {n} runs"
    if r.get("latency_p90_ms") is not None:
        text += f"; p90 {r['latency_p90_ms']:,.1f} ms"
    if r.get("enqueue_p50_ms") is not None:
        text += f"; the queueing call itself, p50 {r['enqueue_p50_ms']:,.1f} ms"
    return text


def _at_least(bound: float) -> Callable[[Any], bool]:
    return lambda v: v >= bound


# --- the tables' sizes ---------------------------------------------------------------------------


def tables(s: Scenarios) -> str:
    found = [r for r in _rows(s, "delay", PG) if "tables" in r]
    if not found:
        return "Not measured in this run.\n"
    before, after = found[0]["tables"]["before"], found[0]["tables"]["after"]
    queued = after["messages"] - before["messages"]
    body = []
    for name in sorted(set(before["bytes"]) | set(after["bytes"])):
        old, new = before["bytes"].get(name, 0), after["bytes"].get(name, 0)
        per_run = f"{(new - old) / queued:,.0f} B" if queued > 0 else "—"
        body.append([name, _size(old), _size(new), _size(new - old), per_run])
    total_old, total_new = sum(before["bytes"].values()), sum(after["bytes"].values())
    body.append(
        [
            "**all**",
            _size(total_old),
            _size(total_new),
            _size(total_new - total_old),
            f"{(total_new - total_old) / queued:,.0f} B" if queued > 0 else "—",
        ]
    )
    header = ["table", "before", "after", "growth", f"growth per run queued ({queued:,})"]
    return _table(header, body)


def _size(n: int) -> str:
    if abs(n) >= 2**20:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n / 2**10:,.0f} KiB"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
