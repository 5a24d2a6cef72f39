"""An entry's controls (POST, each checked for CSRF and Origin by the console's guard, then
303 back to the entry with what happened): trigger now, pause with a reason and an end, resume,
and backfill, which first shows a dry run's runs and publishes only when confirmed. The API
answers; its refusals are shown in its own words (a read token's 403 included)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from beatd.console.api_caller import api
from beatd.console.pages import redirect_with, render
from beatd.console.replies import entry_url, refusal
from beatd.console.security import action

TRIGGER, PAUSE, RESUME, BACKFILL = "trigger", "pause_entry", "resume_entry", "backfill"


def add_pages(ui: Blueprint) -> None:
    for path, endpoint, view in (
        ("/trigger/<entry:name>", "trigger", trigger),
        ("/pause/<entry:name>", "pause", pause),
        ("/resume/<entry:name>", "resume", resume),
        ("/backfill/<entry:name>", "backfill", backfill),
        ("/backfill-confirm/<entry:name>", "backfill_confirm", backfill_confirmed),
    ):
        ui.add_url_rule(path, endpoint, action(view), methods=["POST"])


def trigger(name: str) -> Any:
    answer = api().send(TRIGGER, path={"name": name}, body={})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    body = answer.body
    said = f"run {body['run_id']} {body['status']}"
    if body.get("message"):
        said += f": {body['message']}"
    return redirect_with(entry_url(name), said)


def pause(name: str) -> Any:
    body = {"reason": request.form.get("reason", "")}
    until = request.form.get("until", "").strip()
    if until:
        body["until"] = until
    answer = api().send(PAUSE, path={"name": name}, body=body)
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    paused = answer.body["paused"].get(name) or {}
    end = paused.get("until") or "resumed"
    return redirect_with(entry_url(name), f"paused {name} until {end}: {paused.get('reason', '')}")


def resume(name: str) -> Any:
    answer = api().send(RESUME, path={"name": name}, body={})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(entry_url(name), "; ".join(answer.body["said"]) or f"resumed {name}")


def backfill(name: str) -> Any:
    """The dry run: the runs a backfill of [from, to) would publish, and a form to confirm."""
    span = {"from": request.form.get("from", ""), "to": request.form.get("to", "")}
    answer = api().send(BACKFILL, path={"name": name}, body={**span, "dry_run": True})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return render("backfill_preview.html", name=name, span=span, runs=answer.body["runs"])


def backfill_confirmed(name: str) -> Any:
    span = {"from": request.form.get("from", ""), "to": request.form.get("to", "")}
    answer = api().send(BACKFILL, path={"name": name}, body=span)
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    body = answer.body
    return redirect_with(
        entry_url(name),
        f"backfill of {name} from {span['from']} to {span['to']}: published {body['published']}, "
        f"{body['already_there']} already there",
    )
