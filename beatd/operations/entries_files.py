"""Runtime entries to and from schedule files: `beatd entries export` writes files that
`beatd check` accepts, and `beatd entries add --from-yaml` reads such a file back into the same
entries, its problems located as `beatd check` locates them (PATH:LINE:COL)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from beatd.config.model import QueueSettings
from beatd.config.yamlfile import read_yaml_file
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES, YamlMap, load_yaml
from beatd.errors import ConfigError, Problem
from beatd.operations.entries import in_table_order
from beatd.runtime_entries import InvalidEntry, RuntimeEntry

HEADER = (
    "# Runtime entries exported by `beatd entries export`; `beatd entries add --from-yaml` adds\n"
    "# them back. Every field is as stored (resolved when the entry was written).\n"
    "entries:\n"
)
FILE_NAME = "entries-{:04d}.yaml"


def export_texts(entries: Sequence[RuntimeEntry], max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """Schedule files holding `entries`, each under `max_bytes` (an entry is never split)."""
    texts: list[str] = []
    chunks: list[str] = []
    size = len(HEADER.encode())
    for entry in entries:
        definition = in_table_order(entry.definition)
        chunk = _indented(yaml.safe_dump({entry.name: definition}, sort_keys=False))
        length = len(chunk.encode())
        if chunks and size + length > max_bytes:
            texts.append(HEADER + "".join(chunks))
            chunks, size = [], len(HEADER.encode())
        chunks.append(chunk)
        size += length
    if chunks or not texts:
        texts.append(HEADER + ("".join(chunks) if chunks else "  {}\n"))
    return [text.replace("entries:\n  {}\n", "entries: {}\n") for text in texts]


def write_export(
    entries: Sequence[RuntimeEntry], folder: Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[Path]:
    """Write `export_texts` as entries-0001.yaml, entries-0002.yaml, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, text in enumerate(export_texts(entries, max_bytes), start=1):
        path = folder / FILE_NAME.format(number)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _indented(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


class FileDefinitions(Mapping[str, dict[str, Any]]):
    """The entries of one schedule file as definitions (the file's `defaults:` applied), with
    where each field is, to locate the problems found when they are written."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        source = read_yaml_file(path, "UTC", max_bytes)
        if source.problems:
            raise ConfigError(source.problems)
        document = load_yaml(path, max_bytes=max_bytes)
        self.path = path
        self.queues: dict[str, QueueSettings] = dict(source.queues)
        self._entries: YamlMap = document.get("entries") or YamlMap()
        defaults = document.get("defaults") or {}
        self._definitions = {
            name: {**_plain(defaults), **_plain(raw)} for name, raw in self._entries.items()
        }

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._definitions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._definitions)

    def __len__(self) -> int:
        return len(self._definitions)

    def located(self, error: InvalidEntry) -> ConfigError:
        """`error`'s problems at their place in the file."""
        return ConfigError(self._problem(p.entry, p.field, p.message) for p in error.fields)

    def _problem(self, entry: str, field: str | None, message: str) -> Problem:
        fields = self._entries.get(entry)
        if isinstance(fields, YamlMap) and field is not None and field in fields:
            mark = fields.value_mark(field)
        elif entry in self._entries:
            mark = self._entries.key_mark(entry)
        else:
            return Problem(self.path, 1, 1, message, entry, field)
        return Problem(self.path, mark.line, mark.column, message, entry, field)


def _plain(value: Any) -> Any:
    """A YAML value as plain Python (dicts, lists), as a request's JSON would give it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
