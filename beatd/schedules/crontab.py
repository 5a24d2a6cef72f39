"""`beatd.crontab(...)`: Celery's `crontab` for Python schedule files, as a plain value.

It lives here, beside the schedules, rather than with the file readers in `beatd.config`, so
that `import beatd` (every task module, every worker child) stays cheap: no YAML reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A cron expression from Python config; `both_days` keeps Celery's crontab meaning."""

    text: str
    both_days: bool = False


def crontab(
    minute: str | int | Iterable[int] = "*",
    hour: str | int | Iterable[int] = "*",
    day_of_week: str | int | Iterable[int] = "*",
    day_of_month: str | int | Iterable[int] = "*",
    month_of_year: str | int | Iterable[int] = "*",
) -> CronSpec:
    """Celery's `crontab` keywords and meaning: every field must match, both day fields too."""
    fields = [minute, hour, day_of_month, month_of_year, day_of_week]
    return CronSpec(" ".join(_cron_field(f) for f in fields), both_days=True)


def _cron_field(value: str | int | Iterable[int]) -> str:
    if isinstance(value, str):
        return value.replace(" ", "")
    if isinstance(value, int):
        return str(value)
    return ",".join(str(v) for v in sorted(value))
