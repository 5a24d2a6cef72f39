"""The console's session key contract (`SessionKeys` in beatd/backends/base.py, issue 19).

`SessionKeysContract` is a mixin `BackendContract` includes, so every backend's contract class
runs it: one key per namespace, made by whichever caller comes first, the same for every handle
(another node) and for callers racing to make it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from beatd.backends.base import SESSION_KEY_BYTES, Backend, SessionKeys


class SessionKeysContract:
    def test_the_session_key_is_made_once_and_kept(self, backend: Backend) -> None:
        assert isinstance(backend, SessionKeys)
        key = backend.session_key()
        assert len(key) == SESSION_KEY_BYTES
        assert key != bytes(SESSION_KEY_BYTES)
        assert backend.session_key() == key

    def test_every_handle_gets_the_same_session_key_even_when_racing_to_make_it(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        handles = [backend_factory() for _ in range(4)]
        keys: list[bytes] = []
        start = threading.Barrier(len(handles))

        def make(handle: Backend) -> None:
            start.wait()
            keys.append(handle.session_key())

        threads = [threading.Thread(target=make, args=(h,)) for h in handles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(keys) == len(handles)
        assert set(keys) == {backend.session_key()}
        for handle in handles:
            handle.close()

    def test_signing_out_moves_a_tokens_session_generation_for_every_handle(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        assert backend.session_generation("ab" * 16) == 0
        assert backend.end_sessions("ab" * 16) == 1
        other = backend_factory()
        try:
            assert other.session_generation("ab" * 16) == 1
            assert other.end_sessions("ab" * 16) == 2
        finally:
            other.close()
        assert backend.session_generation("ab" * 16) == 2
        assert backend.session_generation("cd" * 16) == 0
