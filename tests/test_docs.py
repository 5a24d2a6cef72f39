"""The docs stay true: the flags table is the command tree's, every example loads."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from beatd.cli import reference
from beatd.config import fields, load_config
from beatd.history import RunKind, RunRecord, RunStatus

REPO = Path(__file__).resolve().parents[1]


def test_the_flags_table_is_the_whole_command_tree() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    assert text.count(reference.BEGIN) == 1 and text.count(reference.END) == 1
    shown = reference.generated_part(text)
    assert shown == reference.table(), "run python -m beatd.cli.reference"


def test_the_entry_field_table_is_the_whole_fields_table() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    assert text.count(reference.FIELDS_BEGIN) == 1 and text.count(reference.FIELDS_END) == 1
    shown = reference.generated_part(text, reference.FIELDS_BEGIN, reference.FIELDS_END)
    assert shown == fields.markdown_table(), "run python -m beatd.cli.reference"
    rows = shown.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{f.name}`" for f in fields.FIELDS]


def test_every_command_is_in_the_flags_table() -> None:
    rows = reference.table().splitlines()[2:]
    used = {c.strip() for row in rows for c in row.split(" | ")[3].split(",")}
    with_flags = {
        path
        for path, command in reference.commands()
        if any(isinstance(p, click.Option) for p in command.params)
    }
    assert used == with_flags
    # run, worker, status, history, dead list, dead retry, dead rm, migrate, check, next, diff,
    # trigger, pause, resume, backfill, audit, db upgrade, api token, entries add, set, rm, list,
    # export (schema has none)
    assert len(used) == 23


def test_the_flags_without_a_variable_are_the_ones_the_text_names() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = [row.split(" | ") for row in reference.table().splitlines()[2:]]
    without = {name for row in rows if row[1] == "none" for name in re.findall(r"`[^`]+`", row[0])}
    sentence = re.search(
        r'whose variable is "none" are\s+what one invocation asks \((.*?)\)', text, re.S
    )
    assert sentence is not None
    assert set(re.findall(r"`[^`]+`", sentence.group(1))) == without
    assert len(without) == 59


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize(("doc", "count"), [("README.md", 2), ("docs/celery.md", 1)])
def test_yaml_examples_in_the_docs_load(doc: str, count: int, tmp_path: Path) -> None:
    blocks = yaml_blocks(REPO / doc)
    assert len(blocks) >= count, f"{doc}: expected {count} yaml blocks, found {len(blocks)}"
    for i, block in enumerate(blocks):
        folder = tmp_path / f"example{i}"
        folder.mkdir()
        (folder / "example.yaml").write_text(block)
        assert load_config([str(folder)]).entries, f"{doc}: yaml block {i} has no entries"


def test_python_example_in_the_docs_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "celeryconfig.py").write_text(block)
    config = load_config([str(tmp_path)])
    assert set(config.entries) == {"add-every-30s", "ping", "monday-report"}


def test_the_generator_checks_and_rewrites_between_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "configuration.md"
    fields_part = f"{reference.FIELDS_BEGIN}\n| stale |\n{reference.FIELDS_END}\n"
    doc.write_text(f"intro\n{reference.BEGIN}\n| stale |\n{reference.END}\nafter\n{fields_part}")
    monkeypatch.setattr(reference, "DOC", doc)
    assert reference.cli(["--check"]) == 1
    assert reference.cli([]) == 0
    assert doc.read_text() == (
        f"intro\n{reference.BEGIN}\n{reference.table()}\n{reference.END}\nafter\n"
        f"{reference.FIELDS_BEGIN}\n{fields.markdown_table()}\n{reference.FIELDS_END}\n"
    )
    assert reference.cli(["--check"]) == 0
    with pytest.raises(ValueError) as info:
        reference.replace_table("no markers here", "| x |")
    assert str(info.value) == (f"the markers {reference.BEGIN!r} and {reference.END!r} are missing")


def test_the_history_doc_gives_the_measured_bytes_per_record_on_each_backend() -> None:
    # issue 15: "docs/history.md gives the measured bytes per record on each backend"
    text = (REPO / "docs" / "history.md").read_text()
    table = text.split("| backend | bytes per run record |")[1].split("\n\n")[0]
    assert "TODO" not in table, table


@pytest.mark.parametrize("doc", ["README.md", "docs/history.md"])
def test_the_time_limit_error_the_docs_show_is_in_beatds_words(doc: str) -> None:
    # the examples are meant as real output: the worker writes "TimeLimitExceeded: ran over its
    # time limit of 300s" (beatd.settling.over_time), never "hard time limit 300s"
    shown = re.findall(r"TimeLimitExceeded: ([^\n|]*)", (REPO / doc).read_text())
    assert shown, f"{doc} shows no time-limit error"
    assert all(s.startswith("ran over its time limit of ") for s in shown), shown


def test_the_statuses_table_says_what_a_celery_run_without_events_is() -> None:
    # beatd.history.RunRecord.status: a Celery run with no task-received yet is `unknown`
    # (the contract's test_a_celery_run_is_recorded_as_celery), so `queued` cannot also be
    # "no event yet"
    at = datetime(2026, 12, 5, 1, tzinfo=UTC)
    record = RunRecord(
        "c@2026-12-05T01:00:00Z", "c", at, at, at, "web-1", 1, RunKind.SCHEDULED, True
    )
    assert record.status == RunStatus.UNKNOWN
    text = (REPO / "docs" / "history.md").read_text()
    queued = next(line for line in text.splitlines() if line.startswith("| `queued` |"))
    assert "no event yet" not in queued, queued


def test_the_api_page_lists_every_api_option_with_its_variable() -> None:
    text = (REPO / "docs" / "api.md").read_text()
    rows = set(re.findall(r"^\| `(--api-[a-z-]+)[^`]*` \| `(BEATD_[A-Z_]+)` \|", text, re.M))
    run = dict(reference.commands())["run"]
    options = {
        (param.opts[0], str(param.envvar))
        for param in run.params
        if isinstance(param, click.Option) and param.opts[0].startswith("--api-")
    }
    assert rows == options and len(options) == 5
