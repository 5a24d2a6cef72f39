"""The shape of the package holds: imports flow one way, parts stay small, `import beatd` is cheap.

Read from the source with `ast`, so a rule is checked on every module, imported or not, and an
import inside a function or under `TYPE_CHECKING` counts as much as one at the top.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "beatd"

# The layers, top to bottom. A module may import its own layer and the layers below it, never
# one above. A name covers the module and, if it is a package, everything in it. A new module
# takes its place here (the test names any that has none).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The console (issue 19) stands on the HTTP API, which serves it at /ui (build_app).
    ("ways in", ("beatd.cli", "beatd.__main__", "beatd.http", "beatd.client", "beatd.console")),
    # What an operator can ask, the same through each way in: the command line and the HTTP API.
    ("operations", ("beatd.operations",)),
    ("assembly", ("beatd.assemble",)),
    (
        "daemons",
        (
            "beatd.scheduler",
            "beatd.following",  # the loop follows the runtime entries (issue 18)
            "beatd.adoption",
            "beatd.staging",  # a new leader adopts in stages, publishing between (issue 18)
            "beatd.entry_feed",  # the runtime entries a node holds (issue 18)
            "beatd.entry_index",  # every entry for the console's entries page (issue 19)
            "beatd.leadership",
            "beatd.node_reports",
            "beatd.publisher",
            "beatd.observers",
            "beatd.retention",
            "beatd.worker",
            "beatd.triage",
            "beatd.settling",
            "beatd.pool",
            "beatd.service",
            "beatd.systemd",
            "beatd.deadlines",
            "beatd.failing",
            "beatd.steering",
            "beatd.holding",
            "beatd.turns",  # the loop goes first: other threads wait for a gap (issue 19)
            "beatd.outage",  # the backend down for the loop: backoff, logged once each way
            "beatd.celery_listener",
            "beatd.amqp_relay",
            "beatd.amqp_relaying",  # when the leader relays (the relay split off: file size)
        ),
    ),
    (
        "parts",
        (
            "beatd.core",
            "beatd.events",  # the loop's events carry the core's decisions
            "beatd.backends",
            "beatd.metrics",
            "beatd.entry_series",
            "beatd.migrate",
            "beatd.dataloss",
        ),
    ),
    (
        "values",
        (
            "beatd",  # the package itself: the names a task module imports
            "beatd.schedules",
            "beatd.config",
            "beatd.message",
            "beatd.celery_protocol",
            "beatd.celery_events",
            "beatd.celery_amqp",
            "beatd.amqp_link",  # one URL reading for config, relay and listener (pika: lazily)
            "beatd.tasks",
            "beatd.clock",
            "beatd.errors",
            "beatd.durations",
            "beatd.state",
            "beatd.runtime_entries",  # runtime entries' values (issue 18)
            "beatd.nodes",  # node records and the timezone database (issue 18)
            "beatd.backoff",
            "beatd.outcomes",
            "beatd.history",
            "beatd.controls",
            "beatd.timetext",
        ),
    ),
)

# Pure parts: what they compute depends on their arguments, never on a server, a file or the
# clock.
PURE = ("beatd.core", "beatd.schedules", "beatd.config", "beatd.message")
IMPURE_LIBRARIES = ("redis", "sqlite3", "prometheus_client", "time")

# Parts of one layer that stay apart: (importer, imported).
APART = (
    ("beatd.http", "beatd.cli"),  # both stand on beatd.operations; the CLI starts the server
    ("beatd.console", "beatd.cli"),  # the console calls the API's routes, never the CLI
    ("beatd.cli", "beatd.console"),  # the CLI starts the API, which brings the console
    ("beatd.console", "beatd.client"),  # in process, not over HTTP
    ("beatd.core", "beatd.backends"),
    ("beatd.backends", "beatd.core"),  # the persisted state type lives below both
)

# Upward imports that load nothing at `import beatd`: the package names `beatd.Client` for type
# checkers (under TYPE_CHECKING) and imports it on first use (`beatd.__getattr__`);
# test_import_beatd_loads_no_config_reader_nor_server_client checks it stays unloaded.
LAZY_EXPORTS = (("beatd", "beatd.client"),)

MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module


def modules() -> Iterator[Module]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield Module(name, path, ast.parse(path.read_text(), str(path)))


THE_PACKAGE = "beatd"  # in LAYERS for its __init__ alone: by prefix it would place every module


def is_within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def layer_of(module: str) -> int | None:
    """The index of the module's layer (0 is the top), by its longest matching name."""
    matches = [
        (len(part), index)
        for index, (_, parts) in enumerate(LAYERS)
        for part in parts
        if module == part or (part != THE_PACKAGE and is_within(module, part))
    ]
    return max(matches)[1] if matches else None


