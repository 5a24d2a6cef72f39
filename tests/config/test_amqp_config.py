"""AMQP destinations in schedule files and Celery configs: read, inherited from the queue,
refused with located messages where they cannot work, and never with a password."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.cli import main
from beatd.config import AmqpTarget, load_config
from beatd.errors import ConfigError

ROUTED = """\
queues:
  jobs:
    protocol: celery
    amqp: amqp://app@rabbit.internal//
entries:
  inherits:
    task: t.a
    every: 10s
    queue: jobs
  own:
    task: t.b
    every: 10s
    queue: jobs
    amqp: {url: "amqp://other@rabbit.internal/prod", exchange: tasks, routing_key: b}
  plain:
    task: t.c
    every: 10s
"""


def load(tmp_path: Path, text: str) -> dict[str, AmqpTarget | None]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return {name: e.amqp for name, e in load_config([str(path)]).entries.items()}


def refusal(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config([str(path)])
    return str(caught.value).replace(str(path), "s.yaml").splitlines()


def test_an_entry_takes_its_queues_destination_unless_it_names_one(tmp_path: Path) -> None:
    assert load(tmp_path, ROUTED) == {
        "inherits": AmqpTarget("amqp://app@rabbit.internal//"),
        "own": AmqpTarget("amqp://other@rabbit.internal/prod", "tasks", "b"),
        "plain": None,
    }


def test_the_route_defaults_to_the_queue_name_as_celerys_does() -> None:
    target = AmqpTarget("amqp://h//")
    assert (target.exchange_for("reports"), target.routing_key_for("reports")) == (
        "reports",
        "reports",
    )
    default_exchange = AmqpTarget("amqp://h//", exchange="")
    assert default_exchange.exchange_for("reports") == ""


def test_a_password_in_a_schedule_file_is_refused(tmp_path: Path) -> None:
    text = ROUTED.replace("amqp://app@", "amqp://app:s3cret@")
    assert refusal(tmp_path, text) == [
        "s.yaml:4:11: field amqp: url must not hold a password (a schedule file is no place "
        "for one): give it with --amqp-password or BEATD_AMQP_PASSWORD, or in the Celery "
        "config's broker_url"
    ]


def test_destinations_that_cannot_work_are_refused_together(tmp_path: Path) -> None:
    text = """\
entries:
  beatd-format:
    task: t.a
    every: 10s
    amqp: amqp://h//
  skip-overlap:
    task: t.b
    every: 10s
    protocol: celery
    overlap: skip
    amqp: amqp://h//
  typo:
    task: t.c
    every: 10s
    protocol: celery
    amqp: {url: "amqp://h//", exchang: x}
  not-amqp:
    task: t.d
    every: 10s
    protocol: celery
    amqp: redis://h/0
"""
    assert refusal(tmp_path, text) == [
        "s.yaml:16:11: entry typo: field amqp: unknown key 'exchang': expected url, exchange, "
        "routing_key; did you mean 'exchange'?",
        "s.yaml:21:11: entry not-amqp: field amqp: cannot use AMQP URL redis://h/0: the scheme "
        "must be amqp://, amqps:// or pyamqp://",
    ]
    text = "\n".join(text.splitlines()[:11]) + "\n"  # the others, once those are fixed
    assert refusal(tmp_path, text) == [
        "s.yaml:2:1: entry beatd-format: field amqp: an AMQP destination takes Celery's "
        "messages, but the protocol is beatd; set protocol: celery",
    ]  # overlap: skip is taken: Celery's task events on RabbitMQ end its runs


CELERY_ON_RABBITMQ = """
broker_url = "amqp://app:s3cret@rabbit.internal:5672//"
beat_schedule = {
    "ping": {"task": "tasks.ping", "schedule": 30.0},
    "report": {"task": "tasks.report", "schedule": 60.0, "options": {"queue": "reports"}},
}
"""


def test_an_amqp_broker_url_is_the_celery_entries_destination_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "celeryconfig_rabbit.py").write_text(CELERY_ON_RABBITMQ)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "celeryconfig_rabbit", raising=False)
    config = load_config([], celery_config="celeryconfig_rabbit")
    assert {name: (e.queue, e.amqp) for name, e in config.entries.items()} == {
        "ping": ("celery", AmqpTarget("amqp://app@rabbit.internal:5672//")),
        "report": ("reports", AmqpTarget("amqp://app@rabbit.internal:5672//")),
    }
    assert "s3cret" not in repr(config)


def test_the_outbox_queue_is_no_entrys_queue(tmp_path: Path) -> None:
    text = "entries:\n  sneaky:\n    task: t.a\n    every: 10s\n    queue: amqp.outbox\n"
    assert refusal(tmp_path, text) == [
        "s.yaml:2:1: entry sneaky: field queue: amqp.outbox is beatd's outbox for RabbitMQ; "
        "name another queue"
    ]


def test_check_warns_that_overlap_on_a_rabbitmq_entry_needs_events(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "entries:\n"
        "  a: {task: t.a, every: 1m, protocol: celery, overlap: buffer_one, amqp: 'amqp://h//'}\n"
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    assert (result.exit_code, result.stderr) == (
        0,
        f"{path}:2:56: entry a: field overlap: warning: overlap: buffer_one on a "
        "Celery-protocol entry sees a run end only through Celery's events, so its workers must "
        "be started with -E (else each run counts as busy until overlap_timeout)\n",
    )


def celery_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> str:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_a_failover_broker_url_list_naming_rabbitmq_is_refused_with_passwords_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        'broker_url = ["amqp://app:s3cret@h1//", "amqp://app:s3cret@h2//"]\n'
        'beat_schedule = {"tick": {"task": "t.a", "schedule": 10.0}}\n'
    )
    module = celery_module(tmp_path, monkeypatch, "celeryconfig_failover", text)
    with pytest.raises(ConfigError) as caught:
        load_config([], celery_config=module)
    path = str(tmp_path / f"{module}.py")
    assert str(caught.value) == (
        f"{path}:1:1: broker_url 'amqp://app:***@h1//;amqp://app:***@h2//' lists failover "
        "brokers (Celery's 'URL;URL' or a list): beatd publishes to one RabbitMQ broker; give "
        "broker_url a single amqp:// URL"
    )


def test_a_failover_broker_url_of_redis_brokers_is_left_alone_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """broker_url names RabbitMQ only for the AMQP destination; Redis failover lists were
    never read (--broker is the store) and still load."""
    text = (
        'broker_url = "redis://h1:6379/0;redis://h2:6379/0"\n'
        'beat_schedule = {"tick": {"task": "t.a", "schedule": 10.0, "options": {"priority": 0}}}\n'
    )
    module = celery_module(tmp_path, monkeypatch, "celeryconfig_redis_failover", text)
    entry = load_config([], celery_config=module).entries["tick"]
    assert (entry.amqp, entry.priority) == (None, 9)  # Redis's 0 is beatd's 9


def test_an_amqp_entry_priority_out_of_range_names_rabbitmqs_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        'broker_url = "amqp://app@h1//"\n'
        'beat_schedule = {"tick": {"task": "t.a", "schedule": 10.0, "options": {"priority": 12}}}\n'
    )
    module = celery_module(tmp_path, monkeypatch, "celeryconfig_amqp_priority", text)
    with pytest.raises(ConfigError) as caught:
        load_config([], celery_config=module)
    assert "(Celery's scale: 9 highest on RabbitMQ)" in str(caught.value)
