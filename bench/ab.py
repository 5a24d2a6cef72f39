"""Compare two revisions (or one revision under two settings) with interleaved bench runs.

    python -m bench.ab BASE_REV HEAD_REV [--rounds 5] [--scenarios throughput,burst,steady,worker]
                       [--backends sqlite,redis] [--head-env BEATD_HISTORY=0] ...
    python -m bench.ab --report bench/results/ab-DATE-BASE-HEAD.json   # the table again

Each revision is checked out into its own temporary detached `git worktree` (removed at the
end), and every scenario run is that revision's own bench code against its own beatd
(`python -m bench.common MODULE PARAMS_JSON` with cwd and PYTHONPATH = its worktree, on this
venv's python), because the API the bench calls changes between revisions. The revisions must
declare the same dependencies, since both run on this venv. Each round runs every metric on
every backend for both sides back to back, `--repeat` times (which side goes first alternates
from pair to pair), on a fresh SQLite file or this bench's own flushed redis-server; per round
and side the best run counts. The tables (by the metrics, then the wall-time metrics by CPU per
run) go to stdout, progress to stderr, every result to `bench/results/ab-DATE-BASE-HEAD.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.abstats import (
    Comparison,
    Metric,
    Sizes,
    Step,
    compare,
    interleave,
    markdown,
    metrics,
)
from bench.redisserver import RedisServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BACKENDS = ("sqlite", "redis")
JOB_TIMEOUT = 600
RESULT_MARK = "BENCH-RESULT "
CPU_NOTE = (
    "The same runs by their CPU per run: another process on the machine slows wall time more "
    "than CPU time, so a wall-time ratio outside the band beside a CPU ratio within it points at "
    "the machine rather than the code."
)


class UsageError(Exception):
    """Input the comparison cannot run with (exit 2)."""


@dataclass
class Side:
    """One side of the comparison: a revision plus extra environment and scenario parameters."""

    name: str
    rev: str
    commit: str
    env: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    checkout: Path | None = None


# --- the command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("base", nargs="?", help="the revision to compare against")
    parser.add_argument("head", nargs="?", help="the revision under test")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per side and round; the best counts (3)"
    )
    parser.add_argument(
        "--scenarios",
        default="throughput,burst,steady",
        help="comma-separated metrics: throughput, burst, steady (the default) and worker",
    )
    parser.add_argument("--backends", default="sqlite,redis", help="comma-separated (both)")
    parser.add_argument("--tolerance", type=float, default=5.0, help="verdict band in %% (5)")
    for side in ("base", "head"):
        parser.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for the {side} side's runs (repeatable)",
        )
        parser.add_argument(
            f"--{side}-param",
            action="append",
            default=[],
            metavar="NAME=JSON",
            help=f"a scenario parameter for the {side} side's runs (repeatable)",
        )
    defaults = Sizes()
    sizes = {
        "throughput_count": "entries due at once for the throughput figure",
        "burst_count": "simultaneous runs timed for the burst figure",
        "steady_count": "entries of the steady load",
        "steady_runs": "runs the steady load publishes",
        "worker_count": "no-op runs the bundled worker drains (metric worker, not run by default)",
    }
    for name, text in sizes.items():
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=default, help=f"{text} ({default:,})")
    parser.add_argument("--report", type=Path, help="print the table of an earlier JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        if args.report:
            print(report(json.loads(args.report.read_text())))
            return 0
        plan = Plan.from_args(args)
    except (UsageError, OSError, ValueError) as exc:
        print(f"bench.ab: {exc}", file=sys.stderr)
        return 2
    try:
        results = plan.run()
    except (RuntimeError, UsageError) as exc:
        print(f"bench.ab: {exc}", file=sys.stderr)
        return 1
    path = write(results)
    print(report(results))
    _say(f"wrote {path.relative_to(REPO)}")
    failed = sum(1 for run in results["runs"] if "error" in run["result"])
    return 1 if failed else 0


# --- what to run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    sides: dict[str, Side]
    metrics: dict[str, Metric]
    backends: list[str]
    rounds: int
    repeat: int
    tolerance: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if not args.base or not args.head:
            raise UsageError("give BASE_REV and HEAD_REV (or --report FILE)")
        for flag in ("rounds", "repeat"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} {getattr(args, flag)}: must be at least 1")
        sizes = Sizes(
            args.throughput_count,
            args.burst_count,
            args.steady_count,
            args.steady_runs,
            args.worker_count,
        )
        known = metrics(sizes)
        chosen = _choose("--scenarios", args.scenarios, list(known))
        backends = _choose("--backends", args.backends, list(BACKENDS))
        sides = {
            name: Side(
                name,
                rev,
                resolve(rev),
                _pairs(getattr(args, f"{name}_env"), f"--{name}-env", json_values=False),
                _pairs(getattr(args, f"{name}_param"), f"--{name}-param", json_values=True),
            )
            for name, rev in (("base", args.base), ("head", args.head))
        }
        check_dependencies(sides["base"].commit, sides["head"].commit)
        metric_map = {name: known[name] for name in chosen}
        return cls(sides, metric_map, backends, args.rounds, args.repeat, args.tolerance / 100)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        results: dict[str, Any] = {
            "tool": "bench.ab",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()},
            "rounds": self.rounds,
            "repeat": self.repeat,
            "tolerance": self.tolerance,
            "backends": self.backends,
            "metrics": {name: asdict(m) for name, m in self.metrics.items()},
        }
        with (
            tempfile.TemporaryDirectory(prefix="beatd-ab-") as tmp,
            checkouts(self.sides.values(), Path(tmp)),
        ):
            for side in self.sides.values():
                check_checkout(side, {m.module for m in self.metrics.values()})
            results["sides"] = {n: _side_record(s) for n, s in self.sides.items()}
            results["runs"] = self._run_steps(Path(tmp))
        results["machine"]["load_after"] = os.getloadavg()
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        return results

    def _run_steps(self, work: Path) -> list[dict[str, Any]]:
        steps = interleave(self.rounds, list(self.metrics), self.backends, self.repeat)
        server = RedisServer(work / "redis").start() if "redis" in self.backends else None
        runs = []
        try:
            for index, step in enumerate(steps, 1):
                metric, side = self.metrics[step.metric], self.sides[step.side]
                began = time.monotonic()
                result = run_step(step, metric, side, server, work / f"step-{index}")
                wall = time.monotonic() - began
                record = {**asdict(step), "order": index, "wall_s": round(wall, 2)}
                runs.append({**record, "result": result})
                brief = _brief(metric, result)
                _say(f"[{index}/{len(steps)}] {_label(step)}: {brief} ({wall:.1f} s)")
        finally:
            if server is not None:
                server.stop()
        return runs


def _choose(flag: str, text: str, known: list[str]) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise UsageError(f"{flag} {text}: choose from {', '.join(known)}")
    return chosen


def _pairs(items: Sequence[str], flag: str, *, json_values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {item}: expected NAME=VALUE")
        try:
            out[name] = json.loads(value) if json_values else value
        except json.JSONDecodeError:
            hint = f"{name}='\"{value}\"'"
            raise UsageError(
                f"{flag} {item}: the value is not JSON (a string needs quotes: {hint})"
            ) from None
    return out


# --- revisions and their checkouts ---------------------------------------------------------------


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except UsageError:
        raise UsageError(f"{rev}: not a commit of this repository") from None


def check_dependencies(base: str, head: str) -> None:
    """Both revisions run on this venv, so they must declare the same dependencies."""
    declared = {commit: _dependencies(commit) for commit in (base, head)}
    only_base = sorted(declared[base] - declared[head])
    only_head = sorted(declared[head] - declared[base])
    if only_base or only_head:
        raise UsageError(
            f"the revisions declare different dependencies in pyproject.toml: base {base[:10]} "
            f"has {', '.join(only_base) or 'nothing else'}, head {head[:10]} has "
            f"{', '.join(only_head) or 'nothing else'}; both sides run on this venv's packages, "
            "so compare revisions whose dependencies are equal"
        )


def _dependencies(commit: str) -> set[str]:
    """`requires-python` and `dependencies` of the revision's pyproject.toml."""
    project = tomllib.loads(git("show", f"{commit}:pyproject.toml"))["project"]
    return {f"python{project.get('requires-python', '')}", *project.get("dependencies", [])}


