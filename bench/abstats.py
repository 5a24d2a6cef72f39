"""The pure half of `bench.ab`: which metric is measured how, the interleaved run order, and the
statistics and Markdown table that compare the two sides.

A side is a revision plus extra environment and scenario parameters, so "before/after" and
"the same revision with and without a setting" are the same comparison. Each metric is one
figure of one scenario run; HEAD/BASE is taken per round, so drift of a shared machine that hits
both sides of a round cancels out, and the median of those ratios is the verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

SIDES = ("base", "head")


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure (`field` of a scenario's result) and which way is better."""

    name: str
    label: str
    module: str  # the scenario module under bench/scenarios/
    params: Mapping[str, Any]  # scenario parameters, without url/workdir
    field: str
    unit: str
    higher_is_better: bool
    cpu_field: str | None = None  # the same run's CPU µs per run, where `field` is wall time

    def on_cpu(self) -> Metric | None:
        """The same runs judged by their CPU per run instead of their wall time."""
        if self.cpu_field is None:
            return None
        label = f"{self.label.split(':')[0]}: CPU per run"
        return replace(self, label=label, field=self.cpu_field, unit="µs", higher_is_better=False)

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def best(self, figures: Iterable[float]) -> float:
        """The best of repeated figures: contention on a shared machine only makes a run slower,
        so the best one is the closest to what the code costs."""
        return max(figures) if self.higher_is_better else min(figures)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each metric's workload is; the defaults take about 10 minutes for 5 rounds of
    3 metrics on 2 backends on a 2-core machine."""

    throughput_count: int = 50_000
    burst_count: int = 10_000
    steady_count: int = 10_000
    steady_runs: int = 200_000
    worker_count: int = 5_000


def metrics(sizes: Sizes) -> dict[str, Metric]:
    return {
        "throughput": Metric(
            "throughput",
            f"publish throughput, {sizes.throughput_count:,} runs due at once",
            "throughput",
            {"count": sizes.throughput_count},
            "runs_per_s",
            "runs/s",
            higher_is_better=True,
            cpu_field="cpu_us_per_run",
        ),
        "burst": Metric(
            "burst",
            f"burst, {sizes.burst_count:,} simultaneous runs: time to queue",
            "throughput",
            {"count": sizes.burst_count},
            "publish_wall_s",
            "s",
            higher_is_better=False,
            cpu_field="cpu_us_per_run",
        ),
        "steady": Metric(
            "steady",
            f"steady load, {sizes.steady_count:,} entries: CPU per run",
            "cost",
            {"count": sizes.steady_count, "mode": "steady", "runs": sizes.steady_runs},
            "cpu_us_per_run",
            "µs",
            higher_is_better=False,
        ),
        "worker": Metric(
            "worker",
            f"bundled worker, {sizes.worker_count:,} no-op runs, concurrency 2",
            "worker",
            {"count": sizes.worker_count, "latency_samples": 0},
            "tasks_per_s",
            "runs/s",
            higher_is_better=True,
        ),
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One scenario run: in round `round`, metric `metric` on `backend`, for side `side`, the
    `repeat`-th time."""

    round: int
    metric: str
    backend: str
    side: str
    repeat: int = 0


def interleave(
    rounds: int, metric_names: Sequence[str], backends: Sequence[str], repeats: int = 1
) -> list[Step]:
    """Every round runs every metric on every backend `repeats` times for both sides back to
    back; which side goes first alternates from one pair to the next and from one round to the
    next, so neither side always runs warm."""
    steps = []
    for round_ in range(rounds):
        for metric in metric_names:
            for backend in backends:
                for repeat in range(repeats):
                    order = SIDES if (round_ + repeat) % 2 == 0 else SIDES[::-1]
                    steps += [Step(round_, metric, backend, side, repeat) for side in order]
    return steps


@dataclass(frozen=True, slots=True)
class Comparison:
    """One metric on one backend: each side's figure per round (None where the run failed)."""

    metric: Metric
    backend: str
    base: Sequence[float | None]
    head: Sequence[float | None]
    ratios: list[float] = field(init=False)

    def __post_init__(self) -> None:
        pairs = zip(self.base, self.head, strict=True)
        ratios = [h / b for b, h in pairs if b is not None and h is not None and b > 0]
        object.__setattr__(self, "ratios", ratios)

    @property
    def base_median(self) -> float | None:
        return _median(self.base)

    @property
    def head_median(self) -> float | None:
        return _median(self.head)

    @property
    def ratio_median(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    def verdict(self, tolerance: float) -> str:
        """'within 5 %', or how much HEAD is better or worse (by the median ratio)."""
        ratio = self.ratio_median
        if ratio is None:
            return "no complete round"
        change = abs(ratio - 1) * 100
        if change <= tolerance * 100:
            return f"within {tolerance * 100:g} %"
        improved = (ratio > 1) == self.metric.higher_is_better
        return f"HEAD {change:.1f} % {'better' if improved else 'worse'}"


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def compare(
    metric: Metric, backend: str, rounds: int, figures: Mapping[Step, float | None]
) -> Comparison:
    """The Comparison of one metric on one backend from the figures of every step: per round
    and side, the best of its repeats that did not fail."""
    by_round: dict[tuple[int, str], list[float]] = {}
    for step, figure in figures.items():
        if (step.metric, step.backend) == (metric.name, backend) and figure is not None:
            by_round.setdefault((step.round, step.side), []).append(figure)

    def side(name: str) -> list[float | None]:
        present = [by_round.get((r, name)) for r in range(rounds)]
        return [metric.best(values) if values else None for values in present]

    return Comparison(metric, backend, side("base"), side("head"))


def markdown(comparisons: Sequence[Comparison], tolerance: float) -> str:
    """The table: per metric and backend, each side's median, the median of the per-round
    ratios HEAD/BASE with their min-max, and the verdict against `tolerance`."""
    lines = [
        "| metric | backend | better | BASE median | HEAD median | HEAD/BASE median "
        "| min-max | rounds | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        unit = c.metric.unit
        spread = f"{min(c.ratios):.3f}-{max(c.ratios):.3f}" if c.ratios else "—"
        ratio = f"{c.ratio_median:.3f}" if c.ratio_median is not None else "—"
        lines.append(
            f"| {c.metric.label} | {c.backend} | {c.metric.better} "
            f"| {_figure(c.base_median, unit)} | {_figure(c.head_median, unit)} | {ratio} "
            f"| {spread} | {len(c.ratios)} | {c.verdict(tolerance)} |"
        )
    return "\n".join(lines)


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "runs/s":
        return f"{value:,.0f} {unit}"
    if unit == "s":
        return f"{value:.3f} {unit}"
    return f"{value:.1f} {unit}"
