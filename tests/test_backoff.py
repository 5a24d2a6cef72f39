from __future__ import annotations

from beatd.backoff import Backoff


def test_doubles_from_initial_up_to_the_maximum_then_starts_over() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert not backoff.failing
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failing
    backoff.succeeded()
    assert (backoff.failing, backoff.delay) == (False, 0.0)
    assert backoff.failed() == 0.1
