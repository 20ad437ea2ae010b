"""A sweep side by side, offline: one table row per run, the runs that differ only in their seed grouped (mean,
min–max, the 95% t-interval, and which differences the intervals support: ``compare.py``), and plots with
every seed's point, from what every run writes locally.

Each run folder holds ``.hydra/config.yaml`` (what it trained), ``status.json`` (how it ended), the CSV
metrics (``csv/metrics.csv``, written next to W&B by default) and ``train.log``. A run that crashed or was
stopped keeps its row, with its status; a run with no ``status.json`` is still running or was killed.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path


from attnlab import checkpoints, plain_yaml, run_folder
from attnlab.run_folder import RunFolder
from attnlab.compare import Group, difference, group_runs
from attnlab.schema import ConfigError

COLUMNS = ["run", "seed", "attention", "backend", "model", "tokenizer", "params_M", "steps", "val_ppl_best", "val_ppl_final",
           "val_bpb_best", "train_ppl", "test_ppl", "task_acc", "task_learned_step", "attn_distance", "tokens_per_s", "load", "peak_memory_MiB",
           "wall_s", "status"]


@dataclass
class Run:
    folder: Path
    label: str
    attention: str = "?"
    backend: str = "?"
    model: str = "?"
    tokenizer: str = "?"
    params_M: float | None = None
    steps: int | None = None
    val_ppl_best: float | None = None
    val_ppl_final: float | None = None
    val_bpb_best: float | None = None  # bits per byte: comparable across tokenizers
    train_ppl: float | None = None
    test_ppl: float | None = None
    tokens_per_s: float | None = None  # callbacks.run_tokens_per_s: median of the windows after the first
    load: float | None = None  # the machine's median load average while it trained (system/load)
    peak_memory_MiB: float | None = None
    wall_s: float | None = None
    status: str = "unknown"
    val_curve: list[tuple[int, float, float | None]] = field(default_factory=list)  # (step, seconds, val ppl)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, train ppl over the epoch)
    sample: dict | None = None  # the last validation's first sample (samples.jsonl)
    attn_distance: float | None = None  # mean attention distance over layers and heads (analysis/analysis.json)
    loss_by_position: list[float] = field(default_factory=list)  # analysis/analysis.json's curve
    extrapolation: list[tuple[int, float]] = field(default_factory=list)  # (evaluation length, perplexity), analyze.py
    positions: str = "?"  # model.positions: what the extrapolation curve depends on
    task_acc: float | None = None  # synthetic tasks: recall accuracy over every distance (task_accuracy.json)
    task_curve: list[tuple[float, float]] = field(default_factory=list)  # (mean distance of a bin, accuracy)
    task_chance: float | None = None
    task_trivial: float | None = None  # what a model scores without the skill (MQAR: 1/pairs)
    task_learned_step: int | None = None  # the first validation with 95% of the run's final task accuracy
    seed: int | None = None
    group_key: str = ""  # the config without its seed and execution settings: runs that differ only in seed share it
    group_label: str = ""  # the sweep overrides without seed=, or the attention type

    @property
    def short(self) -> str:
        """The legend name: the attention type, and which job or folder (the overrides are in the table)."""
        job = _job_number(self.folder)
        return f"{self.attention} ({job if job is not None else self.folder.name})"

    def row(self) -> dict:
        d = asdict(self)
        d["run"] = self.label
        return {k: d[k] for k in COLUMNS}


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (those with .hydra/config.yaml) under the given folders or globs, in job order."""
    folders: set[Path] = set()
    for pattern in paths:
        matches = [Path(p) for p in glob.glob(str(Path(pattern).expanduser()))] or [Path(pattern)]
        for m in matches:
            if not m.exists():
                raise ConfigError(f"{pattern}: no such folder")
            folders |= {c.parent.parent for c in m.glob(f"**/{run_folder.CONFIG}") if not _continued(c.parent.parent)
                        and not _refused(c.parent.parent)}
    return sorted(folders, key=lambda p: (p.parent, _job_number(p) or 0, p.name))


