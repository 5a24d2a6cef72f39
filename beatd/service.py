"""Process glue for the daemons: logging set-up, signals and schedule-file watching."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

SCHEDULE_SUFFIXES = (".yaml", ".yml", ".py")


# What every LogRecord has; anything else on a record came from `extra=` and is an event field.
_RECORD_ATTRIBUTES = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName"]
)
# Libraries that log at INFO on their own ("1 change detected"): their warnings still show.
QUIET_LIBRARIES = ("watchfiles", "redis", "prometheus_client", "urllib3")
# pika logs each failed connection attempt as an error with a traceback; the AMQP relay says an
# outage once as it begins and once as it ends (beatd.amqp_relay), so pika's own stay unsaid
SILENT_LIBRARIES = ("pika",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, exc, and the record's event fields
    (given with `extra=`: a worker outcome's task, id, outcome, duration; a publish's entry and
    slot) as keys of their own, so a log shipper need not parse `msg`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                data.setdefault(key, value)
        return json.dumps(data, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, on stderr; no timestamps of our own under journald.

    Task code logs at `level` as beatd does; the libraries beatd uses log their warnings and
    errors only (pika nothing: beatd says what its errors mean), unless `level` is debug.
    """
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    debug = level.upper() == "DEBUG"
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.NOTSET if debug else logging.WARNING)
    for library in SILENT_LIBRARIES:
        logging.getLogger(library).setLevel(logging.NOTSET if debug else logging.CRITICAL)


def on_signals(stop: threading.Event, wake: threading.Event, reload: Callable[[], None]) -> None:
    """SIGTERM/SIGINT stop the loop; SIGHUP reloads the configuration."""

    def stop_handler(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received %s, stopping", signal.Signals(signum).name)
        stop.set()
        wake.set()

    def reload_handler(_signum: int, _frame: FrameType | None) -> None:
        reload()

    signal.signal(signal.SIGTERM, stop_handler)
    signal.signal(signal.SIGINT, stop_handler)
    signal.signal(signal.SIGHUP, reload_handler)


def watch_schedule_files(
    paths: Sequence[str], stop: threading.Event, changed: Callable[[], None]
) -> threading.Thread:
    """Call `changed` when a schedule file under `paths` is written, added or removed."""
    from watchfiles import watch

    targets = [str(Path(p).resolve()) for p in paths if Path(p).exists()]

    def interesting(_change: object, path: str) -> bool:
        return path.endswith(SCHEDULE_SUFFIXES)

    def loop() -> None:
        for _changes in watch(*targets, watch_filter=interesting, stop_event=stop, debounce=300):
            changed()

    thread = threading.Thread(target=loop, name="beatd-watch", daemon=True)
    if targets:
        thread.start()
    return thread


def stop_watching(watcher: threading.Thread, timeout: float = 5.0) -> None:
    """Wait for the watcher to see its stop event (set by the caller) and end.

    Its thread spends its life inside watchfiles' native code; left running while the
    interpreter exits, older watchfiles releases (0.21) abort the whole process there (exit
    status -6 instead of 0, 1 or 3), so the daemon ends it before exiting.
    """
    if watcher.is_alive():
        watcher.join(timeout)
        if watcher.is_alive():
            logging.getLogger(__name__).warning(
                "the schedule-file watcher did not stop within %g s", timeout
            )
