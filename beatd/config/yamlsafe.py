"""A hardened YAML reader that remembers where every key and value came from.

PyYAML composes the node tree (libyaml's `CSafeLoader` where available); the values are built
here, not by PyYAML's constructors, so that:

- plain scalars follow the YAML 1.2 core schema: `12:30`, `NO` and `on` stay strings, `010` is 10;
- tags other than the standard `!!str !!int !!float !!bool !!null !!map !!seq` are refused;
- a duplicate key is an error naming both lines, and keys are always strings (their text);
- aliases are shared, not copied, and the nodes they expand to are counted against a cap, so a
  "billion laughs" document fails at once instead of when something walks it;
- nesting is limited and building the values is recursive only as deep as that limit.

Positions are stored as plain ints and turned into 1-based `Mark`s when first asked for: a
100,000-entry file has well over a million of them and most are never looked at.

Speed: PyYAML's composer is most of the cost. A 100,000-entry, 11 MB schedule file takes about
1.4 s of CPU to compose and 1 s to build; `yaml.safe_load` with libyaml takes 17 s on it, mostly
in the cyclic garbage collector, which `loads_yaml` therefore pauses while it works.
"""

from __future__ import annotations

import gc
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from beatd.errors import ConfigError, Problem

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64
MIN_MAX_NODES = 1_000_000
NODES_PER_DISTINCT_NODE = 20


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in the source file, both numbers 1-based."""

    line: int
    column: int


FILE_START = Mark(1, 1)


# A position is PyYAML's 0-based (line, column) packed into one int, `line << 32 | column`, and a
# mapping item's two positions into one, `key << 64 | value`. Ints are not tracked by the cyclic
# collector, so a large document costs it nothing; a `Mark` is made only when asked for.
_LOW_32 = (1 << 32) - 1
_LOW_64 = (1 << 64) - 1


def _mark_at(position: int) -> Mark:
    return Mark((position >> 32) + 1, (position & _LOW_32) + 1)


class YamlMap(dict[str, Any]):
    """A mapping read from YAML: a plain dict that also knows where it and its items are."""

    __slots__ = ("_key_marks", "_positions", "_start", "_value_marks")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = 0
        self._positions: dict[str, int] = {}
        self._key_marks: dict[str, Mark] | None = None
        self._value_marks: dict[str, Mark] | None = None

    @property
    def mark(self) -> Mark:
        """Where the mapping starts (its first key for a block mapping)."""
        return _mark_at(self._start)

    @property
    def key_marks(self) -> dict[str, Mark]:
        """Where each key is; a key merged in by `<<` is where the anchored mapping has it."""
        if self._key_marks is None:
            self._key_marks = {k: _mark_at(at >> 64) for k, at in self._positions.items()}
        return self._key_marks

    @property
    def value_marks(self) -> dict[str, Mark]:
        """Where each value starts; for a key merged in by `<<`, in the anchored mapping."""
        if self._value_marks is None:
            self._value_marks = {k: _mark_at(at & _LOW_64) for k, at in self._positions.items()}
        return self._value_marks


class YamlList(list[Any]):
    """A sequence read from YAML: a plain list that also knows where it and its items are."""

    __slots__ = ("_item_marks", "_positions", "_start")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._start = 0
        self._positions: list[int] = []
        self._item_marks: list[Mark] | None = None

    @property
    def mark(self) -> Mark:
        """Where the sequence starts (its first `-` for a block sequence)."""
        return _mark_at(self._start)

    @property
    def item_marks(self) -> list[Mark]:
        """Where each item starts."""
        if self._item_marks is None:
            self._item_marks = [_mark_at(at) for at in self._positions]
        return self._item_marks


# --- composing: PyYAML's parser and composer, with a resolver that only tells plain from quoted

YAML_TAG = "tag:yaml.org,2002:"
STR_TAG = YAML_TAG + "str"
MAP_TAG = YAML_TAG + "map"
SEQ_TAG = YAML_TAG + "seq"
PLAIN_TAG = "tag:beatd,2026:plain"  # an untagged plain scalar, typed below by the 1.2 core schema


class _PlainResolver:
    """Leaves typing to us: an untagged plain scalar gets PLAIN_TAG, anything else untagged its
    kind's standard tag. These are the very string objects above, so `node.tag is STR_TAG` tells
    an untagged quoted scalar from one tagged `!!str`, and an explicit tag is never mistaken."""

    def resolve(self, kind: type[Node], value: str | None, implicit: Any) -> str:
        if kind is ScalarNode:
            return PLAIN_TAG if implicit[0] else STR_TAG
        return MAP_TAG if kind is MappingNode else SEQ_TAG

    def descend_resolver(self, current_node: Node | None, current_index: Any) -> None:
        pass  # no path resolvers; PyYAML's version costs a call per node for nothing

    def ascend_resolver(self) -> None:
        pass


class PurePythonLoader(_PlainResolver, yaml.SafeLoader):
    """The fallback without libyaml: the same results, several times slower."""


if yaml.__with_libyaml__:

    class LibYamlLoader(_PlainResolver, yaml.CSafeLoader):
        """libyaml's parser and composer."""

    LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = LibYamlLoader