def _continued(folder: Path) -> bool:
    """A folder made by a command that resumed a run elsewhere (its status.json says where): not a run itself."""
    try:
        return bool(plain_yaml.load_json(folder / run_folder.STATUS).get("continued_in"))
    except (OSError, ValueError, AttributeError):
        return False


def _refused(folder: Path) -> bool:
    """A command refused before it trained anything (a bad setting, ``ckpt_path=last`` with no checkpoint): its
    folder holds no result. (A sweep's summary still counts it.)"""
    try:
        return plain_yaml.load_json(folder / run_folder.STATUS).get("status") == "refused"
    except (OSError, ValueError, AttributeError):
        return False


def _job_number(folder: Path) -> int | None:
    """A sweep job's number (its folder is <sweep>/<n>-<overrides>, beside multirun.yaml), else None."""
    head = folder.name.split("-")[0]
    head = head if re.fullmatch(r"[0-9]+", head) else ""  # ASCII digits only ('²'.isdigit() is true)
    in_sweep = (folder.parent / "multirun.yaml").is_file() or (folder.parent.parent / "multirun.yaml").is_file()
    return int(head) if head.isdigit() and in_sweep else None


def _read(what: str, folder: Path, problems: list[str], read):
    """``read()``, or None with a note in ``problems`` when the file is damaged (the row stays, says so)."""
    try:
        return read()
    except Exception as e:  # a half-written or hand-edited file must not end the report
        problems.append(f"{what} unreadable ({type(e).__name__})")
        return None


def _floats(rows: list[dict], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if v not in (None, ""):
            out.append((int(float(r.get("step") or 0)), float(v)))
    return out


def _interp(x: float, points: list[tuple[int, float]]) -> float | None:
    """Linear interpolation of (step, seconds) points; None without any."""
    if not points:
        return None
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1] * x / points[0][0] if points[0][0] else points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(1, x1 - x0)
    return points[-1][1]


