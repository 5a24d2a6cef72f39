"""The HTTP API against its own OpenAPI document: schemathesis generates requests from the
document (a bounded number per operation) and checks each answer's status, content type and
body against it, through a real server on loopback. The document served is the one checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from beatd.backends import open_backend
from beatd.http import all_routes
from beatd.http.context import ApiContext
from beatd.nodes import NodeRecord, NodeRole
from tests.test_history_cli import SCHEDULES
from tests.test_http import WRITER, Api, seed, start

EXAMPLES = 25  # per operation: enough to reach each parameter's edges, bounded for CI
# Operations whose valid input depends on more than its shape (a pause's `until` must lie ahead;
# a backfill's range must end before the entry's horizon; an entry's definition is checked as
# `beatd check` checks it: a cron expression's grammar, an IANA zone, a jitter shorter than the
# period, an `at` in the future): schema-valid requests may be refused (422, with the errors the
# document describes, which the other checks still compare), so the check that every
# schema-valid request is accepted does not apply to them.
BEYOND_THE_SCHEMA = {
    "POST /v1/pause",
    "POST /v1/entries/{name}/pause",
    "POST /v1/entries/{name}/backfill",
    "POST /v1/entries",
    "POST /v1/entries/batch",
    "PUT /v1/entries/{name}",
}


def operations() -> list[str]:
    return [f"{route.method} {route.path}" for route in all_routes(ApiContext(_none, _none))]


def _none() -> Any:
    return None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Api]:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    api = start(tmp_path, f"sqlite:///{tmp_path / 'beatd.db'}", folder)
    seed(api.broker)
    backend = open_backend(api.broker)
    backend.write_node(NodeRecord("a", NodeRole.STANDBY, "1", "", "2025b", "system", None), 600)
    backend.close()
    yield api
    api.server.stop()


@pytest.mark.parametrize("label", operations())
def test_every_answer_matches_the_openapi_document(label: str, served: Api) -> None:
    status, _, document = served.ask("/v1/openapi.json", WRITER.token)
    assert status == 200
    method, path = label.split(" ", 1)
    document["servers"] = [{"url": served.base}]  # where to send (schemathesis 4.0 asks)
    operation = schemathesis.openapi.from_dict(document)[path][method]
    headers = {"Authorization": f"Bearer {WRITER.token}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(base_url=served.base, headers=headers, excluded_checks=excluded)

    excluded = [positive_data_acceptance] if label in BEYOND_THE_SCHEMA else []

    answers_as_documented()
