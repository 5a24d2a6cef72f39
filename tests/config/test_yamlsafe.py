"""The hardened YAML reader: 1.2 scalars, refused tags, duplicate keys, merges, limits, marks."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from beatd.config import yamlsafe
from beatd.config.yamlsafe import Mark, YamlList, YamlMap, load_yaml, loads_yaml
from beatd.errors import ConfigError

QUOTE_HINT = (
    "a value starting with * is read as an alias; if it is text, such as a cron expression, "
    'quote it: cron: "*/15 * * * *"'
)
LOADERS = [
    pytest.param(
        getattr(yamlsafe, "LibYamlParser", None),
        id="libyaml",
        marks=pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml"),
    ),
    pytest.param(yamlsafe.PurePythonParser, id="pure_python"),
]


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with each of PyYAML's composers; they must agree."""
    monkeypatch.setattr(yamlsafe, "PARSER", request.param)


@pytest.fixture
def pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsafe, "PARSER", yamlsafe.PurePythonParser)


@pytest.fixture
def libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    monkeypatch.setattr(yamlsafe, "PARSER", yamlsafe.LibYamlParser)


def problems(text: str, **limits: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads_yaml(text, "s.yaml", **limits)
    return [str(p) for p in caught.value.problems]


def file_problems(path: Path, **limits: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_yaml(path, **limits)
    return [str(p) for p in caught.value.problems]


# --- scalars: the YAML 1.2 core schema -------------------------------------------------------

SCALARS = [
    pytest.param("12:30", "12:30", id="time_stays_string"),
    pytest.param("190:20:30", "190:20:30", id="sexagesimal_stays_string"),
    pytest.param("NO", "NO", id="no_stays_string"),
    pytest.param("yes", "yes", id="yes_stays_string"),
    pytest.param("on", "on", id="on_stays_string"),
    pytest.param("Off", "Off", id="off_stays_string"),
    pytest.param("y", "y", id="y_stays_string"),
    pytest.param("true", True, id="true"),
    pytest.param("True", True, id="true_capitalised"),
    pytest.param("TRUE", True, id="true_upper"),
    pytest.param("false", False, id="false"),
    pytest.param("False", False, id="false_capitalised"),
    pytest.param("FALSE", False, id="false_upper"),
    pytest.param("tRUE", "tRUE", id="mixed_case_true_stays_string"),
    pytest.param("null", None, id="null"),
    pytest.param("Null", None, id="null_capitalised"),
    pytest.param("NULL", None, id="null_upper"),
    pytest.param("~", None, id="tilde"),
    pytest.param("", None, id="empty"),
    pytest.param("42", 42, id="decimal"),
    pytest.param("-7", -7, id="negative"),
    pytest.param("+5", 5, id="plus_sign"),
    pytest.param("010", 10, id="leading_zero_is_decimal"),
    pytest.param("0o17", 15, id="octal"),
    pytest.param("0x1F", 31, id="hex"),
    pytest.param("0o18", "0o18", id="bad_octal_stays_string"),
    pytest.param("0b101", "0b101", id="binary_stays_string"),
    pytest.param("1_000", "1_000", id="underscore_stays_string"),
    pytest.param("1.5", 1.5, id="float"),
    pytest.param("-2.5e-3", -0.0025, id="float_exponent"),
    pytest.param("1E3", 1000.0, id="exponent_without_point"),
    pytest.param(".5", 0.5, id="float_leading_point"),
    pytest.param("3.", 3.0, id="float_trailing_point"),
    pytest.param(".inf", math.inf, id="infinity"),
    pytest.param("-.Inf", -math.inf, id="negative_infinity"),
    pytest.param("+.INF", math.inf, id="plus_infinity_upper"),
    pytest.param("1.2.3", "1.2.3", id="version_stays_string"),
    pytest.param("2026-03-29", "2026-03-29", id="date_stays_string"),
    pytest.param("2026-03-29T01:30:00Z", "2026-03-29T01:30:00Z", id="timestamp_stays_string"),
    pytest.param("30s", "30s", id="duration_stays_string"),
    pytest.param("0 8 * * *", "0 8 * * *", id="cron_stays_string"),
    pytest.param("'true'", "true", id="single_quoted_true_is_string"),
    pytest.param('"42"', "42", id="double_quoted_number_is_string"),
    pytest.param("''", "", id="quoted_empty_is_string"),
    pytest.param("'~'", "~", id="quoted_tilde_is_string"),
    pytest.param("|\n  12\n", "12\n", id="literal_block_is_string"),
    pytest.param("!!str 12", "12", id="str_tag"),
    pytest.param("!!int '0x1F'", 31, id="int_tag_on_quoted"),
    pytest.param("!!float 1", 1.0, id="float_tag_on_int"),
    pytest.param("!!bool 'false'", False, id="bool_tag"),
    pytest.param("!!null ''", None, id="null_tag"),
]


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(("text", "expected"), SCALARS)
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: object) -> None:
    value = loads_yaml(f"v: {text}")["v"]
    assert type(value) is type(expected)
    assert value == expected


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN", "!!float .nan"])
def test_nan(text: str) -> None:
    assert math.isnan(loads_yaml(f"v: {text}")["v"])


def test_a_document_that_is_one_scalar() -> None:
    assert loads_yaml("12:30") == "12:30"
    assert loads_yaml("7") == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("!!int abc", "s.yaml:1:4: !!int 'abc' is not a valid int", id="int"),
        pytest.param("!!int 1.5", "s.yaml:1:4: !!int '1.5' is not a valid int", id="int_float"),
        pytest.param("!!bool yes", "s.yaml:1:4: !!bool 'yes' is not a valid bool", id="bool"),
        pytest.param("!!null 0", "s.yaml:1:4: !!null '0' is not a valid null", id="null"),
        pytest.param("!!float x", "s.yaml:1:4: !!float 'x' is not a valid float", id="float"),
        pytest.param("!!map x", "s.yaml:1:4: !!map cannot tag a scalar", id="map_on_scalar"),
        pytest.param("!!seq {a: 1}", "s.yaml:1:4: !!seq cannot tag a mapping", id="seq_on_map"),
        pytest.param("!!map [1]", "s.yaml:1:4: !!map cannot tag a list", id="map_on_list"),
    ],
)
def test_a_standard_tag_that_does_not_fit_is_refused(text: str, expected: str) -> None:
    assert problems(f"v: {text}") == [expected]


