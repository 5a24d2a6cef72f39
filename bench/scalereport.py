"""The report's section on issue 18's scale: runtime entries imported and held, beside RedBeat."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
IMPORT_TARGET_S = 10.0  # per 100,000 entries, through Client.add_many (issue 18)
MILLION = 1_000_000
COLUMNS = (
    ("way", "way"),
    ("backend", "backend"),
    ("entries", "entries held"),
    ("batch", "imported"),
    ("import_s", "import s"),
    ("import_us_per_entry", "µs/entry"),
    ("stock_us_per_entry", "stock µs/entry"),
    ("bytes_per_entry", "bytes/entry"),
    ("client_cpu_s", "client CPU s"),
    ("daemon_cpu_s", "daemon CPU s"),
    ("applied_s", "applied s"),
    ("daemon_cpu_applied_s", "daemon CPU s until applied"),
    ("redis_cpu_s", "Redis CPU s"),
    ("redis_cpu_applied_s", "Redis CPU s until applied"),
    ("cpu_us_per_entry", "CPU µs/entry"),
    ("daemon_peak_rss_mb", "daemon peak RSS MiB"),
    ("first_publish_s", "first publish s"),
    ("change_to_slot_s.p99", "change p99 s"),
)
NOT_YET = (
    "leader start-up with 1,000,000 runtime entries, spawn to first publish ≤ 15 s",
    "peak RSS of the leader with 1,000,000 runtime entries ≤ 1 GiB",
    "one change applied by the leader ≤ 1 s p99 under steady load",
    "a standby takes over within TTL + 1 s, nothing lost or repeated",
)


def section(s: dict[str, list[Result]]) -> str:
    rows = s.get("scale", [])
    if not rows:
        return "Not measured in this run.\n"
    ok = [r for r in rows if "error" not in r]
    parts = [
        "Issue 18's mix (`bench.workload.runtime_mix`: 40 % daily cron in 50 zones, 40 % hourly "
        "cron, 20 % intervals from 1 min to 1 day). Each beatd row imports its last `imported` "
        "entries with `Client.add_many` — over the backend URL in one call, or through a real "
        "`beatd run`'s HTTP API, which the client sends in requests of 5,000 (the API refuses a "
        "body above 1 MiB), three at a time — into "
        "a backend already holding the rest (written over the backend URL, `stock µs/entry`). "
        "RedBeat's rows write every entry with `RedBeatSchedulerEntry(...).save()` (its cron "
        "entries in UTC: Celery's crontab has no zone of its own). Bytes per entry: the growth of "
        "Redis `used_memory`, or the SQLite file after a checkpoint; beatd's include the audit "
        "record of each write (its before and after), about half of them on Redis. CPU µs/entry: "
        "the import's CPU, client, daemon and Redis (`INFO cpu`) together, per entry imported: "
        "steadier than the wall time on a shared machine. Over HTTP the leader goes on "
        "applying the change feed after the last request is answered: `applied s` is when it "
        "had applied the whole import (it published the first slot of a probe entry written "
        "after it), from the import's start, and `daemon CPU s until applied` (and Redis's) the "
        "CPU until then.",
        "",
        _table(["target (issue 18)", "measured", ""], _targets(ok)),
        _table(
            [title for _, title in COLUMNS],
            [
                [_cell(_get(r, key)) for key, _ in COLUMNS]
                if "error" not in r
                else [f"failed: {r.get('params')}"] + [""] * (len(COLUMNS) - 1)
                for r in rows
            ],
        ),
        _extrapolated(ok),
    ]
    return "\n".join(parts)


def _targets(rows: list[Result]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["way"] in ("redbeat", "leader"):
            continue
        per_100k = r["import_s_per_100k"]
        out.append(
            [
                f"import of {r['batch']:,} through `Client.add_many` over "
                f"{'HTTP' if r['way'] == 'http' else 'the backend URL'} into {r['backend']} "
                f"holding {r['entries'] - r['batch']:,}: ≤ 10 s per 100,000",
                f"{per_100k:.2f} s per 100,000 ({r['import_us_per_entry']:g} µs/entry)",
                "**met**" if per_100k <= IMPORT_TARGET_S else "**missed**",
            ]
        )
    leaders = [r for r in rows if r["way"] == "leader"]
    out += _leader_targets(leaders) if leaders else [[t, "not measured", "n/a"] for t in NOT_YET]
    return out


def _leader_targets(rows: list[Result]) -> list[list[str]]:
    """The leader's figures at the entries measured, against issue 18's targets at 1,000,000:
    a figure over the target is missed already; one under it says nothing of 1,000,000."""
    out = []
    for r in rows:
        where = f"{r['entries']:,} runtime entries, {r['backend']}"
        figures = (
            ("spawn to first publish ≤ 15 s", r["first_publish_s"], 15.0, _seconds),
            ("peak RSS ≤ 1 GiB", r["daemon_peak_rss_mb"], 1024.0, lambda v: f"{v:,.0f} MiB"),
            (
                "a change held by the leader ≤ 1 s p99 (write to its first slot)",
                r["change_to_slot_s"]["p99"],
                1.0,
                _seconds,
            ),
        )
        for target, value, bound, shown in figures:
            verdict = (
                "n/a" if value is None else "**missed**" if value > bound else "n/a (met here)"
            )
            out.append([f"{target} ({where})", "—" if value is None else shown(value), verdict])
    return out


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def _extrapolated(rows: list[Result]) -> str:
    """Bytes for a million entries at each row's bytes per entry, beside RedBeat's."""
    held: dict[tuple[str, str], Result] = {}
    for r in rows:
        if r["way"] == "leader":
            continue
        key = (r["way"] if r["way"] == "redbeat" else "beatd", r["backend"])
        if key not in held or r["entries"] > held[key]["entries"]:
            held[key] = r
    lines = [
        f"- {tool} on {backend}: {r['bytes_per_entry']:,.0f} bytes per entry at "
        f"{r['entries']:,} entries, so about {r['bytes_per_entry'] * MILLION / 2**30:.2f} GiB "
        "for 1,000,000 (extrapolated)"
        for (tool, backend), r in sorted(held.items())
    ]
    return "\n".join(["Storage at 1,000,000 entries:", "", *lines, ""])


def _get(row: Result, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
