"""Console sessions: a signed cookie, valid 12 hours and only while its token is in the file.

The cookie `beatd_session` holds `PAYLOAD.MAC`, both base64url: the payload is JSON
{"n": token name, "d": the token's SHA-256, first 16 bytes in hex, "i": issued (Unix seconds),
"c": the session's CSRF token, "g": the token's sign-out generation when issued}, and the MAC
is HMAC-SHA256 over it with the namespace's session key, kept in the backend
(`SessionKeys.session_key`), so every node accepts a cookie any node issued. The token itself
is never in the cookie.

A cookie is honoured when its MAC is right, it was issued less than SESSION_LIFETIME ago (and
not in the future, beyond a minute of clock skew), and the token file as read now (SIGHUP
rereads it) still has a token of that name and digest: removing the line ends every session it
opened, on every node. The scope is the file's, so a token turned read-only acts read-only.
Signing out moves the token's generation in the backend (`SessionKeys.end_sessions`): every
cookie of that token issued before, a copy of the one signed out too, is refused from then on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from beatd.http.tokens import ApiToken, TokenTable

SESSION_COOKIE = "beatd_session"
SESSION_LIFETIME = 12 * 3600  # seconds from sign-in
CLOCK_SKEW = 60  # seconds a cookie's issue time may lie ahead of this node's clock
DIGEST_BYTES = 16  # of the token's SHA-256, in the cookie
SESSION_PURPOSE = b"beatd console session\0"
FLASH_PURPOSE = b"beatd console flash\0"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the token's name and digest prefix, when, and its CSRF token."""

    name: str
    digest: str
    issued: int
    csrf: str
    generation: int = 0  # the token's sign-out generation when issued

    @staticmethod
    def digest_of(token: ApiToken) -> str:
        return token.digest[:DIGEST_BYTES].hex()

    @classmethod
    def open(cls, token: ApiToken, now: float, generation: int = 0) -> Session:
        """A new session for `token`, issued at `now` at its sign-out `generation`, with a
        fresh CSRF token."""
        return cls(
            token.name, cls.digest_of(token), int(now), secrets.token_urlsafe(32), generation
        )

    def encode(self, key: bytes) -> str:
        payload = {
            "n": self.name, "d": self.digest, "i": self.issued, "c": self.csrf,
            "g": self.generation,
        }  # fmt: skip
        return sign(key, SESSION_PURPOSE, json.dumps(payload, separators=(",", ":")).encode())

    @classmethod
    def decode(cls, value: str, key: bytes) -> Session | None:
        """The session a cookie value holds, or None when it is malformed or its MAC is wrong."""
        data = unsign(key, SESSION_PURPOSE, value)
        if data is None:
            return None
        try:
            payload = json.loads(data)
            name, digest, csrf = str(payload["n"]), str(payload["d"]), str(payload["c"])
            issued, generation = int(payload["i"]), int(payload.get("g", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(name, digest, issued, csrf, generation)

    def expires(self) -> int:
        return self.issued + SESSION_LIFETIME

    def token_in(self, tokens: TokenTable, now: float) -> ApiToken | None:
        """The token this session acts with, as the file has it now; None when the session
        has expired or the token is no longer in the file."""
        if not self.issued <= now + CLOCK_SKEW or now >= self.expires():
            return None
        found = None
        for token in tokens.tokens:
            same_digest = hmac.compare_digest(token.digest[:DIGEST_BYTES].hex(), self.digest)
            if same_digest and token.name == self.name:
                found = token
        return found

    def csrf_matches(self, presented: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), presented.encode("utf-8", "replace"))


def sign(key: bytes, purpose: bytes, data: bytes) -> str:
    """`data` and its HMAC-SHA256 under `key` for `purpose`, as `DATA.MAC` in base64url."""
    mac = hmac.new(key, purpose + data, hashlib.sha256).digest()
    return f"{_b64(data)}.{_b64(mac)}"


def unsign(key: bytes, purpose: bytes, value: str) -> bytes | None:
    """The data of a `sign` value whose MAC is right for `purpose` under `key`, else None."""
    encoded, _, presented = value.partition(".")
    try:
        data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        mac = base64.urlsafe_b64decode(presented + "=" * (-len(presented) % 4))
    except (binascii.Error, ValueError):
        return None
    expected = hmac.new(key, purpose + data, hashlib.sha256).digest()
    return data if hmac.compare_digest(expected, mac) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