@contextmanager
def checkouts(sides: Iterable[Side], work: Path) -> Iterator[None]:
    """One detached worktree per distinct commit (shared by sides on the same commit), removed
    on the way out whatever happened."""
    made: dict[str, Path] = {}
    try:
        for side in sides:
            if side.commit not in made:
                path = work / f"rev-{side.commit[:10]}"
                git("worktree", "add", "--detach", "--quiet", str(path), side.commit)
                made[side.commit] = path
            side.checkout = made[side.commit]
        yield
    finally:
        for path in made.values():
            git("worktree", "remove", "--force", str(path))


def check_checkout(side: Side, modules: Iterable[str]) -> None:
    """The checkout has the scenarios, and the child really imports the checkout's beatd and
    bench, not this venv's install."""
    assert side.checkout is not None
    missing = [m for m in sorted(modules) if not (side.checkout / _scenario(m)).exists()]
    if missing:
        raise RuntimeError(
            f"{side.name} {side.rev}: {', '.join(_scenario(m) for m in missing)} not found "
            "in that revision; compare revisions that have these scenarios"
        )
    probe = "import beatd, bench.common; print(beatd.__file__); print(bench.common.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=side.checkout,
        env=_env(side),
    )
    paths = [Path(line).resolve() for line in done.stdout.split()]
    root = side.checkout.resolve()
    if done.returncode != 0 or len(paths) != 2 or not all(p.is_relative_to(root) for p in paths):
        raise RuntimeError(
            f"{side.name} {side.rev}: the bench child does not import beatd and bench from its "
            f"checkout {root}: {done.stdout.strip() or done.stderr.strip()[-500:]}"
        )


