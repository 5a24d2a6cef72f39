"""RedBeat's bulk import for the scale scenario: every entry of a runtime-entries file through
`RedBeatSchedulerEntry(...).save()`, as an application creates them through RedBeat's API.

    python redbeat_import.py REDIS_URL ENTRIES_JSON   # prints {"wall_s", "cpu_s", "entries"}

Runs on the peers' venv. A cron entry's `timezone` is not given to RedBeat: Celery's crontab
takes the app's zone (UTC here), so RedBeat stores the same fields but one zone.
"""

import json
import sys
import time
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatSchedulerEntry


def _schedule(fields):
    if "cron" in fields:
        minute, hour, day, month, weekday = fields["cron"].split()
        return crontab(
            minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday
        )
    return schedule(timedelta(seconds=int(fields["every"].rstrip("s"))))


def main(url, path):
    app = Celery("benchscale", broker=url)
    app.conf.update(timezone="UTC", enable_utc=True, redbeat_redis_url=url)
    with open(path) as f:
        entries = json.load(f)
    wall, cpu = time.perf_counter(), time.process_time()
    for name, fields in entries.items():
        RedBeatSchedulerEntry(
            name, fields["task"], _schedule(fields), args=fields["args"], app=app
        ).save()
    print(
        json.dumps(
            {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "entries": len(entries),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
