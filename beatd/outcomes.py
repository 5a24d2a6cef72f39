"""What became of a run in the worker: its outcome, and the counts metrics read.

Below both the worker (which settles runs) and the metrics (which read the counts), so that
neither has to import the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    EXPIRED = "expired"
    DEAD_LETTERED = "dead_lettered"
    CRASHED = "crashed"
    RELEASED = "released"


FAILURES = (Outcome.RETRIED, Outcome.FAILED, Outcome.CRASHED)


@dataclass
class WorkerStats:
    """Counts per (task, outcome) and per-entry last success and failure, for metrics."""

    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    last_success: dict[str, datetime] = field(default_factory=dict)
    last_failure: dict[str, datetime] = field(default_factory=dict)
    observe_duration: Callable[[str, float], None] = lambda _task, _seconds: None

    def record(
        self,
        task: str,
        entry: str | None,
        outcome: Outcome,
        when: datetime,
        duration: float | None = None,
    ) -> None:
        self.outcomes[task, outcome] += 1
        if duration is not None:
            self.observe_duration(task, duration)
        if entry is not None and outcome is Outcome.SUCCEEDED:
            self.last_success[entry] = when
        elif entry is not None and outcome in FAILURES:
            self.last_failure[entry] = when

    def count(self, outcome: Outcome, task: str | None = None) -> int:
        return sum(n for (t, o), n in self.outcomes.items() if o is outcome and task in (None, t))

    def summary(self) -> str:
        """`succeeded=N retried=N ...`, every outcome in order, for the worker's last line."""
        return " ".join(f"{outcome}={self.count(outcome)}" for outcome in Outcome)
