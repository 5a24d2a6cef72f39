"""GET /ui/dead: the dead letters (`GET /v1/dead-letters`): each one's message, why it died and
how often it was delivered, with retry and delete; and those actions (POST, 303 back)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, request, url_for

from beatd.console.api_caller import api
from beatd.console.pages import redirect_with, render
from beatd.console.replies import now, refusal, shows_refusals
from beatd.console.security import action
from beatd.console.views import Moment, paging

LIST, RETRY, RETRY_ALL = "list_dead_letters", "retry_dead_letter", "retry_all_dead_letters"
DELETE, DELETE_MANY = "delete_dead_letter", "delete_dead_letters"
PAGE_SIZE = 100


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/dead", "dead_letters", shows_refusals(dead_page), methods=["GET"])
    for path, endpoint, view in (
        ("/dead/retry/<entry:run_id>", "retry_dead", retry_one),
        ("/dead/delete/<entry:run_id>", "delete_dead", delete_one),
        ("/dead/retry-all", "retry_all_dead", retry_all),
        ("/dead/delete-all", "delete_all_dead", delete_all),
    ):
        ui.add_url_rule(path, endpoint, action(view), methods=["POST"])


def dead_page() -> Any:
    offset = _number(request.args.get("offset"))
    page = api().get(LIST, query={"offset": str(offset), "limit": str(PAGE_SIZE)})
    moment = now()
    rows = [
        {
            **letter,
            "failed": Moment.of(letter["failed_at"], moment),
            "text": json.dumps(letter["message"], indent=2, ensure_ascii=False),
        }
        for letter in page["dead_letters"]
    ]
    pager = paging(page["total"], offset, PAGE_SIZE)
    links = {
        which: url_for("ui.dead_letters", offset=at)
        for which, at in pager._asdict().items()
        if which in ("first", "previous", "next", "last") and at is not None
    }
    return render("dead.html", letters=rows, pager=pager, links=links)


def _number(text: str | None) -> int:
    return int(text) if text is not None and text.strip().isdigit() else 0


def retry_one(run_id: str) -> Any:
    answer = api().send(RETRY, path={"id": run_id})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(url_for("ui.dead_letters"), f"requeued dead letter {run_id}")


def retry_all() -> Any:
    answer = api().send(RETRY_ALL)
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(
        url_for("ui.dead_letters"), f"requeued {_letters(answer.body['requeued'])}"
    )


def delete_one(run_id: str) -> Any:
    answer = api().send(DELETE, path={"id": run_id})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(url_for("ui.dead_letters"), f"deleted dead letter {run_id}")


def delete_all() -> Any:
    answer = api().send(DELETE_MANY, body={"all": True})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(
        url_for("ui.dead_letters"), f"deleted {_letters(len(answer.body['deleted']))}"
    )


def _letters(count: int) -> str:
    return f"{count} dead letter{'s' if count != 1 else ''}"
