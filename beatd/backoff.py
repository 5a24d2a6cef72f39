"""One bounded exponential backoff, shared by the scheduler loop and the worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Delays that double from `initial` up to `maximum` while failures last.

    `failed()` records a failure and returns how long to wait before trying again;
    `succeeded()` starts over. `failing` says whether the last attempt failed, so a caller logs
    an outage once, when it begins, and once when it ends.
    """

    initial: float = 0.1
    maximum: float = 5.0
    delay: float = 0.0

    @property
    def failing(self) -> bool:
        return self.delay > 0

    def failed(self) -> float:
        self.delay = min(max(self.delay * 2, self.initial), self.maximum)
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
