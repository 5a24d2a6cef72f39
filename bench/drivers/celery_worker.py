"""The Celery app of scenario 5's Celery worker: the same `bench.noop` as beatd's worker runs.

`BENCH_REDIS` is the broker. Celery's defaults otherwise (prefork pool, prefetch multiplier 4,
acknowledgement on receipt, no result backend); the concurrency, queue and log level are given
on the `celery worker` command line.
"""

import os

from celery import Celery

from bench.taskcount import count_one

app = Celery("benchworker", broker=os.environ["BENCH_REDIS"])
app.conf.update(broker_connection_retry_on_startup=True)


@app.task(name="bench.noop")
def noop(*args, **kwargs):
    count_one()
