"""Profile a scenario with py-spy and summarise where its time goes.

    python -m bench.profile throughput '{"url": "redis://...", "count": 100000}' [--under _publish]

runs the scenario under `py-spy record` (from the peers' venv), child processes such as a
`beatd run` included, writes the collapsed stacks to `bench/results/profile-NAME.raw.txt` (not
committed) and a summary to `profile-NAME.summary.txt`: the functions with the largest inclusive
and self share of the samples, optionally only those under a frame whose name contains `--under`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.peers import ensure_venv, py_spy

RESULTS = Path(__file__).resolve().parent / "results"


def record(scenario: str, params: str, out: Path, rate: int = 200) -> Path:
    ensure_venv()
    raw = out.with_suffix(".raw.txt")
    command = [sys.executable, "-m", "bench.common", scenario, params]
    spy = str(py_spy())
    spy_args = [spy, "record", "--subprocesses", "-r", str(rate), "--format", "raw"]
    subprocess.run([*spy_args, "-o", str(raw), "--", *command], check=True)
    return raw


def summarise(raw: Path, under: str | None = None, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_short(f) for f in stack.split(";")]
        if under is not None:
            at = next((i for i, f in enumerate(frames) if under in f), None)
            if at is None:
                continue
            frames = frames[at:]
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples" + (f" under {under}" if under else "")]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py)`; line numbers vary by sample."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("params")
    parser.add_argument("--under", help="only samples below a frame whose name contains this")
    parser.add_argument("--name", default=None, help="output file stem under bench/results/")
    args = parser.parse_args()
    out = RESULTS / f"profile-{args.name or args.scenario}"
    RESULTS.mkdir(exist_ok=True)
    raw = record(args.scenario, args.params, out)
    summary = summarise(raw, args.under)
    out.with_suffix(".summary.txt").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
