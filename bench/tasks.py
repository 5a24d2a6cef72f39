"""The bench's task: `bench.noop` does nothing but count itself (bench/taskcount.py), so a
worker's own overhead is what is timed."""

import beatd
from bench.taskcount import count_one


@beatd.task(name="bench.noop")
def noop(*args: object, **kwargs: object) -> None:
    count_one()
