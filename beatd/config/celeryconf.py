"""Reading a Celery configuration (`beatd run --celery-config MODULE`) as `celery beat` would.

MODULE is a Celery config module (`celeryconfig`, with `beat_schedule`, `timezone`,
`broker_url`), or `MODULE:ATTR` naming a Celery app (its `conf` is read) or a mapping. Importing
it runs its code, as `celery beat` does; beatd itself never imports celery.

Entries go to Celery's default queue `celery` unless `options.queue` says otherwise, and are
published in Celery's message protocol. An `amqp://` broker_url (RabbitMQ) is the AMQP
destination of every entry (its password, if any, is the relay's, never the configuration's);
an entry's `exchange` and `routing_key` options route it there, and its `priority` is taken as
is (RabbitMQ's 9 is highest, as beatd's). A failover broker_url naming RabbitMQ (Celery's
`URL;URL`, or a list) is refused: beatd publishes to one broker.
The old upper-case names (`CELERYBEAT_SCHEDULE`,
`CELERY_TIMEZONE`, `BROKER_URL`) are read too, with a warning naming the new one.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beatd.amqp_link import is_amqp_url, redact, without_password
from beatd.config.convert import to_timezone
from beatd.config.model import AmqpTarget
from beatd.config.pyfile import _line_of, _read_entry
from beatd.config.source import SourceFile
from beatd.errors import Problem

log = logging.getLogger(__name__)

# new name -> the old upper-case names Celery 3 used, which Celery 5 still reads
SETTINGS = {
    "beat_schedule": ("CELERYBEAT_SCHEDULE",),
    "timezone": ("CELERY_TIMEZONE",),
    "broker_url": ("BROKER_URL", "CELERY_BROKER_URL"),
}


@dataclass
class CeleryConfig:
    source: SourceFile
    broker_url: str | None = None
    hints: list[str] = field(default_factory=list)


def read_celery_config(spec: str, default_timezone: str) -> CeleryConfig:
    """The entries of the Celery configuration `spec` names; problems are collected."""
    module_name, _, attr = spec.partition(":")
    try:
        settings, path = _settings(module_name, attr)
    except Exception as exc:  # the user's code: report whatever it raised
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        message = f"importing the Celery config failed: {type(exc).__name__}: {exc}{where}"
        return CeleryConfig(_failed(spec, message))
    source = SourceFile(path)
    result = CeleryConfig(source)
    values = {name: _setting(settings, name, spec, result.hints) for name in SETTINGS}
    text = Path(path).read_text(encoding="utf-8", errors="replace") if path != spec else ""
    broker = values["broker_url"]
    result.broker_url = broker if isinstance(broker, str) and broker else None
    if _failover(broker):
        message = (
            f"broker_url {_shown(broker)} lists failover brokers (Celery's 'URL;URL' or a list): "
            "beatd publishes to one RabbitMQ broker; give broker_url a single amqp:// URL"
        )
        source.problems.append(Problem(path, *_line_of(text, "broker_url"), message))
        return result
    amqp = None
    if result.broker_url and is_amqp_url(result.broker_url):
        amqp = AmqpTarget(without_password(result.broker_url))
    schedule = values["beat_schedule"]
    if not isinstance(schedule, Mapping) or not schedule:
        message = f"{spec} defines no beat_schedule (or CELERYBEAT_SCHEDULE) entries"
        source.problems.append(Problem(path, 1, 1, message))
        return result
    zone = default_timezone
    if values["timezone"] is not None:
        try:
            zone = to_timezone(values["timezone"])
        except ValueError as exc:
            source.problems.append(Problem(path, *_line_of(text, "timezone"), f"timezone: {exc}"))
    for name, entry in schedule.items():
        position = _line_of(text, str(name)) if text else (1, 1)
        source.entry_lines[str(name)] = position
        locate = lambda _f, _k, p=position: p  # noqa: E731
        _read_entry(source, str(name), entry, zone, locate, celery=True, amqp=amqp)
    return result


def _failover(broker: Any) -> bool:
    """Whether `broker` lists several brokers of which one is RabbitMQ (Celery's failover)."""
    if isinstance(broker, str):
        urls = [u.strip() for u in broker.split(";") if u.strip()]
        return len(urls) > 1 and any(is_amqp_url(u) for u in urls)
    if isinstance(broker, list | tuple):  # a list is failover even of one URL: never read
        return any(isinstance(u, str) and is_amqp_url(u) for u in broker)
    return False


def _shown(broker: Any) -> str:
    urls = broker.split(";") if isinstance(broker, str) else broker
    return repr(";".join(redact(str(u).strip()) for u in urls))


def _settings(module_name: str, attr: str) -> tuple[Mapping[str, Any], str]:
    """The settings mapping and the file it comes from (for locating problems)."""
    if "" not in sys.path:  # like `celery -A`: modules in the working directory are found
        sys.path.insert(0, "")
    module = sys.modules.get(module_name)
    module = importlib.reload(module) if module else importlib.import_module(module_name)
    path = getattr(module, "__file__", None) or module_name
    if not attr:
        return vars(module), path
    target = getattr(module, attr)
    conf = getattr(target, "conf", target)  # a Celery app, or a mapping of settings
    if not isinstance(conf, Mapping):
        raise TypeError(f"{module_name}:{attr} is neither a Celery app nor a mapping")
    return conf, path


def _setting(settings: Mapping[str, Any], name: str, spec: str, hints: list[str]) -> Any:
    value = settings.get(name)
    if value not in (None, {}, ""):
        return value
    for old in SETTINGS[name]:
        value = settings.get(old)
        if value is not None:
            hint = f"{spec}: {old} is Celery's old name for {name}; rename it (read anyway)"
            log.warning("%s", hint)
            hints.append(hint)
            return value
    return None


def _failed(spec: str, message: str) -> SourceFile:
    source = SourceFile(spec)
    source.problems.append(Problem(spec, 1, 1, message))
    return source
