"""Fixtures of the backends whose time a test moves itself; the Redis and PostgreSQL modules
keep time on their servers and give their own `advance`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.backends.contract import Wall


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def advance(wall: Wall) -> Callable[[float], None]:
    def move(seconds: float) -> None:
        wall.now += seconds

    return move
