"""The Celery app for `celery beat` and RedBeat, configured from the environment.

`BENCH_SPEC` is the workload (see bench/workload.py), `BENCH_REDIS` the broker. Each published
task message gets two headers from a `before_task_publish` handler: the entry it is for and the
time it was sent, so the harness can read delays straight from the broker.
"""

import json
import os
import time
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab
from celery.signals import before_task_publish

REDIS = os.environ["BENCH_REDIS"]
app = Celery("benchapp", broker=REDIS)
app.conf.update(
    timezone="UTC",
    enable_utc=True,
    redbeat_redis_url=REDIS,
    broker_connection_retry_on_startup=True,
)


def _schedule(item):
    if "cron" in item:
        minute, hour, day, month, weekday = item["cron"].split()
        return crontab(
            minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday
        )
    return timedelta(seconds=item["every"])


with open(os.environ["BENCH_SPEC"]) as f:
    app.conf.beat_schedule = {
        item["name"]: {"task": "bench.noop", "schedule": _schedule(item), "args": (item["name"],)}
        for item in json.load(f)
    }


@before_task_publish.connect
def stamp(sender=None, body=None, headers=None, **kwargs):
    headers["bench_published_at"] = time.time()
    args = body[0] if isinstance(body, tuple | list) else ()
    headers["bench_entry"] = args[0] if args else None
