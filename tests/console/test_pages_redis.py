"""The console's pages and actions on Redis: the same tests as on SQLite, on a private
redis-server (one for the module, flushed before each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.console.test_actions import (
    test_backfill_previews_a_dry_run_then_publishes_when_confirmed,
    test_create_edit_and_delete_a_runtime_entry,
    test_dead_letters_retry_and_delete,
    test_pause_with_a_reason_and_an_end_then_resume,
    test_trigger_publishes_a_run_and_says_so,
)
from tests.console.test_pages import (
    test_a_file_entry_page_shows_its_definition_next_runs_history_chart_and_audit,
    test_the_dead_letter_page_shows_message_reason_and_deliveries,
)
from tests.redis_server import RedisServer

__all__ = [  # collected here again, each with this module's `broker`
    "test_a_file_entry_page_shows_its_definition_next_runs_history_chart_and_audit",
    "test_backfill_previews_a_dry_run_then_publishes_when_confirmed",
    "test_create_edit_and_delete_a_runtime_entry",
    "test_dead_letters_retry_and_delete",
    "test_pause_with_a_reason_and_an_end_then_resume",
    "test_the_dead_letter_page_shows_message_reason_and_deliveries",
    "test_trigger_publishes_a_run_and_says_so",
]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture
def broker(redis_server: RedisServer) -> str:
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.url