else:  # pragma: no cover - PyYAML built without libyaml
    LOADER = PurePythonLoader


# --- the YAML 1.2 core schema -------------------------------------------------------------------

_INF, _NAN = math.inf, math.nan
_SPECIAL_PLAIN: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("null", "Null", "NULL", "~", ""), None),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), _INF),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -_INF),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), _NAN),
}
_NUMBER_START = frozenset("0123456789+-.")
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")


def _number(text: str) -> int | float | str:
    """`text` as the core schema reads a plain scalar starting like a number; else `text`."""
    if _DECIMAL.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _OCTAL.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    return text


_SCALAR_TAGS = frozenset(YAML_TAG + t for t in ("str", "int", "float", "bool", "null"))
_STANDARD_TAGS = _SCALAR_TAGS | {MAP_TAG, SEQ_TAG}


def _tagged_scalar(tag: str, text: str) -> Any:
    """The value of a scalar with an explicit tag; ValueError if the tag or the text is wrong."""
    if tag not in _SCALAR_TAGS:
        raise ValueError(
            f"{_short_tag(tag)} cannot tag a scalar"
            if tag in _STANDARD_TAGS
            else _unsupported_tag(tag)
        )
    special = _SPECIAL_PLAIN.get(text, text)
    if tag == STR_TAG:
        return text
    if tag == YAML_TAG + "bool" and isinstance(special, bool):
        return special
    if tag == YAML_TAG + "null" and special is None:
        return None
    if tag == YAML_TAG + "int" and special is text:
        value = _number(text)
        if isinstance(value, int):
            return value
    if tag == YAML_TAG + "float" and (special is text or isinstance(special, float)):
        value = special if special is not text else _number(text)
        if isinstance(value, int | float):
            return float(value)
    raise ValueError(f"{_short_tag(tag)} {text!r} is not a valid {tag[len(YAML_TAG) :]}")


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG) :] if tag.startswith(YAML_TAG) else tag


def _unsupported_tag(tag: str) -> str:
    return (
        f"unsupported tag {_short_tag(tag)}: schedule files hold plain data only (strings, "
        "numbers, booleans, null, lists and mappings); remove the tag"
    )


# --- loading -------------------------------------------------------------------------------------


def load_yaml(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int | None = None,
) -> Any:
    """Read one YAML file; raise ConfigError with located problems if it cannot be used."""
    name = os.fspath(path)
    try:
        size = os.stat(name).st_size
        if size <= max_bytes:
            with open(name, "rb") as file:
                data = file.read(max_bytes + 1)  # the file may grow, or be a pipe
            size = len(data)
    except OSError as exc:
        raise ConfigError([Problem(name, 1, 1, f"cannot read file: {exc.strerror}")]) from None
    if size > max_bytes:
        message = (
            f"file is {size} bytes, more than the limit of {max_bytes} bytes; refusing to read "
            "it (raise the limit with --max-file-size or BEATD_MAX_FILE_SIZE)"
        )
        raise ConfigError([Problem(name, 1, 1, message)])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = (
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be decoded; "
            "save the file as UTF-8"
        )
        raise ConfigError([Problem(name, 1, 1, message)]) from None
    return loads_yaml(text, name, max_depth=max_depth, max_nodes=max_nodes)


