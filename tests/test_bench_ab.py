"""The pure parts of the A/B bench (`bench.ab`): run order, per-round ratios, the table."""

from __future__ import annotations

from typing import Any

import pytest

from bench.ab import UsageError, _choose, _pairs, check_dependencies, comparisons, report, resolve
from bench.abstats import Comparison, Metric, Sizes, Step, compare, interleave, markdown, metrics

RUNS_PER_S = Metric("tp", "throughput", "throughput", {}, "runs_per_s", "runs/s", True)
WALL_S = Metric("burst", "burst", "throughput", {}, "publish_wall_s", "s", False)


def test_interleave_runs_both_sides_back_to_back_and_alternates_who_goes_first() -> None:
    steps = interleave(3, ["tp", "burst"], ["sqlite", "redis"])

    order = [(s.round, s.metric, s.backend, s.side) for s in steps]
    assert order == [
        (0, "tp", "sqlite", "base"),
        (0, "tp", "sqlite", "head"),
        (0, "tp", "redis", "base"),
        (0, "tp", "redis", "head"),
        (0, "burst", "sqlite", "base"),
        (0, "burst", "sqlite", "head"),
        (0, "burst", "redis", "base"),
        (0, "burst", "redis", "head"),
        (1, "tp", "sqlite", "head"),
        (1, "tp", "sqlite", "base"),
        (1, "tp", "redis", "head"),
        (1, "tp", "redis", "base"),
        (1, "burst", "sqlite", "head"),
        (1, "burst", "sqlite", "base"),
        (1, "burst", "redis", "head"),
        (1, "burst", "redis", "base"),
        *[
            (2, m, b, side)
            for m in ("tp", "burst")
            for b in ("sqlite", "redis")
            for side in ("base", "head")
        ],
    ]


def test_repeats_alternate_who_goes_first_within_a_round_too() -> None:
    steps = interleave(2, ["tp"], ["redis"], repeats=3)

    order = [(s.round, s.repeat, s.side) for s in steps]
    assert order == [
        (0, 0, "base"),
        (0, 0, "head"),
        (0, 1, "head"),
        (0, 1, "base"),
        (0, 2, "base"),
        (0, 2, "head"),
        (1, 0, "head"),
        (1, 0, "base"),
        (1, 1, "base"),
        (1, 1, "head"),
        (1, 2, "head"),
        (1, 2, "base"),
    ]


@pytest.mark.parametrize(
    ("metric", "base", "head"),
    [
        pytest.param(RUNS_PER_S, [100.0, 120.0], [150.0, 130.0], id="higher_better_takes_max"),
        pytest.param(WALL_S, [100.0, 80.0], [50.0, 70.0], id="lower_better_takes_min"),
    ],
)
def test_per_round_and_side_the_best_repeat_counts_and_failed_ones_are_ignored(
    metric: Metric, base: list[float], head: list[float]
) -> None:
    figures: dict[Step, float | None] = {}
    for round_ in range(2):
        for repeat, (b, h) in enumerate(zip(base, head, strict=True)):
            figures[Step(round_, metric.name, "redis", "base", repeat)] = b
            figures[Step(round_, metric.name, "redis", "head", repeat)] = h
        figures[Step(round_, metric.name, "redis", "head", 2)] = None  # a failed run
        figures[Step(round_, metric.name, "sqlite", "head", 0)] = 1.0  # another backend
    figures[Step(1, metric.name, "redis", "base", 0)] = None
    figures[Step(1, metric.name, "redis", "base", 1)] = None

    comparison = compare(metric, "redis", 2, figures)

    assert comparison.base == [metric.best(base), None]
    assert comparison.head == [metric.best(head), metric.best(head)]


