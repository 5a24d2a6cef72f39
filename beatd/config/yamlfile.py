"""Reading one `schedules/*.yaml` file into entries, queue settings and imports."""

from __future__ import annotations

from typing import Any

from beatd.config.entries import (
    EntryReader,
    Locate,
    build_entry,
    describe_value,
    to_protocol,
    to_queue_name,
)
from beatd.config.model import QueueSettings
from beatd.config.source import SourceFile
from beatd.config.yamlsafe import Mark, YamlMap, load_yaml
from beatd.errors import ConfigError, Problem

SECTIONS = ("defaults", "entries", "queues", "imports")
QUEUE_FIELDS = ("protocol",)


def read_yaml_file(path: str, default_timezone: str, max_bytes: int) -> SourceFile:
    source = SourceFile(path)
    try:
        document = load_yaml(path, max_bytes=max_bytes)
    except ConfigError as exc:
        source.problems.extend(exc.problems)
        return source
    if document is None:
        return source
    if not isinstance(document, YamlMap):
        source.problems.append(
            Problem(path, 1, 1, f"expected a mapping with sections {', '.join(SECTIONS)}")
        )
        return source
    top = EntryReader(path, None, document, _locator(document))
    top.check_keys(SECTIONS, what="section")
    for section in ("defaults", "entries", "queues"):
        if section in document and not isinstance(document[section], YamlMap | type(None)):
            top.problem(section, f"expected a mapping, got {describe_value(document[section])}")
    source.problems.extend(top.problems)
    if source.problems:
        return source

    defaults: dict[str, Any] = {}
    if isinstance(document.get("defaults"), YamlMap):
        reader = EntryReader(path, None, document["defaults"], _locator(document["defaults"]))
        defaults = reader.read_defaults()
        source.problems.extend(reader.problems)
    zone = defaults.get("timezone", default_timezone)
    entries = document.get("entries") or YamlMap()
    for name, raw in entries.items():
        key_mark = entries.key_marks[name]
        source.entry_lines[name] = (key_mark.line, key_mark.column)
        if not isinstance(raw, YamlMap):
            mark = entries.value_marks[name]
            source.problems.append(
                Problem(
                    path,
                    mark.line,
                    mark.column,
                    f"expected a mapping of fields, got {describe_value(raw)}",
                    name,
                )
            )
            continue
        reader = EntryReader(path, name, raw, _locator(raw, key_mark))
        entry = build_entry(reader, defaults, zone)
        source.problems.extend(reader.problems)
        if entry is not None:
            source.entries.append(entry)
    _read_queues(source, document.get("queues") or YamlMap())
    _read_imports(source, document, top)
    return source


def _read_queues(source: SourceFile, queues: YamlMap) -> None:
    for name, raw in queues.items():
        mark = queues.key_marks[name]
        if not isinstance(raw, YamlMap):
            message = f"queue {name}: expected a mapping, got {describe_value(raw)}"
            source.problems.append(Problem(source.path, mark.line, mark.column, message))
            continue
        reader = EntryReader(source.path, None, raw, _locator(raw, mark))
        try:
            to_queue_name(name)
        except ValueError as exc:
            reader.problem(None, f"queue {exc}", at_key=True)
        reader.check_keys(QUEUE_FIELDS)
        source.queues[name] = QueueSettings(name, reader.read("protocol", to_protocol, "beatd"))
        source.problems.extend(reader.problems)


def _read_imports(source: SourceFile, document: YamlMap, top: EntryReader) -> None:
    imports = document.get("imports")
    if imports is None:
        return
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        top.problem("imports", "expected a list of module names such as myapp.tasks")
        source.problems.extend(top.problems)
        return
    source.imports.extend(imports)


def _locator(mapping: YamlMap, key_mark: Mark | None = None) -> Locate:
    """Find a field's key or value in `mapping`; the entry itself is at `key_mark`."""
    anchor = key_mark or mapping.mark

    def locate(field: str | None, at_key: bool) -> tuple[int, int]:
        marks = mapping.key_marks if at_key else mapping.value_marks
        mark = marks.get(field, anchor) if field is not None else anchor
        return mark.line, mark.column

    return locate