def read_run(folder: Path) -> Run:
    """One run's row from its files, read as plain values; a damaged file leaves its cells empty and says so."""
    problems: list[str] = []
    raw = _read("config.yaml", folder, problems,
                lambda: RunFolder(folder).config_as_ran())  # plain values: no tags, no alias bombs
    raw = raw if isinstance(raw, dict) else {}
    group = lambda name: raw.get(name) if isinstance(raw.get(name), dict) else {}  # noqa: E731
    label = folder.name
    job = _job_number(folder)
    overrides = folder / ".hydra" / "overrides.yaml"
    ov = _read("overrides.yaml", folder, problems, lambda: list(plain_yaml.load(overrides) or [])) if overrides.exists() else None
    if job is not None:
        ov = [o for o in (ov or []) if not str(o).startswith(("paths.", "hydra"))]
        label = f"{job}: " + (" ".join(map(str, ov)) or "defaults")
    run = Run(folder=folder, label=label, attention=str(group("attention").get("name", "?")),
              positions=str(group("model").get("positions", "learned")),
              backend=str(group("attention").get("backend", "?")), model=str(group("model").get("name", "?")),
              tokenizer=str(group("tokenizer").get("name", "?")))
    seed = raw.get("seed")
    run.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    run.group_key = experiment_key(raw)
    without_seed = [str(o) for o in (ov or []) if not SEED_OVERRIDE.match(str(o))] if job is not None else []
    run.group_label = " ".join(without_seed) or run.attention
    status = folder / run_folder.STATUS
    s = _read("status.json", folder, problems, lambda: plain_yaml.load_json(status)) if status.exists() else None
    if isinstance(s, dict) and isinstance(s.get("status"), str):
        run.status = s["status"] + (f": {s['reason']}" if s.get("reason") else "")
        run.wall_s = s.get("wall_seconds") if isinstance(s.get("wall_seconds"), (int, float)) else None
        run.steps = s.get("step") if isinstance(s.get("step"), int) else None
    else:
        run.status = "no status.json (still running, or killed)" if not status.exists() else "status.json unreadable"
    info = checkpoints.read_run_file(folder)  # what actually ran: the backend 'auto' chose, the parameter count
    if isinstance(info.get("backend"), str):
        run.backend = info["backend"]
    if isinstance(info.get("params"), (int, float)):
        run.params_M = info["params"] / 1e6
    log = folder / run_folder.LOG
    if log.exists() and "backend" not in info:  # runs from before run.json said it
        m = re.search(r"model: ([\d.]+)M parameters, \w+ attention, backend (\w+)", log.read_text(errors="replace"))
        if m:
            run.params_M, run.backend = float(m.group(1)), m.group(2)
    data, dataset = group("data"), group("dataset")
    answers_only = data.get("loss_on") == "answers" or (data.get("loss_on") in ("auto", None)
                                                          and dataset.get("source") == "synthetic")
    metrics = folder / run_folder.METRICS
    rows = _read("metrics.csv", folder, problems, lambda: _metric_rows(metrics)) if metrics.exists() else None
    if rows is not None and not metrics.is_file():
        rows = None
    if rows is not None:
        val = _floats(rows, "val/ppl")
        times = _floats(rows, "time/train_s")
        run.val_curve = [(step, _interp(step, times), ppl) for step, ppl in val]
        if val:
            run.val_ppl_best, run.val_ppl_final = min(p for _, p in val), val[-1][1]
        bpb = _floats(rows, "val/bpb")
        run.val_bpb_best = min(b for _, b in bpb) if bpb and not answers_only else None  # (no text to count bytes of)
        train = _floats(rows, "train/ppl_epoch") or _floats(rows, "train/ppl")
        run.train_ppl = train[-1][1] if train else None
        run.train_curve = train
        acc = _floats(rows, "task/acc")
        if acc and acc[-1][1] > 0:  # where the transition happened: learning the skill is sudden, its step varies
            run.task_learned_step = next(s + 1 for s, a in acc if a >= 0.95 * acc[-1][1])  # (logged at step - 1)
        test = _floats(rows, "test/ppl")
        run.test_ppl = test[-1][1] if test else None
        from attnlab.callbacks import run_tokens_per_s
        run.tokens_per_s = run_tokens_per_s([v for _, v in _floats(rows, "throughput/tokens_per_s")])  # as the summary
        loads = sorted(v for _, v in _floats(rows, "system/load"))
        run.load = loads[len(loads) // 2] if loads else None
        peaks = [v for k in (rows[0].keys() if rows else []) if k.startswith("memory/peak") for _, v in _floats(rows, k)]
        base = _floats(rows, "memory/rss_before_training")  # CPU: what the process held before training
        # (Linux counts a thread's resident pages lazily, up to a few hundred kB late: a peak a hair below the
        # start is that lag, and reads as 0)
        run.peak_memory_MiB = max(0.0, (max(peaks) - (base[0][1] if base else 0)) / 2 ** 20) if peaks else None
        steps = [s for s, _ in _floats(rows, "train/loss")]
        run.steps = run.steps if run.steps is not None else (max(steps) + 1 if steps else None)
    samples = folder / run_folder.SAMPLES
    lines = _read("samples.jsonl", folder, problems, lambda: _sample_lines(samples)) if samples.exists() else None
    if lines:
        last = [x for x in lines if x["step"] == lines[-1]["step"]]
        run.sample = last[0] if last else None
    found = folder / run_folder.ANALYSIS  # written by analyze.py
    analysed = _read("analysis.json", folder, problems, lambda: _analysis(found)) if found.exists() else None
    if analysed is not None:
        run.attn_distance, run.loss_by_position, run.extrapolation = analysed
    found = folder / run_folder.TASK_ACCURACY  # written by callbacks.TaskAccuracy (dataset=copy|mqar)
    scored = _read("task_accuracy.json", folder, problems, lambda: _task_scores(found)) if found.exists() else None
    if scored:
        run.task_acc, run.task_curve, run.task_chance, run.task_trivial = scored
    if problems:
        run.status += f" ({'; '.join(problems)})"
    return run


# what does not make two runs different experiments: the seed, and how or where a run was computed and logged
# (checkpoints.EXECUTION lists the execution settings, one list for the run key and this)
NOT_THE_EXPERIMENT = ("seed", "paths", "hydra", "ckpt_path", "tags", "logger", "compile")


def experiment_key(raw: dict) -> str:
    """The config without its seed, paths and execution settings: runs that share it differ only in their seed."""
    kept = checkpoints.without_execution({k: v for k, v in raw.items() if k not in NOT_THE_EXPERIMENT})
    data = kept.get("data")
    if isinstance(data, dict):  # data.seed follows seed; runs before 2026-12-05 also repeated ${dataset}, ${tokenizer}
        follows = data.get("seed") in ("${seed}", raw.get("seed"))
        kept["data"] = {k: v for k, v in data.items() if not (k == "seed" and follows)
                        and not (k in ("dataset", "tokenizer") and v in ("${dataset}", "${tokenizer}"))}
    return json.dumps(kept, sort_keys=True, default=str)


SEED_OVERRIDE = re.compile(r"^\+?seed=")


def _analysis(path: Path) -> tuple[float | None, list[float], list[tuple[int, float]]]:
    """(mean attention distance, loss by position, extrapolation) from analyze.py's analysis.json, read as plain
    values of the expected shapes (anything else: the file is unreadable, its cells stay empty). A run without an
    extrapolation curve (learned positions) gets its one point: the perplexity of the loss by position at 1x."""
    d = plain_yaml.load_json(path)
    layers = d.get("layers", []) if isinstance(d, dict) else None
    curve = (d.get("loss_by_position") or {}) if isinstance(d, dict) else None
    if not isinstance(layers, list) or not isinstance(curve, dict) or not isinstance(curve.get("mean", []), list):
        raise ValueError("not analyze.py's analysis")
    distances = [x for row in layers if isinstance(row, dict) and isinstance(row.get("distance", []), list)
                 for x in row.get("distance", []) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    mean = [float(v) for v in curve.get("mean", []) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    extra = d.get("extrapolation") if isinstance(d.get("extrapolation"), dict) else {}
    lengths, ppl = extra.get("lengths", []), extra.get("perplexity", [])
    points = [(int(n), float(p)) for n, p in zip(lengths, ppl) if number(n) and number(p)] \
        if isinstance(lengths, list) and isinstance(ppl, list) else []
    if not points and mean:
        points = [(len(mean), math.exp(sum(mean) / len(mean)))]
    return (sum(distances) / len(distances) if distances else None), mean, points


def _task_scores(path: Path) -> tuple[float, list[tuple[float, float]], float, float | None]:
    d = plain_yaml.load_json(path)
    if not isinstance(d, dict):
        raise ValueError("not the callback's scores")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    bins, accuracy = d.get("distance_bins"), d.get("accuracy")
    if not (isinstance(bins, list) and isinstance(accuracy, list) and len(bins) == len(accuracy)
            and number(d.get("overall")) and number(d.get("chance"))):
        raise ValueError("not the callback's scores")
    curve = [((lo + hi) / 2, float(a)) for (lo, hi), a in zip(bins, accuracy) if number(a) and number(lo) and number(hi)]
    trivial = float(d["trivial"]) if number(d.get("trivial")) else None  # (files from before 2026-12-04 lack it)
    return float(d["overall"]), curve, float(d["chance"]), trivial


def _metric_rows(path: Path) -> list[dict]:
    import io
    text = plain_yaml.read_bounded(path, 256 << 20, "a metrics file").decode("utf-8")  # regular, bounded
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for r in rows:  # every value a number or empty, every step a finite number, else the file is damaged
        for k, v in r.items():
            if k is None or (v not in (None, "") and not _is_number(v)):
                raise ValueError(f"{k}={v!r}")
        if r.get("step") not in (None, "") and not math.isfinite(float(r["step"])):
            raise ValueError(f"step={r['step']!r}")
    return rows


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _sample_lines(path: Path) -> list[dict]:
    lines = [json.loads(x) for x in plain_yaml.read_bounded(path, 16 << 20, "a samples file").decode("utf-8").splitlines()
             if x.strip()]
    if not all(isinstance(x, dict) and isinstance(x.get("step"), int) and isinstance(x.get("prompt"), str)
               and isinstance(x.get("continuation"), str) for x in lines):
        raise ValueError("a line without step, prompt and continuation")
    return lines


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"
    return str(v).replace("|", "/")


# the figures compared over seeds: (column, how it reads, higher is better)
GROUP_METRICS = [("task_acc", "task accuracy", True), ("task_learned_step", "step reaching 95% of it", False),
                 ("val_ppl_best", "best val ppl", False),
                 ("val_bpb_best", "best val bits/byte", False), ("test_ppl", "test ppl", False),
                 ("tokens_per_s", "tokens/s", True), ("peak_memory_MiB", "peak memory MiB", False)]


def groups_of(runs: list[Run]) -> list[Group]:
    """The runs that differ only in their seed, together (``compare.py``), each labelled by the overrides that
    set it apart (those every group shares, e.g. the experiment, are left out of the labels)."""
    groups = group_runs(runs, lambda r: r.group_key or str(r.folder), lambda r: r.group_label or r.attention)
    words = [g.label.split(" ") for g in groups]
    shared = set.intersection(*map(set, words)) if len(groups) > 1 else set()
    for g, w in zip(groups, words):
        kept = [x for x in w if x not in shared]
        if kept and not g.label.endswith(tuple(f" #{i}" for i in range(2, 100))):
            g.label = " ".join(kept)
    return groups


def _fmt_metric(metric: str) -> str:
    return "{:.1%}" if metric == "task_acc" else "{:,.4g}"


def _fmt(metric: str, v: float) -> str:
    return f"{v:,.0f}" if metric != "task_acc" and abs(v) >= 1000 else _fmt_metric(metric).format(v)


def primary_metric(runs: list[Run]) -> tuple[str, str, bool]:
    """What a comparison ranks by: the task's accuracy where the runs score a task, else validation perplexity."""
    by_name = {m[0]: m for m in GROUP_METRICS}
    return by_name["task_acc"] if any(r.task_acc is not None for r in runs) else by_name["val_ppl_best"]


def _seed_lines(groups: list[Group], runs: list[Run]) -> list[str]:
    """The over-seeds table and the differences the intervals support, as markdown."""
    metric, name, higher = primary_metric(runs)
    shown = [(m, n, hb) for m, n, hb in GROUP_METRICS if m != metric and any(g.spread(m) for g in groups)]
    lines = ["", "## Over seeds", "",
             "Runs that differ only in their seed, together: mean [min–max] over the seeds, and for "
             f"{name} the 95% t-interval of the mean. One seed ranks nothing.", "",
             f"| group | seeds | {name} | 95% interval | " + " | ".join(n for _, n, _ in shown) + " |",
             "|---|---|---|---|" + "---|" * len(shown)]
    for g in groups:
        cells = [g.label, ",".join("–" if s is None else str(s) for s in g.seeds)
                 + (f" (seed {', '.join(map(str, g.repeated_seeds))} ran twice: paired by its mean)"
                    if g.repeated_seeds else "")]
        sp = g.spread(metric)
        cells += ([sp.text(_fmt_metric(metric)), f"{_fmt(metric, sp.interval[0])} … {_fmt(metric, sp.interval[1])}"]
                  if sp else ["–", "–"])
        for m, _, _ in shown:
            sp = g.spread(m)
            cells.append(("" if sp is None else f"{_fmt(m, sp.mean)}" + ("" if sp.n == 1 else
                          f" [{_fmt(m, sp.low)}–{_fmt(m, sp.high)}]")) or "–")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:] if a.values(metric) and b.values(metric)]
    if pairs:
        lines += ["", f"### Differences in {name}", "",
                  "Called a difference only when the 95% interval of the difference excludes 0 (paired over seeds when "
                  "both groups ran the same seeds).", ""]
        lines += ["- " + difference(a.label, a.values(metric), b.label, b.values(metric), name, higher).text()
                  for a, b in pairs[:28]]
        if len(pairs) > 28:
            lines.append(f"- ({len(pairs) - 28} more pairs not listed: compare fewer groups at once)")
    return lines


def write_report(runs: list[Run], out: Path) -> dict[str, Path]:
    """report.md, report.csv (a row per run), groups.csv (a row per group of seeds) and the plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "report.md", "csv": out / "report.csv", "groups": out / "groups.csv"}
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(r.row() for r in runs)
    groups = groups_of(runs)
    with open(files["groups"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n", "seeds"] + [f"{m}_{x}" for m, _, _ in GROUP_METRICS
                                              for x in ("mean", "min", "max", "ci_low", "ci_high")])
        for g in groups:
            row = [g.label, len(g.members), " ".join("" if s is None else str(s) for s in g.seeds)]
            for m, _, _ in GROUP_METRICS:
                sp = g.spread(m)
                row += [sp.mean, sp.low, sp.high, *sp.interval] if sp else [""] * 5
            w.writerow(row)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.row()[c]) for c in COLUMNS) + " |" for r in runs]
    lines += _seed_lines(groups, runs)
    with_samples = [r for r in runs if r.sample]
    if with_samples:
        lines += ["", "## Samples", "", "The last validation's first sample of each run: a prompt from the validation "
                  "text, then the model's continuation (samples.jsonl in each run folder).", ""]
        for r in with_samples:
            lines += [f"**{r.label}** (step {r.sample['step']})", "", "```", r.sample["prompt"] + " ⟶ " +
                      r.sample["continuation"], "```", ""]
    files["markdown"].write_text("\n".join(lines) + "\n")
    files.update(_plots(runs, groups, out))
    return files


def _plain_log_ticks(ax) -> None:
    """Log-axis ticks as plain numbers (26.5, not 2.65×10¹)."""
    from matplotlib.ticker import FuncFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def _plots(runs: list[Run], groups: list[Group], out: Path) -> dict[str, Path]:
    """Every plot colours a group (the runs that differ only in seed) alike and shows each seed's run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path: Path) -> Path:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    colour = {id(r): f"C{i % 10}" for i, g in enumerate(groups) for r in g.members}
    first = {id(g.members[0]): g for g in groups}  # the run that carries its group's legend entry

    def legend(r: Run, suffix: str = "") -> str | None:
        g = first.get(id(r))
        return None if g is None else f"{g.label} ({len(g.members)} seed{'s' * (len(g.members) > 1)}){suffix}"

    files = {}
    curves = [r for r in runs if r.val_curve]
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for r in curves:
            axes[0].plot([s for s, _, _ in r.val_curve], [p for _, _, p in r.val_curve], marker="o", markersize=3,
                         color=colour[id(r)], alpha=0.8, label=legend(r))
            timed = [(t, p) for _, t, p in r.val_curve if t is not None]
            if timed:
                axes[1].plot(*zip(*timed), marker="o", markersize=3, color=colour[id(r)], alpha=0.8)
        for ax, xlabel in zip(axes, ["step", "training time (s)"]):
            ax.set_xlabel(xlabel), ax.set_ylabel("validation perplexity"), ax.set_yscale("log"), ax.grid(alpha=0.3)
            _plain_log_ticks(ax)
        axes[0].legend(fontsize=7)
        fig.suptitle("validation perplexity, one line per run (a colour per group of seeds)")
        files["val_ppl"] = save(fig, out / "val_ppl.png")
    trained = [r for r in runs if r.train_curve and r.val_curve]
    if trained:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in trained:
            ax.plot(*zip(*r.train_curve), "--", color=colour[id(r)], alpha=0.8, label=legend(r, ": train"))
            ax.plot([s for s, _, _ in r.val_curve], [p for _, _, p in r.val_curve], "-", color=colour[id(r)],
                    alpha=0.8, label=legend(r, ": validation"))
        ax.set(xlabel="step", ylabel="perplexity", yscale="log", title="training (per epoch) and validation perplexity")
        _plain_log_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files["train_val"] = save(fig, out / "train_val.png")
    costed = [g for g in groups if g.values("tokens_per_s") or g.values("peak_memory_MiB")]
    if costed:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        def load_note(g: Group) -> str:
            loads = [r.load for r in g.members if r.load is not None]
            return f"\nload {min(loads):.1f}–{max(loads):.1f}" if loads else ""
        names = [g.label.replace(" ", "\n") + load_note(g) for g in costed]
        for ax, metric, what in [(axes[0], "tokens_per_s", "training tokens/s (median of each run)"),
                                 (axes[1], "peak_memory_MiB", "peak memory of training (MiB)\nCPU: above the process "
                                                              "before training")]:
            _bars_with_seeds(ax, costed, names, metric)
            ax.set_ylabel(what)
            ax.tick_params(axis="x", labelsize=8), ax.grid(axis="y", alpha=0.3)
        fig.suptitle("cost per group: bar = mean, dots = seeds, line = min–max; the machine's load average while each "
                     "trained is under its name (jobs that shared the cores are slower)", fontsize=9)
        files["cost"] = save(fig, out / "cost.png")
    curves = [r for r in runs if r.loss_by_position]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in curves:
            ax.plot(range(len(r.loss_by_position)), r.loss_by_position, color=colour[id(r)], label=legend(r))
        ax.set(xlabel="position in the context window", ylabel="mean next-token loss (nats)",
               title="loss by position (analyze.py), every run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files["loss_by_position"] = save(fig, out / "loss_by_position.png")
    curves = [r for r in runs if r.extrapolation]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in curves:
            lengths, ppl = zip(*r.extrapolation)
            ax.plot(lengths, ppl, "o-", color=colour[id(r)], label=f"{legend(r)}, {r.positions} positions")
        ax.set(xscale="log", xlabel="evaluation window (tokens); the first point is the training context",
               ylabel="perplexity", title="perplexity against evaluation length (analyze.py)")
        ax.minorticks_off()
        ax.set_xticks(sorted({n for r in curves for n, _ in r.extrapolation}),
                      [str(n) for n in sorted({n for r in curves for n, _ in r.extrapolation})])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files["extrapolation"] = save(fig, out / "extrapolation.png")
    scored = [g for g in groups if any(r.task_curve for r in g.members)]
    if scored:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, g in enumerate(scored):
            members = [r for r in g.members if r.task_curve]
            c = colour[id(members[0])]
            xs = [x for x, _ in members[0].task_curve]
            same_bins = all([x for x, _ in r.task_curve] == xs for r in members)
            for r in members:  # every seed's points
                ax.scatter(*zip(*r.task_curve), s=9, color=c, alpha=0.5)
            sp = g.spread("task_acc")
            label = f"{g.label}: {sp.text('{:.0%}')} overall" if sp else g.label
            if same_bins:
                ys = [[y for _, y in r.task_curve] for r in members]
                mean = [sum(col) / len(col) for col in zip(*ys)]
                ax.plot(xs, mean, color=c, label=label + (f", {len(members)} seeds" if len(members) > 1 else ""))
                if len(members) > 1:
                    ax.fill_between(xs, [min(col) for col in zip(*ys)], [max(col) for col in zip(*ys)], color=c,
                                    alpha=0.15)
            else:
                for r in members:
                    ax.plot(*zip(*r.task_curve), color=c, alpha=0.6, label=label if r is members[0] else None)
        any_run = next(r for g in scored for r in g.members if r.task_curve)
        ax.axhline(any_run.task_chance, color="grey", linestyle="--", label=f"chance ({any_run.task_chance:.2g})")
        if any_run.task_trivial is not None and any_run.task_trivial > any_run.task_chance * 1.01:
            ax.axhline(any_run.task_trivial, color="black", linestyle=":",
                       label=f"trivial: copy any value ({any_run.task_trivial:.2g})")
        ax.set(xlabel="distance the attention must reach (tokens)", ylabel="recall accuracy",
               title="synthetic task: accuracy by distance (line: mean over seeds, band: min–max, dots: seeds)",
               xscale="log", ylim=(-0.02, 1.02))
        ax.title.set_fontsize(9)
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files["task_accuracy"] = save(fig, out / "task_accuracy.png")
    metric, name, _ = primary_metric(runs)
    ranked = [g for g in groups if g.values(metric)]
    if ranked:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(ranked) + 2), 4.5))
        _bars_with_seeds(ax, ranked, [g.label.replace(" ", "\n") for g in ranked], metric, interval=True)
        ax.set_ylabel(name)
        ax.tick_params(axis="x", labelsize=8), ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{name} per group: bar = mean, dots = seeds, black = 95% t-interval", fontsize=9)
        files["seeds"] = save(fig, out / "seeds.png")
    return files


