"""beatd: a periodic scheduler daemon (a beat service) for Python task queues."""

from beatd.schedules.crontab import crontab
from beatd.tasks import Retry, TimeLimitExceeded, current_run, task

__all__ = ["Retry", "TimeLimitExceeded", "crontab", "current_run", "task"]
