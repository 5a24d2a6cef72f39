"""Why beatd evaluates cron itself: croniter and cronsim against the brute-force reference.

    python -m bench.cron_accuracy [--cases 2000]

Each case is an expression, a zone and a start instant within a day of one of the zone's
offset changes; a library agrees on a case when its next fires inside a three-day window are
exactly the reference's (tests/cron_reference.py, cronie's rules). Prints, per library, the
share of cases where it disagrees or fails, and the mean cost of one next-fire computation.
croniter and cronsim come from the peers' venv (bench/peers.py, requirements/peers.lock), never
from beatd's.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench import peers

ROOT = Path(__file__).resolve().parents[1]
WINDOW = timedelta(days=3)
EXPRESSIONS = (
    "30 2 * * *",
    "0 2-2 * * *",
    "*/15 * * * *",
    "30 * * * *",
    "45 * * * *",
    "0 */2 * * *",
    "0 0-23/2 * * *",
    "0 0 * * *",
    "15 1 * * *",
    "0,30 2,3 * * *",
    "0 9 */2 * MON",
    "0 12 1 * FRI-SUN",
    "0 0 * * FRI-SUN",
    "*/20 1-3 * * *",
    "0 0 1,15 * 1",
)
ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Tehran",
    "Pacific/Chatham",
    "America/St_Johns",
    "Europe/London",
    "Australia/Sydney",
    "America/Havana",
    "Africa/Cairo",
    "Asia/Beirut",
)
Finder = Callable[[str, ZoneInfo, datetime, datetime], list[datetime]]


def changes(zone: ZoneInfo, start: int, end: int) -> list[datetime]:
    """Instants (to the hour) where the zone's offset changes, years start..end."""
    found = []
    t = datetime(start, 1, 1, tzinfo=UTC)
    last = t.astimezone(zone).utcoffset()
    while t.year <= end:
        t += timedelta(hours=1)
        offset = t.astimezone(zone).utcoffset()
        if offset != last:
            found.append(t)
            last = offset
    return found


def window_fires(step: Callable[[datetime], datetime | None], start: datetime) -> list[datetime]:
    fires, t = [], start
    while (t := step(t)) is not None and t <= start + WINDOW:  # type: ignore[assignment]
        fires.append(t.astimezone(UTC))
    return fires


def beatd_finder(expr: str, zone: ZoneInfo, start: datetime, _end: datetime) -> list[datetime]:
    from beatd.schedules.cron import CronSchedule

    return window_fires(CronSchedule.parse(expr, zone).next_after, start)


def croniter_finder(expr: str, zone: ZoneInfo, start: datetime, _end: datetime) -> list[datetime]:
    from croniter import croniter

    it = croniter(expr, start.astimezone(zone))
    return window_fires(lambda _t: it.get_next(datetime), start)


def cronsim_finder(expr: str, zone: ZoneInfo, start: datetime, _end: datetime) -> list[datetime]:
    from cronsim import CronSim

    it = CronSim(expr, start.astimezone(zone))
    return window_fires(lambda _t: next(it, None), start)


def measure(name: str, finder: Finder, cases: list[tuple[str, str, datetime]]) -> dict[str, object]:
    from tests.cron_reference import reference_fires

    wrong = failed = 0
    fires = 0
    spent = 0.0
    for expr, zone_name, start in cases:
        zone = ZoneInfo(zone_name)
        expected = reference_fires(expr, zone_name, start, start + WINDOW)
        began = time.perf_counter()
        try:
            got = finder(expr, zone, start, start + WINDOW)
        except Exception:
            failed += 1
            continue
        spent += time.perf_counter() - began
        fires += len(got) + 1
        wrong += got != expected
    return {
        "library": name,
        "cases": len(cases),
        "disagree": wrong,
        "errors": failed,
        "disagree_or_error_pct": round(100 * (wrong + failed) / len(cases), 1),
        "us_per_next_fire": round(1e6 * spent / max(fires, 1), 1),
    }


def make_cases(count: int, seed: int) -> list[tuple[str, str, datetime]]:
    rng = random.Random(seed)
    moments = {z: changes(ZoneInfo(z), 2000, 2030) for z in ZONES}
    cases = []
    for _ in range(count):
        zone = rng.choice(ZONES)
        if not moments[zone]:
            continue
        start = rng.choice(moments[zone]) + timedelta(minutes=rng.randint(-1440, 120))
        cases.append((rng.choice(EXPRESSIONS), zone, start))
    return cases


def peer_python() -> Path:
    return peers.ensure_venv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--library", help=argparse.SUPPRESS)  # used by the peers' interpreter
    args = parser.parse_args()
    cases = make_cases(args.cases, args.seed)
    finders = {"beatd": beatd_finder, "croniter": croniter_finder, "cronsim": cronsim_finder}
    if args.library:
        print(json.dumps(measure(args.library, finders[args.library], cases)))
        return 0
    python = peer_python()
    results = [measure("beatd", beatd_finder, cases)]
    for library in ("croniter", "cronsim"):
        out = subprocess.run(
            [
                python,
                "-m",
                "bench.cron_accuracy",
                "--cases",
                str(args.cases),
                "--seed",
                str(args.seed),
                "--library",
                library,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT)},
        )
        results.append(json.loads(out.stdout))
    for row in results:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