PLAIN_DATA_ONLY = (
    "schedule files hold plain data only (strings, numbers, booleans, null, lists and "
    "mappings); remove the tag"
)


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        pytest.param(
            "!!python/object/apply:os.system ['echo hi']",
            "!!python/object/apply:os.system",
            id="python_apply",
        ),
        pytest.param(
            "!!python/object:datetime.date {year: 2026}",
            "!!python/object:datetime.date",
            id="python_object",
        ),
        pytest.param("!!python/name:os.system", "!!python/name:os.system", id="python_name"),
        pytest.param("!!binary aGk=", "!!binary", id="binary"),
        pytest.param("!!timestamp 2026-03-29", "!!timestamp", id="timestamp"),
        pytest.param("!!set {a: null}", "!!set", id="set"),
        pytest.param("!!omap [a: 1]", "!!omap", id="omap"),
        pytest.param("!!merge <<", "!!merge", id="merge"),
        pytest.param("!local thing", "!local", id="local_tag"),
        pytest.param("!<tag:example.com,2026:x> 1", "tag:example.com,2026:x", id="verbatim_tag"),
    ],
)
def test_other_tags_are_refused_by_name(text: str, tag: str) -> None:
    assert problems(f"v: {text}") == [f"s.yaml:1:4: unsupported tag {tag}: {PLAIN_DATA_ONLY}"]


def test_a_python_tag_is_refused_on_a_key_too() -> None:
    assert problems("!!python/name:os.system x: 1") == [
        f"s.yaml:1:1: unsupported tag !!python/name:os.system: {PLAIN_DATA_ONLY}"
    ]


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("loader")
def test_keys_are_always_their_text() -> None:
    text = "1: a\ntrue: b\nnull: c\n~: d\n1.50: e\n'x': f\n!!int 0x10: g\n12:30: h\n"
    assert loads_yaml(text) == {
        "1": "a",
        "true": "b",
        "null": "c",
        "~": "d",
        "1.50": "e",
        "x": "f",
        "0x10": "g",
        "12:30": "h",
    }


