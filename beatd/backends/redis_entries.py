"""Redis's runtime entries: the `RuntimeEntries` role (beatd.backends.base) over the keys
`beatd:rt:*` (beatd.backends.redis_entries_lua lists them); every write and every page read is
one script, so it is atomic with its change record and its audit record."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from beatd.backends.base import Lease, from_micros, to_micros
from beatd.backends.entry_rows import definition_json
from beatd.backends.redis_link import RedisLink
from beatd.controls import new_audit_id, new_audit_ids
from beatd.errors import BackendError
from beatd.runtime_entries import (
    API_SOURCE,
    FEED_RETENTION,
    ChangePage,
    EntryChange,
    EntryPut,
    EntryWrites,
    FileEntryReadOnly,
    NameTaken,
    PartlyWritten,
    RuntimeEntry,
    UnknownEntry,
    VersionMismatch,
    check_unique,
    page_of,
)

PUT_STEP = 250
CHECK_STEP = 2000
GET_STEP = 1000
SEPARATOR = "\x1f"  # between a change record's seq, name and version


def _entry(
    name: str, meta: str, definition: str | Mapping[str, Any], text: str | None = None
) -> RuntimeEntry:
    """The entry of a script's reply: `meta` (version, times, writers, request id) and the
    definition, as stored (JSON text) or as written (with its `text`, if made)."""
    version, created, created_by, updated, updated_by, request_id = json.loads(meta)
    return RuntimeEntry(
        name,
        json.loads(definition) if isinstance(definition, str) else definition,
        int(version),
        from_micros(int(created)),
        created_by,
        from_micros(int(updated)),
        updated_by,
        request_id or None,
        text=text,
    )


def _put_args(puts: Sequence[EntryPut]) -> list[str]:
    """A put script's arguments for `puts`: name, definition, expected version, audit id."""
    flat: list[str] = []
    for (entry, expected), audit_id in zip(puts, new_audit_ids(len(puts)), strict=True):
        definition = definition_json(entry.definition, entry.text)
        flat += (entry.name, definition, "" if expected is None else str(expected), audit_id)
    return flat


def _meta(entry: RuntimeEntry) -> str:
    created, updated = to_micros(entry.created_at), to_micros(entry.updated_at)
    fields = [entry.version, str(created), entry.created_by, str(updated), entry.updated_by]
    return json.dumps([*fields, entry.request_id or ""])


def _change(record: str) -> EntryChange:
    seq, name, version = record.split(SEPARATOR)
    return EntryChange(int(seq), name, int(version) if version else None)


def _detail(request_id: str | None) -> str:
    return json.dumps({"request_id": request_id, "source": API_SOURCE})


def _refusal(reply: Sequence[str]) -> None:
    """Raise the refusal a put's reply says, if it says one."""
    status = reply[0] if reply else ""
    if status == "taken":
        raise NameTaken(reply[1], reply[2])
    if status == "readonly":
        raise FileEntryReadOnly(reply[1], reply[2])
    if status == "mismatch":
        raise VersionMismatch(reply[1], int(reply[2]), int(reply[3]))


