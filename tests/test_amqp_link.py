"""Reading AMQP URLs as Celery does, and keeping the password out of sight."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from beatd.amqp_link import AmqpLink, AmqpUrlError, connect, has_password, parse_amqp_url, redact

RABBITMQ = "amqp://127.0.0.1:5672//"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "amqp://guest:guest@localhost:5672//",
            AmqpLink("localhost", 5672, "/", "guest", "guest"),
            id="celery_default_double_slash",
        ),
        pytest.param("amqp://h", AmqpLink("h", 5672, "/", "guest", "guest"), id="all_defaults"),
        pytest.param("amqp://h/", AmqpLink("h", 5672, "/", "guest", "guest"), id="empty_vhost"),
        pytest.param(
            "amqp://h/%2Fprod", AmqpLink("h", 5672, "/prod", "guest", "guest"), id="escaped_slash"
        ),
        pytest.param(
            "amqps://app@h/jobs", AmqpLink("h", 5671, "jobs", "app", "guest", tls=True), id="tls"
        ),
        pytest.param(
            "pyamqp://h:5673/?heartbeat=0",
            AmqpLink("h", 5673, "/", "guest", "guest", heartbeat=0),
            id="pyamqp_heartbeat_off",
        ),
    ],
)
def test_urls_read_as_celery_reads_them(url: str, expected: AmqpLink) -> None:
    assert parse_amqp_url(url) == expected


def test_the_password_in_the_url_wins_over_the_given_one() -> None:
    assert parse_amqp_url("amqp://app:s%40cret@h//", password="other").password == "s@cret"
    assert parse_amqp_url("amqp://app@h//", password="other").password == "other"
    assert parse_amqp_url("amqp://app@h//").password == "guest"


def test_the_password_is_never_shown() -> None:
    link = parse_amqp_url("amqp://app:secret@h:5672/jobs")
    assert "secret" not in repr(link)
    assert link.shown == "amqp://app@h:5672/jobs"
    assert parse_amqp_url("amqp://h//").shown == "amqp://guest@h:5672/%2F"
    assert redact("amqp://app:secret@h:5672//") == "amqp://app:***@h:5672//"
    assert redact("amqp://app@h//") == "amqp://app@h//"
    assert has_password("amqp://app:secret@h//")
    assert not has_password("amqp://app@h//")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://h",
            "cannot use AMQP URL redis://h: the scheme must be amqp://, amqps:// or pyamqp://",
        ),
        ("amqp:///", "cannot use AMQP URL amqp:///: it names no host"),
        (
            "amqp://u:pw@h/?ssl=1",
            "cannot use AMQP URL amqp://u:***@h/?ssl=1: unknown option 'ssl'; the one option is "
            "heartbeat (seconds, 0 for none)",
        ),
        (
            "amqp://h/?heartbeat=often",
            "cannot use AMQP URL amqp://h/?heartbeat=often: heartbeat must be whole seconds, "
            "got 'often'",
        ),
        (
            "amqp://h:port/",
            "cannot read AMQP URL amqp://h:port/: its host or port is malformed (the port is a "
            "number from 1 to 65535)",
        ),
    ],
)
def test_unusable_urls_are_refused_redacted(url: str, message: str) -> None:
    with pytest.raises(AmqpUrlError) as caught:
        parse_amqp_url(url)
    assert str(caught.value) == message


def test_connects_to_the_machines_rabbitmq() -> None:
    connection = connect(parse_amqp_url(RABBITMQ), timeout=5)
    try:
        assert connection.is_open
    finally:
        connection.close()


def test_without_the_client_beatd_run_stops_naming_the_extra(tmp_path: Path) -> None:
    """pika made unimportable, as where `beatd[amqp]` is not installed."""
    schedule = tmp_path / "s.yaml"
    schedule.write_text(
        "entries:\n  e: {task: t.a, every: 10s, protocol: celery, amqp: 'amqp://h//'}\n"
    )
    code = "import sys; sys.modules['pika'] = None; from beatd.cli import main; main()"
    argv = [sys.executable, "-c", code, "run", "-s", str(schedule), "--no-watch"]
    argv += ["--broker", f"sqlite:///{tmp_path / 'b.db'}", "--metrics-addr", "off"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "beatd: --schedules: an AMQP destination needs the pika package, which is not "
        "installed: pip install 'beatd[amqp]'"
    )
