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
