"""What beatd imports is what pyproject.toml declares: a module from another distribution,
imported anywhere in beatd/, is a runtime dependency or comes with a named extra (a merge once
dropped Flask from the dependencies while the locks still carried it, so only a fresh
`pip install -e .` failed)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> the distribution that provides it, where they differ or one brings another
PROVIDED_BY = {
    "yaml": "pyyaml",
    "prometheus_client": "prometheus-client",
    "psycopg_pool": "psycopg-pool",
    "werkzeug": "flask",  # Flask's own; beatd uses its HTTP exceptions with Flask
}


def third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "beatd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "beatd"}


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}

    extras = project["optional-dependencies"]
    optional = names(extras["postgresql"]) | names(extras["amqp"])
    return names(project["dependencies"]), optional


def test_every_distribution_beatd_imports_is_declared() -> None:
    runtime, optional = declared()
    needed = {PROVIDED_BY.get(name, name).lower() for name in third_party_imports()}
    assert needed - runtime - optional == set()
    assert {"flask", "waitress", "click", "redis"} <= runtime
    assert {"psycopg", "pika"} <= optional