class RedisEntries(RedisLink, EntryWrites):
    """The `RuntimeEntries` role."""

    feed_retention: int = FEED_RETENTION
    # Entries per put script: about 35 µs of Redis CPU each, so about 10 ms a script (SLOWLOG:
    # 25-60 ms at 500 a script on a host at load 6), well within a lease TTL; per check script
    # (a few µs each).
    put_step: int = PUT_STEP
    check_step: int = CHECK_STEP
    # Names per read script (`get_entries`): two HGETs each, so that none holds Redis long.
    get_step: int = GET_STEP

    def _put(self, puts: Sequence[EntryPut], by: str, request_id: str | None) -> list[RuntimeEntry]:
        """One script per `put_step` entries, so that none holds Redis long (a lease renewal
        waits for it); a batch of more is checked whole first (`_check_puts`), so a refusal
        then writes nothing. Each step's request is built while Redis runs the one before."""
        self._check_format("put_entries")
        check_unique(puts)
        head = (self._key(""), by, request_id or "", _detail(request_id), str(self.feed_retention))
        steps = [puts[at : at + self.put_step] for at in range(0, len(puts), self.put_step)]
        if len(steps) > 1:
            self._check_puts(puts, head)
        stored: list[RuntimeEntry] = []
        waiting = self._send("put_entries", (), (*head, "write", *_put_args(steps[0])))
        for at, step in enumerate(steps):
            following = _put_args(steps[at + 1]) if at + 1 < len(steps) else None
            reply = waiting()
            try:
                _refusal(reply)
            except BackendError as exc:
                if not stored:
                    raise
                raise PartlyWritten(exc, [e.name for e in stored], len(puts)) from None
            stored += [
                _entry(p.entry.name, meta, p.entry.definition, p.entry.text)
                for p, meta in zip(step, reply, strict=True)
            ]
            if following is not None:
                waiting = self._send("put_entries", (), (*head, "write", *following))
        return stored

    def _check_puts(self, puts: Sequence[EntryPut], head: Sequence[str]) -> None:
        """Raise the first refusal of `puts`, writing nothing, a script per `check_step`."""
        for at in range(0, len(puts), self.check_step):
            flat: list[str] = []
            for entry, expected in puts[at : at + self.check_step]:
                flat += (entry.name, "" if expected is None else str(expected))
            _refusal(self._eval("put_entries", (), (*head, "check", *flat)))

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        self._check_format("remove_entry")
        expected = "" if expected_version is None else str(expected_version)
        args = (self._key(""), name, by, expected, new_audit_id(), _detail(None))
        reply = self._eval("remove_entry", (), (*args, str(self.feed_retention)))
        if reply[0] == "unknown":
            raise UnknownEntry(name)
        if reply[0] == "readonly":
            raise FileEntryReadOnly(name, reply[1])
        if reply[0] == "mismatch":
            raise VersionMismatch(name, int(expected), int(reply[1]))
        return _entry(name, reply[1], reply[2])

    def get_entry(self, name: str) -> RuntimeEntry | None:
        self._check_format("get_entry")
        meta, definition = self._eval("get_entry", (), (self._key(""), name))
        return None if meta is None else _entry(name, meta, definition)

    def get_entries(self, names: Sequence[str]) -> dict[str, RuntimeEntry]:
        """One script per `get_step` names; each step's request is sent before the reply of
        the one before is decoded."""
        self._check_format("get_entries")
        unique = list(dict.fromkeys(names))
        steps = [unique[at : at + self.get_step] for at in range(0, len(unique), self.get_step)]
        read: dict[str, RuntimeEntry] = {}
        waiting = [self._send("get_entries", (), (self._key(""), *step)) for step in steps[:1]]
        for at, step in enumerate(steps):
            reply = waiting.pop()()
            if at + 1 < len(steps):
                waiting.append(self._send("get_entries", (), (self._key(""), *steps[at + 1])))
            for name, meta, definition in zip(step, reply[::2], reply[1::2], strict=True):
                if meta is not None:
                    read[name] = _entry(name, meta, definition)
        return read

    def list_entries(self, after: str = "", limit: int = 1000) -> list[RuntimeEntry]:
        self._check_format("list_entries")
        if limit <= 0:
            return []
        reply = self._eval("list_entries", (), (self._key(""), after, str(limit)))
        return [_entry(*reply[i : i + 3]) for i in range(0, len(reply), 3)]

    def entry_changes(self, cursor: int | None, limit: int = 1000) -> ChangePage:
        self._check_format("entry_changes")
        seen = "" if cursor is None else str(cursor)
        reply = self._eval("entry_changes", (), (self._key(""), seen, str(max(limit, 0))))
        head, oldest = int(reply[0]), reply[1]
        records = [_change(r) for r in reply[2:]][: max(limit, 0)]
        return page_of(cursor, head, int(oldest) if oldest else head + 1, lambda _: records)

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        pairs = [part for item in sorted(files.items()) for part in item]
        args: list[str | int] = [lease.token, lease.epoch, self._key(""), *pairs]
        colliding = self._fenced("register_files", lease, (self._key("lease"),), args)
        return sorted(colliding)

    def file_entries(self) -> dict[str, str]:
        self._check_format("file_entries")
        held: dict[str, str] = self._cmd("HGETALL", self._key("rt", "files"))
        return held

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        self._check_format("import_entries")
        flat: list[Any] = []
        for entry in entries:
            definition = json.dumps(dict(entry.definition), ensure_ascii=False)
            flat += (entry.name, _meta(entry), definition)
        args = (self._key(""), str(self.feed_retention), *flat)
        return int(self._eval("import_entries", (), args))
