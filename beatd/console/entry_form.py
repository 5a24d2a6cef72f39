"""Runtime entries from the console: create one, edit one (its fields as YAML, sent with
If-Match: the version the form was opened at, so two operators do not overwrite each other),
and delete one. The API checks every field as `beatd check` does, and its 422 messages are
shown beside the text, by field, in the same words as `beatd entries add`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from beatd.config.yamlsafe import loads_yaml
from beatd.console.api_caller import ApiFailure, api
from beatd.console.entry import GET_ENTRY, definition_text
from beatd.console.pages import redirect_with, render
from beatd.console.replies import entry_url, refusal
from beatd.console.security import action
from beatd.console.views import errors_by_field
from beatd.errors import ConfigError

ADD, REPLACE, REMOVE = "add_entry", "replace_entry", "remove_entry"
FIELDS_FILE = "fields"  # how a YAML problem names the text, as `fields:LINE:COL: ...`
EXAMPLE = "task: app.tasks.report\ncron: 0 3 * * *\ntimezone: Europe/Paris\n"


# edits and deletes are conditional: the form carries the version it was made from
NO_VERSION = (
    "the form has no version of the entry (a whole number), so it could overwrite another "
    "change: open the entry's page again and retry"
)


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/new-entry", "new_entry", new_entry, methods=["GET"])
    ui.add_url_rule("/new-entry", "create_entry", action(create_entry), methods=["POST"])
    ui.add_url_rule("/edit/<entry:name>", "edit_entry", edit_entry, methods=["GET"])
    ui.add_url_rule("/edit/<entry:name>", "save_entry", action(save_entry), methods=["POST"])
    ui.add_url_rule("/delete/<entry:name>", "delete_entry", action(delete_entry), methods=["POST"])


def new_entry() -> Any:
    return _form(None, "", EXAMPLE, None, {})


def create_entry() -> Any:
    name = request.form.get("name", "").strip()
    text = request.form.get("fields", "")
    fields, problems = read_fields(text)
    if problems:
        return _form(None, name, text, None, problems, 422)
    answer = api().send(ADD, body={**fields, "name": name})  # the form's name, not a field's
    if not answer.ok:
        return _form(None, name, text, None, errors_by_field(answer.errors), answer.status)
    return redirect_with(entry_url(name), f"added {name} (version {answer.body['version']})")


def edit_entry(name: str) -> Any:
    try:
        entry = api().get(GET_ENTRY, path={"name": name})
    except ApiFailure as failure:
        return refusal(failure.status, failure.errors)
    return _form(name, name, definition_text(entry["definition"]), entry["version"], {})


def save_entry(name: str) -> Any:
    text = request.form.get("fields", "")
    version = request.form.get("version", "")
    fields, problems = read_fields(text)
    if not version.isdigit():
        problems = {**problems, "version": [NO_VERSION]}
    if problems:
        return _form(name, name, text, version, problems, 422)
    headers = {"If-Match": f'"{version}"'}
    answer = api().send(REPLACE, path={"name": name}, body=fields, headers=headers)
    if not answer.ok:
        return _form(name, name, text, version, errors_by_field(answer.errors), answer.status)
    return redirect_with(entry_url(name), f"changed {name} (version {answer.body['version']})")


def delete_entry(name: str) -> Any:
    version = request.form.get("version", "")
    if not version.isdigit():
        return refusal(422, [{"field": "version", "message": NO_VERSION}])
    answer = api().send(REMOVE, path={"name": name}, headers={"If-Match": f'"{version}"'})
    if not answer.ok:
        return refusal(answer.status, answer.errors)
    return redirect_with(url_for("ui.entries"), f"removed {name}")


def read_fields(text: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The entry's fields from the form's YAML, or the problems (by field, "" for the text)."""
    try:
        fields = loads_yaml(text, FIELDS_FILE)
    except ConfigError as exc:
        return {}, {"": [str(problem) for problem in exc.problems]}
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        return {}, {
            "": [f"{FIELDS_FILE}:1:1: expected a mapping of entry fields, such as task: and cron:"]
        }
    return dict(fields), {}


def _form(
    name: str | None,
    given_name: str,
    text: str,
    version: int | str | None,
    errors: dict[str, list[str]],
    status: int = 200,
) -> Any:
    page = render(
        "entry_form.html", editing=name, given_name=given_name, text=text, version=version,
        errors=errors,
    )  # fmt: skip
    return page, status