def test_a_mapping_or_list_as_key_is_refused() -> None:
    assert problems("? [a, b]\n: 1\n? {c: d}\n: 2\n") == [
        "s.yaml:1:3: a list cannot be a key; keys are strings",
        "s.yaml:3:3: a mapping cannot be a key; keys are strings",
    ]


def test_duplicate_keys_name_both_lines() -> None:
    text = """\
entries:
  nightly-report:
    task: reports.nightly
    cron: "0 8 * * *"
    task: reports.weekly
  nightly-report:
    task: x
"""
    assert problems(text) == [
        "s.yaml:5:5: duplicate key 'task' (first at line 3)",
        "s.yaml:6:3: duplicate key 'nightly-report' (first at line 2)",
    ]


def test_problems_are_collected_together() -> None:
    text = "a: 1\nb: !!python/name:os.system\nc: {x: 1, x: 2}\na: 3\n"
    assert problems(text) == [
        f"s.yaml:2:4: unsupported tag !!python/name:os.system: {PLAIN_DATA_ONLY}",
        "s.yaml:3:11: duplicate key 'x' (first at line 3)",
        "s.yaml:4:1: duplicate key 'a' (first at line 1)",
    ]


def test_keys_with_the_same_text_are_duplicates() -> None:
    assert problems("1: a\n'1': b\n") == ["s.yaml:2:1: duplicate key '1' (first at line 1)"]


def test_duplicate_keys_in_a_flow_mapping() -> None:
    assert problems("v: {a: 1, b: 2, a: 3}") == ["s.yaml:1:17: duplicate key 'a' (first at line 1)"]


# --- merge keys and aliases ------------------------------------------------------------------

MERGES = """\
base: &base
  queue: reports
  timezone: UTC
  headers: {team: data}
other: &other
  queue: other
  priority: 5
entries:
  a:
    timezone: Europe/Berlin
    <<: *base
    task: x
  b:
    <<: [*other, *base]
  c:
    <<: {jitter: 30s}
    '<<': literal
"""


@pytest.mark.usefixtures("loader")
def test_merge_keys_fill_in_missing_keys() -> None:
    entries = loads_yaml(MERGES)["entries"]
    assert entries["a"] == {
        "timezone": "Europe/Berlin",
        "task": "x",
        "queue": "reports",
        "headers": {"team": "data"},
    }
    assert entries["b"] == {
        "queue": "other",
        "priority": 5,
        "timezone": "UTC",
        "headers": {"team": "data"},
    }
    assert entries["c"] == {"jitter": "30s", "<<": "literal"}


@pytest.mark.usefixtures("loader")
def test_merged_marks_point_at_the_anchored_source() -> None:
    a = loads_yaml(MERGES)["entries"]["a"]
    assert a.key_marks == {
        "timezone": Mark(10, 5),
        "task": Mark(12, 5),
        "queue": Mark(2, 3),
        "headers": Mark(4, 3),
    }
    assert a.value_marks["queue"] == Mark(2, 10)
    assert a.value_marks["timezone"] == Mark(10, 15)


