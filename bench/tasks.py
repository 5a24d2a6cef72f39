"""The bench's task: `bench.noop` does nothing, so a worker's own overhead is what is timed."""

import beatd


@beatd.task(name="bench.noop")
def noop(*args: object, **kwargs: object) -> None:
    return None
