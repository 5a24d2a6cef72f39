"""The HTTP API's bearer tokens (docs/api.md, "Tokens").

A token file (`--api-tokens FILE`) holds one line per token, `NAME SCOPE sha256:HEX`: the name
the audit log records, `read` or `write`, and the SHA-256 of the token, never the token itself.
Blank lines and lines starting with `#` are ignored. A file that others could change or read is
refused, as ssh refuses a key anyone can read: whoever writes it grants themselves access.

A presented token is hashed and compared with every line in constant time, so neither the
comparison nor which line matched shows in the time an answer takes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from beatd.errors import BeatdError

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits
TOKEN_PREFIX = "beatd_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")


class Scope(StrEnum):
    """What a token may do: `read` every GET, `write` everything."""

    READ = "read"
    WRITE = "write"


class TokenFileError(BeatdError):
    """The token file cannot be used: unreadable, open to others, or a line malformed."""


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    scope: Scope
    digest: bytes  # SHA-256 of the token


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str  # shown once
    line: str  # to add to the token file


def new_token(name: str, scope: Scope) -> NewToken:
    """A fresh random token and its token-file line."""
    check_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return NewToken(token, f"{name} {scope} sha256:{hashlib.sha256(token.encode()).hexdigest()}")


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"token name {name!r}: use 1-64 letters, digits and _ . @ -, starting with a letter "
            "or digit"
        )


class TokenTable:
    """The tokens of one file, as read at start or at the last SIGHUP."""

    def __init__(self, tokens: tuple[ApiToken, ...] = ()) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, presented: str) -> ApiToken | None:
        """The token `presented` is, or None; every line is compared, each in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def read_token_file(path: str | Path) -> TokenTable:
    """The tokens in `path`; TokenFileError naming the file (and line) when it cannot be used."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            refuse_open_permissions(path, os.fstat(file.fileno()))
            text = file.read()
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read the API token file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path}: the API token file is not UTF-8 text") from exc
    tokens: list[ApiToken] = []
    names: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token = parse_line(path, number, line)
        if token.name in names:
            raise TokenFileError(
                f"{path}:{number}: token name {token.name!r} is already used on line "
                f"{names[token.name]}: give each token its own name (the audit log records it)"
            )
        names[token.name] = number
        tokens.append(token)
    return TokenTable(tuple(tokens))


def refuse_open_permissions(path: Path, status: os.stat_result) -> None:
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH):
        mode = stat.S_IMODE(status.st_mode)
        raise TokenFileError(
            f"{path}: the API token file has mode {mode:04o}: others could read or change the "
            f"tokens; make it readable by beatd's user only (chmod 0600 {path}, or 0640 with a "
            "group only beatd is in)"
        )


def parse_line(path: Path, number: int, line: str) -> ApiToken:
    fields = line.split()
    where = f"{path}:{number}"
    if len(fields) != 3:
        raise TokenFileError(
            f"{where}: expected `NAME SCOPE sha256:HEX` (three fields), found {len(fields)}; "
            "`beatd api token NAME --scope read|write` prints a line to add"
        )
    name, scope, digest = fields
    try:
        check_name(name)
    except ValueError as exc:
        raise TokenFileError(f"{where}: {exc}") from None
    if scope not in (Scope.READ, Scope.WRITE):
        raise TokenFileError(f"{where}: token {name}: scope {scope!r}: use read or write")
    match = _DIGEST.match(digest)
    if match is None:
        raise TokenFileError(
            f"{where}: token {name}: expected sha256: and 64 lowercase hex digits, the token's "
            "hash (never the token itself)"
        )
    return ApiToken(name, Scope(scope), bytes.fromhex(match.group(1)))


class TokenSource:
    """The token file as the server reads it: loaded at start, and again on the first request
    after `reread()` (SIGHUP). A file that has become unusable keeps the tokens read before, and
    says why in the log once per attempt."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._table = TokenTable() if self.path is None else read_token_file(self.path)
        self._stale = False
        self._lock = threading.Lock()

    def reread(self) -> None:
        self._stale = True  # set from a signal handler: the work waits for the next request

    def __call__(self) -> TokenTable:
        if self._stale and self.path is not None:
            with self._lock:
                if self._stale:
                    self._stale = False
                    try:
                        self._table = read_token_file(self.path)
                        log.info(
                            "API tokens reread from %s: %d tokens", self.path, len(self._table)
                        )
                    except TokenFileError as exc:
                        log.error("API tokens kept as they were: %s", exc)
        return self._table
