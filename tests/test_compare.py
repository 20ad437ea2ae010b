"""Comparisons over seeds: report.py groups the runs that differ only in their seed, gives mean, spread and a
bootstrap interval, and calls a difference only when the interval says so."""
import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from attnlab.compare import Spread, difference, t_interval
from attnlab.report import report


def test_the_interval_of_a_mean_is_students_t():
    values = [0.2, 0.9, 0.5, 0.55]
    lo, hi = t_interval(values)
    mean = sum(values) / 4
    sd = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5
    assert (lo, hi) == pytest.approx((mean - 3.182 * sd / 2, mean + 3.182 * sd / 2))
    assert t_interval([3.0]) == (3.0, 3.0) and t_interval([0.9, 0.9, 0.9]) == (0.9, 0.9)


def test_identical_groups_are_called_different_about_5_percent_of_the_time():
    """The verdicts' error rate, simulated: two groups drawn from the same distribution, 3 and 5 seeds, paired
    and unpaired. (A percentile bootstrap of 3 values called 25% of them different.)"""
    rng = random.Random(0)
    for n in (3, 5):
        for paired in (True, False):
            called = 0
            for _ in range(1000):
                a = {s: rng.gauss(0, 1) for s in range(n)}
                b = {(s if paired else s + 100): rng.gauss(0, 1) for s in range(n)}
                called += difference("a", a, "b", b, "acc", True).verdict.endswith("better")
            assert called / 1000 < 0.08, (n, paired, called)


def test_a_difference_is_called_only_when_its_interval_excludes_zero():
    # paired over the same seeds: a consistent gap is a difference even when the groups' ranges overlap
    a = {1: 0.60, 2: 0.80, 3: 0.95}
    b = {1: 0.50, 2: 0.71, 3: 0.84}
    d = difference("full", a, "longformer", b, "accuracy", higher_is_better=True)
    assert d.paired and d.seeds == 3 and d.mean == pytest.approx(0.1)
    assert d.verdict == "full better"
    # a gap whose sign or size depends on the seed is not a difference
    flip = difference("x", {1: 0.9, 2: 0.2, 3: 0.6}, "y", {1: 0.3, 2: 0.8, 3: 0.55}, "accuracy", True)
    assert flip.verdict == "not distinguishable"
    assert difference("x", {1: 0.9, 2: 0.5}, "y", {1: 0.1, 2: 0.45}, "acc", True).verdict == "not distinguishable"
    # lower is better (perplexity): the lower group is the better one
    ppl = difference("x", {1: 5.0, 2: 5.1, 3: 5.05}, "y", {1: 6.0, 2: 6.2, 3: 6.1}, "ppl", higher_is_better=False)
    assert ppl.verdict == "x better"
    assert difference("x", {1: 1.0}, "y", {1: 0.0}, "acc", True).verdict == "one seed: no comparison"
    unpaired = difference("x", {1: 0.9, 2: 0.92, 3: 0.91}, "y", {5: 0.1, 6: 0.12, 7: 0.11}, "acc", True)
    assert not unpaired.paired and unpaired.verdict == "x better"
    same = difference("full", {1: 1.0, 2: 1.0, 3: 1.0}, "lf", {1: 0.897, 2: 0.896, 3: 0.898}, "acc", True)
    assert same.verdict == "full better"  # a gap in every seed, of nearly one size


def test_a_spread_reads_mean_and_range():
    assert Spread((0.5, 0.75, 1.0)).text("{:.0%}") == "75% [50%–100%]"
    assert Spread((2.0,)).text() == "2 (one seed)"


