"""The task registry: plain functions registered by name with `@beatd.task`.

A worker runs only names found here. A run message names a task; nothing in it is imported or
unpickled. Task modules are imported by name from `-A/--app` and the schedule files' `imports:`,
and the worker runs what their `@beatd.task` decorators registered.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from beatd.durations import MAX_DURATION, MAX_TEXT
from beatd.errors import BeatdError
from beatd.message import RunMessage

P = ParamSpec("P")
R = TypeVar("R")


class TaskError(BeatdError):
    """A task cannot be registered or its module cannot be imported (bad input, exit 2)."""


class Retry(Exception):
    """Raised by a task to ask for another attempt, after `countdown` seconds if given.

    It counts against `max_retries` like a failure; without a countdown the task's exponential
    backoff applies.
    """

    def __init__(self, countdown: float | None = None, reason: str = "") -> None:
        if countdown is not None and countdown < 0:
            raise ValueError(f"Retry countdown must be >= 0 seconds, got {countdown!r}")
        if countdown is not None and not _within_bound(countdown):
            raise ValueError(f"Retry countdown {_BOUND}, got {countdown!r}")
        self.countdown = countdown
        self.reason = reason
        super().__init__(reason or "the task asked for a retry")


_BOUND = f"must be a finite number of seconds, at most {MAX_TEXT}"


def _within_bound(seconds: float) -> bool:
    """Whether a number of seconds is finite and at most MAX_DURATION (false for NaN)."""
    return seconds <= MAX_DURATION.total_seconds()


class TimeLimitExceeded(BaseException):
    """Raised inside a task on a thread pool when it overruns its `time_limit` (a soft limit).

    A BaseException so that `except Exception` in the task does not swallow it; a task in a
    process pool is killed instead and never sees it.
    """


@dataclass(frozen=True, slots=True)
class Task(Generic[P, R]):
    """A registered function with its retry and time-limit policy; calls run it directly."""

    name: str
    func: Callable[P, R]
    max_retries: int = 3
    retry_backoff: float = 2.0
    retry_backoff_max: float = 600.0
    time_limit: float | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the retry that follows failed attempt number `attempt` (from 1)."""
        exponent = min(max(attempt - 1, 0), 64)  # 2**64 seconds is past any sane cap
        return float(min(self.retry_backoff * 2**exponent, self.retry_backoff_max))


