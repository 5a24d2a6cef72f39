"""What holds for every console page, whoever writes it: the API routes it calls exist, no page
shows without a session unless reads are public, and every answer carries the CSP. The pages
are found in the app's URL map, so a page added later is checked too."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.parse import quote

from flask import Flask

from tests.console.conftest import WRITER, Console

CONSOLE = Path(__file__).resolve().parents[2] / "beatd" / "console"
CALLS = {"get", "send", "call"}  # ApiCaller's methods; the route name is the first argument
OPEN = {"ui.static", "ui.signin"}


def module_constants(tree: ast.Module) -> dict[str, str]:
    """A module's top-level text constants (`OVERVIEW = "overview"`, `A, B = "a", "b"`)."""
    found: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=False))
            for name, value in pairs:
                constant = isinstance(value, ast.Constant) and isinstance(value.value, str)
                if isinstance(name, ast.Name) and constant:
                    found[name.id] = value.value
    return found


def route_names_used() -> dict[str, str]:
    """Every route name a console module passes to an ApiCaller method (as text, or as a
    module constant), and where."""
    used: dict[str, str] = {}
    for path in sorted(CONSOLE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = module_constants(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            caller = node.func.value
            on_api = isinstance(caller, ast.Call) and getattr(caller.func, "id", "") == "api"
            named_api = isinstance(caller, ast.Name) and caller.id in ("api", "caller")
            if node.func.attr not in CALLS or not (on_api or named_api):
                continue
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                used[first.value] = f"{path.name}:{node.lineno}"
            elif isinstance(first, ast.Name) and first.id in constants:
                used[constants[first.id]] = f"{path.name}:{node.lineno}"
    return used


def test_every_route_the_console_calls_is_in_the_openapi_document(console: Console) -> None:
    used = route_names_used()
    assert "overview" in used  # the scan finds the overview's call
    document = console.get(
        "/v1/openapi.json", headers={"Authorization": f"Bearer {WRITER.token}"}
    ).json
    assert document is not None
    operations = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert {name: where for name, where in used.items() if name not in operations} == {}


def console_pages(app: Flask) -> list[str]:
    """A path of every GET page of the console, path parameters filled in."""
    paths = []
    for rule in app.url_map.iter_rules():
        page = rule.endpoint.startswith("ui.") and rule.endpoint not in OPEN
        if page and "GET" in (rule.methods or set()):
            paths.append(re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", "nightly", rule.rule))
    return sorted(paths)


def test_no_page_shows_without_a_session(console: Console) -> None:
    pages = console_pages(console.app)
    assert "/ui/" in pages
    for path in pages:
        answer = console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["Location"] == f"/ui/signin?next={quote(path, safe='/')}"


def test_with_public_reads_every_page_shows_without_a_session(public_console: Console) -> None:
    for path in console_pages(public_console.app):
        answer = public_console.get(path)
        assert answer.status_code == 200, path
        assert "Sign in</a>" in answer.text, path


def test_every_page_signed_in_has_the_csp(console: Console) -> None:
    console.sign_in(WRITER)
    for path in console_pages(console.app):
        answer = console.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["Content-Security-Policy"] == "default-src 'self'", path
        assert answer.headers["Cache-Control"] == "no-store", path
