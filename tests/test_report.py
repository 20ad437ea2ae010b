"""report.py puts a sweep's runs side by side from what they write locally: finished, failed and unfinished runs
each keep a row; plots are written; a folder with no runs is one clear line and exit code 2."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attnlab.report import report
from attnlab.schema import ConfigError
from conftest import ROOT

JOB = ["mode=debug", "trainer.max_epochs=2", "trainer.limit_train_batches=5", "trainer.log_every_n_steps=1",
       "test_after_fit=false", "callbacks.attention_picture=null", "callbacks.model_summary=null"]


def as_sweep_job(cfg, overrides):
    """What Hydra writes into a job folder, for runs started in-process."""
    folder = Path(cfg.paths.output_dir)
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from conftest import compose
    from attnlab.train import train
    root = tmp_path_factory.mktemp("sweep")
    (root / "multirun.yaml").write_text("{}\n")  # Hydra writes it beside a sweep's job folders
    for i, attention in enumerate(["full", "longformer"]):
        cfg = compose([*JOB, f"attention={attention}"], root / f"{i}-attention={attention}")
        as_sweep_job(cfg, [f"attention={attention}"])
        train(cfg)
    bad = as_sweep_job(compose([*JOB, "attention=sparse"], root / "2-attention=sparse"), ["attention=sparse"])
    (bad / "status.json").write_text(json.dumps({"status": "failed", "reason": "OutOfMemoryError: simulated",
                                                 "step": 3, "wall_seconds": 1.0}))
    as_sweep_job(compose([*JOB, "attention=bigbird"], root / "3-attention=bigbird"), ["attention=bigbird"])
    return root


def test_every_run_has_a_row_with_its_outcome(sweep):
    runs, files = report([str(sweep)])
    assert [r.attention for r in runs] == ["full", "longformer", "sparse", "bigbird"]
    full, longformer, sparse, bigbird = runs
    assert (full.backend, longformer.backend) == ("dense", "banded")  # what ran on this CPU, from run.json
    assert full.label == "0: attention=full" and full.params_M > 0
    for r in (full, longformer):
        assert r.status == "finished" and r.steps == 10
        summary = json.loads((r.folder / "status.json").read_text())["metrics"]  # what the run's summary printed
        assert summary["throughput/tokens_per_s"] == pytest.approx(r.tokens_per_s, rel=1e-4)  # one definition
        assert r.load is not None and r.load >= 0
        assert r.val_ppl_best <= r.val_ppl_final and 1 < r.val_ppl_best < 200
        assert 0 < r.val_bpb_best < 8  # characters of mostly ASCII text: about log2(perplexity) bits a byte
        assert r.tokens_per_s > 0 and r.peak_memory_MiB >= 0 and r.train_ppl > 1
        assert len(r.val_curve) == 2 and all(t is not None and t > 0 for _, t, _ in r.val_curve)
    assert sparse.status == "failed: OutOfMemoryError: simulated" and sparse.val_ppl_best is None
    assert bigbird.status.startswith("no status.json")
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["attention"] for r in rows] == ["full", "longformer", "sparse", "bigbird"]
    assert float(rows[0]["val_ppl_best"]) == pytest.approx(full.val_ppl_best)
    markdown = files["markdown"].read_text()
    assert "| full |" in markdown
    assert "## Samples" in markdown and full.sample["step"] == 10 and full.sample["continuation"] in markdown
    assert len(full.train_curve) == 2  # one training perplexity per epoch, beside the validation curve
    for kind in ("val_ppl", "cost", "train_val"):
        assert files[kind].stat().st_size > 10_000  # a rendered PNG, not an empty file


@pytest.mark.subprocess
def test_a_folder_with_no_runs_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="no run folders"):
        report([str(tmp_path)])
    r = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path / "missing")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such folder" in r.stderr


def test_extrapolation_curves_are_read_from_analysis_and_drawn_a_learned_run_as_its_one_point(sweep, tmp_path):
    import shutil
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    analysis = {"layers": [{"layer": 0, "entropy": [1.0], "distance": [3.0]}],
                "loss_by_position": {"split": "val", "mean": [2.0, 1.0], "windows": 4}}
    rotary = {**analysis, "extrapolation": {"lengths": [64, 128, 256], "perplexity": [5.0, 6.0, 9.5]}}
    for job, content in (("0-attention=full", rotary), ("1-attention=longformer", analysis)):
        (copy / job / "analysis").mkdir(exist_ok=True)
        (copy / job / "analysis" / "analysis.json").write_text(json.dumps(content))
    runs, files = report([str(copy)])
    assert runs[0].extrapolation == [(64, 5.0), (128, 6.0), (256, 9.5)]
    assert runs[1].extrapolation == [(2, pytest.approx(2.718281828 ** 1.5))]  # exp(mean loss) at its own length
    assert runs[0].positions == "learned" and files["extrapolation"].stat().st_size > 10_000
