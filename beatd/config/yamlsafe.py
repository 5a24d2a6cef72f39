"""A hardened YAML reader that remembers where every key and value came from.

PyYAML parses (libyaml's `CParser` where available) and the values are built from its events
(`yamlbuild`), without PyYAML's node tree or constructors, so that:

- plain scalars follow the YAML 1.2 core schema: `12:30`, `NO` and `on` stay strings, `010` is 10;
- tags other than the standard `!!str !!int !!float !!bool !!null !!map !!seq` are refused;
- a duplicate key is an error naming both lines, and keys are always strings (their text);
- aliases are shared, not copied, and the nodes they expand to are counted against a cap, so a
  "billion laughs" document fails at once instead of when something walks it;
- nesting is limited and building the values is recursive only as deep as that limit;
- one section's items can be handed over as they are read (`Stream`), so a file of 100,000
  entries is never held whole as YAML values: `yamlfile` builds each entry as it comes.

Problems in the YAML text itself (syntax, an undefined alias, an anchor defined twice, a second
document) are reported alone, as the parser finds them; the others are collected and reported
together once the whole document has been read.

Speed: PyYAML's events are most of the cost. A 100,000-entry, 11 MB schedule file takes about
1.1 s of CPU to parse into events and 0.5 s to build; the cyclic garbage collector is paused
meanwhile: left running, it walks the values again and again.
"""

from __future__ import annotations

import codecs
import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from beatd.config.yamlbuild import Builder, Stream
from beatd.config.yamlevents import TOO_DEEP_TO_PARSE
from beatd.config.yamlvalues import QUOTE_HINT, Mark, YamlList, YamlMap, yaml_mark
from beatd.errors import ConfigError, Problem

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "PARSER",
    "Mark",
    "Stream",
    "YamlList",
    "YamlMap",
    "load_yaml",
    "loads_yaml",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64


# --- parsing: PyYAML's parsers, only as far as events -------------------------------------------


class PurePythonParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """The fallback without libyaml: the same events, several times slower."""

    def __init__(self, source: str | bytes) -> None:
        yaml.reader.Reader.__init__(self, source)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


if yaml.__with_libyaml__:
    from yaml._yaml import CParser as LibYamlParser

    PARSER: type[PurePythonParser | LibYamlParser] = LibYamlParser
else:  # pragma: no cover - PyYAML built without libyaml
    PARSER = PurePythonParser


# --- loading -------------------------------------------------------------------------------------


def load_yaml(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int | None = None,
    stream: Stream | None = None,
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
    bad = _not_utf8_at(data)
    if bad is not None:
        line = data.count(b"\n", 0, bad) + 1
        message = (
            f"not UTF-8 text: byte 0x{data[bad]:02x} on line {line} cannot be decoded; "
            "save the file as UTF-8"
        )
        raise ConfigError([Problem(name, 1, 1, message)])
    return _parse(data, name, max_depth, max_nodes, stream)


_PIECE = 64 * 1024


def _not_utf8_at(data: bytes) -> int | None:
    """Where `data` stops being UTF-8 (a BOM allowed), or None. The parser reads the bytes
    themselves, so they are only checked, a piece at a time: a text of the whole file, made and
    dropped, would leave glibc's heap keeping about 5 MB more after a 100,000-entry file."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    view = memoryview(data)
    try:
        for start in range(0, len(data), _PIECE):
            decoder.decode(view[start : start + _PIECE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        try:
            data.decode("utf-8-sig")  # the offset in the whole of it
        except UnicodeDecodeError as exc:
            return exc.start
    return None


def loads_yaml(
    text: str,
    path: str = "<string>",
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int | None = None,
    stream: Stream | None = None,
) -> Any:
    """Parse YAML text (reported as coming from `path`); see the module docstring."""
    return _parse(text, path, max_depth, max_nodes, stream)


def _parse(
    source: str | bytes, path: str, max_depth: int, max_nodes: int | None, stream: Stream | None
) -> Any:
    """`source` is text, or valid UTF-8 (a BOM allowed)."""
    try:
        with _gc_paused():
            return Builder(PARSER, source, path, max_depth, max_nodes, stream).document()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, path)]) from None
    except (yaml.reader.ReaderError, UnicodeEncodeError):
        text = source if isinstance(source, str) else source.decode("utf-8-sig")
        raise ConfigError([_bad_character(text, path)]) from None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The values are many acyclic objects: left running, the cyclic collector walks them again
    and again and a large file loads several times slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _syntax_problem(exc: yaml.MarkedYAMLError, path: str) -> Problem:
    mark = yaml_mark(exc.problem_mark or exc.context_mark)
    context = yaml_mark(exc.context_mark)
    if exc.problem == "exceeded maximum nesting depth":  # libyaml stops at 1,000 levels
        message = TOO_DEEP_TO_PARSE
    else:
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            message += f" ({exc.context} at line {context.line}, column {context.column})"
        if exc.context == "while scanning an alias":  # PyYAML's and libyaml's words alike
            message += f"; {QUOTE_HINT}"
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
