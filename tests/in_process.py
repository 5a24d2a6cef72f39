"""What the in-process tests share: a fake clock's in-memory backend, a scheduler over fixed
entries, a schedules folder, a throwaway in-memory broker URL, and the CLI run in process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from beatd.backends import Backend
from beatd.backends.memory import MemoryBackend, discard
from beatd.cli import main
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.message import RunMessage
from beatd.scheduler import Scheduler, SchedulerSettings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def memory_backend(name: str, clock: FakeClock) -> Iterator[MemoryBackend]:
    """An empty in-memory store `name` whose wall clock is `clock`, discarded afterwards (a
    fixture's body: `yield from memory_backend(NAME, clock)`)."""
    discard(name)
    yield MemoryBackend(name, wall_clock=lambda: clock.now().timestamp())
    discard(name)


def scheduler(backend: Any, clock: FakeClock, *entries: Entry, node: str = "a") -> Scheduler:
    config = Config({e.name: e for e in entries})
    settings = SchedulerSettings(node=node, lease_ttl=30, max_clock_skew=3600)
    return Scheduler(backend, lambda: config, clock, settings)


def memory_broker(prefix: str) -> Iterator[str]:
    """A `memory://` URL of its own, discarded afterwards (a fixture's body)."""
    name = f"{prefix}-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    discard(name)


def schedules_folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(text)
    return folder


def beatd(*args: str | Path) -> tuple[int, str, str]:
    """`beatd ARGS` in process: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def queued(store: Backend, queue: str = "default") -> list[RunMessage]:
    """Every run waiting in `queue`, taken and acknowledged."""
    messages = []
    while (delivery := store.claim([queue], "test", 30)) is not None:
        messages.append(RunMessage.from_json(delivery.body))
        store.ack(delivery)
    return messages
