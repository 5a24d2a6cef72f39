"""A task module that imports in the worker but refuses to in its child processes."""

from __future__ import annotations

import multiprocessing

import beatd

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this module refuses to load in a child process")


@beatd.task
def never() -> None:
    raise AssertionError("never runs")