def _scenario(module: str) -> str:
    return f"bench/scenarios/{module}.py"


def _env(side: Side) -> dict[str, str]:
    assert side.checkout is not None
    return {**os.environ, **side.env, "PYTHONPATH": str(side.checkout)}


def _side_record(side: Side) -> dict[str, Any]:
    return {"rev": side.rev, "commit": side.commit, "env": side.env, "params": side.params}


# --- one run -------------------------------------------------------------------------------------


def run_step(
    step: Step, metric: Metric, side: Side, server: RedisServer | None, workdir: Path
) -> dict[str, Any]:
    """One scenario run of `side`'s own bench code; its BENCH-RESULT, or {"error": ...}."""
    assert side.checkout is not None
    workdir.mkdir(parents=True)
    params: dict[str, Any] = {**metric.params, **side.params, "workdir": str(workdir)}
    if step.backend == "sqlite":
        params["url"] = f"sqlite:///{workdir}/beatd.db"
    else:
        assert server is not None
        server.flush()
        params.update(url=server.url, redis_pid=server.pid)
    command = [sys.executable, "-m", "bench.common", metric.module, json.dumps(params)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT,
            cwd=side.checkout,
            env=_env(side),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {JOB_TIMEOUT} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            if not isinstance(result.get(metric.field), int | float):
                result["error"] = f"the result has no figure {metric.field!r}"
            return result
    return {"error": (done.stderr or done.stdout)[-2000:] or f"exit status {done.returncode}"}


# --- the output ----------------------------------------------------------------------------------


def comparisons(results: dict[str, Any], *, cpu: bool = False) -> list[Comparison]:
    """Per metric and backend, the figures of every round from a results document; with `cpu`,
    the same runs' CPU per run for the metrics whose figure is wall time."""
    out = []
    for spec in results["metrics"].values():
        metric: Metric | None = Metric(**spec)
        if cpu:
            metric = metric.on_cpu() if metric else None
        if metric is None:
            continue
        figures: dict[Step, float | None] = {}
        for run in results["runs"]:
            if run["metric"] == metric.name:
                figures[_step(run)] = (
                    None if "error" in run["result"] else run["result"][metric.field]
                )
        out += [compare(metric, b, results["rounds"], figures) for b in results["backends"]]
    return out


def _step(run: dict[str, Any]) -> Step:
    return Step(run["round"], run["metric"], run["backend"], run["side"], run["repeat"])


def report(results: dict[str, Any]) -> str:
    sides = results["sides"]
    load = results["machine"]["load_before"][0], results["machine"]["load_after"][0]
    head = (
        f"BASE = {_describe(sides['base'])}, HEAD = {_describe(sides['head'])}; "
        f"{results['rounds']} interleaved round(s) of {results['repeat']} run(s) per side "
        f"on {results['machine']['cores']} cores in {results['elapsed_s']:.0f} s, "
        f"{results['date']}, load {load[0]:.2f}/{load[1]:.2f}. Per round and side the best run "
        "counts; HEAD/BASE is taken per round, and its median is the verdict."
    )
    failed = [run for run in results["runs"] if "error" in run["result"]]
    errors = [
        f"- {_label(_step(run))}: " + run["result"]["error"].strip().splitlines()[-1][:300]
        for run in failed
    ]
    parts = [head, "", markdown(comparisons(results), results["tolerance"])]
    on_cpu = comparisons(results, cpu=True)
    if on_cpu:
        parts += ["", CPU_NOTE, "", markdown(on_cpu, results["tolerance"])]
    if errors:
        parts += ["", f"{len(errors)} run(s) failed:", *errors]
    return "\n".join(parts)


def _describe(record: dict[str, Any]) -> str:
    extra = [f"{k}={v}" for k, v in record["env"].items()]
    extra += [f"{k}={json.dumps(v)}" for k, v in record["params"].items()]
    text = f"{record['rev']} ({record['commit'][:10]})"
    return text + (f" with {' '.join(extra)}" if extra else "")


def write(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(results["date"]).strftime("%Y-%m-%d-%H%M")
    base, head = (results["sides"][s]["commit"][:7] for s in ("base", "head"))
    path = RESULTS / f"ab-{stamp}-{base}-{head}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def _label(step: Step) -> str:
    return f"round {step.round} run {step.repeat} {step.metric} {step.backend} {step.side}"


def _brief(metric: Metric, result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + str(result["error"]).strip().splitlines()[-1][:200]
    return f"{metric.field}={result[metric.field]:g}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
