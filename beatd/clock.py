"""Time as the daemon sees it, behind one small interface so tests can drive it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall-clock time, aware, in UTC."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back, unaffected by clock steps."""

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        """Wait up to `seconds` or until `wake` is set; return True when woken."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        return wake.wait(max(seconds, 0.0))


class WallClock:
    """The wall-clock time of a `now` callable (an ApiContext's, a fake one in tests and
    screenshots) and the system's monotonic time and waits."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        return wake.wait(max(seconds, 0.0))


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: datetime) -> None:
        """Step the wall clock (as NTP might) without moving the monotonic one."""
        self._now = when.astimezone(UTC)

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        if wake.is_set():
            return True
        self.advance(max(seconds, 0.0))
        return False
