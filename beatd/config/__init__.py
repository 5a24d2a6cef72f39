"""Loading schedule files (`*.yaml`, `*.yml`, `*.py`) into one validated `Config`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.config.celeryconf import read_celery_config
from beatd.config.model import AmqpTarget, Config, Entry, MissedPolicy, QueueSettings
from beatd.config.pyfile import read_python_file
from beatd.config.source import SourceFile
from beatd.config.yamlfile import read_yaml_file
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.errors import ConfigError, Problem
from beatd.schedules.crontab import CronSpec, crontab

YAML_SUFFIXES = (".yaml", ".yml")


def schedule_files(paths: Sequence[str], *, yaml_only: bool = False) -> list[str]:
    """The files named by `paths` (directories expand to their schedule files, sorted)."""
    suffixes = YAML_SUFFIXES if yaml_only else (*YAML_SUFFIXES, ".py")
    files: list[str] = []
    problems = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(str(p) for p in sorted(path.iterdir()) if p.suffix in suffixes)
        elif path.is_file():
            if path.suffix in suffixes:
                files.append(str(path))
            elif path.suffix == ".py":
                problems.append(Problem(name, 1, 1, "--yaml-only: not executing a Python file"))
            else:
                problems.append(Problem(name, 1, 1, "not a schedule file (*.yaml, *.yml, *.py)"))
        else:
            problems.append(Problem(name, 1, 1, "no such file or directory"))
    if problems:
        raise ConfigError(problems)
    if not files:
        kinds = "*.yaml" if yaml_only else "*.yaml or *.py"
        raise ConfigError([Problem(", ".join(paths), 1, 1, f"no schedule files ({kinds})")])
    return files


def load_config(
    paths: Sequence[str],
    *,
    default_timezone: str = "UTC",
    yaml_only: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    celery_config: str | None = None,
) -> Config:
    """Read and merge every schedule file, and the Celery config module `celery_config` if
    given (then `paths` may be empty); raise ConfigError with all problems found."""
    sources: list[SourceFile] = []
    for path in schedule_files(paths, yaml_only=yaml_only) if paths or not celery_config else ():
        if path.endswith(".py"):
            sources.append(read_python_file(path, default_timezone))
        else:
            sources.append(read_yaml_file(path, default_timezone, max_bytes))
    if celery_config:
        sources.append(read_celery_config(celery_config, default_timezone).source)
    return merge(sources)


def merge(sources: Sequence[SourceFile]) -> Config:
    problems = [p for s in sources for p in s.problems]
    entries: dict[str, Entry] = {}
    queues: dict[str, QueueSettings] = {}
    imports: list[str] = []
    for index, source in enumerate(sources):
        problems.extend(_defined_before(source, sources[:index]))
        for entry in source.entries:
            entries.setdefault(entry.name, entry)
        for name, settings in source.queues.items():
            if name in queues and queues[name] != settings:
                problems.append(
                    Problem(
                        source.path,
                        1,
                        1,
                        f"queue {name} is configured differently in another schedule file",
                    )
                )
            queues.setdefault(name, settings)
        imports.extend(i for i in source.imports if i not in imports)
    if problems:
        raise ConfigError(problems)
    for source in sources:  # an entry's protocol, when unset, is its queue's
        for name in source.unset_protocol:
            entry = entries[name]
            queue = queues.get(entry.queue)
            if queue is not None and queue.protocol != entry.protocol:
                entries[name] = replace(entry, protocol=queue.protocol)
    _route_to_amqp(entries, queues)
    return Config(entries, queues, tuple(imports), tuple(s.path for s in sources))


def _route_to_amqp(entries: dict[str, Entry], queues: Mapping[str, QueueSettings]) -> None:
    """Give Celery entries that name no AMQP destination their queue's, then refuse an AMQP
    destination where it cannot work (ConfigError, every problem at once)."""
    problems = []
    for name, entry in entries.items():
        queue = queues.get(entry.queue)
        if entry.amqp is None and entry.protocol == "celery" and queue and queue.amqp:
            entries[name] = entry = replace(entry, amqp=queue.amqp)
        if entry.amqp is None and entry.queue != OUTBOX_QUEUE:
            continue
        path, _, line = entry.source.rpartition(":")
        where = (path or entry.source, int(line) if line.isdigit() else 1, 1)
        if entry.queue == OUTBOX_QUEUE:
            message = f"{OUTBOX_QUEUE} is beatd's outbox for RabbitMQ; name another queue"
            problems.append(Problem(*where, message, name, "queue"))
        elif entry.protocol != "celery":
            message = (
                f"an AMQP destination takes Celery's messages, but the protocol is "
                f"{entry.protocol}; set protocol: celery"
            )
            problems.append(Problem(*where, message, name, "amqp"))
    if problems:
        raise ConfigError(problems)


def _defined_before(source: SourceFile, earlier: Sequence[SourceFile]) -> Iterator[Problem]:
    """The entries of `source` that an earlier file defines already, located in `source`."""
    if not earlier:
        return
    for name, (line, column) in source.entry_lines.items():
        first = next((s for s in earlier if name in s.entry_lines), None)
        if first is not None:
            yield Problem(
                source.path,
                line,
                column,
                f"also defined in {first.path}:{first.entry_lines[name][0]}; entry names must be "
                "unique across schedule files",
                name,
            )


__all__ = [
    "AmqpTarget",
    "Config",
    "ConfigError",
    "CronSpec",
    "Entry",
    "MissedPolicy",
    "QueueSettings",
    "crontab",
    "load_config",
    "schedule_files",
]