def _bars_with_seeds(ax, groups: list[Group], names: list[str], metric: str, interval: bool = False) -> None:
    """A bar per group at its mean, each seed's value as a dot, and the min–max (or the 95% interval) as a line."""
    for i, g in enumerate(groups):
        sp = g.spread(metric)
        if sp is None:
            continue
        ax.bar(i, sp.mean, color=f"C{i % 10}", alpha=0.5)
        ax.scatter([i] * sp.n, sp.values, color=f"C{i % 10}", edgecolor="black", zorder=3, s=18)
        lo, hi = sp.interval if interval else (sp.low, sp.high)
        ax.plot([i, i], [lo, hi], color="black", linewidth=1.5, zorder=4)
    ax.set_xticks(range(len(groups)), names)


def report(paths: list[str], out: str | None = None) -> tuple[list[Run], dict[str, Path]]:
    folders = find_runs(paths)
    if not folders:
        raise ConfigError(f"{' '.join(paths)}: no run folders (folders with .hydra/config.yaml) found; give a sweep "
                          f"folder such as outputs/multirun/<date>, run folders or a glob")
    runs = [read_run(f) for f in folders]
    if out:
        target = Path(out).expanduser()  # made if missing
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--out {out}: a file, not a folder")
    else:
        target = Path(glob.glob(str(Path(paths[0]).expanduser()))[0])
        target = target if target.is_dir() else target.parent
    return runs, write_report(runs, target)


def main(argv: list[str] | None = None) -> None:
    """``attnlab report`` / ``python report.py``: the report of the runs given, printed and written."""
    import argparse
    from attnlab.cli import run_plain
    ap = argparse.ArgumentParser(prog="report", description="A sweep side by side, offline: report.md, report.csv "
                                 "and plots, written into the first folder given (or --out), and the table printed.")
    ap.add_argument("paths", nargs="+", help="a sweep folder, run folders or globs")
    ap.add_argument("--out", help="where to write the report (default: the first folder given)")
    args = ap.parse_args(argv)
    _, files = run_plain("report", lambda: report(args.paths, args.out))
    print(files["markdown"].read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in files.items()))

