"""The workloads, as plain specs every tool can read, and as beatd entries or YAML files.

A spec is a list of dicts: `{"name", "every": seconds, "offset": seconds}` for an interval
anchored at the Unix epoch plus `offset` (beatd's `anchor`), or `{"name", "cron": "..."}`.
Peers get the same specs as JSON, so all tools schedule the same thing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TASK = "bench.noop"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Spec = list[dict[str, Any]]


def mixed_intervals(count: int, seed: int = 7) -> Spec:
    """`count` entries every 1-60 s, skewed to short ones (1 + round(59·u³)): about 0.32 runs/s
    per entry, 3,200 runs/s for 10,000 entries, like the issue's 3,300. Each entry's grid is
    shifted by a whole number of seconds, so the runs spread over every second."""
    rng = random.Random(seed)
    spec = []
    for i in range(count):
        every = 1 + round(59 * rng.random() ** 3)
        spec.append({"name": f"mixed-{i:06d}", "every": every, "offset": rng.randrange(every)})
    return spec


def same_instant(count: int, every: int = 3600) -> Spec:
    """`count` entries whose slots coincide: every `every` seconds on the epoch grid."""
    return [{"name": f"burst-{i:06d}", "every": every, "offset": 0} for i in range(count)]


def at_minute(count: int, when: datetime) -> Spec:
    """`count` daily cron entries all due at `when` (a whole UTC minute), and at no time before
    it that a tool started shortly before could see: the peers' burst."""
    cron = f"{when.minute} {when.hour} * * *"
    return [{"name": f"cron-{i:06d}", "cron": cron} for i in range(count)]


def daily(count: int, avoid: datetime, window: float, seed: int = 11) -> Spec:
    """`count` daily entries at spread-out times, none due within `window` s after `avoid`."""
    rng = random.Random(seed)
    start = (avoid - EPOCH).total_seconds() % 86400
    spec = []
    for i in range(count):
        while True:
            offset = rng.randrange(86400)
            if (offset - start) % 86400 > window + 60:
                break
        spec.append({"name": f"daily-{i:06d}", "every": 86400, "offset": offset})
    return spec


def entries(spec: Spec, **fields: Any) -> list[Any]:
    """beatd `Entry` values for a spec (built directly, without reading a file)."""
    from beatd.config.model import Entry
    from beatd.schedules import CronSchedule, IntervalSchedule

    out = []
    for item in spec:
        if "cron" in item:
            schedule = CronSchedule.parse(item["cron"], "UTC")
        else:
            anchor = EPOCH + timedelta(seconds=item["offset"])
            schedule = IntervalSchedule(timedelta(seconds=item["every"]), anchor)
        out.append(
            Entry(name=item["name"], task=TASK, schedule=schedule, args=(item["name"],), **fields)
        )
    return out


def config(spec: Spec, **fields: Any) -> Any:
    from beatd.config.model import Config

    return Config({e.name: e for e in entries(spec, **fields)})


def write_yaml(spec: Spec, path: Path, *, missed: str | None = None) -> Path:
    """A schedule file for `beatd run` (written by hand: fast for 100,000 entries)."""
    lines = ["defaults:", "  queue: default"]
    if missed:
        lines.append(f"  missed: {missed}")
    lines.append("entries:")
    for item in spec:
        lines.append(f"  {item['name']}:")
        lines.append(f"    task: {TASK}")
        lines.append(f"    args: [{item['name']}]")
        if "cron" in item:
            lines.append(f'    cron: "{item["cron"]}"')
        else:
            lines.append(f"    every: {item['every']}s")
            if item.get("offset"):
                anchor = EPOCH + timedelta(seconds=item["offset"])
                lines.append(f'    anchor: "{anchor.isoformat()}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_slots(item: dict[str, Any], start: float, end: float) -> list[float]:
    """The slots of an interval spec item in [start, end) (epoch seconds)."""
    every, offset = item["every"], item.get("offset", 0)
    first = start + (offset - start) % every
    out = []
    t = first
    while t < end:
        out.append(t)
        t += every
    return out


# Issue 18's scale mix: 50 zones for the daily cron entries (every continent, both hemispheres,
# half-hour and quarter-hour offsets)
ZONES_50 = (
    "UTC", "Europe/London", "Europe/Paris", "Europe/Berlin", "Europe/Madrid", "Europe/Rome",
    "Europe/Amsterdam", "Europe/Stockholm", "Europe/Warsaw", "Europe/Athens", "Europe/Helsinki",
    "Europe/Istanbul", "Europe/Moscow", "Europe/Lisbon", "Europe/Dublin", "Africa/Cairo",
    "Africa/Lagos", "Africa/Johannesburg", "Africa/Nairobi", "Africa/Casablanca", "Asia/Dubai",
    "Asia/Tehran", "Asia/Karachi", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Dhaka",
    "Asia/Bangkok", "Asia/Jakarta", "Asia/Singapore", "Asia/Shanghai", "Asia/Hong_Kong",
    "Asia/Tokyo", "Asia/Seoul", "Australia/Perth", "Australia/Adelaide", "Australia/Sydney",
    "Pacific/Auckland", "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles",
    "America/Denver", "America/Phoenix", "America/Chicago", "America/Mexico_City",
    "America/New_York", "America/Toronto", "America/Bogota", "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires", "America/St_Johns",
)  # fmt: skip


def runtime_mix(count: int, start: int = 0, seed: int = 18) -> dict[str, dict[str, Any]]:
    """Issue 18's runtime entries, name -> `Client.add_many` fields: of every 10, 4 daily cron
    entries in one of 50 zones, 4 hourly cron entries (UTC), 2 intervals from 1 min to 1 day.
    Entries `start` .. `start + count - 1` of the same deterministic sequence."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(start, start + count):
        rng = random.Random(seed * 1_000_003 + i)
        kind = i % 10
        fields: dict[str, Any] = {"task": TASK, "args": [f"rt-{i:07d}"]}
        if kind < 4:
            fields["cron"] = f"{rng.randrange(60)} {rng.randrange(24)} * * *"
            fields["timezone"] = ZONES_50[(i // 10 * 4 + kind) % len(ZONES_50)]
        elif kind < 8:
            fields["cron"] = f"{rng.randrange(60)} * * * *"
        else:
            fields["every"] = f"{rng.randint(60, 86400)}s"
        out[f"rt-{i:07d}"] = fields
    return out