def test_ratios_are_per_round_and_rounds_with_a_failed_side_are_left_out() -> None:
    comparison = Comparison(
        RUNS_PER_S, "redis", base=[100.0, 200.0, None, 100.0], head=[110.0, 180.0, 50.0, None]
    )

    assert comparison.ratios == [1.1, 0.9]
    assert comparison.base_median == 100.0  # of 100, 200, 100
    assert comparison.head_median == 110.0  # of 110, 180, 50
    assert comparison.ratio_median == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("metric", "head", "verdict"),
    [
        pytest.param(RUNS_PER_S, [104.0, 105.0, 96.0], "within 5 %", id="higher_better_within"),
        pytest.param(RUNS_PER_S, [110.0, 120.0, 90.0], "HEAD 10.0 % better", id="higher_better_up"),
        pytest.param(RUNS_PER_S, [80.0, 90.0, 99.0], "HEAD 10.0 % worse", id="higher_better_down"),
        pytest.param(WALL_S, [110.0, 120.0, 90.0], "HEAD 10.0 % worse", id="lower_better_up"),
        pytest.param(WALL_S, [80.0, 90.0, 99.0], "HEAD 10.0 % better", id="lower_better_down"),
    ],
)
def test_the_verdict_reads_the_median_ratio_in_the_metric_s_direction(
    metric: Metric, head: list[float], verdict: str
) -> None:
    comparison = Comparison(metric, "sqlite", base=[100.0, 100.0, 100.0], head=head)

    assert comparison.verdict(0.05) == verdict


def test_no_complete_round_gives_no_ratio() -> None:
    comparison = Comparison(WALL_S, "sqlite", base=[None, 1.0], head=[1.0, None])

    assert comparison.ratio_median is None
    assert comparison.verdict(0.05) == "no complete round"


def test_the_table_gives_medians_ratio_min_max_and_direction() -> None:
    rows = [
        Comparison(RUNS_PER_S, "redis", base=[80_000.0, 90_000.0], head=[84_000.0, 99_000.0]),
        Comparison(WALL_S, "sqlite", base=[0.2, 0.25], head=[0.3, None]),
    ]

    assert markdown(rows, 0.05) == "\n".join(
        [
            "| metric | backend | better | BASE median | HEAD median | HEAD/BASE median "
            "| min-max | rounds | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            "| throughput | redis | higher | 85,000 runs/s | 91,500 runs/s | 1.075 "
            "| 1.050-1.100 | 2 | HEAD 7.5 % better |",
            "| burst | sqlite | lower | 0.225 s | 0.300 s | 1.500 | 1.500-1.500 | 1 "
            "| HEAD 50.0 % worse |",
        ]
    )


def test_the_metrics_are_the_issues_figures() -> None:
    chosen = metrics(Sizes())

    assert {name: (m.module, m.field, m.better) for name, m in chosen.items()} == {
        "throughput": ("throughput", "runs_per_s", "higher"),
        "burst": ("throughput", "publish_wall_s", "lower"),
        "steady": ("cost", "cpu_us_per_run", "lower"),
        "worker": ("worker", "tasks_per_s", "higher"),  # the history issue's worker figure
    }
    assert chosen["worker"].params == {"count": 5_000, "latency_samples": 0}
    assert chosen["burst"].params == {"count": 10_000}
    assert chosen["steady"].params == {"count": 10_000, "mode": "steady", "runs": 200_000}


def _results() -> dict[str, Any]:
    spec = {
        "name": "burst",
        "label": "burst",
        "module": "throughput",
        "params": {"count": 10},
        "field": "publish_wall_s",
        "unit": "s",
        "higher_is_better": False,
        "cpu_field": "cpu_us_per_run",
    }
    figures: dict[tuple[int, str], dict[str, Any]] = {
        (0, "base"): {"publish_wall_s": 0.2, "cpu_us_per_run": 10.0},
        (0, "head"): {"publish_wall_s": 0.22, "cpu_us_per_run": 10.1},
        (1, "head"): {"publish_wall_s": 0.3, "cpu_us_per_run": 10.2},
        (1, "base"): {"publish_wall_s": 0.25, "cpu_us_per_run": 10.0},
        (2, "base"): {"error": "Traceback ...\nValueError: boom"},
        (2, "head"): {"publish_wall_s": 0.5, "cpu_us_per_run": 11.0},
    }
    runs = [
        {
            "round": r,
            "metric": "burst",
            "backend": "sqlite",
            "side": side,
            "repeat": 0,
            "result": result,
        }
        for (r, side), result in figures.items()
    ]
    side = {"rev": "main", "commit": "0123456789abcdef", "env": {}, "params": {}}
    return {
        "date": "2026-12-04T22:50:00+00:00",
        "machine": {"cores": 2, "load_before": [0.5, 0, 0], "load_after": [0.75, 0, 0]},
        "rounds": 3,
        "repeat": 1,
        "tolerance": 0.05,
        "backends": ["sqlite"],
        "metrics": {"burst": spec},
        "sides": {"base": side, "head": {**side, "env": {"BEATD_HISTORY": "0"}}},
        "runs": runs,
        "elapsed_s": 12.3,
    }


