"""The exceptions beatd raises, and the located problem that configuration errors carry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class BeatdError(Exception):
    """Base of every error beatd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located as precisely as the source allows."""

    path: str
    line: int
    column: int
    message: str
    entry: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = [f"{self.path}:{self.line}:{self.column}:"]
        if self.entry is not None:
            parts.append(f" entry {self.entry}:")
        if self.field is not None:
            parts.append(f" field {self.field}:")
        return "".join(parts) + " " + self.message


class ConfigError(BeatdError):
    """Bad input: every problem found in one pass, reported together (exit status 2)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.path, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


class ScheduleError(BeatdError):
    """A schedule expression that cannot be used; `field` names the part that is wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class BackendError(BeatdError):
    """The backend refused or failed an operation; retrying will not help."""


class TransientBackendError(BackendError):
    """The backend is unreachable or busy for now; the caller retries with backoff."""


class LeaseLost(BackendError):
    """The caller no longer holds the leader lease; nothing was written."""
