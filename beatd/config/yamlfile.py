"""Reading one `schedules/*.yaml` file into entries, queue settings and imports.

Each entry is built as soon as the YAML reader has read it (`Stream`), so a file of 100,000
entries is never held whole as YAML values; that needs the file's `defaults:` before its
`entries:`, as usual. A file with them the other way round is read a second time, whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beatd.config.convert import describe_value, to_amqp, to_protocol, to_queue_name
from beatd.config.entries import EntryReader, Locate, build_entry
from beatd.config.fields import QUEUE_FIELDS
from beatd.config.model import QueueSettings
from beatd.config.source import SourceFile
from beatd.config.yamlsafe import Mark, Stream, YamlMap, load_yaml
from beatd.errors import ConfigError, Problem

SECTIONS = ("defaults", "entries", "queues", "imports")
# A file half written by an editor or a deploy tool must not remove every entry at a reload.
NO_ENTRIES = (
    "refusing it: it may be half written, and loading it would remove every entry; write "
    "entries: {} if it is meant to schedule nothing"
)


def read_yaml_file(path: str, default_timezone: str, max_bytes: int) -> SourceFile:
    reader = _FileReader(path, default_timezone)
    try:
        document = load_yaml(path, max_bytes=max_bytes, stream=Stream("entries", reader.entry))
        if reader.read_before_defaults(document):
            reader = _FileReader(path, default_timezone)
            document = load_yaml(path, max_bytes=max_bytes)
    except ConfigError as exc:
        return SourceFile(path, problems=list(exc.problems))
    return reader.finish(document)


class _FileReader:
    """Builds one file's SourceFile: its entries as the YAML reader hands them over (or from the
    document, when it did not), then the rest from the document."""

    def __init__(self, path: str, default_timezone: str) -> None:
        self.path = path
        self.default_timezone = default_timezone
        self.source = SourceFile(path)
        self.defaults: dict[str, Any] | None = None  # converted, once read
        self.defaults_section: Any = None  # the section they were read from
        self.zone = default_timezone
        self.defaults_problems: list[Problem] = []
        self.entry_problems: list[Problem] = []

    def entry(self, document: YamlMap, entries: YamlMap, name: str, raw: Any) -> None:
        """Build one entry of `entries` with the defaults of `document` (as read so far)."""
        if self.defaults is None:
            self.read_defaults(document.get("defaults"))
            assert self.defaults is not None
        key_mark = entries.key_mark(name)
        self.source.entry_lines[name] = (key_mark.line, key_mark.column)
        if not isinstance(raw, YamlMap):
            mark = entries.value_mark(name)
            message = f"expected a mapping of fields, got {describe_value(raw)}"
            self.entry_problems.append(Problem(self.path, mark.line, mark.column, message, name))
            return
        reader = EntryReader(self.path, name, raw, _locator(raw, key_mark))
        entry = build_entry(reader, self.defaults, self.zone, self.source.unset_protocol)
        self.entry_problems.extend(reader.problems)
        if entry is not None:
            self.source.entries.append(entry)

    def read_defaults(self, section: Any) -> None:
        self.defaults_section = section
        self.defaults = {}
        if isinstance(section, YamlMap):
            reader = EntryReader(self.path, None, section, _locator(section))
            self.defaults = reader.read_defaults()
            self.defaults_problems = reader.problems
        self.zone = self.defaults.get("timezone", self.default_timezone)

    def read_before_defaults(self, document: Any) -> bool:
        """Whether entries were built before the `defaults:` that apply to them were read."""
        return (
            self.defaults is not None
            and isinstance(document, YamlMap)
            and document.get("defaults") is not self.defaults_section
        )

    def finish(self, document: Any) -> SourceFile:
        path = self.path
        if document is None:
            return SourceFile(path, problems=[Problem(path, 1, 1, f"empty file; {NO_ENTRIES}")])
        if not isinstance(document, YamlMap):
            message = f"expected a mapping with sections {', '.join(SECTIONS)}"
            return SourceFile(path, problems=[Problem(path, 1, 1, message)])
        top = EntryReader(path, None, document, _locator(document))
        top.check_keys(SECTIONS, what="section")
        if "entries" not in document:
            top.problems.append(Problem(path, 1, 1, f"no entries: section; {NO_ENTRIES}"))
        elif document["entries"] is None:
            top.problem("entries", f"empty section; {NO_ENTRIES}")
        for section in ("defaults", "entries", "queues"):
            if section in document and not isinstance(document[section], YamlMap | type(None)):
                top.problem(section, f"expected a mapping, got {describe_value(document[section])}")
        if top.problems:
            return SourceFile(path, problems=top.problems)
        if self.defaults is None:
            self.read_defaults(document.get("defaults"))
        entries = document.get("entries") or YamlMap()
        for name, raw in entries.items():  # those not streamed
            self.entry(document, entries, name, raw)
        source = self.source
        source.problems.extend(self.defaults_problems + self.entry_problems)
        _read_queues(source, document.get("queues") or YamlMap())
        _read_imports(source, document, top)
        return source


def field_positions(path: str) -> Callable[[str, str], tuple[int, int] | None]:
    """Where the value of an entry's field is in the YAML file at `path` (line, column), or
    None when it is not there: for messages made after reading, such as `beatd check`'s. The
    file is read again, whole, once: for a one-shot command, not for the daemons."""
    try:
        document = load_yaml(path)
    except ConfigError:
        document = None
    entries = document.get("entries") if isinstance(document, YamlMap) else None

    def position(entry: str, field: str) -> tuple[int, int] | None:
        fields = entries.get(entry) if isinstance(entries, YamlMap) else None
        if not isinstance(fields, YamlMap) or field not in fields:
            return None
        mark = fields.value_mark(field)
        return mark.line, mark.column

    return position


def _read_queues(source: SourceFile, queues: YamlMap) -> None:
    for name, raw in queues.items():
        mark = queues.key_mark(name)
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
        protocol = reader.read("protocol", to_protocol, "beatd")
        source.queues[name] = QueueSettings(name, protocol, reader.read("amqp", to_amqp, None))
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
        if field is None or field not in mapping:
            return anchor.line, anchor.column
        mark = mapping.key_mark(field) if at_key else mapping.value_mark(field)
        return mark.line, mark.column

    return locate
