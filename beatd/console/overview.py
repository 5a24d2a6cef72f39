"""The overview page: a placeholder showing the leader, until the overview of issue 19 (the
consolepages work) replaces it."""

from __future__ import annotations

from flask import Blueprint

from beatd.console.api_caller import ApiFailure, api
from beatd.console.pages import Message, render


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/", "overview", overview, methods=["GET"])


def overview() -> str:
    try:
        status = api().get("status", query={"limit": 1})
    except ApiFailure as failure:
        return render("overview.html", status=None, messages=[Message(failure.message, "error")])
    return render("overview.html", status=status)
