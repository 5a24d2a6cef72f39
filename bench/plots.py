"""PNG plots from a results file; run by the peers' venv Python, where matplotlib lives.

    bench/.peers/bin/python bench/plots.py RESULTS.json OUT_DIR PREFIX

Prints the names of the files written, one a line.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {
    "beatd": "#1f77b4",
    "celery-beat": "#d62728",
    "redbeat": "#ff7f0e",
    "apscheduler": "#2ca02c",
    "sqlite": "#9467bd",
    "redis": "#1f77b4",
    "postgresql": "#17becf",
}


def throughput(results, out):
    rows = [r for r in results["scenarios"].get("throughput", []) if "error" not in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for backend in ("sqlite", "redis", "postgresql"):
        pts = sorted((r["entries"], r["runs_per_s"]) for r in rows if r["backend"] == backend)
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=f"beatd on {backend}", color=COLOURS[backend])
    ax.axhline(50_000, linestyle="--", color="grey", label="target on Redis: 50,000 runs/s")
    ax.set_xscale("log")
    ax.set_xlabel("entries all due at one instant")
    ax.set_ylabel("published runs per second")
    ax.set_ylim(bottom=0)
    ax.set_title("Publish throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def delay(results, out):
    steady = [
        r
        for r in results["scenarios"].get("compare", [])
        if r.get("mode") == "steady" and "error" not in r
    ]
    if not steady:
        return None
    largest = max(r["entries"] for r in steady)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in steady:
        if r["entries"] != largest:
            continue
        if not r["samples"]["delay_s"]:
            label = f"{r['tool']} ({r['landed_pct']:g}% landed, no entry sent twice)"
            ax.plot([], [], label=label, color=COLOURS.get(r["tool"]))
            continue
        xs = sorted(max(x, 1e-4) for x in r["samples"]["delay_s"])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        label = f"{r['tool']} ({r['landed_pct']:g}% landed)"
        ax.step(xs, ys, where="post", label=label, color=COLOURS.get(r["tool"]))
    ax.set_xscale("log")
    ax.set_xlabel("publish delay, seconds (log)")
    ax.set_ylabel("share of published runs")
    ax.set_title(f"Delay distribution, {largest:,} entries every 1-60 s, same Redis")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    out_dir, prefix = Path(sys.argv[2]), sys.argv[3]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in (("throughput", throughput), ("delay", delay)):
        written = draw(results, out_dir / f"{prefix}{name}.png")
        if written:
            print(written.name)


if __name__ == "__main__":
    main()
