"""The docs stay true: every flag is in the reference table, every example loads."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from beatd.cli import main
from beatd.config import load_config

REPO = Path(__file__).resolve().parents[1]


def options_with_variables(command: click.Command) -> list[click.Option]:
    found = [p for p in command.params if isinstance(p, click.Option) and p.envvar]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found += options_with_variables(sub)
    return found


def test_every_flag_and_variable_is_in_the_configuration_table() -> None:
    table = (REPO / "docs" / "configuration.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    for option in options_with_variables(main):
        flag = max(option.opts, key=len)
        row = next((r for r in rows if f"`{flag}" in r.split("|")[1]), None)
        assert row is not None, f"{flag} is missing from docs/configuration.md"
        assert f"`{option.envvar}`" in row, f"{flag}: {option.envvar} is not in its row"


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_yaml_examples_in_the_docs_load(doc: str, tmp_path: Path) -> None:
    blocks = yaml_blocks(REPO / doc)
    for i, block in enumerate(blocks):
        (tmp_path / f"example{i}.yaml").write_text(block)
    if blocks:
        config = load_config([str(tmp_path)])
        assert config.entries


def test_python_example_in_the_docs_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "celeryconfig.py").write_text(block)
    config = load_config([str(tmp_path)])
    assert set(config.entries) == {"add-every-30s", "ping", "monday-report"}
