"""The HTTP API (docs/api.md): every `beatd run` serves it at `--api-addr` for tools and
people, with the command line's behaviour and words (both stand on `beatd.operations`)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from flask import Flask

from beatd.http.app import Access, create_app
from beatd.http.audit_routes import audit_routes
from beatd.http.console_routes import console_routes
from beatd.http.context import ApiContext
from beatd.http.controls_routes import control_routes
from beatd.http.dead_letter_routes import dead_letter_routes
from beatd.http.entries_routes import entry_routes
from beatd.http.history_routes import history_routes
from beatd.http.node_routes import node_routes
from beatd.http.openapi import openapi_document
from beatd.http.routes import Reply, Route
from beatd.http.status_routes import status_routes
from beatd.http.tokens import Scope

OPENAPI_SCHEMA = {"type": "object", "required": ["openapi", "paths"]}


def all_routes(context: ApiContext) -> list[Route]:
    """Every operation of the API, the OpenAPI document's own included."""
    routes = [
        *status_routes(context),
        *node_routes(context),
        *history_routes(context),
        *audit_routes(context),
        *dead_letter_routes(context),
        *control_routes(context, context.history_max_age),
        *entry_routes(context),
        *console_routes(context),
    ]
    document = openapi_document(
        [*routes, openapi_route(lambda _req: Reply(200, {}))], beatd_version()
    )

    def openapi(_req: Any) -> Reply:
        return Reply(200, document)

    return [*routes, openapi_route(openapi)]


def openapi_route(handler: Any) -> Route:
    return Route(
        "GET",
        "/v1/openapi.json",
        "openapi",
        "This API's OpenAPI 3.1 document.",
        Scope.READ,
        handler,
        replies={200: ("The OpenAPI document.", OPENAPI_SCHEMA)},
    )


def build_app(context: ApiContext, access: Access) -> Flask:
    """The API and, at /ui, the console (beatd.console) that stands on it."""
    from beatd.console import register_console  # the console imports this package's modules

    app = create_app(all_routes(context), access)
    register_console(app, context, access)
    return app


def beatd_version() -> str:
    return version("beatd")