def test_aliases_share_the_value() -> None:
    document = loads_yaml("a: &x {k: [1, 2]}\nb: *x\nc: [*x, *x]\n")
    assert document["b"] is document["a"]
    assert document["c"][1] is document["a"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "a:\n  <<: 1\n", "s.yaml:2:7: '<<' merges mappings, and this is a scalar", id="scalar"
        ),
        pytest.param(
            "x: &x [1]\na:\n  <<: [*x]\n",
            "s.yaml:1:4: '<<' merges mappings, and this is a list",
            id="list_in_list",
        ),
        pytest.param(
            "a:\n  <<: {b: 1}\n  <<: {c: 1}\n",
            "s.yaml:3:3: duplicate key '<<' (first at line 2)",
            id="twice",
        ),
    ],
)
def test_bad_merges_are_refused(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.usefixtures("loader")
def test_an_alias_to_a_list_of_mappings_merges_each() -> None:
    document = loads_yaml("a: &a [{x: 1, y: 1}, {y: 2, z: 2}]\nb:\n  z: 3\n  <<: *a\n")
    assert document["b"] == {"z": 3, "x": 1, "y": 1}
    assert document["b"].key_marks == {"z": Mark(3, 3), "x": Mark(1, 9), "y": Mark(1, 15)}
    assert problems("a: &a [{x: 1}, 2]\nb:\n  <<: *a\n") == [
        "s.yaml:1:16: '<<' merges mappings, and this is a scalar"
    ]


def test_an_anchor_on_the_first_level_too_deep_is_still_defined() -> None:
    assert problems("a: [&b [1]]\nc: *b\n", max_depth=2) == [
        "s.yaml:1:5: mappings and lists nested more than 2 levels deep; refusing to load it"
    ]
    assert problems("a: [&b [1]]\nc: &b 1\n", max_depth=2) == [
        "s.yaml:2:4: invalid YAML: anchor defined twice (first at line 1)"
    ]


def test_an_anchored_merge_list_can_be_aliased() -> None:
    document = loads_yaml("a: &a {x: 1}\nb:\n  <<: &m [*a]\nc: *m\n")
    assert document["b"] == {"x": 1}
    assert document["c"] == [{"x": 1}]
    assert document["c"][0] is document["a"]
    assert problems("a: &a {x: 1}\nb:\n  <<: &m [*a]\nc: &m 1\n") == [
        "s.yaml:4:4: invalid YAML: anchor defined twice (first at line 3)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "a: 1\na: {b: !!set {}}\n",
            "s.yaml:2:1: duplicate key 'a' (first at line 1)",
            id="duplicate_key",
        ),
        pytest.param(
            "? [!!set {}]\n: {c: !!set {}}\n",
            "s.yaml:1:3: a list cannot be a key; keys are strings",
            id="list_key",
        ),
        pytest.param(
            "a: !!seq {b: !!set {}}\n", "s.yaml:1:4: !!seq cannot tag a mapping", id="bad_tag"
        ),
        pytest.param(
            "a:\n  <<: [[!!set {}]]\n",
            "s.yaml:2:8: '<<' merges mappings, and this is a list",
            id="merged_list",
        ),
    ],
)
def test_what_is_dropped_is_not_checked_further(text: str, expected: str) -> None:
    # Nothing of a dropped value is used, so only why it is dropped is reported.
    assert problems(text) == [expected]


def test_a_recursive_alias_is_refused() -> None:
    assert problems("a: &a [1, *a]\n") == [
        "s.yaml:1:4: an alias refers to the mapping or list that contains it"
    ]


@pytest.mark.usefixtures("loader")
def test_an_undefined_alias_is_invalid_yaml() -> None:
    assert problems("a: *b\nb: &b 1\n") == [
        f"s.yaml:1:4: invalid YAML: alias to an anchor not defined above it; {QUOTE_HINT}"
    ]


@pytest.mark.usefixtures("loader")
def test_an_anchor_defined_twice_is_invalid_yaml() -> None:
    assert problems("a: &x 1\nb: &x 2\n") == [
        "s.yaml:2:4: invalid YAML: anchor defined twice (first at line 1)"
    ]


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.usefixtures("loader")
def test_billion_laughs_is_refused_at_once() -> None:
    assert problems(BILLION_LAUGHS) == [
        's.yaml:6:4: alias expansion exceeds 1000000 nodes (a "billion laughs" document?); '
        "refusing to load it"
    ]


def test_the_node_cap_can_be_set() -> None:
    assert problems(BILLION_LAUGHS, max_nodes=100) == [
        's.yaml:2:4: alias expansion exceeds 100 nodes (a "billion laughs" document?); '
        "refusing to load it"
    ]
    # the mapping, its key and value, and three items: six nodes
    assert problems("a: [1, 2, 3]", max_nodes=5) == [
        "s.yaml:1:1: more than 5 nodes; refusing to load it"
    ]
    assert loads_yaml("a: [1, 2, 3]", max_nodes=6) == {"a": [1, 2, 3]}


