"""Polling for a condition with a deadline: how the process-level tests wait, never by sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")


def wait_for(
    condition: Callable[[], R], timeout: float = 20.0, what: str = "", interval: float = 0.05
) -> R:
    """The first truthy result of `condition`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
