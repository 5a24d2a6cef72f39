"""Process glue: the cyclic collector's settings around a scheduler's events."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from beatd.service import tune_collector


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_adopted_state_is_frozen_until_a_reload_hands_it_back() -> None:
    seen: list[str] = []
    handle = tune_collector(seen.append)
    assert gc.get_threshold()[0] == 50_000
    handle("adopted")
    assert gc.get_freeze_count() > 0
    handle("reloading")  # an old configuration with cycles (a .py file's) can now be collected
    assert gc.get_freeze_count() == 0
    handle("reload_failed")  # the configuration kept is frozen again
    assert gc.get_freeze_count() > 0
    assert seen == ["adopted", "reloading", "reload_failed"]


@pytest.mark.usefixtures("collector")
def test_a_reload_frees_the_cycles_of_the_configuration_it_replaces() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    handle = tune_collector(lambda _event: None)
    old = [Node() for _ in range(1000)]  # what a reloaded Python schedule file leaves behind
    handle("adopted")
    del old
    handle("reloading")
    handle("adopted")
    assert not any(isinstance(o, Node) for o in gc.get_objects())
