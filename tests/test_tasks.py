"""The task registry and decorator: pure, nothing runs a worker."""

from __future__ import annotations

import functools
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import beatd
from beatd.errors import BeatdError
from beatd.message import RunMessage
from beatd.tasks import (
    Registry,
    RunContext,
    Task,
    TaskAddress,
    TaskError,
    import_task_modules,
    rebuild,
    registry,
    running,
)
from tests import worker_tasks


def test_bare_decorator_registers_under_module_and_qualname() -> None:
    @beatd.task
    def double(x: int) -> int:
        return 2 * x

    name = f"{__name__}.test_bare_decorator_registers_under_module_and_qualname.<locals>.double"
    assert double.name == name
    assert registry.get(name) is double
    assert double(21) == 42  # a task is still a plain function to call
    assert (double.max_retries, double.retry_backoff, double.retry_backoff_max) == (3, 2.0, 600.0)
    assert double.time_limit is None


def test_decorator_with_options() -> None:
    @beatd.task(name="tests.custom", max_retries=1, retry_backoff=1, time_limit=5)
    def custom() -> str:
        return "ok"

    assert registry.get("tests.custom") is custom
    assert (custom.name, custom.max_retries, custom.time_limit) == ("tests.custom", 1, 5)


def test_the_shipped_example_tasks_register_under_the_names_the_schedules_use() -> None:
    import examples.tasks  # noqa: F401 - registers on import

    assert {
        "examples.tasks.heartbeat",
        "examples.tasks.daily_report",
        "examples.tasks.cleanup",
        "examples.tasks.weekly_digest",
        "examples.tasks.greet",
    } <= set(registry.names())


def test_one_name_for_two_functions_is_an_error() -> None:
    @beatd.task(name="tests.shared")
    def first() -> None: ...

    with pytest.raises(TaskError) as caught:

        @beatd.task(name="tests.shared")
        def second() -> None: ...

    here = f"{__name__}.test_one_name_for_two_functions_is_an_error.<locals>"
    assert str(caught.value) == (
        f"task name 'tests.shared' is already registered to {here}.first; {here}.second cannot "
        "use it too: give one of them another @beatd.task(name=...)"
    )
    assert registry.get("tests.shared") is first


def test_the_same_function_registered_again_replaces_it() -> None:
    def job() -> None: ...

    first = beatd.task(name="tests.reloaded")(job)
    again = beatd.task(name="tests.reloaded", max_retries=0)(job)
    assert registry.get("tests.reloaded") is again and again is not first


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (9, 512.0), (10, 600.0), (200, 600.0)],
    ids=["first", "second", "third", "below_cap", "capped", "huge_attempt"],
)
def test_retry_delay_is_exponential_and_capped(attempt: int, delay: float) -> None:
    assert Task("t", print).retry_delay(attempt) == delay


BOUND = "must be a finite number of seconds, at most 100 years (36525d)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0, got -1"),
        (
            {"retry_backoff": -1},
            "retry_backoff and retry_backoff_max must be >= 0 seconds, got -1 and 600.0",
        ),
        ({"time_limit": 0}, "time_limit must be a positive number of seconds, got 0"),
        ({"time_limit": math.inf}, f"time_limit {BOUND}, got inf"),
        ({"time_limit": math.nan}, f"time_limit {BOUND}, got nan"),
        ({"retry_backoff": 1e20}, f"retry_backoff {BOUND}, got 1e+20"),
        ({"retry_backoff_max": math.inf}, f"retry_backoff_max {BOUND}, got inf"),
    ],
    ids=[
        "negative_retries",
        "negative_backoff",
        "zero_time_limit",
        "infinite_time_limit",
        "nan_time_limit",
        "century_backoff",
        "infinite_backoff_cap",
    ],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(TaskError) as caught:
        beatd.task(**options)  # type: ignore[call-overload]
    assert str(caught.value) == message


def test_retry_carries_its_countdown() -> None:
    retry = beatd.Retry(countdown=30, reason="upstream busy")
    assert (retry.countdown, str(retry)) == (30, "upstream busy")
    assert str(beatd.Retry()) == "the task asked for a retry"
    with pytest.raises(ValueError, match=r"^Retry countdown must be >= 0 seconds, got -1$"):
        beatd.Retry(countdown=-1)
    with pytest.raises(ValueError) as caught:
        beatd.Retry(countdown=math.inf)
    assert str(caught.value) == f"Retry countdown {BOUND}, got inf"


def test_time_limit_exceeded_escapes_except_exception() -> None:
    assert not issubclass(beatd.TimeLimitExceeded, Exception)


def test_current_run_inside_and_outside_a_run() -> None:
    with pytest.raises(BeatdError) as caught:
        beatd.current_run()
    assert str(caught.value) == (
        "beatd.current_run() is only available inside a task run by a worker"
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    message = RunMessage("e@2026-01-01T00:00:00Z", "t", "e", now, now, "default", attempt=2)
    with running(RunContext(message, deliveries=3)):
        run = beatd.current_run()
        assert (run.id, run.attempt, run.deliveries) == ("e@2026-01-01T00:00:00Z", 2, 3)


def test_import_errors_name_the_module_and_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tasks.py").write_text("import beatd\n\nraise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError) as caught:
        import_task_modules(["broken_tasks"])
    assert str(caught.value) == (
        "cannot import task module 'broken_tasks' (from -A/--app or imports:): RuntimeError: "
        f"no config at {tmp_path / 'broken_tasks.py'}:3; the current directory and PYTHONPATH "
        "are searched"
    )
    sys.modules.pop("broken_tasks", None)


def test_a_registry_is_rebuilt_from_its_addresses() -> None:
    @beatd.task(name="tests.local_registered")
    def registered() -> None: ...

    def unregistered() -> None: ...

    own = Registry()
    own.register(worker_tasks.add)  # decorated: the module attribute is the Task
    own.register(Task("tests.plain", worker_tasks.subtract, max_retries=0, time_limit=2))
    own.register(registered)  # local, but its name is in the default registry
    own.register(Task("tests.unregistered", unregistered))  # local and nowhere else
    own.register(Task("tests.partial", functools.partial(worker_tasks.subtract, "out")))
    rebuilt = rebuild(own.addresses())
    assert rebuilt.names() == ["tests.local_registered", "tests.plain", "tests.worker_tasks.add"]
    for name in rebuilt.names():
        assert rebuilt.get(name) == own.get(name)


def test_rebuilding_imports_the_modules_of_the_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "later_tasks.py").write_text("def job() -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    address = TaskAddress("later", "later_tasks", "job", 3, 2.0, 600.0, None)
    try:
        task = rebuild([address]).get("later")
        assert task is not None and task.func is sys.modules["later_tasks"].job
    finally:
        sys.modules.pop("later_tasks", None)
