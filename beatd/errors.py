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


class NamespaceError(BackendError):
    """The namespace (`--namespace`) cannot name beatd's data in this backend."""


class TransientBackendError(BackendError):
    """The backend is unreachable or busy for now; the caller retries with backoff.

    Raised as one of its two kinds, which say what became of a write: `NotApplied` (known not
    to have been applied) or `OutcomeUnknown` (maybe applied). A caller that cannot tell them
    apart treats both as `OutcomeUnknown`.
    """


class NotApplied(TransientBackendError):
    """Transient, and nothing was written: the request never reached the backend (connection
    refused, a send that failed), or the backend refused it before writing (Redis LOADING, BUSY,
    OOM, READONLY; a SQLite transaction that was rolled back). Retrying is safe."""


class OutcomeUnknown(TransientBackendError):
    """Transient, and the write may or may not have been applied: the request was sent and its
    reply was lost (a timeout, a connection lost while waiting, a SQLite COMMIT that failed
    after it began writing). Retry only with a write that is safe to repeat (a compare-and-set
    on the horizon is), and count what was sent as in doubt until a read settles it."""


class LeaseLost(BackendError):
    """The caller no longer holds the leader lease; nothing was written (the lease is checked
    in the same atomic step as the write it guards)."""