def loads_yaml(
    text: str,
    path: str = "<string>",
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int | None = None,
) -> Any:
    """Parse YAML text (reported as coming from `path`); see the module docstring."""
    with _gc_paused():
        root = _compose(text, path)
        if root is None:
            return None
        # An anchor is always written `&name`; without one there are no aliases to keep track of.
        value = _Builder(path, root, max_depth, max_nodes, has_anchors="&" in text).build()
        del root  # free the node tree before the collector runs again
    return value


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The node tree and the values are millions of acyclic objects: left running, the cyclic
    collector walks them again and again and a large file loads about five times slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compose(text: str, path: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, path)]) from None
    except (yaml.reader.ReaderError, UnicodeEncodeError):
        raise ConfigError([_bad_character(text, path)]) from None
    except RecursionError:  # the pure-Python composer recurses once per level of nesting
        raise ConfigError([Problem(path, 1, 1, TOO_DEEP_TO_PARSE)]) from None


def _syntax_problem(exc: yaml.MarkedYAMLError, path: str) -> Problem:
    mark = _yaml_mark(exc.problem_mark or exc.context_mark)
    context = _yaml_mark(exc.context_mark)
    if exc.problem == "exceeded maximum nesting depth":  # libyaml stops at 1,000 levels
        message = TOO_DEEP_TO_PARSE
    elif exc.context == "expected a single document in the stream":
        message = "a second YAML document starts here; a schedule file holds exactly one"
    elif exc.context and exc.context.startswith("found duplicate anchor"):
        message = f"invalid YAML: anchor defined twice (first at line {context.line})"
    elif exc.problem and exc.problem.startswith("found undefined alias"):
        message = "invalid YAML: alias to an anchor not defined above it"
    else:
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            message += f" ({exc.context} at line {context.line}, column {context.column})"
    return Problem(path, mark.line, mark.column, message)


# What YAML allows in a stream (its c-printable set); libyaml and PyYAML refuse anything else.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _bad_character(text: str, path: str) -> Problem:
    found = _NOT_PRINTABLE.search(text)
    if found is None:  # not expected: the parsers refuse only these characters
        return Problem(path, 1, 1, "invalid YAML: a character that YAML does not allow")
    at = found.start()
    line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    message = f"invalid YAML: character U+{ord(found.group()):04X} is not allowed in YAML text"
    return Problem(path, line, column, message)


def _yaml_mark(raw: yaml.Mark | None) -> Mark:
    return FILE_START if raw is None else Mark(raw.line + 1, raw.column + 1)


TOO_DEEP_TO_PARSE = "mappings and lists nested too deeply to parse; refusing to load it"


def _too_deep(max_depth: int) -> str:
    return f"mappings and lists nested more than {max_depth} levels deep; refusing to load it"


