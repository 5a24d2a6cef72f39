"""beatd: a periodic scheduler daemon (a beat service) for Python task queues."""

from typing import TYPE_CHECKING, Any

from beatd.schedules.crontab import crontab
from beatd.tasks import Retry, TimeLimitExceeded, current_run, task

if TYPE_CHECKING:
    from beatd.client import Client

__all__ = ["Client", "Retry", "TimeLimitExceeded", "crontab", "current_run", "task"]
_LAZY = {"Client": "beatd.client"}  # loaded on first use: task modules and workers never need it


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'beatd' has no attribute {name!r}")
