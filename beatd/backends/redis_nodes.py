"""Redis's node records (`Nodes` in beatd.backends.base): the hash `beatd:nodes`, one field per
node, written and read by scripts that take the time from Redis's clock (TIME), so expiry is
the server's and no node's clock matters (the layout: beatd.backends.redis_nodes_lua); and the
console's session key (`SessionKeys`), the string `beatd:console-key` (hex), made by one
`SET ... NX GET`."""

from __future__ import annotations

import secrets

from beatd.backends.base import SESSION_KEY_BYTES, from_micros
from beatd.backends.redis_link import RedisLink
from beatd.nodes import NodeRecord

SEPARATOR = "\x1f"  # between the last seen time and the record (redis_nodes_lua)


class RedisNodes(RedisLink):
    """The `Nodes` role."""

    def write_node(self, record: NodeRecord, keep: float) -> None:
        self._check_format("write_node")
        args = (self._key(""), record.node, record.to_json(), str(round(keep * 1e6)))
        self._eval("write_node", (), args)

    def nodes(self) -> list[NodeRecord]:
        self._check_format("nodes")
        reply = self._eval("list_nodes", (), (self._key(""),))
        records = []
        for i in range(0, len(reply), 2):
            seen, text = reply[i + 1].split(SEPARATOR, 1)
            records.append(NodeRecord.from_json(reply[i], text, from_micros(int(seen))))
        return sorted(records, key=lambda r: r.node)

    def session_key(self) -> bytes:
        made = secrets.token_hex(SESSION_KEY_BYTES)
        # NX GET: set only if absent, and return what was there (None: ours is the key)
        key = self._key("console-key")
        held = self._do("set", lambda: self._redis.set(key, made, nx=True, get=True))
        return bytes.fromhex(made if held is None else str(held))

    def session_generation(self, token: str) -> int:
        key = self._key("console-signouts")
        held = self._do("hget", lambda: self._redis.hget(key, token))
        return 0 if held is None else int(held)

    def end_sessions(self, token: str) -> int:
        key = self._key("console-signouts")
        return int(self._do("hincrby", lambda: self._redis.hincrby(key, token, 1)))
