"""Reading PyYAML's events for the builder (`yamlbuild`): the problems found, the events read
without building (skipped or after a problem), and the anchors, the aliases to them and the
node cap that stops a "billion laughs" document.

`EventReader` holds the state of one document's reading; `yamlbuild.Builder` extends it with
the values. Events are typed Any: each branch knows which event class it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    StreamEndEvent,
)

from beatd.config.yamlvalues import QUOTE_HINT, yaml_mark
from beatd.errors import ConfigError, Problem

MIN_MAX_NODES = 1_000_000
NODES_PER_DISTINCT_NODE = 20


TOO_DEEP_TO_PARSE = "mappings and lists nested too deeply to parse; refusing to load it"
SECOND_DOCUMENT = "a second YAML document starts here; a schedule file holds exactly one"


def too_deep(max_depth: int) -> str:
    return f"mappings and lists nested more than {max_depth} levels deep; refusing to load it"


@dataclass(slots=True)
class Anchored:
    """What an anchor names. A scalar is kept as its event and read again at each alias; a
    collection as its value once built (`done`), its size in nodes and its height in levels."""

    mark: Any  # PyYAML's mark of the anchored node, where problems met through an alias point
    scalar: ScalarEvent | None = None
    kind: str = "scalar"  # or "mapping", "list"
    value: Any = None
    nodes: int = 1
    height: int = 0
    done: bool = False


class Stop(Exception):
    """A problem after which the document is not read further (its values, that is)."""


KINDS = {True: "mapping", False: "list"}


class EventReader:
    """The reading of one document's events, `parser(source)`, short of building its values."""

    def __init__(
        self,
        parser: Callable[[str | bytes], Any],
        source: str | bytes,
        path: str,
        max_depth: int,
        max_nodes: int | None,
    ) -> None:
        self.parser = parser
        self.source = source
        self.path = path
        self.next_event: Callable[[], Any] = parser(source).get_event
        self.max_depth = max_depth
        # Without an explicit cap the floor applies until aliases cross it; only then is the
        # document's own size counted, so ordinary files never pay for that.
        self.max_nodes = MIN_MAX_NODES if max_nodes is None else max_nodes
        self.cap_is_explicit = self.cap_is_final = max_nodes is not None
        self.nodes = 1  # nodes read: an alias's nodes count once per expansion
        self.deepest = 0  # the deepest level reached inside the anchored collection being built
        self.anchors: dict[str, Anchored] = {}
        self.root_mark: Any = None
        self.problems: list[Problem] = []

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
            kind = "scalar" if scalar else KINDS[event.__class__ is MappingStartEvent]
            self.anchor(event, Anchored(event.start_mark, scalar, kind, done=True))

    def problem(self, mark: Any, message: str) -> None:
        at = yaml_mark(mark)
        self.problems.append(Problem(self.path, at.line, at.column, message))

    def fail(self, mark: Any, message: str) -> NoReturn:
        self.problem(mark, message)
        raise Stop

    def refuse(self, mark: Any, message: str) -> NoReturn:
        """A problem in the YAML text itself: reported alone, as a syntax error is."""
        at = yaml_mark(mark)
        raise ConfigError([Problem(self.path, at.line, at.column, message)])

    def scalar_value(self, event: Any) -> Any:
        """The value of the scalar `event`: the builder's, which an alias to a scalar needs."""
        raise NotImplementedError

    # --- anchors and aliases

    def anchor(self, event: Any, anchored: Anchored) -> None:
        first = self.anchors.get(event.anchor)
        if first is not None:
            line = first.mark.line + 1
            self.refuse(
                event.start_mark, f"invalid YAML: anchor defined twice (first at line {line})"
            )
        self.anchors[event.anchor] = anchored

    def anchored(self, alias: Any) -> Anchored:
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
            self.fail(anchored.mark, too_deep(self.max_depth) + " (through an alias)")
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

    def remembered(self, start: Any, depth: int, build: Callable[[], Any]) -> Any:
        """`build()`, the value of the anchored collection `start` begins at level `depth`,
        remembered with its size and height for the aliases to it."""
        anchored = Anchored(start.start_mark, kind=KINDS[start.__class__ is MappingStartEvent])
        self.anchor(start, anchored)
        nodes_before, deepest_outside = self.nodes, self.deepest
        self.deepest = depth
        anchored.value = build()
        anchored.nodes = self.nodes - nodes_before + 1
        anchored.height = self.deepest - depth + 1
        anchored.done = True
        self.deepest = max(self.deepest, deepest_outside)
        return anchored.value
