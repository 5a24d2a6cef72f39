"""GET /ui/: the scheduler at a glance (`GET /v1/overview`): the leader and its epoch, the
nodes with their configuration fingerprint, drift and timezone database, the queues, the dead
letters, the last hour's late, missed and failed runs, and the entries overdue or failing; and
the paused entries (`GET /v1/entry-index?paused=true`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from beatd.console.api_caller import ApiFailure, api
from beatd.console.pages import Message, render
from beatd.console.replies import now, shows_refusals
from beatd.console.views import Moment, parse_stamp, seconds_text

OVERVIEW, ENTRY_INDEX = "overview", "entry_index"  # the API's operationIds
PAUSED_SHOWN = 100


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/", "overview", shows_refusals(overview_page), methods=["GET"])


def overview_page() -> Any:
    data = api().get(OVERVIEW)
    moment = parse_stamp(data["now"]) or now()
    nodes = [
        {
            **node,
            "seen": Moment.of(node.get("last_seen"), moment),
            "drift": drift(node),
        }
        for node in data["nodes"]
    ]
    queues = [
        {**queue, "oldest": seconds_text(queue.get("oldest_waiting_s"))} for queue in data["queues"]
    ]
    return render(
        "overview.html",
        messages=[Message(warning, "error") for warning in data.get("warnings", [])],
        overview=data,
        as_of=Moment.of(data["now"], moment),
        nodes=nodes,
        queues=queues,
        paused=paused_entries(),
    )


def paused_entries() -> dict[str, Any] | None:
    """The first paused entries by name and how many are paused, from the entry index; None
    while it is being built (its 503)."""
    query: dict[str, str | int] = {"paused": "true", "sort": "name", "limit": PAUSED_SHOWN}
    try:
        found = api().get(ENTRY_INDEX, query=query)
    except ApiFailure:
        return None
    return {"names": [e["name"] for e in found["entries"]], "total": found["total"]}


def drift(node: dict[str, Any]) -> list[str]:
    """How a node differs from the leader, in words (empty: it does not, or it leads)."""
    said = []
    if node.get("same_config") is False:
        said.append("runs another configuration than the leader")
    if node.get("same_tz") is False:
        said.append("has another timezone database than the leader")
    return said
