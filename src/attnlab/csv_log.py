"""The CSV logger, resumable: a resumed run appends to its own ``csv/metrics.csv`` instead of deleting it.

Lightning's CSVLogger removes an existing metrics file when it starts; a run that resumes in its own folder
(``ckpt_path=last``) would lose every row before the resume. Here the existing rows are kept, and ``trim``
drops the rows logged after the checkpoint being resumed (those steps are trained again).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _PytorchWriter

from attnlab import run_folder

METRICS = run_folder.METRICS


class _AppendingWriter(_PytorchWriter):
    def _check_log_dir_exists(self) -> None:  # keep the rows of the run before its resume
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def trim(run_folder: str | Path, step: int) -> int:
    """Drop the rows of ``csv/metrics.csv`` logged after ``step`` (a resume from that step logs them again).
    Returns the highest step the file held before (-1: none): W&B, which cannot take rows back, skips up to it."""
    path = Path(run_folder) / METRICS
    if not path.is_file():
        return -1
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    steps = [float(r["step"]) for r in rows if r.get("step")]
    highest = int(max(steps)) if steps else -1
    kept = [r for r in rows if not r.get("step") or float(r["step"]) < step]
    if len(kept) == len(rows):
        return highest
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    os.replace(tmp, path)
    return highest
