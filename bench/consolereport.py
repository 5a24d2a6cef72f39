"""The report's section on issue 19's console: each page's latency with many entries, and the
steady load's publish delay while a client reads the entries page."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
PAGE_TARGET_MS = 200.0  # p95 over 100 requests of each page (issue 19)
DELAY_SHARE, DELAY_FLOOR_MS = 0.10, 5.0  # the busy p99 within max(10 %, 5 ms) of the idle one


def section(s: dict[str, list[Result]]) -> str:
    rows = s.get("console", [])
    if not rows:
        return "Not measured in this run.\n"
    ok = [r for r in rows if "error" not in r]
    failed = [f"- failed: {r.get('params')}: {r['error'].strip().splitlines()[-1][:200]}"
              for r in rows if "error" in r]  # fmt: skip
    return "\n".join(
        [
            "A real `beatd run` serving the console at `--api-addr`, asked over loopback by a "
            "session signed in with a read token (bench/scenarios/console.py). Pages: each timed "
            "from the request to the last byte, sequentially over one keep-alive connection, "
            "after one unmeasured request, with `entries` runtime entries of issue 18's mix. "
            "Load: the steady-load scenario's entries every 1-60 s, each run a fresh daemon on an "
            "emptied backend, alternately with the console idle and with a client fetching the "
            "entries page 10 times a second; the medians of the runs' p99 publish delays.",
            "",
            _table(["target (issue 19)", "measured", ""], targets(ok)),
            *_pages(ok),
            *failed,
        ]
    )


def targets(rows: list[Result]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["mode"] == "pages":
            worst = max(r["pages_ms"].items(), key=lambda kv: kv[1]["p95"])
            out.append(
                [
                    f"each page's p95 over {r['requests']} requests (fewer if slow), "
                    f"{r['entries']:,} entries on "
                    f"{r['backend']}: ≤ {PAGE_TARGET_MS:g} ms",
                    f"worst {worst[1]['p95']:.1f} ms ({worst[0]})",
                    _verdict(worst[1]["p95"] <= PAGE_TARGET_MS),
                ]
            )
        else:
            allowed = max(DELAY_SHARE * r["idle_p99_ms_median"], DELAY_FLOOR_MS)
            out.append(
                [
                    f"steady-load p99 publish delay ({r['entries']:,} entries on {r['backend']}) "
                    f"with the entries page fetched {r['rate_per_s']:g}/s: within max(10 %, 5 ms) "
                    f"of the idle console's ({r['runs_each']} runs each of {r['window_s']:g} s, "
                    "medians)",
                    f"{r['busy_p99_ms_median']:.1f} ms against {r['idle_p99_ms_median']:.1f} ms "
                    f"({r['difference_ms']:+.1f} ms; allowed {allowed:.1f})",
                    _verdict(r["difference_ms"] <= allowed),
                ]
            )
    return out


def _pages(rows: list[Result]) -> list[str]:
    out = []
    for r in rows:
        if r["mode"] != "pages":
            continue
        out += [
            f"Pages with {r['entries']:,} entries on {r['backend']} (ms; each page timed for at "
            f"most {r.get('params', {}).get('budget_s', 60):g} s; the index built "
            f"{r['index_built_s']:g} s after the daemon started):",
            "",
            _table(
                ["page", "requests", "p50", "p95", "p99", "max"],
                [
                    [name, str(t["n"]), *(f"{t[k]:.1f}" for k in ("p50", "p95", "p99", "max"))]
                    for name, t in r["pages_ms"].items()
                ],
            ),
        ]
    return out


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
