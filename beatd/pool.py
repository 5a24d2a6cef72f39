"""The pool: child processes (or threads) that each run one task at a time for the worker.

The parent (`beatd.worker`) owns every backend call; a slot only runs what it is sent. Parent and
slot speak JSON over a pipe, so nothing crossing it is pickled:

    slot -> parent   {"ready": pid} once its task modules are imported, or {"fatal": text}
    parent -> slot   {"body": <the run message JSON>, "deliveries": n}
    slot -> parent   {"status": "ok" | "retry" | "error", "detail": text, "traceback": text,
                      "countdown": seconds | null, "rss": bytes}

Process slots are started with the "forkserver" method where the platform has it ("spawn"
elsewhere): never a plain fork of a parent that runs threads and holds SQLite connections. A
forked-from-server child starts in about 15 ms, a spawned one in about 50 ms plus its imports.
Children survive SIGTERM and SIGINT (the parent decides when they stop) and exit on their own
when the parent dies, even mid-task.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import reprlib
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Literal, TypeVar

from beatd.errors import BeatdError
from beatd.message import RunMessage
from beatd.tasks import (
    Registry,
    Retry,
    RunContext,
    TaskAddress,
    TaskError,
    TimeLimitExceeded,
    import_task_modules,
    rebuild,
    running,
)

T = TypeVar("T")
PoolKind = Literal["process", "thread"]
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 200


class PoolError(BeatdError):
    """A slot could not start its child: the worker cannot run tasks (exit status 1)."""


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class Reply:
    status: Literal["ok", "retry", "error"]
    detail: str  # the result's repr, or "ExceptionType: message"
    traceback: str = ""
    countdown: float | None = None
    rss: int = 0  # bytes resident in the slot's process after the run


@dataclass(frozen=True, slots=True)
class Died:
    """The slot's child went away (its pipe closed); `how` says in which way."""

    how: str
    starting: bool = False  # it died before announcing it was ready


Event = Ready | Reply | Died


# --- the slot side: runs in the child process, or in the thread -------------------------


class Guard:
    """Delivers TimeLimitExceeded into the thread running a task, only while it runs one.

    The flag and the delivery share a lock, and a delivery that lands after the task returned
    is cleared before `call` returns, so the exception is raised inside the task or not at all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._ident = 0

    def call(self, func: Callable[[], T]) -> T:
        self._ident = threading.get_ident()
        with self._lock:
            self._armed = True
        try:
            return func()
        finally:
            with self._lock:
                self._armed = False
            _async_raise(self._ident, None)

    def interrupt(self) -> bool:
        with self._lock:
            if not self._armed:
                return False
            _async_raise(self._ident, TimeLimitExceeded)
            return True


def _async_raise(ident: int, exc: type[BaseException] | None) -> None:
    """Set (or, with None, clear) the exception pending in thread `ident`."""
    target = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), target)


def serve(conn: Connection, guard: Guard, registry: Registry) -> None:
    """Announce readiness, then run each request until the parent closes the pipe."""
    try:
        conn.send_bytes(json.dumps({"ready": os.getpid()}).encode())
        while True:
            request = conn.recv_bytes()
            conn.send_bytes(run_request(request, guard, registry))
    except (EOFError, OSError):
        return


def run_request(data: bytes, guard: Guard, registry: Registry) -> bytes:
    request = json.loads(data)
    message = RunMessage.from_json(request["body"])
    task = registry.get(message.task)
    reply: dict[str, Any]
    if task is None:
        reply = {"status": "error", "detail": f"TaskError: no task named {message.task!r} here"}
    else:
        args, kwargs = message.args, dict(message.kwargs)
        with running(RunContext(message, request["deliveries"])):
            try:
                result = guard.call(lambda: task.func(*args, **kwargs))
                reply = {"status": "ok", "detail": _repr.repr(result)}
            except Retry as exc:
                reply = {"status": "retry", "detail": str(exc), "countdown": exc.countdown}
            except BaseException as exc:  # the task's failure, whatever it is, is reported
                reply = {
                    "status": "error",
                    "detail": f"{type(exc).__name__}: {exc}",
                    "traceback": "".join(traceback.format_exception(exc)),
                }
    reply["rss"] = resident_bytes()
    return json.dumps(reply).encode()


def resident_bytes() -> int:
    """This process's resident memory now (Linux), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def child_main(
    conn: Connection, modules: Sequence[str], addresses: Sequence[TaskAddress], cwd: str
) -> None:
    """The entry point of a child process: it runs the tasks at `addresses`, the worker's
    registry rebuilt, after importing `modules` as the worker did."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _ignore)  # a handler, not SIG_IGN: exec'd grandchildren reset it
    _exit_with_parent()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        import_task_modules(modules)
        registry = rebuild(addresses)
    except TaskError as exc:
        conn.send_bytes(json.dumps({"fatal": str(exc)}).encode())
        return
    serve(conn, Guard(), registry)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The parent drains on SIGTERM/SIGINT; its children keep running their task."""


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        os._exit(1)  # the parent is gone: nobody can acknowledge this run any more

    threading.Thread(target=watch, name="beatd-parent-watch", daemon=True).start()


# --- the parent side -----------------------------------------------------------------------


def start_context() -> BaseContext:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        # the server imports these once; every child forked from it starts with them
        context.set_forkserver_preload(["__main__", "beatd.pool"])
    return context


