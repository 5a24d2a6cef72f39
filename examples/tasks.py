"""Example tasks for the shipped schedules; `beatd run --with-worker` runs them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import beatd


@beatd.task()
def heartbeat() -> str:
    line = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} heartbeat from beatd\n"
    with Path("heartbeat.log").open("a", encoding="utf-8") as log:
        log.write(line)
    return line.strip()


@beatd.task()
def daily_report(region: str, format: str = "pdf") -> str:
    return f"report for {region} as {format}"


@beatd.task()
def cleanup(what: str) -> str:
    return f"cleaned {what}"


@beatd.task()
def weekly_digest() -> str:
    return "digest sent"


@beatd.task()
def greet(text: str) -> str:
    return text
