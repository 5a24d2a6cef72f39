"""Test-wide settings: daemons started by tests serve no metrics unless a test asks."""

from __future__ import annotations

import os

# Several `beatd run` and `beatd worker` processes run at once in these tests; on the default
# metrics ports they would collide. Tests of the metrics server pass --metrics-addr themselves.
os.environ["BEATD_METRICS_ADDR"] = "off"