def _aliased(copies: int) -> str:
    """A 60,000-item list aliased `copies` times: 60,000 × (copies + 1) nodes expanded."""
    return "a: &a [" + "1," * 60_000 + "]\nb: [" + "*a," * copies + "]\n"


def test_the_default_node_cap_grows_with_the_document() -> None:
    # 20 × the ~60,000 distinct nodes allows 1.2 million expanded ones, more than the 1 million
    # floor: 19 aliases (1.2 million nodes) load, 20 (1.26 million) do not.
    assert len(loads_yaml(_aliased(19))["b"]) == 19
    assert problems(_aliased(20)) == [
        's.yaml:1:4: alias expansion exceeds 1200500 nodes (a "billion laughs" document?); '
        "refusing to load it"
    ]


# --- nesting ---------------------------------------------------------------------------------


def test_nesting_up_to_max_depth_loads() -> None:
    assert loads_yaml("a: [[[[]]]]", max_depth=5) == {"a": [[[[]]]]}


def test_nesting_deeper_than_max_depth_names_the_first_too_deep_node() -> None:
    assert problems("a: [[[[[]]]]]", max_depth=5) == [
        "s.yaml:1:8: mappings and lists nested more than 5 levels deep; refusing to load it"
    ]


def test_block_nesting_deeper_than_the_default_limit() -> None:
    text = "".join(f"{'  ' * level}k{level}:\n" for level in range(65)) + "  " * 65 + "x: 1\n"
    assert problems(text) == [
        "s.yaml:65:129: mappings and lists nested more than 64 levels deep; refusing to load it"
    ]


def test_nesting_through_an_alias_counts() -> None:
    text = "a: &a [[1]]\nb: [[*a]]\n"
    assert loads_yaml(text, max_depth=5)["b"] == [[[[1]]]]
    assert problems(text, max_depth=4) == [
        "s.yaml:1:4: mappings and lists nested more than 4 levels deep; refusing to load it "
        "(through an alias)"
    ]


@pytest.mark.usefixtures("pure_python")
def test_absurd_nesting_with_the_pure_python_parser_stops_at_the_limit() -> None:
    # Nothing recurses before the values are built (the pure-Python parser is a state machine),
    # so the depth limit names the first level too deep. Block nesting: PyYAML's pure-Python
    # scanner is quadratic in flow nesting, slow for a test.
    assert problems("- " * 100_000 + "x") == [
        "s.yaml:1:129: mappings and lists nested more than 64 levels deep; refusing to load it"
    ]


@pytest.mark.usefixtures("libyaml")
def test_absurd_nesting_stopped_by_libyaml_is_reported() -> None:
    assert problems("[" * 100_000) == [
        "s.yaml:1:1001: mappings and lists nested too deeply to parse; refusing to load it"
    ]


@pytest.mark.usefixtures("libyaml")
def test_building_values_never_overflows_the_stack() -> None:
    # As deep as libyaml goes, with max_depth set absurdly high: Python's recursion limit stops
    # the building, and is reported like any other absurd nesting.
    text = "[" * 999 + "]" * 999
    assert problems(text, max_depth=100_000) == [
        "s.yaml:1:1: mappings and lists nested too deeply to parse; refusing to load it"
    ]


# --- documents and syntax --------------------------------------------------------------------


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "--- ~\n"])
def test_an_empty_document_is_none(text: str) -> None:
    assert loads_yaml(text) is None


@pytest.mark.usefixtures("loader")
def test_one_explicit_document_loads() -> None:
    assert loads_yaml("---\na: 1\n...\n") == {"a": 1}


@pytest.mark.usefixtures("loader")
def test_several_documents_are_refused() -> None:
    assert problems("a: 1\n---\nb: 2\n") == [
        "s.yaml:2:1: a second YAML document starts here; a schedule file holds exactly one"
    ]
    assert problems("---\na: 1\n---\nb: 2\n") == [
        "s.yaml:3:1: a second YAML document starts here; a schedule file holds exactly one"
    ]


def parser_error(text: str) -> yaml.MarkedYAMLError:
    """The parser's own exception behind the one problem that `text` has: its words (libyaml's
    or PyYAML's) are theirs to change, so tests take them from it."""
    with pytest.raises(ConfigError) as caught:
        loads_yaml(text, "s.yaml")
    error = caught.value.__context__
    assert isinstance(error, yaml.MarkedYAMLError)
    return error


