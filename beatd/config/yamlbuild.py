"""Building the values of a YAML document from PyYAML's events (see `yamlsafe`).

The values are built straight from the parser's events, depth first, without PyYAML's node tree or
constructors; a section of the top-level mapping can be handed over item by item (`Stream`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from beatd.config.yamlvalues import (
    MAP_TAG,
    NUMBER_START,
    QUOTE_HINT,
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
    yaml_mark,
)
from beatd.errors import ConfigError, Problem

MIN_MAX_NODES = 1_000_000
NODES_PER_DISTINCT_NODE = 20


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


TOO_DEEP_TO_PARSE = "mappings and lists nested too deeply to parse; refusing to load it"
SECOND_DOCUMENT = "a second YAML document starts here; a schedule file holds exactly one"


def _too_deep(max_depth: int) -> str:
    return f"mappings and lists nested more than {max_depth} levels deep; refusing to load it"


@dataclass(slots=True)
class _Anchored:
    """What an anchor names. A scalar is kept as its event and read again at each alias; a
    collection as its value once built (`done`), its size in nodes and its height in levels."""

    mark: Any  # PyYAML's mark of the anchored node, where problems met through an alias point
    scalar: ScalarEvent | None = None
    kind: str = "scalar"  # or "mapping", "list"
    value: Any = None
    nodes: int = 1
    height: int = 0
    done: bool = False


class _Stop(Exception):
    """A problem after which the document is not read further (its values, that is)."""


class Builder:
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
        self.parser = parser
        self.source = source
        self.path = path
        self.next_event: Callable[[], Any] = parser(source).get_event
        self.stream = stream
        self.max_depth = max_depth
        # Without an explicit cap the floor applies until aliases cross it; only then is the
        # document's own size counted, so ordinary files never pay for that.
        self.max_nodes = MIN_MAX_NODES if max_nodes is None else max_nodes
        self.cap_is_explicit = self.cap_is_final = max_nodes is not None
        self.nodes = 1  # nodes read: an alias's nodes count once per expansion
        self.deepest = 0  # the deepest level reached inside the anchored collection being built
        self.anchors: dict[str, _Anchored] = {}
        self.root_mark: Any = None
        self.problems: list[Problem] = []

    def document(self) -> Any:
        """The value of the one document, None if there is none; ConfigError with every
        problem found."""
        try:
            value = self.read()
        except RecursionError:  # only when max_depth is set above what Python can recurse
            self.problem(self.root_mark, TOO_DEEP_TO_PARSE)
            self.read_rest()
            raise ConfigError(self.problems) from None
        except _Stop:
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

    def read_rest(self) -> None:
        """After a problem that stops the building, read on without building, refusing what the
        parser and the aliases would: problems in the text itself come first."""
        while (event := self.next_event()).__class__ is not StreamEndEvent:
            if event.__class__ is DocumentStartEvent:
                self.refuse(event.start_mark, SECOND_DOCUMENT)
            self.note(event)

    def skip(self, event: Any) -> None:
        """Read the node that `event` starts without building it, as nothing of it is used: a
        duplicate key's value, a key that is no string, a collection with a wrong tag."""
        level = 0
        while True:
            self.note(event)
            if isinstance(event, CollectionStartEvent):
                level += 1
            elif isinstance(event, CollectionEndEvent):
                level -= 1
            if level == 0:
                return
            event = self.next_event()

    def note(self, event: Any) -> None:
        """Define the anchor of an event read without building (what it names is not used), or
        check that its alias names one."""
        if event.__class__ is AliasEvent:
            self.anchored(event)
        elif isinstance(event, NodeEvent) and event.anchor is not None:
            scalar = event if event.__class__ is ScalarEvent else None
            kind = "scalar" if scalar else _KINDS[event.__class__ is MappingStartEvent]
            self.anchor(event, _Anchored(event.start_mark, scalar, kind, done=True))

    def problem(self, mark: Any, message: str) -> None:
        at = yaml_mark(mark)
        self.problems.append(Problem(self.path, at.line, at.column, message))

    def fail(self, mark: Any, message: str) -> NoReturn:
        self.problem(mark, message)
        raise _Stop

    def refuse(self, mark: Any, message: str) -> NoReturn:
        """A problem in the YAML text itself: reported alone, as a syntax error is."""
        at = yaml_mark(mark)
        raise ConfigError([Problem(self.path, at.line, at.column, message)])

    # --- anchors and aliases

    def anchor(self, event: Any, anchored: _Anchored) -> None:
        first = self.anchors.get(event.anchor)
        if first is not None:
            line = first.mark.line + 1
            self.refuse(
                event.start_mark, f"invalid YAML: anchor defined twice (first at line {line})"
            )
        self.anchors[event.anchor] = anchored

    def anchored(self, alias: Any) -> _Anchored:
        anchored = self.anchors.get(alias.anchor)
        if anchored is None:
            self.refuse(
                alias.start_mark,
                f"invalid YAML: alias to an anchor not defined above it; {QUOTE_HINT}",
            )
        return anchored

    def alias(self, alias: Any, depth: int) -> Any:
        """The value an alias at nesting level `depth` stands for."""
        anchored = self.anchored(alias)
        if anchored.scalar is not None:
            return self.scalar_value(anchored.scalar)
        if not anchored.done:
            self.fail(anchored.mark, "an alias refers to the mapping or list that contains it")
        self.nodes += anchored.nodes - 1  # the alias itself was counted by its parent
        if self.nodes > self.max_nodes:
            self.over_node_cap(anchored.mark)
        if depth + anchored.height - 1 > self.max_depth:
            self.fail(anchored.mark, _too_deep(self.max_depth) + " (through an alias)")
        self.deepest = max(self.deepest, depth + anchored.height - 1)
        return anchored.value

    def over_node_cap(self, mark: Any) -> None:
        if not self.cap_is_final:
            self.cap_is_final = True
            self.max_nodes = max(self.max_nodes, NODES_PER_DISTINCT_NODE * self.count_nodes())
            if self.nodes <= self.max_nodes:
                return
        self.fail(
            mark,
            f'alias expansion exceeds {self.max_nodes} nodes (a "billion laughs" document?); '
            "refusing to load it",
        )

    def count_nodes(self) -> int:
        """The document's size, each collection once however often it is aliased and each alias
        one: its node events, read again from the start."""
        next_event: Callable[[], Any] = self.parser(self.source).get_event
        count = 0
        while (event := next_event()).__class__ is not StreamEndEvent:
            count += isinstance(event, NodeEvent)
        return count

    def position(self, event: Any) -> int:
        """Where the node of `event` starts, packed; for an alias, where its anchored node does."""
        mark = self.anchored(event).mark if event.__class__ is AliasEvent else event.start_mark
        position: int = mark.line << 32 | mark.column
        return position

    # --- values

    def node(self, event: Any, depth: int) -> Any:
        """The value of the node starting with `event`, at nesting level `depth` (the top
        collection is level 1)."""
        if event.__class__ is ScalarEvent:
            if event.anchor is not None:
                self.anchor(event, _Anchored(event.start_mark, scalar=event))
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
            self.fail(start.start_mark, _too_deep(self.max_depth))
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

    def remembered(self, start: Any, depth: int, build: Callable[[], Any]) -> Any:
        """`build()`, the value of the anchored collection `start` begins at level `depth`,
        remembered with its size and height for the aliases to it."""
        anchored = _Anchored(start.start_mark, kind=_KINDS[start.__class__ is MappingStartEvent])
        self.anchor(start, anchored)
        nodes_before, deepest_outside = self.nodes, self.deepest
        self.deepest = depth
        anchored.value = build()
        anchored.nodes = self.nodes - nodes_before + 1
        anchored.height = self.deepest - depth + 1
        anchored.done = True
        self.deepest = max(self.deepest, deepest_outside)
        return anchored.value

    def tag_fits(self, start: Any, is_mapping: bool) -> bool:
        """Whether a collection is untagged or carries its own kind's tag; report it if not."""
        tag = start.tag
        if tag is None or tag == "!" or tag == (MAP_TAG if is_mapping else SEQ_TAG):
            return True
        if tag in STANDARD_TAGS:
            self.problem(start.start_mark, f"{short_tag(tag)} cannot tag a {_KINDS[is_mapping]}")
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
        merges: list[tuple[int, str, Any]] = []  # (position, kind, mapping) of each `<<` source
        merge_key: Any = None
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
                if merge_key is None:
                    merge_key = key_mark
                    merges = self.merge_sources(value_event, depth)
                else:
                    self.duplicate("<<", key_mark, merge_key.line + 1)
                    self.skip(value_event)
                continue
            if key is None or key in positions:
                if key is not None:
                    self.duplicate(key, key_mark, (positions[key] >> 96) + 1)
                self.skip(value_event)
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
        for position, kind, source in merges:
            self.merge(result, position, kind, source)
        if sink is not None:
            result._positions = {key: positions[key] for key in result}
        return result

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
            kind = _KINDS[event.__class__ is MappingStartEvent]
            self.problem(event.start_mark, f"a {kind} cannot be a key; keys are strings")
            self.skip(event)
            return None, event.start_mark, False
        elif event.anchor is not None:
            self.anchor(event, _Anchored(event.start_mark, scalar=event))
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


_KINDS = {True: "mapping", False: "list"}
_ItemSink = Callable[[YamlMap, str, Any], None]