class Registry:
    """Task names to tasks.

    `@beatd.task` fills the default one (`registry`) as task modules are imported; a worker
    runs the registry it is given, and its process children rebuild that same registry from
    `addresses()`.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        existing = self._tasks.get(task.name)
        if existing is not None and _origin(existing.func) != _origin(task.func):
            raise TaskError(
                f"task name {task.name!r} is already registered to {_origin(existing.func)}; "
                f"{_origin(task.func)} cannot use it too: give one of them another "
                "@beatd.task(name=...)"
            )
        self._tasks[task.name] = task  # the same function again (a reloaded module) replaces

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def addresses(self) -> tuple[TaskAddress, ...]:
        """Where a child process finds each task again (see `rebuild`)."""
        return tuple(TaskAddress.of(task) for task in self._tasks.values())


registry = Registry()  # the default: `@beatd.task` registers here


@dataclass(frozen=True, slots=True)
class TaskAddress:
    """A registered task as a child process finds it again: by the module and qualified name
    of its function, with its policy. Nothing is pickled; the child imports and looks up."""

    name: str
    module: str
    qualname: str
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    time_limit: float | None

    @classmethod
    def of(cls, task: Task[Any, Any]) -> TaskAddress:
        func = task.func
        return cls(
            task.name,
            getattr(func, "__module__", None) or "",  # a partial, say, has neither: only
            getattr(func, "__qualname__", ""),  # the child's own registration finds it
            task.max_retries,
            task.retry_backoff,
            task.retry_backoff_max,
            task.time_limit,
        )

    def find(self) -> Task[Any, Any] | None:
        """The task again, in a process that imported its module; None where it is missing."""
        func = self._function()
        if func is None:
            return None
        policy = (self.max_retries, self.retry_backoff, self.retry_backoff_max, self.time_limit)
        return Task(self.name, func, *policy)

    def _function(self) -> Callable[..., Any] | None:
        known = registry.get(self.name)
        if known is not None and self._is(known.func):
            return known.func  # registered by its module's import: a lambda or local one too
        found: object = sys.modules.get(self.module)
        for part in self.qualname.split("."):  # `<locals>` is no attribute: missing
            found = getattr(found, part, None)
        if isinstance(found, Task):
            found = found.func
        return found if callable(found) else None

    def _is(self, func: Callable[..., Any]) -> bool:
        module = getattr(func, "__module__", None) or ""
        same_module = module == self.module or {module, self.module} <= _MAIN
        return same_module and getattr(func, "__qualname__", "") == self.qualname


# a child process imports the parent's script again, as __mp_main__ (aliased to __main__)
_MAIN = {"__main__", "__mp_main__"}


def rebuild(addresses: Sequence[TaskAddress]) -> Registry:
    """The registry whose tasks are at `addresses`, importing their modules (TaskError)."""
    import_task_modules(dict.fromkeys(a.module for a in addresses if a.module))
    rebuilt = Registry()
    for address in addresses:
        task = address.find()
        if task is not None:  # a run of a task left out here fails with "no task named"
            rebuilt.register(task)
    return rebuilt


def _origin(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    max_retries: int = 3,
    retry_backoff: float = 2.0,
    retry_backoff_max: float = 600.0,
    time_limit: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    max_retries: int = 3,
    retry_backoff: float = 2.0,
    retry_backoff_max: float = 600.0,
    time_limit: float | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Register a function as a task, as `@beatd.task` or `@beatd.task(name=..., ...)`.

    The default name is `module.qualname`, the `task:` a schedule entry gives. After a failure
    the run is retried up to `max_retries` times, waiting `retry_backoff * 2**(attempt-1)`
    seconds capped at `retry_backoff_max`; then it goes to the dead-letter queue. A run taking
    longer than `time_limit` seconds is killed (process pool) or interrupted (thread pool).
    """
    if max_retries < 0:
        raise TaskError(f"max_retries must be >= 0, got {max_retries!r}")
    if retry_backoff < 0 or retry_backoff_max < 0:
        raise TaskError(
            f"retry_backoff and retry_backoff_max must be >= 0 seconds, got "
            f"{retry_backoff!r} and {retry_backoff_max!r}"
        )
    if time_limit is not None and time_limit <= 0:
        raise TaskError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    for setting, seconds in (
        ("retry_backoff", retry_backoff),
        ("retry_backoff_max", retry_backoff_max),
        ("time_limit", time_limit),
    ):
        if seconds is not None and not _within_bound(seconds):
            raise TaskError(f"{setting} {_BOUND}, got {seconds!r}")

    def register(function: Callable[P, R]) -> Task[P, R]:
        registered = Task(
            name or _origin(function),
            function,
            max_retries,
            retry_backoff,
            retry_backoff_max,
            time_limit,
        )
        registry.register(registered)
        return registered

    return register if func is None else register(func)


def import_task_modules(modules: Iterable[str]) -> None:
    """Import each module by name so its `@beatd.task` functions register themselves."""
    for module in modules:
        try:
            importlib.import_module(module)
        except TaskError:
            raise
        except Exception as exc:
            where = _where(exc)
            raise TaskError(
                f"cannot import task module {module!r} (from -A/--app or imports:): "
                f"{type(exc).__name__}: {exc}{where}; the current directory and PYTHONPATH "
                "are searched"
            ) from exc


def _where(exc: BaseException) -> str:
    """Where in the module's own code an import failed; nothing when the module is missing."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)[1:]  # [0] is import_task_modules
        if not frame.filename.startswith("<") and _IMPORTLIB not in frame.filename
    ]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


_IMPORTLIB = os.path.join("", "importlib", "")


# --- the run a task is executing ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a running task can learn about its run; `id` is the key for idempotency."""

    message: RunMessage
    deliveries: int

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt


_current: ContextVar[RunContext | None] = ContextVar("beatd_current_run", default=None)


def current_run() -> RunContext:
    """The run the calling task is executing (inside a worker only)."""
    run = _current.get()
    if run is None:
        raise BeatdError("beatd.current_run() is only available inside a task run by a worker")
    return run


@contextmanager
def running(run: RunContext) -> Iterator[None]:
    token = _current.set(run)
    try:
        yield
    finally:
        _current.reset(token)