@pytest.mark.usefixtures("loader")
def test_a_syntax_error_is_located() -> None:
    text = "entries:\n  a:\n    task: x: y\n"
    error = parser_error(text)  # the parsers word it differently: "here", "in this context"
    context = ""
    if error.context is not None and error.context_mark is not None:
        at = error.context_mark
        context = f" ({error.context} at line {at.line + 1}, column {at.column + 1})"
    assert problems(text) == [f"s.yaml:3:12: invalid YAML: {error.problem}{context}"]


@pytest.mark.usefixtures("loader")
def test_a_syntax_error_names_its_context() -> None:
    text = "a: 1\nb\nc: 2\n"
    error = parser_error(text)
    assert problems(text) == [
        f"s.yaml:3:1: invalid YAML: {error.problem} ({error.context} at line 2, column 1)"
    ]


@pytest.mark.usefixtures("loader")
def test_a_control_character_is_located() -> None:
    assert problems("a: 1\nb: x\x00y\n") == [
        "s.yaml:2:5: invalid YAML: character U+0000 is not allowed in YAML text"
    ]


# --- files -----------------------------------------------------------------------------------


def test_load_yaml_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("\ufeffentries:\n  a: {task: x}\n", encoding="utf-8")
    document = load_yaml(path)
    assert document == {"entries": {"a": {"task": "x"}}}
    assert document.key_marks["entries"] == Mark(1, 1)