class _Builder:
    """Builds the values of one document's node tree.

    Each collection is remembered by identity once built; meeting it again means an alias, whose
    value is shared rather than copied and whose size counts again towards the node cap. Building
    recurses once per level of nesting, checked against max_depth before going deeper.
    """

    def __init__(
        self, path: str, root: Node, max_depth: int, max_nodes: int | None, has_anchors: bool
    ) -> None:
        self.path = path
        self.root = root
        self.has_anchors = has_anchors
        self.max_depth = max_depth
        # Without an explicit cap the floor applies until aliases cross it; only then is the
        # document's own size counted, so ordinary files never pay for that.
        self.max_nodes = MIN_MAX_NODES if max_nodes is None else max_nodes
        self.cap_is_explicit = self.cap_is_final = max_nodes is not None
        self.nodes = 1  # nodes visited: an alias's nodes count once per expansion
        self.deepest = 0  # the deepest level reached inside the collection being built
        self.built: dict[int, tuple[Any, int, int] | None] = {}  # id -> value, nodes, height
        self.problems: list[Problem] = []

    def build(self) -> Any:
        try:
            value = self.value(self.root, 1)
        except RecursionError:  # only when max_depth is set above what Python can recurse
            self.fail(self.root, TOO_DEEP_TO_PARSE)
        if self.cap_is_explicit and self.nodes > self.max_nodes:
            self.fail(self.root, f"more than {self.max_nodes} nodes; refusing to load it")
        if self.problems:
            raise ConfigError(self.problems)
        return value

    def problem(self, node: Node, message: str) -> None:
        mark = _yaml_mark(node.start_mark)
        self.problems.append(Problem(self.path, mark.line, mark.column, message))

    def fail(self, node: Node, message: str) -> NoReturn:
        self.problem(node, message)
        raise ConfigError(self.problems)

    def value(self, node: Node, depth: int) -> Any:
        """The value of any node at nesting level `depth` (the top collection is level 1)."""
        if node.__class__ is not ScalarNode:
            return self.collection(node, depth)
        text: str = node.value
        if node.tag is PLAIN_TAG:
            value = _SPECIAL_PLAIN.get(text, text)
            if value is text and text[0] in _NUMBER_START:
                return self.number(node)
            return value
        if node.tag is STR_TAG:
            return text
        try:
            return _tagged_scalar(node.tag, text)
        except ValueError as exc:
            self.problem(node, str(exc))
            return None

    def number(self, node: Node) -> int | float | str:
        try:
            return _number(node.value)
        except ValueError as exc:  # more digits than int() takes
            self.problem(node, f"cannot read the number: {exc}")
            return 0

    def collection(self, node: Node, depth: int) -> Any:
        if self.has_anchors and id(node) in self.built:
            return self.alias(node, depth)
        if depth > self.max_depth:
            self.fail(node, _too_deep(self.max_depth))
        if node.tag is not MAP_TAG and node.tag is not SEQ_TAG and not self.tag_fits(node):
            return None
        if self.has_anchors:
            return self.remembered(node, depth)
        if node.__class__ is MappingNode:
            return self.mapping(node, depth)
        return self.sequence(node, depth)

    def remembered(self, node: Node, depth: int) -> Any:
        """Build a collection that an alias may meet again, noting its size and height."""
        key = id(node)
        self.built[key] = None  # in progress: meeting it again inside is a recursive alias
        nodes_before, deepest_outside = self.nodes, self.deepest
        self.deepest = depth
        if node.__class__ is MappingNode:
            value: Any = self.mapping(node, depth)
        else:
            value = self.sequence(node, depth)
        self.built[key] = (value, self.nodes - nodes_before + 1, self.deepest - depth + 1)
        self.deepest = max(self.deepest, deepest_outside)
        return value

    def tag_fits(self, node: Node) -> bool:
        """Whether an explicitly tagged collection carries its own kind's tag; report it if not."""
        tag = node.tag
        if tag == (MAP_TAG if node.__class__ is MappingNode else SEQ_TAG):
            return True
        if tag in _STANDARD_TAGS:
            kind = "mapping" if node.__class__ is MappingNode else "list"
            self.problem(node, f"{_short_tag(tag)} cannot tag a {kind}")
        else:
            self.problem(node, _unsupported_tag(tag))
        return False

    def alias(self, node: Node, depth: int) -> Any:
        built = self.built[id(node)]
        if built is None:
            self.fail(node, "an alias refers to the mapping or list that contains it")
        value, nodes, height = built
        self.nodes += nodes - 1  # the alias itself was counted by its parent
        if self.nodes > self.max_nodes:
            self.over_node_cap(node)
        if depth + height - 1 > self.max_depth:
            self.fail(node, _too_deep(self.max_depth) + " (through an alias)")
        self.deepest = max(self.deepest, depth + height - 1)
        return value

    def over_node_cap(self, node: Node) -> None:
        if not self.cap_is_final:
            self.cap_is_final = True
            self.max_nodes = max(self.max_nodes, NODES_PER_DISTINCT_NODE * _count_nodes(self.root))
            if self.nodes <= self.max_nodes:
                return
        self.fail(
            node,
            f'alias expansion exceeds {self.max_nodes} nodes (a "billion laughs" document?); '
            "refusing to load it",
        )

    def mapping(self, node: Node, depth: int) -> YamlMap:
        result = YamlMap()
        positions = result._positions
        mark = node.start_mark
        result._start = mark.line << 32 | mark.column
        merge: tuple[Node, Node] | None = None
        for key_node, value_node in node.value:
            tag = key_node.tag
            if key_node.__class__ is ScalarNode and (tag is PLAIN_TAG or tag is STR_TAG):
                key: str = key_node.value
                if key == "<<" and tag is PLAIN_TAG:  # a merge key; a quoted '<<' is just text
                    if merge is None:
                        merge = (key_node, value_node)
                    else:
                        self.duplicate(key_node, merge[0].start_mark.line + 1)
                    continue
            elif (odd_key := self.odd_key(key_node)) is not None:
                key = odd_key
            else:
                continue
            if key in positions:
                self.duplicate(key_node, _mark_at(positions[key] >> 64).line)
                continue
            # The commonest value, an untagged plain scalar, inline: it is most of the work.
            if value_node.__class__ is ScalarNode and value_node.tag is PLAIN_TAG:
                text: str = value_node.value
                value = _SPECIAL_PLAIN.get(text, text)
                if value is text and text[0] in _NUMBER_START:
                    value = self.number(value_node)
            elif value_node.__class__ is ScalarNode:
                value = self.value(value_node, depth + 1)
            else:
                value = self.collection(value_node, depth + 1)
            result[key] = value
            at, mark = key_node.start_mark, value_node.start_mark
            positions[key] = at.line << 96 | at.column << 64 | mark.line << 32 | mark.column
        self.nodes += 2 * len(node.value)
        if merge is not None:
            self.merge(result, merge[1], depth)
        return result

    def duplicate(self, node: Node, first_line: int) -> None:
        self.problem(node, f"duplicate key {node.value!r} (first at line {first_line})")

    def odd_key(self, node: Node) -> str | None:
        """The text of a key that is not an untagged scalar, or None once reported."""
        if node.__class__ is not ScalarNode:
            kind = "mapping" if node.__class__ is MappingNode else "list"
            self.problem(node, f"a {kind} cannot be a key; keys are strings")
            return None
        if node.tag not in _SCALAR_TAGS:
            self.problem(node, _unsupported_tag(node.tag))
            return None
        text: str = node.value
        return text

    def merge(self, result: YamlMap, merged: Node, depth: int) -> None:
        """Apply `<<: *base` or `<<: [*a, *b]`: keys already present win, then earlier sources."""
        sources = [merged]
        if merged.__class__ is SequenceNode:
            if merged.tag is not SEQ_TAG and not self.tag_fits(merged):
                return
            sources = merged.value
            self.nodes += len(sources)
        positions = result._positions
        for node in sources:
            if node.__class__ is not MappingNode:
                kind = "list" if node.__class__ is SequenceNode else "scalar"
                self.problem(node, f"'<<' merges mappings, and this is a {kind}")
                continue
            source = self.collection(node, depth)  # its items land at this level
            if source is None:  # a bad tag, reported
                continue
            for key, value in source.items():
                if key not in positions:
                    result[key] = value
                    positions[key] = source._positions[key]

    def sequence(self, node: Node, depth: int) -> YamlList:
        result = YamlList()
        positions = result._positions
        mark = node.start_mark
        result._start = mark.line << 32 | mark.column
        for item in node.value:
            result.append(self.value(item, depth + 1))
            mark = item.start_mark
            positions.append(mark.line << 32 | mark.column)
        self.nodes += len(node.value)
        return result


def _count_nodes(root: Node) -> int:
    """The document's size: each collection once however often it is aliased, each alias one."""
    seen: set[int] = set()
    stack = [root]
    count = 0
    while stack:
        node = stack.pop()
        count += 1
        if node.__class__ is ScalarNode or id(node) in seen:
            continue
        seen.add(id(node))
        if node.__class__ is MappingNode:
            for pair in node.value:
                stack.extend(pair)
        else:
            stack.extend(node.value)
    return count
