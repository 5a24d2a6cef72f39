"""The API token file (beatd.http.tokens): its lines, its permissions, rereading it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.cli import main
from beatd.http.tokens import (
    Scope,
    TokenFileError,
    TokenSource,
    TokenTable,
    new_token,
    read_token_file,
)


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api-tokens"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_new_token_is_found_by_its_line_and_nothing_else_is() -> None:
    made = new_token("ops", Scope.WRITE)
    other = new_token("ci", Scope.READ)
    assert made.token.startswith("beatd_") and len(made.token) == len("beatd_") + 43
    assert made.line.startswith("ops write sha256:") and made.token not in made.line
    path_table = read_token_file_text(made.line + "\n" + other.line)
    found = path_table.find(made.token)
    assert found is not None and (found.name, found.scope) == ("ops", Scope.WRITE)
    assert path_table.find(other.token) == path_table.tokens[1]
    assert path_table.find(made.token + "x") is None
    assert path_table.find("") is None


def read_token_file_text(text: str) -> TokenTable:
    with tempfile.TemporaryDirectory() as folder:
        return read_token_file(token_file(Path(folder), text))


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620, 0o602, 0o666])
def test_a_file_others_could_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, new_token("ops", Scope.READ).line, mode)
    with pytest.raises(TokenFileError) as caught:
        read_token_file(path)
    assert str(caught.value) == (
        f"{path}: the API token file has mode {mode:04o}: others could read or change the "
        f"tokens; make it readable by beatd's user only (chmod 0600 {path}, or 0640 with a "
        "group only beatd is in)"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_a_file_only_its_owner_and_group_read_is_taken(tmp_path: Path, mode: int) -> None:
    made = new_token("ops", Scope.READ)
    assert read_token_file(token_file(tmp_path, made.line, mode)).find(made.token) is not None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "ops write",
            "expected `NAME SCOPE sha256:HEX` (three fields), found 2; `beatd api token NAME "
            "--scope read|write` prints a line to add",
        ),
        ("ops admin sha256:" + "0" * 64, "token ops: scope 'admin': use read or write"),
        (
            "ops read beatd_secret",
            "token ops: expected sha256: and 64 lowercase hex digits, the token's hash (never "
            "the token itself)",
        ),
        (
            "-ops read sha256:" + "0" * 64,
            "token name '-ops': use 1-64 letters, digits and _ . @ -, starting with a letter or "
            "digit",
        ),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = token_file(tmp_path, f"# tokens\n\n{line}\n")
    with pytest.raises(TokenFileError) as caught:
        read_token_file(path)
    assert str(caught.value) == f"{path}:3: {message}"


def test_two_tokens_of_one_name_are_refused(tmp_path: Path) -> None:
    first, second = new_token("ops", Scope.READ), new_token("ops", Scope.WRITE)
    path = token_file(tmp_path, f"{first.line}\n{second.line}\n")
    with pytest.raises(TokenFileError) as caught:
        read_token_file(path)
    assert str(caught.value) == (
        f"{path}:2: token name 'ops' is already used on line 1: give each token its own name "
        "(the audit log records it)"
    )


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError) as caught:
        read_token_file(tmp_path / "none")
    assert str(caught.value) == (
        f"{tmp_path / 'none'}: cannot read the API token file: {os.strerror(2)}"
    )


def test_a_reread_takes_the_new_file_and_a_broken_one_keeps_the_old(tmp_path: Path) -> None:
    old, new = new_token("old", Scope.READ), new_token("new", Scope.READ)
    path = token_file(tmp_path, old.line)
    source = TokenSource(path)
    path.write_text(new.line)
    assert source().find(old.token) is not None  # not reread until asked
    source.reread()
    assert source().find(new.token) is not None and source().find(old.token) is None
    os.chmod(path, 0o644)
    source.reread()
    assert source().find(new.token) is not None


def test_beatd_api_token_prints_the_token_once_and_its_line() -> None:
    result = CliRunner().invoke(main, ["api", "token", "deploy-bot", "--scope", "write"])
    assert result.exit_code == 0
    token_line, file_line = result.stdout.splitlines()
    token = token_line.removeprefix("token: ")
    line = file_line.removeprefix("line for the --api-tokens file: ")
    assert line.startswith("deploy-bot write sha256:")
    table = read_token_file_text(line)
    assert table.find(token) == table.tokens[0]
    assert result.stderr == "the token is not kept anywhere: store it now\n"


def test_beatd_api_token_refuses_a_bad_name() -> None:
    result = CliRunner().invoke(main, ["api", "token", "a b"])
    assert result.exit_code == 2
    assert result.stderr == (
        "beatd: NAME: token name 'a b': use 1-64 letters, digits and _ . @ -, starting with a "
        "letter or digit\n"
    )