@pytest.mark.usefixtures("loader")
def test_a_file_is_read_as_its_text_is(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("\ufeffcafé: ü\nnext: [1, été]\n", encoding="utf-8")
    document = load_yaml(path)
    assert document == {"café": "ü", "next": [1, "été"]}
    assert document.value_marks == {"café": Mark(1, 7), "next": Mark(2, 7)}
    assert document["next"].item_marks == [Mark(2, 8), Mark(2, 11)]
    path.write_text("a: 1\nb: x\x00y\n", encoding="utf-8")
    assert file_problems(path) == [
        f"{path}:2:5: invalid YAML: character U+0000 is not allowed in YAML text"
    ]


def test_an_empty_file_is_none(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"")
    assert load_yaml(path) is None


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("a: " + "x" * 96 + "\n")
    assert load_yaml(path, max_bytes=100) == {"a": "x" * 96}  # exactly at the limit
    assert file_problems(path, max_bytes=99) == [
        f"{path}:1:1: file is 100 bytes, more than the limit of 99 bytes; refusing to read it "
        "(raise the limit with --max-file-size or BEATD_MAX_FILE_SIZE)"
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    reason = os.strerror(errno.ENOENT)  # the C library's words, not beatd's
    assert file_problems(path) == [f"{path}:1:1: cannot read file: {reason}"]


def test_a_directory(tmp_path: Path) -> None:
    reason = os.strerror(errno.EISDIR)
    assert file_problems(tmp_path) == [f"{tmp_path}:1:1: cannot read file: {reason}"]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    assert file_problems(path) == [
        f"{path}:1:1: not UTF-8 text: byte 0xe9 on line 2 cannot be decoded; save the file as UTF-8"
    ]
    # far into a large file, and a character cut at the end
    path.write_bytes(b"a: |\n" + b"  \xc3\xa9t\xc3\xa9\n" * 30_000 + b"b: caf\xe9\n")
    assert file_problems(path) == [
        f"{path}:1:1: not UTF-8 text: byte 0xe9 on line 30002 cannot be decoded; save the file "
        "as UTF-8"
    ]
    path.write_bytes(b"a: caf\xc3")
    assert file_problems(path) == [
        f"{path}:1:1: not UTF-8 text: byte 0xc3 on line 1 cannot be decoded; save the file as UTF-8"
    ]


# --- marks -----------------------------------------------------------------------------------

NESTED = """\
defaults:
  timezone: Europe/Berlin
entries:
  nightly-report:
    task: reports.nightly
    cron: "0 8 * * *"
    kwargs: {fmt: pdf, pages: [1, 2]}
    args:
      - first
      - {n: 1}
      -
        - deep
"""


@pytest.mark.usefixtures("loader")
def test_marks_of_keys_and_values_in_nested_mappings() -> None:
    document = loads_yaml(NESTED, "s.yaml")
    assert isinstance(document, YamlMap)
    assert document.mark == Mark(1, 1)
    assert document.key_marks == {"defaults": Mark(1, 1), "entries": Mark(3, 1)}
    assert document.value_marks == {"defaults": Mark(2, 3), "entries": Mark(4, 3)}
    entry = document["entries"]["nightly-report"]
    assert entry.mark == Mark(5, 5)
    assert entry.key_marks == {
        "task": Mark(5, 5),
        "cron": Mark(6, 5),
        "kwargs": Mark(7, 5),
        "args": Mark(8, 5),
    }
    assert entry.value_marks == {
        "task": Mark(5, 11),
        "cron": Mark(6, 11),
        "kwargs": Mark(7, 13),
        "args": Mark(9, 7),
    }
    kwargs = entry["kwargs"]
    assert kwargs.mark == Mark(7, 13)
    assert kwargs.key_marks == {"fmt": Mark(7, 14), "pages": Mark(7, 24)}
    assert kwargs.value_marks == {"fmt": Mark(7, 19), "pages": Mark(7, 31)}


@pytest.mark.usefixtures("loader")
def test_marks_of_list_items() -> None:
    entry = loads_yaml(NESTED)["entries"]["nightly-report"]
    args = entry["args"]
    assert isinstance(args, YamlList)
    assert args == ["first", {"n": 1}, ["deep"]]
    assert args.mark == Mark(9, 7)
    assert args.item_marks == [Mark(9, 9), Mark(10, 9), Mark(12, 9)]
    assert args[1].key_marks == {"n": Mark(10, 10)}
    assert args[2].item_marks == [Mark(12, 11)]
    assert entry["kwargs"]["pages"].item_marks == [Mark(7, 32), Mark(7, 35)]


def test_marks_are_the_same_when_aliases_are_tracked() -> None:
    plain = loads_yaml(NESTED)["entries"]["nightly-report"]
    with_ampersand = loads_yaml(NESTED + "note: R&D\n")["entries"]["nightly-report"]
    assert with_ampersand == plain
    assert with_ampersand.key_marks == plain.key_marks
    assert with_ampersand.value_marks == plain.value_marks
    assert with_ampersand["args"].item_marks == plain["args"].item_marks


@pytest.mark.usefixtures("loader")
def test_marks_count_characters_not_bytes() -> None:
    document = loads_yaml("café: ü\nnext: 1\n")
    assert document.value_marks == {"café": Mark(1, 7), "next": Mark(2, 7)}


def test_loaded_values_are_plain_dicts_and_lists() -> None:
    document = loads_yaml(NESTED)
    assert json.loads(json.dumps(document)) == document
    assert dict(document["defaults"]) == {"timezone": "Europe/Berlin"}


def test_a_hand_made_yaml_map_starts_at_the_top() -> None:
    made = YamlMap({"a": 1}, b=2)
    assert made == {"a": 1, "b": 2}
    assert made.mark == Mark(1, 1)
    assert made.key_marks == {}
    assert YamlList([1]).item_marks == []


# --- streaming a section -----------------------------------------------------------------------

STREAMED = """\
defaults: {queue: q}
entries:
  a: {task: x}
  b:
    task: y
  <<: {c: {task: z}, a: {task: ignored}}
imports: [m]
"""


class Sink:
    """Records what the reader hands over, and where it says the items are."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], str, Any, Mark, Mark]] = []

    def __call__(self, document: YamlMap, section: YamlMap, key: str, value: Any) -> None:
        so_far = dict(document)
        self.items.append((so_far, key, value, section.key_mark(key), section.value_mark(key)))


@pytest.mark.usefixtures("loader")
def test_a_streamed_section_hands_over_each_item_as_it_is_read() -> None:
    sink = Sink()
    document = loads_yaml(STREAMED, stream=yamlsafe.Stream("entries", sink))
    assert sink.items == [
        ({"defaults": {"queue": "q"}}, "a", {"task": "x"}, Mark(3, 3), Mark(3, 6)),
        ({"defaults": {"queue": "q"}}, "b", {"task": "y"}, Mark(4, 3), Mark(5, 5)),
    ]
    # what a merge brought in stays, with its marks
    assert document == {
        "defaults": {"queue": "q"},
        "entries": {"c": {"task": "z"}},
        "imports": ["m"],
    }
    assert document["entries"].key_marks == {"c": Mark(6, 8)}
    assert document.key_marks["entries"] == Mark(2, 1)


def test_an_anchored_section_is_not_streamed() -> None:
    sink = Sink()
    text = "entries: &all\n  a: {task: x}\nother: *all\n"
    document = loads_yaml(text, stream=yamlsafe.Stream("entries", sink))
    assert sink.items == []
    assert document["other"] is document["entries"] == {"a": {"task": "x"}}


def test_only_a_top_level_mapping_section_is_streamed() -> None:
    sink = Sink()
    text = "x:\n  entries: {a: 1}\nentries: [a]\n"
    assert loads_yaml(text, stream=yamlsafe.Stream("entries", sink)) == {
        "x": {"entries": {"a": 1}},
        "entries": ["a"],
    }
    assert sink.items == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("entries:\n  a: {x: 1, x: 2}\n  a: !!set {}\n", id="duplicates_and_tags"),
        pytest.param(
            "x: &x [1]\nentries:\n  a:\n    <<: [*x]\n  b:\n    <<: 1\n    <<: {c: 1}\n",
            id="merges",
        ),
        pytest.param(BILLION_LAUGHS.replace("i:", "entries:"), id="billion_laughs"),
    ],
)
def test_streaming_finds_the_same_problems(text: str) -> None:
    def outcome(stream: yamlsafe.Stream | None) -> Any:
        try:
            return loads_yaml(text, "s.yaml", stream=stream)
        except ConfigError as exc:
            return [str(p) for p in exc.problems]

    streamed = outcome(yamlsafe.Stream("entries", Sink()))
    assert isinstance(streamed, list)
    assert streamed == outcome(None)


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: {x: 1, x: 2}\nb: ]\n", id="after_a_duplicate_key"),
        pytest.param("a: &a [1, *a]\nb: ]\n", id="after_a_recursive_alias"),
        pytest.param("a: [[[[[[1]]]]]]\nb: ]\n", id="after_too_deep"),
    ],
)
def test_a_syntax_error_anywhere_is_reported_alone(text: str) -> None:
    assert problems(text, max_depth=5) == problems("a: 1\nb: ]\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "a: &a [1, *a]\nb: *nothing\n",
            f"s.yaml:2:4: invalid YAML: alias to an anchor not defined above it; {QUOTE_HINT}",
            id="undefined_alias",
        ),
        pytest.param(
            "a: &a [1, *a]\nb: &a 2\n",
            "s.yaml:2:4: invalid YAML: anchor defined twice (first at line 1)",
            id="anchor_twice",
        ),
        pytest.param(
            "a: &a [1, *a]\n---\nb: 2\n",
            "s.yaml:2:1: a second YAML document starts here; a schedule file holds exactly one",
            id="second_document",
        ),
    ],
)
def test_a_refused_alias_anchor_or_document_outranks_an_earlier_problem(
    text: str, expected: str
) -> None:
    assert problems(text) == [expected]


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(
    "text",
    ["cron: */15 * * * *\n", "cron: * * * * *\n", "a: {cron: */5 * * * *}\n"],
    ids=["step", "wildcard", "flow"],
)
def test_an_unquoted_cron_expression_gets_the_hint_to_quote_it(text: str) -> None:
    parser = yamlsafe.PARSER(text)  # the parser's own words; beatd adds where, and the hint
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        while not isinstance(parser.get_event(), yaml.StreamEndEvent):
            pass
    error = caught.value
    start = error.context_mark
    at = error.problem_mark
    assert problems(text) == [
        f"s.yaml:{at.line + 1}:{at.column + 1}: invalid YAML: {error.problem} ({error.context} "
        f"at line {start.line + 1}, column {start.column + 1}); {QUOTE_HINT}"
    ]
