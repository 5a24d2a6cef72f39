"""Audit record ids (beatd.controls.new_audit_id): unique, and in the order they were made.

Ordered because the audit table is keyed by id (SQLite's `audit` is WITHOUT ROWID, PostgreSQL's
primary key a B-tree): ids in random order put each record of a bulk import on a random page,
so an import of 100,000 entries slowed as the table grew (issue 18: 55-72 s into SQLite holding
200,000 entries, against 13 s into an empty one). Ids in order append at the key's end."""

from __future__ import annotations

import re
import threading

from beatd.controls import new_audit_id, new_audit_ids


def test_ids_made_one_after_another_sort_in_that_order() -> None:
    ids = [new_audit_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_keep_their_form() -> None:
    assert all(re.fullmatch("[0-9a-f]{24}", new_audit_id()) for _ in range(100))


def test_ids_made_by_threads_at_once_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_audit_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for m in made for i in m]
    assert len(set(every)) == len(every)
    assert all(m == sorted(m) for m in made)


def test_ids_made_in_bulk_keep_their_form_and_order_among_single_ones() -> None:
    before = new_audit_id()
    bulk = new_audit_ids(3000)
    after = new_audit_id()
    assert all(re.fullmatch("[0-9a-f]{24}", i) for i in bulk)
    assert [before, *bulk, after] == sorted([before, *bulk, after])
    assert len({before, *bulk, after}) == len(bulk) + 2
    assert new_audit_ids(0) == []