def imported(module: Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module imported, line) of every import in `module`; `from P import M` of a module `M`
    counts as `P.M`."""
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno


def test_every_module_has_a_layer() -> None:
    missing = [m.name for m in modules() if layer_of(m.name) is None]
    assert missing == [], "place these modules in LAYERS"


def test_a_module_nobody_placed_has_no_layer() -> None:
    """A new module is named by test_every_module_has_a_layer, not filed silently as a value
    (the package itself, "beatd", is in the lowest layer and must cover only its __init__)."""
    assert [name for name in ("beatd.api", "beatd.unplaced") if layer_of(name) is not None] == []


def test_imports_flow_one_way() -> None:
    found = list(modules())
    assert layering_problems(found, {m.name for m in found}) == []


def layering_problems(found: list[Module], known: set[str]) -> list[str]:
    wrong = []
    for module in found:
        own = layer_of(module.name)
        for target, line in imported(module, known):
            if not is_within(target, "beatd"):
                continue
            theirs = layer_of(target)
            lazy = (module.name, target) in LAZY_EXPORTS
            if own is not None and theirs is not None and theirs < own and not lazy:
                wrong.append(
                    f"{module.path.name}:{line}: {module.name} ({LAYERS[own][0]}) imports "
                    f"{target} ({LAYERS[theirs][0]}), a layer above it"
                )
            wrong.extend(
                f"{module.path.name}:{line}: {module.name} imports {target}: {a} and {b} stay apart"
                for a, b in APART
                if is_within(module.name, a) and is_within(target, b)
            )
    return wrong


def test_pure_parts_import_no_server_client_and_no_clock() -> None:
    found = list(modules())
    assert impurity_problems(found, {m.name for m in found}) == []


def impurity_problems(found: list[Module], known: set[str]) -> list[str]:
    return [
        f"{module.name} imports {target} (line {line})"
        for module in found
        if any(is_within(module.name, part) for part in PURE)
        for target, line in imported(module, known)
        if target.split(".")[0] in IMPURE_LIBRARIES
    ]


def definitions(module: Module) -> Iterator[tuple[str, ast.AST, int]]:
    """(qualified name, node, lines from its `def`/`class` line to the end of its body) of every
    class and function, nested ones included."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                assert child.end_lineno is not None
                yield name, child, child.end_lineno - child.lineno + 1
                yield from walk(child, name)
            else:
                yield from walk(child, prefix)

    yield from walk(module.tree, module.name)


def test_no_class_over_300_lines_and_no_function_over_60() -> None:
    too_long = []
    for module in modules():
        for name, node, lines in definitions(module):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{name}: {lines} lines (at most {limit})")
    assert too_long == []


def test_the_rules_see_a_wrong_import(tmp_path: Path) -> None:
    """The rules catch what they are for, in a module made up to break them."""
    source = "from beatd.cli import common\nif True:\n    import time\nfrom . import backends\n"
    module = Module("beatd.core", tmp_path / "core.py", ast.parse(source))
    known = {"beatd.cli", "beatd.cli.common", "beatd.backends"}
    assert layering_problems([module], known) == [
        "core.py:1: beatd.core (parts) imports beatd.cli.common (ways in), a layer above it",
        "core.py:4: beatd.core imports beatd.backends: beatd.core and beatd.backends stay apart",
    ]
    assert impurity_problems([module], known) == ["beatd.core imports time (line 3)"]


def test_import_beatd_loads_no_config_reader_nor_server_client() -> None:
    """Every task module and every worker child imports beatd: that must stay cheap."""
    script = "import sys, json, beatd; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
    )
    heavy = [
        name
        for name in loaded
        if is_within(name, "beatd.config")
        or is_within(name, "beatd.client")
        or name.split(".")[0] in ("yaml", "redis", "prometheus_client", "click", "pika")
    ]
    assert heavy == []
    assert "beatd.tasks" in loaded  # the check looked at a real import of beatd
