"""Building the values of a YAML document from PyYAML's events (see `yamlsafe`).

The values are built straight from the parser's events, depth first, without PyYAML's node tree or
constructors; a section of the top-level mapping can be handed over item by item (`Stream`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from beatd.config.yamlevents import (
    KINDS,
    SECOND_DOCUMENT,
    TOO_DEEP_TO_PARSE,
    Anchored,
    EventReader,
    Stop,
    too_deep,
)
from beatd.config.yamlvalues import (
    MAP_TAG,
    NUMBER_START,
    SCALAR_TAGS,
    SEQ_TAG,
    SPECIAL_PLAIN,
    STANDARD_TAGS,
    YamlList,
    YamlMap,
    mark_at,
    plain_number,
    short_tag,
    tagged_scalar,
    unsupported_tag,
)
from beatd.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True)
class Stream:
    """Hand the items of one section, the top-level mapping's `section`, to
    `sink(document, section, key, value)` as soon as each is read, instead of keeping them.

    `document` is the top-level mapping as read so far (the sections before this one), and
    `section` the section's mapping, which knows where `key` and its value are (`key_mark`,
    `value_mark`). The section in the returned document keeps only what a `<<` merged in. An
    anchored section is not streamed (an alias may need it whole): its items stay in it.
    """

    section: str
    sink: Callable[[YamlMap, YamlMap, str, Any], None]


class Builder(EventReader):
    """Builds the values of one document from the events of `parser(source)`, depth first.

    Building recurses once per level of nesting, checked against max_depth before going deeper.
    Events are typed Any: each branch knows which event class it holds.
    """

    def __init__(
        self,
        parser: Callable[[str | bytes], Any],
        source: str | bytes,
        path: str,
        max_depth: int,
        max_nodes: int | None,
        stream: Stream | None,
    ) -> None:
        super().__init__(parser, source, path, max_depth, max_nodes)
        self.stream = stream

    def document(self) -> Any:
        """The value of the one document, None if there is none; ConfigError with every
        problem found."""
        try:
            value = self.read()
        except RecursionError:  # only when max_depth is set above what Python can recurse
            self.problem(self.root_mark, TOO_DEEP_TO_PARSE)
            self.read_rest()
            raise ConfigError(self.problems) from None
        except Stop:
            self.read_rest()
            raise ConfigError(self.problems) from None
        if self.cap_is_explicit and self.nodes > self.max_nodes:
            self.problem(self.root_mark, f"more than {self.max_nodes} nodes; refusing to load it")
        if self.problems:
            raise ConfigError(self.problems)
        return value

    def read(self) -> Any:
        next_event = self.next_event
        next_event()  # StreamStartEvent
        if next_event().__class__ is StreamEndEvent:  # else DocumentStartEvent
            return None
        root = next_event()
        self.root_mark = root.start_mark
        value = self.node(root, 1)
        next_event()  # DocumentEndEvent
        if (event := next_event()).__class__ is not StreamEndEvent:
            self.refuse(event.start_mark, SECOND_DOCUMENT)
        return value

    # --- values

    def node(self, event: Any, depth: int) -> Any:
        """The value of the node starting with `event`, at nesting level `depth` (the top
        collection is level 1)."""
        if event.__class__ is ScalarEvent:
            if event.anchor is not None:
                self.anchor(event, Anchored(event.start_mark, scalar=event))
            return self.scalar_value(event)
        if event.__class__ is AliasEvent:
            return self.alias(event, depth)
        return self.collection(event, depth)

    def scalar_value(self, event: Any) -> Any:
        text: str = event.value
        tag = event.tag
        if tag is None or tag == "!":  # untagged: a plain scalar is typed, a quoted one is text
            if not event.implicit[0]:
                return text
            value = SPECIAL_PLAIN.get(text, text)
            if value is text and text[0] in NUMBER_START:
                return self.number(event)
            return value
        try:
            return tagged_scalar(tag, text)
        except ValueError as exc:
            self.problem(event.start_mark, str(exc))
            return None

    def number(self, event: Any) -> int | float | str:
        try:
            return plain_number(event.value)
        except ValueError as exc:  # more digits than int() takes
            self.problem(event.start_mark, f"cannot read the number: {exc}")
            return 0

    def collection(self, start: Any, depth: int, sink: _ItemSink | None = None) -> Any:
        """A mapping or list, None (and not read further) if its tag is wrong; see `mapping`
        for `sink`."""
        if depth > self.max_depth:
            self.note(start)  # its anchor is defined for the reading on (read_rest)
            self.fail(start.start_mark, too_deep(self.max_depth))
        is_mapping = start.__class__ is MappingStartEvent
        if start.tag is not None and not self.tag_fits(start, is_mapping):
            self.skip(start)
            return None
        if start.anchor is not None:
            if is_mapping:
                return self.remembered(start, depth, lambda: self.mapping(start, depth))
            return self.remembered(start, depth, lambda: self.sequence(start, depth))
        self.deepest = max(self.deepest, depth)
        return self.mapping(start, depth, sink) if is_mapping else self.sequence(start, depth)

    def tag_fits(self, start: Any, is_mapping: bool) -> bool:
        """Whether a collection is untagged or carries its own kind's tag; report it if not."""
        tag = start.tag
        if tag is None or tag == "!" or tag == (MAP_TAG if is_mapping else SEQ_TAG):
            return True
        if tag in STANDARD_TAGS:
            self.problem(start.start_mark, f"{short_tag(tag)} cannot tag a {KINDS[is_mapping]}")
        else:
            self.problem(start.start_mark, unsupported_tag(tag))
        return False

    def mapping(self, start: Any, depth: int, sink: _ItemSink | None = None) -> YamlMap:
        """A mapping, or with `sink` one whose own items are each handed to `sink(mapping, key,
        value)` as soon as read instead of kept."""
        result = YamlMap()
        positions = result._positions
        mark = start.start_mark
        result._start = mark.line << 32 | mark.column
        next_event = self.next_event
        merges: _Merges | None = None  # made at the first `<<`, the rare case
        items = 0
        while (event := next_event()).__class__ is not MappingEndEvent:
            items += 1
            if event.__class__ is ScalarEvent and event.tag is None and event.anchor is None:
                key: str | None = event.value  # the commonest key, an untagged scalar
                key_mark: Any = event.start_mark
                is_merge = key == "<<" and event.implicit[0]  # a quoted '<<' is just text
            else:
                key, key_mark, is_merge = self.odd_key(event, depth)
            value_event = next_event()
            if is_merge:
                merges = self.merge_key(merges, key_mark, value_event, depth)
                continue
            if key is None or key in positions:
                self.unused_value(key, key_mark, positions, value_event)
                continue
            # The commonest value, an untagged scalar, inline: it is most of the work.
            if (
                value_event.__class__ is ScalarEvent
                and value_event.tag is None
                and value_event.anchor is None
            ):
                text: str = value_event.value
                if value_event.implicit[0]:  # plain, typed as in scalar_value
                    value = SPECIAL_PLAIN.get(text, text)
                    if value is text and text[0] in NUMBER_START:
                        value = self.number(value_event)
                else:
                    value = text
                at: Any = value_event.start_mark
                value_position = at.line << 32 | at.column
            elif depth == 1 and (section_sink := self.section_sink(result, key, value_event)):
                value = self.collection(value_event, 2, section_sink)
                value_position = self.position(value_event)
            else:
                value = self.node(value_event, depth + 1)
                value_position = self.position(value_event)
            positions[key] = (key_mark.line << 32 | key_mark.column) << 64 | value_position
            if sink is None:
                result[key] = value
            else:
                sink(result, key, value)
        self.nodes += 2 * items
        for position, kind, source in merges[1] if merges is not None else ():
            self.merge(result, position, kind, source)
        if sink is not None:
            result._positions = {key: positions[key] for key in result}
        return result

    def merge_key(
        self, merges: _Merges | None, key_mark: Any, value_event: Any, depth: int
    ) -> _Merges:
        """A mapping's `<<` key: the first one's sources, read where they stand (merged once the
        mapping's own keys are known); a second one is a duplicate, reported and skipped."""
        if merges is None:
            return key_mark, self.merge_sources(value_event, depth)
        self.duplicate("<<", key_mark, merges[0].line + 1)
        self.skip(value_event)
        return merges

    def unused_value(
        self, key: str | None, key_mark: Any, positions: dict[str, int], value_event: Any
    ) -> None:
        """Skip the value of a key that is a duplicate (reported here) or none (reported)."""
        if key is not None:
            self.duplicate(key, key_mark, (positions[key] >> 96) + 1)
        self.skip(value_event)

    def section_sink(self, document: YamlMap, key: str, value_event: Any) -> _ItemSink | None:
        """Where the items of the top-level `key`'s value go, if that is the section to stream."""
        stream = self.stream
        if (
            stream is None
            or key != stream.section
            or value_event.__class__ is not MappingStartEvent
            or value_event.anchor is not None
        ):
            return None
        return partial(stream.sink, document)

    def duplicate(self, key: str, mark: Any, first_line: int) -> None:
        self.problem(mark, f"duplicate key {key!r} (first at line {first_line})")

    def odd_key(self, event: Any, depth: int) -> tuple[str | None, Any, bool]:
        """A key that is not an untagged scalar: (its text or None once reported, where it is,
        whether it is the merge key `<<`)."""
        if event.__class__ is AliasEvent:
            anchored = self.anchored(event)
            if anchored.scalar is None:
                self.problem(anchored.mark, f"a {anchored.kind} cannot be a key; keys are strings")
                return None, anchored.mark, False
            event = anchored.scalar
        elif event.__class__ is not ScalarEvent:
            kind = KINDS[event.__class__ is MappingStartEvent]
            self.problem(event.start_mark, f"a {kind} cannot be a key; keys are strings")
            self.skip(event)
            return None, event.start_mark, False
        elif event.anchor is not None:
            self.anchor(event, Anchored(event.start_mark, scalar=event))
        text: str = event.value
        tag = event.tag
        if tag is None or tag == "!":
            return text, event.start_mark, text == "<<" and event.implicit[0]
        if tag not in SCALAR_TAGS:
            self.problem(event.start_mark, unsupported_tag(tag))
            return None, event.start_mark, False
        return text, event.start_mark, False

    def merge_sources(self, event: Any, depth: int) -> list[tuple[int, str, Any]]:
        """The sources of `<<: *base`, `<<: {...}` or `<<: [*a, *b]` (or an alias to such a
        list), read where they stand and merged (or refused) once the mapping's own keys are
        known: (position, kind, mapping)."""
        if event.__class__ is AliasEvent and self.anchored(event).kind == "list":
            items = self.alias(event, depth)  # None if its tag was wrong, reported
            return [] if items is None else list(map(_merge_item, items._positions, items))
        if event.__class__ is not SequenceStartEvent:
            return [self.merge_source(event, depth)]
        if not self.tag_fits(event, is_mapping=False):
            self.skip(event)
            return []
        sources: list[tuple[int, str, Any]] = []

        def read() -> YamlList:  # the list's own value is what an alias to it stands for
            result = YamlList()
            result._start = self.position(event)
            while (item := self.next_event()).__class__ is not SequenceEndEvent:
                position, kind, mapping = self.merge_source(item, depth)
                sources.append((position, kind, mapping))
                result.append(mapping)
                result._positions.append(position)
            self.nodes += len(sources)
            return result

        if event.anchor is None:
            read()
        else:
            self.remembered(event, depth, read)
        return sources

    def merge_source(self, event: Any, depth: int) -> tuple[int, str, Any]:
        """(position, kind, mapping) of one source; its items land at this level, `depth`."""
        position = self.position(event)
        if event.__class__ is AliasEvent:
            kind = self.anchored(event).kind
            return position, kind, self.alias(event, depth) if kind == "mapping" else None
        if event.__class__ is MappingStartEvent:
            return position, "mapping", self.collection(event, depth)
        self.skip(event)
        return position, "scalar" if event.__class__ is ScalarEvent else "list", None

    def merge(self, result: YamlMap, position: int, kind: str, source: Any) -> None:
        """Apply one `<<` source: keys already present win, then earlier sources."""
        if kind != "mapping":
            at = mark_at(position)
            message = f"'<<' merges mappings, and this is a {kind}"
            self.problems.append(Problem(self.path, at.line, at.column, message))
            return
        if source is None:  # a bad tag, reported
            return
        positions = result._positions
        for key, value in source.items():
            if key not in positions:
                result[key] = value
                positions[key] = source._positions[key]

    def sequence(self, start: Any, depth: int) -> YamlList:
        result = YamlList()
        positions = result._positions
        mark = start.start_mark
        result._start = mark.line << 32 | mark.column
        next_event = self.next_event
        while (event := next_event()).__class__ is not SequenceEndEvent:
            result.append(self.node(event, depth + 1))
            positions.append(self.position(event))
        self.nodes += len(result)
        return result


def _merge_item(position: int, value: Any) -> tuple[int, str, Any]:
    """A merge source from an item of a list already built: (position, kind, mapping)."""
    if isinstance(value, YamlMap):
        return position, "mapping", value
    return position, "list" if isinstance(value, YamlList) else "scalar", None


_ItemSink = Callable[[YamlMap, str, Any], None]
# The mark of a mapping's `<<` key, and (position, kind, mapping) of each of its sources.
_Merges = tuple[Any, list[tuple[int, str, Any]]]