class Slot:
    """One child that runs one task at a time; `state` is starting, idle or busy."""

    kind: PoolKind = "process"

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: Connection | None = None
        self.state: Literal["stopped", "starting", "idle", "busy"] = "stopped"
        self.runs = 0  # tasks run by the current child
        self.pid = 0

    def start(self) -> None:
        raise NotImplementedError

    def send(self, body: str, deliveries: int) -> bool:
        """Hand the slot a run; False when its child is gone (the run did not start)."""
        assert self.conn is not None and self.state == "idle"
        try:
            self.conn.send_bytes(json.dumps({"body": body, "deliveries": deliveries}).encode())
        except OSError:
            return False
        self.state = "busy"
        self.runs += 1
        return True

    def receive(self) -> Event:
        assert self.conn is not None
        starting = self.state == "starting"
        try:
            data = json.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return Died(self._reap(), starting)
        if "fatal" in data:
            self._reap()
            raise PoolError(f"a {self.kind} child could not start: {data['fatal']}")
        self.state = "idle"
        if "ready" in data:
            self.pid = data["ready"]
            return Ready(self.pid)
        countdown = data.get("countdown")
        return Reply(
            data["status"],
            data["detail"],
            data.get("traceback", ""),
            float(countdown) if countdown is not None else None,
            data.get("rss", 0),
        )

    def interrupt(self) -> bool:
        """Enforce the time limit: True when the task was stopped or told to stop."""
        raise NotImplementedError

    def stop(self, kill: bool = False) -> None:
        """Let the child exit (at once with `kill`); the slot is then stopped."""
        raise NotImplementedError

    def _reap(self) -> str:
        """After the pipe closed: how the child ended."""
        self._close()
        return "its pipe closed"

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.state = "stopped"


class ProcessSlot(Slot):
    kind: PoolKind = "process"

    def __init__(
        self,
        index: int,
        modules: Sequence[str],
        addresses: Sequence[TaskAddress],
        context: BaseContext,
    ) -> None:
        super().__init__(index)
        self.modules = tuple(modules)
        self.addresses = tuple(addresses)
        self.context = context
        self.process: BaseProcess | None = None

    def start(self) -> None:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(  # type: ignore[attr-defined]
            target=child_main,
            args=(child_end, self.modules, self.addresses, os.getcwd()),
            name=f"beatd-child-{self.index}",
        )
        process.start()
        child_end.close()
        self.process, self.conn, self.state, self.runs = process, parent_end, "starting", 0

    def interrupt(self) -> bool:
        if self.process is not None and self.process.is_alive():
            self.process.kill()  # SIGKILL: no task can catch or ignore it
        return True

    def stop(self, kill: bool = False) -> None:
        process = self.process
        self._close()  # the child reads EOF and exits
        if process is None:
            return
        if not kill:
            process.join(timeout=2.0)
        if process.is_alive():
            process.kill()
        process.join()
        self.process = None

    def _reap(self) -> str:
        process = self.process
        self._close()
        if process is None:
            return "its pipe closed"
        process.join(timeout=1.0)
        if process.is_alive():
            process.kill()
            process.join()
        self.process = None
        code = process.exitcode
        if code is not None and code < 0:
            return f"child pid={process.pid} was killed by {signal.Signals(-code).name}"
        return f"child pid={process.pid} exited with status {code}"


class ThreadSlot(Slot):
    """A thread in the worker's process: for I/O-bound tasks; its time limit is soft."""

    kind: PoolKind = "thread"

    def __init__(self, index: int, registry: Registry) -> None:
        super().__init__(index)
        self.registry = registry
        self.guard = Guard()

    def start(self) -> None:
        parent_end, child_end = multiprocessing.Pipe()
        thread = threading.Thread(
            target=serve,
            args=(child_end, self.guard, self.registry),
            name=f"beatd-task-{self.index}",
        )
        thread.daemon = True  # a thread stuck in a task must not keep the process alive
        thread.start()
        self.conn, self.state, self.runs = parent_end, "starting", 0

    def interrupt(self) -> bool:
        return self.guard.interrupt()

    def stop(self, kill: bool = False) -> None:
        self._close()  # the thread reads EOF and ends, once any task it runs returns

    def _reap(self) -> str:
        self._close()
        return "its task thread ended"


class Pool:
    """`size` slots that run the tasks of `registry`: threads share the object; each process
    child imports `modules` (as the worker did) and rebuilds it from its addresses."""

    def __init__(
        self, kind: PoolKind, size: int, registry: Registry, modules: Sequence[str] = ()
    ) -> None:
        if kind == "process":
            context, addresses = start_context(), registry.addresses()
            self.slots: list[Slot] = [
                ProcessSlot(i, modules, addresses, context) for i in range(size)
            ]
        else:
            self.slots = [ThreadSlot(i, registry) for i in range(size)]
        self.kind = kind

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    def idle(self) -> Slot | None:
        return next((s for s in self.slots if s.state == "idle"), None)

    def wait(self, timeout: float, wake_fd: int) -> tuple[bool, list[tuple[Slot, Event]]]:
        """Wait for slot events or the wake pipe; (woken, events)."""
        by_conn = {id(s.conn): s for s in self.slots if s.conn is not None}
        ready = wait(
            [wake_fd, *(s.conn for s in self.slots if s.conn is not None)], max(timeout, 0.0)
        )
        events = [(by_conn[id(c)], by_conn[id(c)].receive()) for c in ready if c != wake_fd]
        return wake_fd in ready, events

    def close(self, kill: bool = False) -> None:
        for slot in self.slots:
            slot.stop(kill)
