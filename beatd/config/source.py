"""What one schedule file contributes to the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from beatd.config.model import Entry, QueueSettings
from beatd.errors import Problem


@dataclass
class SourceFile:
    path: str
    entries: list[Entry] = field(default_factory=list)
    queues: dict[str, QueueSettings] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    entry_lines: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The entries that set no protocol (nor do their defaults): an entry's protocol is then its
    # queue's, which only all files together tell. Built with beatd's, which `merge` replaces
    # where a queue is configured otherwise, so that most entries are built once.
    unset_protocol: list[str] = field(default_factory=list)
