"""The OpenAPI 3.1 document of the HTTP API, written from the route declarations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from beatd.http.routes import ERROR_SCHEMA, JSON, Param, Route
from beatd.http.tokens import Scope

ERRORS_REF = {"$ref": "#/components/schemas/Errors"}
COMMON_ERRORS = {
    401: "No token, or one not in the token file.",
    421: "The Host header names a host this server does not answer to.",
}


def openapi_document(routes: Sequence[Route], version: str) -> JSON:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "beatd",
            "version": version,
            "description": "The HTTP API of beatd, a periodic scheduler daemon (docs/api.md).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Errors": ERROR_SCHEMA},
        },
        "security": [{"bearer": []}],
    }


def operation(route: Route) -> JSON:
    spec: JSON = {
        "operationId": route.name,
        "summary": route.summary,
        "responses": responses(route),
    }
    if route.params:
        spec["parameters"] = [parameter(p) for p in route.params]
    if route.body is not None:
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    return spec


def parameter(param: Param) -> JSON:
    schema = {"type": "array", "items": param.schema} if param.repeated else param.schema
    spec: JSON = {
        "name": param.name,
        "in": param.where,
        "description": param.description,
        "required": param.required or param.where == "path",
        "schema": schema,
    }
    if param.repeated:
        spec["style"], spec["explode"] = "form", True
    return spec


def responses(route: Route) -> JSON:
    answers: JSON = {
        str(status): {"description": description}
        | ({} if schema is None else {"content": {"application/json": {"schema": schema}}})
        for status, (description, schema) in route.replies.items()
    }
    errors = dict(COMMON_ERRORS)
    if route.scope is Scope.WRITE:
        errors[403] = "The token may only read."
    if route.params or route.body is not None:
        errors[422] = "A parameter or the body is not valid: each error names its field."
    if route.body is not None:
        errors[413] = "The body is larger than 1 MiB."
    for status, description in errors.items():
        answers.setdefault(
            str(status),
            {"description": description, "content": {"application/json": {"schema": ERRORS_REF}}},
        )
    return answers
