"""APScheduler 3: a BackgroundScheduler whose jobs push beatd's run message to a Redis list.

    python apscheduler_driver.py REDIS_URL SPEC_JSON

Interval jobs start at the same epoch-anchored grid as beatd's entries (`start_date`), cron jobs
use the same crontab expression. Each run LPUSHes one JSON message (as a user's job would: one
round trip) to the list `apscheduler:queue`. Defaults otherwise (thread pool of 10,
misfire_grace_time 1 s).
"""

import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUEUE = "apscheduler:queue"


def main(url, spec_path):
    client = redis.Redis.from_url(url)
    with open(spec_path) as f:
        spec = json.load(f)

    def push(name, every, offset):
        now = time.time()
        slot = now - (now - offset) % every if every else now - now % 60
        stamp = datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = {
            "v": 1,
            "id": f"{name}@{stamp}",
            "task": "bench.noop",
            "args": [name],
            "kwargs": {},
            "entry": name,
            "scheduled_for": stamp,
            "published_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "expires_at": None,
            "queue": "default",
            "priority": None,
            "headers": {},
            "attempt": 1,
            "published_ts": now,
        }
        client.lpush(QUEUE, json.dumps(message, separators=(",", ":")))

    scheduler = BackgroundScheduler(timezone=UTC)
    for item in spec:
        if "cron" in item:
            trigger = CronTrigger.from_crontab(item["cron"], timezone=UTC)
            args = (item["name"], 0, 0)
        else:
            start = EPOCH + timedelta(seconds=item["offset"])
            trigger = IntervalTrigger(seconds=item["every"], start_date=start, timezone=UTC)
            args = (item["name"], item["every"], item["offset"])
        scheduler.add_job(push, trigger, args=args, id=item["name"])
    scheduler.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    scheduler.shutdown(wait=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