def fake_run(folder: Path, attention: str, seed: int, accuracy: list[float], job: int, val_ppl: float) -> None:
    """A run folder as a sweep job writes it, without training: config, overrides, status, metrics, task scores."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "attention": {"name": attention, "window": 32}, "model": {"name": "tiny"},
              "tokenizer": {"name": "char"}, "dataset": {"name": "copy"}, "data": {"seed": "${seed}"},
              "paths": {"output_dir": str(folder)}, "threads": 1}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"attention={attention}", f"seed={seed}"]))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "step": 100, "wall_seconds": 10.0}))
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text(f"step,val/ppl,throughput/tokens_per_s\n99,{val_ppl},1000\n")
    bins = [[1, 8], [9, 32], [33, 127]]
    (folder / "task_accuracy.json").write_text(json.dumps({
        "task": "copy", "chance": 1 / 26, "trivial": 1 / 26, "distance_bins": bins, "count": [10, 10, 10],
        "accuracy": accuracy, "overall": sum(accuracy) / 3, "exact": 0.5}))


@pytest.fixture
def seeds_sweep(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-04_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    job = 0
    for attention, acc in [("full", [1.0, 1.0, 1.0]), ("longformer", [1.0, 0.9, 0.1])]:
        for seed in (1, 2, 3):
            wobble = 0.02 * seed
            fake_run(sweep / f"{job}-attention={attention},seed={seed}", attention, seed,
                     [max(0.0, a - wobble) for a in acc], job, 5 + seed)
            job += 1
    return sweep


def test_report_groups_the_seeds_of_each_type_with_mean_spread_and_verdict(seeds_sweep):
    runs, files = report([str(seeds_sweep)])
    assert [(r.attention, r.seed) for r in runs] == [("full", 1), ("full", 2), ("full", 3), ("longformer", 1),
                                                      ("longformer", 2), ("longformer", 3)]
    with open(files["groups"], newline="") as f:
        groups = list(csv.DictReader(f))
    assert [(g["group"], g["n"], g["seeds"]) for g in groups] == [("attention=full", "3", "1 2 3"),
                                                                  ("attention=longformer", "3", "1 2 3")]
    full = [r.task_acc for r in runs[:3]]
    assert float(groups[0]["task_acc_mean"]) == pytest.approx(sum(full) / 3)
    assert float(groups[0]["task_acc_min"]) == pytest.approx(min(full))
    assert float(groups[0]["task_acc_max"]) == pytest.approx(max(full))
    assert float(groups[0]["task_acc_ci_low"]) <= float(groups[0]["task_acc_mean"]) <= float(groups[0]["task_acc_ci_high"])
    markdown = files["markdown"].read_text()
    assert "## Over seeds" in markdown and "| attention=full | 1,2,3 |" in markdown
    assert "attention=full − attention=longformer: task accuracy" in markdown and "**attention=full better**" in markdown
    with open(files["csv"], newline="") as f:
        assert [row["seed"] for row in csv.DictReader(f)] == ["1", "2", "3", "1", "2", "3"]
    for kind in ("task_accuracy", "seeds", "cost"):
        assert files[kind].stat().st_size > 10_000


def test_runs_that_differ_in_more_than_the_seed_are_not_grouped(seeds_sweep):
    other = seeds_sweep / "6-attention=full,seed=4"
    fake_run(other, "full", 4, [0.5, 0.5, 0.5], 6, 9)
    config = yaml.safe_load((other / ".hydra" / "config.yaml").read_text())
    config["attention"]["window"] = 8  # another experiment, though its overrides read alike
    (other / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    runs, files = report([str(seeds_sweep)])
    with open(files["groups"], newline="") as f:
        groups = [(g["group"], g["n"]) for g in csv.DictReader(f)]
    # the same label, so the setting that tells them apart is added to it
    assert groups == [("attention=full attention.window=32", "3"), ("attention=longformer", "3"),
                      ("attention=full attention.window=8", "1")]


def test_a_sweeps_seeds_are_one_wandb_group_per_type():
    from attnlab.wandb_run import seed_group
    job = lambda overrides: {"multirun": True, "sweep": "2026-12-04_00-00-00", "overrides": overrides}  # noqa: E731
    a = seed_group(job("attention=full,experiment=long_range_cpu,seed=1"), "full")
    b = seed_group(job("attention=full,experiment=long_range_cpu,seed=2"), "full")
    c = seed_group(job("attention=longformer,experiment=long_range_cpu,seed=1"), "longformer")
    assert a == b == "sweep-2026-12-04_00-00-00/attention=full,experiment=long_range_cpu" and c != a
    assert seed_group(job("attention.windows=[8,16],seed=3"), "longformer").endswith("/attention.windows=[8,16]")
    assert seed_group({"multirun": False, "sweep": "", "overrides": "seed=3"}, "bigbird") == "bigbird"


def test_without_a_task_the_report_ranks_by_validation_perplexity(seeds_sweep):
    from attnlab.report import primary_metric, read_run
    run = read_run(next(seeds_sweep.glob("0-*")))
    run.task_acc = None
    assert primary_metric([run])[0] == "val_ppl_best"


def test_a_rerun_seed_is_paired_by_its_mean_and_said(seeds_sweep):
    again = seeds_sweep / "6-attention=full,seed=1"
    fake_run(again, "full", 1, [0.0, 0.0, 0.0], 6, 9)
    runs, files = report([str(seeds_sweep)])
    with open(files["groups"], newline="") as f:
        groups = {g["group"]: g for g in csv.DictReader(f)}
    assert groups["attention=full"]["n"] == "4" and groups["attention=full"]["seeds"] == "1 1 2 3"
    assert "(seed 1 ran twice: paired by its mean)" in files["markdown"].read_text()


def test_an_analysis_file_of_the_wrong_shape_leaves_its_cells_empty(seeds_sweep):
    folder = next(seeds_sweep.glob("0-*"))
    (folder / "analysis").mkdir()
    (folder / "analysis" / "analysis.json").write_text('{"layers": 5, "loss_by_position": [1, 2]}')
    runs, _ = report([str(seeds_sweep)])
    assert "analysis.json unreadable" in runs[0].status and runs[0].attn_distance is None