def test_the_report_is_rebuilt_from_the_json_document_with_failed_runs_listed() -> None:
    results = _results()

    (comparison,) = comparisons(results)

    assert comparison.base == [0.2, 0.25, None]
    assert comparison.head == [0.22, 0.3, 0.5]
    assert report(results) == "\n".join(
        [
            "BASE = main (0123456789), HEAD = main (0123456789) with BEATD_HISTORY=0; "
            "3 interleaved round(s) of 1 run(s) per side on 2 cores in 12 s, "
            "2026-12-04T22:50:00+00:00, load 0.50/0.75. Per round and side the best run counts; "
            "HEAD/BASE is taken per round, and its median is the verdict.",
            "",
            "| metric | backend | better | BASE median | HEAD median | HEAD/BASE median "
            "| min-max | rounds | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            "| burst | sqlite | lower | 0.225 s | 0.300 s | 1.150 | 1.100-1.200 | 2 "
            "| HEAD 15.0 % worse |",
            "",
            "The same runs by their CPU per run: another process on the machine slows wall "
            "time more than CPU time, so a wall-time ratio outside the band beside a CPU ratio "
            "within it points at the machine rather than the code.",
            "",
            "| metric | backend | better | BASE median | HEAD median | HEAD/BASE median "
            "| min-max | rounds | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            "| burst: CPU per run | sqlite | lower | 10.0 µs | 10.2 µs | 1.015 | 1.010-1.020 | 2 "
            "| within 5 % |",
            "",
            "1 run(s) failed:",
            "- round 2 run 0 burst sqlite base: ValueError: boom",
        ]
    )


def test_bad_choices_and_pairs_are_usage_errors() -> None:
    with pytest.raises(UsageError) as chosen:
        _choose("--backends", "sqlite,postgres", ["sqlite", "redis"])
    with pytest.raises(UsageError) as pair:
        _pairs(["BEATD_HISTORY"], "--head-env", json_values=False)
    with pytest.raises(UsageError) as param:
        _pairs(["count=ten"], "--head-param", json_values=True)

    assert str(chosen.value) == "--backends sqlite,postgres: choose from sqlite, redis"
    assert str(pair.value) == "--head-env BEATD_HISTORY: expected NAME=VALUE"
    assert str(param.value) == (
        "--head-param count=ten: the value is not JSON (a string needs quotes: count='\"ten\"')"
    )
    assert _pairs(["count=10", 'tag="a=b"'], "--head-param", json_values=True) == {
        "count": 10,
        "tag": "a=b",
    }


def test_revisions_with_different_dependencies_are_refused() -> None:
    try:
        before, after = resolve("0c69e24"), resolve("9f17d5c")  # redis>=5.0, then redis>=5.3
    except UsageError:
        pytest.skip("this clone lacks the history that changed a dependency")

    check_dependencies(after, after)
    with pytest.raises(UsageError) as refused:
        check_dependencies(before, after)

    assert str(refused.value) == (
        f"the revisions declare different dependencies in pyproject.toml: base {before[:10]} "
        f"has redis>=5.0, head {after[:10]} has redis>=5.3; both sides run on this venv's "
        "packages, so compare revisions whose dependencies are equal"
    )


def test_the_wall_time_metrics_have_a_cpu_twin_and_the_cpu_metric_has_none() -> None:
    chosen = metrics(Sizes(burst_count=5_000))

    burst_cpu = chosen["burst"].on_cpu()
    assert burst_cpu is not None
    assert (burst_cpu.label, burst_cpu.field, burst_cpu.unit, burst_cpu.better) == (
        "burst, 5,000 simultaneous runs: CPU per run",
        "cpu_us_per_run",
        "µs",
        "lower",
    )
    assert chosen["steady"].on_cpu() is None
