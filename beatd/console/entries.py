"""GET /ui/entries: every entry, a page at a time, from the node's entry index
(`GET /v1/entry-index`): filters, sort and page are the query string, so a view is a link."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from beatd.console.api_caller import ApiFailure, api
from beatd.console.entry_rows import Rendered, install, kept_rows
from beatd.console.pages import render
from beatd.console.replies import now
from beatd.console.views import errors_by_field, paging
from beatd.history import FINAL

ENTRY_INDEX = "entry_index"  # the API's operationId
FILTERS = ("name", "task", "queue", "source", "status", "paused")
SORTS = {"name": "name", "next_due": "next due", "last_status": "last status"}
SOURCES = {"": "any", "api": "API (runtime)", "file": "file"}
PAUSED = {"": "either", "true": "paused", "false": "not paused"}
# a last status is a finished run's final outcome
STATUSES = {"": "any", **{str(o): str(o) for o in sorted(FINAL, key=str)}}
DEFAULT_LIMIT = 50
LIMITS = {str(n): str(n) for n in (20, 50, 100, 200, 500)}


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/entries", "entries", entries_page, methods=["GET"])
    ui.record_once(lambda state: install(state.app))


def entries_page() -> Any:
    chosen = {k: v for k in FILTERS if (v := request.args.get(k, "").strip())}
    sort = request.args.get("sort", "next_due")
    limit = _number(request.args.get("limit"), DEFAULT_LIMIT)
    offset = _number(request.args.get("offset"), 0)
    query = {**chosen, "sort": sort, "offset": str(offset), "limit": str(limit)}
    view, kept = tuple(sorted(query.items())), kept_rows()
    held = kept.get(view)
    try:  # the rows rendered from the last answer, while the API says nothing changed
        answer = api().get_unless(ENTRY_INDEX, held.tag if held else None, query=query)
    except ApiFailure as failure:
        shown = render(
            "entries.html", **_form(chosen, sort, limit), rows_html="", pager=None, links={},
            errors=errors_by_field(failure.errors),
        )  # fmt: skip
        return shown, failure.status
    if answer is not None:
        held = Rendered.of(answer.body, answer.headers.get("ETag"))
        kept.put(view, held)
    assert held is not None  # without a tag asked about, the API never answers 304
    data = held.data
    pager = paging(data["total"], data["offset"], data["limit"])
    kept_query: dict[str, Any] = {**chosen, "sort": sort, "limit": limit}
    links = {
        which: url_for("ui.entries", **kept_query, offset=at)
        for which, at in pager._asdict().items()
        if which in ("first", "previous", "next", "last") and at is not None
    }
    return render(
        "entries.html", **_form(chosen, sort, limit), rows_html=held.at(now()), pager=pager,
        links=links, errors={},
    )  # fmt: skip


def _form(chosen: dict[str, str], sort: str, limit: int) -> dict[str, Any]:
    return {
        "chosen": chosen,
        "sort": sort,
        "limit": limit,
        "sorts": SORTS,
        "sources": SOURCES,
        "paused_choices": PAUSED,
        "statuses": STATUSES,
        "limits": LIMITS,
    }


def _number(text: str | None, default: int) -> int:
    """A count from the query string; the API says why one is out of range."""
    return int(text) if text is not None and text.strip().isdigit() else default
