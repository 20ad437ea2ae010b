"""The benchmark scripts run end to end at toy sizes (so they do not rot between GPU sessions)."""
import json
import os
import subprocess
import sys

import pytest

from attnlab.attention import ATTENTION_TYPES
from conftest import ROOT

pytestmark = pytest.mark.slow


def run(script, *args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter is for tests, not timings
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_attention_benchmark_writes_table_json_and_plot(tmp_path):
    out = run("attention.py", "--lengths", "64", "256", "--repeats", "1", "--heads", "2", "--dim", "16", "--modes", "fwdbwd",
              "--set", "longformer.window=32", tmp_path=tmp_path)
    assert "| full / dense |" in out and "| longformer / blocked |" in out
    assert all(f"| {name} / " in out for name in ATTENTION_TYPES)  # every registered type, no list here
    [js] = tmp_path.glob("attention-cpu-*.json")
    data = json.loads(js.read_text())
    assert data["machine"]["date"] and data["machine"]["cpu"]
    timed = [r for r in data["results"] if "seconds" in r]
    assert {(r["type"], r["length"]) for r in timed} >= {(t, n) for t in ATTENTION_TYPES
                                                         for n in (64, 256)}
    full = {r["length"]: r["attended_pairs"] for r in timed if r["type"] == "full"}
    assert full[256] == 256 * 257 // 2
    assert list(tmp_path.glob("attention-cpu-*.png"))
    assert "against full / sdpa (fused, full causal)" in out and "| longformer / banded |" in out
    assert "- longformer / banded time <= 0.1x at n=256:" in out  # each goal says met or missed by how much


def test_throughput_benchmark_raw_and_lightning(tmp_path):
    out = run("throughput.py", "--preset", "tiny", "--steps", "2", "--warmup", "1", tmp_path=tmp_path)
    assert all(f"| {name} | raw |" in out and f"| {name} | lightning |" in out for name in ATTENTION_TYPES)


def test_overview_picture_has_a_panel_per_registered_type(tmp_path):
    from attnlab.attention.pictures import save_overview
    import matplotlib.image
    img = matplotlib.image.imread(save_overview(tmp_path / "overview.png"))
    assert img.shape[1] > img.shape[0] * len(ATTENTION_TYPES) / 4  # one column per type, two rows


def test_long_context_benchmark_doubles_until_the_limit(tmp_path):
    run("long_context.py", "--attention", "longformer", "--start", "256", "--max-context", "512",
              tmp_path=tmp_path)
    [js] = tmp_path.glob("long_context-*.json")
    res = json.loads(js.read_text())["results"]
    assert [r["context"] for r in res] == [256, 512] and all("seconds" in r for r in res)


def test_decode_benchmark_compares_cache_and_recomputation(tmp_path):
    out = run("decode.py", "--lengths", "32", "64", "--new", "4", "--new-uncached", "2", "--stream", "16",
              "--layers", "1", "--width", "32", "--vocab", "64", "--kv-heads", "4", "1", tmp_path=tmp_path)
    assert all(f"| {name} | 64 | 1 |" in out for name in ATTENTION_TYPES)  # every registered type
    [js] = tmp_path.glob("decode-cpu-*.json")
    data = json.loads(js.read_text())
    assert data["machine"]["date"] and {r["prompt"] for r in data["rows"]} == {32, 64}
    full = {r["kv_heads"]: r["cache_MiB"] for r in data["rows"] if r["type"] == "full" and r["prompt"] == 64}
    assert full[4] == 4 * full[1]  # multi-query keeps one key/value head of four
    assert all(r["cached_ms_per_token"] > 0 and r["uncached_ms_per_token"] > 0 for r in data["rows"])
    assert len(data["stream"]) == len(ATTENTION_TYPES) and list(tmp_path.glob("decode-cpu-*.png"))


FAKE_NANOGPT = """
import sys
out = [a for a in sys.argv if a.startswith("--out_dir=")]
assert "--device=cpu" in sys.argv and "--batch_size=12" in sys.argv and out
for it in range(0, 501):
    if it % 250 == 0:
        print(f"step {it}: train loss 2.0, val loss {3.0 - it / 1000:.4f}")
    print(f"iter {it}: loss 2.0, time {10000.0 if it % 250 == 0 else 100.0:.2f}ms, mfu -100.00%")
"""


def test_side_by_side_with_nanogpt_counts_training_time_only(tmp_path):
    nanogpt = tmp_path / "nanoGPT"
    (nanogpt / "config").mkdir(parents=True)
    (nanogpt / "config" / "train_shakespeare_char.py").write_text("")
    (nanogpt / "train.py").write_text(FAKE_NANOGPT)
    data = nanogpt / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    (data / "prepare.py").write_text("open('train.bin', 'w').write('x')\n")
    out = run("throughput.py", "--vs-nanogpt", str(nanogpt), "--attnlab-args", "trainer.max_steps=20",
              "trainer.val_check_interval=10", "callbacks.sample_texts=null", tmp_path=tmp_path / "out")
    assert len((data / "input.txt").read_text()) > 1_000_000  # written from the embedded plays
    [js] = (tmp_path / "out").glob("throughput-vs-nanogpt-cpu-*.json")
    runs = {r["who"]: r for r in json.loads(js.read_text())["runs"]}
    assert runs["nanoGPT"]["tokens_per_s"] == pytest.approx(12 * 64 / 0.1)  # the 10 s evaluation steps left out
    assert runs["nanoGPT"]["val_loss"] == pytest.approx(2.5) and runs["nanoGPT"]["val_step"] == 500
    assert runs["attnlab"]["val_step"] == 20 and runs["attnlab"]["tokens_per_s"] > 0
    assert "attnlab / nanoGPT (medians)" in out and "goal (issue #11)" in out


def test_threads_benchmark_compares_settings_with_and_without_busy_cores(tmp_path):
    out = run("threads.py", "--busy", "0", "1", "--steps", "1", "--settings", "1", "auto", tmp_path=tmp_path)
    [js] = tmp_path.glob("threads-cpu-*.json")
    rows = json.loads(js.read_text())["rows"]
    assert [(r["busy"], r["setting"]) for r in rows] == [(0, "1"), (0, "auto"), (1, "1"), (1, "auto")]
    assert all(r["steps_per_s"] > 0 for r in rows) and "| other busy processes |" in out


def test_documents_benchmark_times_every_type_without_and_with_the_mask(tmp_path):
    out = run("documents.py", "--context", "32", "--batch", "2", "--layers", "1", "--width", "32", "--steps", "1",
              "--types", "flash", "longformer", "--short-docs", "8", tmp_path=tmp_path)
    [js] = tmp_path.glob("documents-cpu-*.json")
    data = json.loads(js.read_text())
    assert {(r["type"], r["backend"]) for r in data["rows"]} >= {("flash", "sdpa"), ("flash", "blocked"),
                                                                 ("longformer", "banded")}
    assert data["crossing"]["short"] > data["crossing"]["plays"]  # the short documents cut nearly every window
    assert "| longformer | banded |" in out and list(tmp_path.glob("documents-cpu-*.png"))


def test_streaming_benchmark_reads_past_the_window_with_three_caches(make_cfg, tmp_path):
    from conftest import FAST_TRAIN
    from attnlab.train import train
    cfg = make_cfg([*FAST_TRAIN, "model.positions=rope", "model.context=32"])
    train(cfg)
    out = run("streaming.py", "--run", str(cfg.paths.output_dir), "--window", "8", "--texts", "2",
              "--cache-dir", str(cfg.paths.cache_dir), tmp_path=tmp_path)
    [js] = tmp_path.glob("streaming-cpu-*.json")
    data = json.loads(js.read_text())
    assert [r["cache"] for r in data["rows"]] == ["full", "window", "sinks"] and data["length"] == 32
    first = {r["cache"]: r["ppl_by_chunk"][0] for r in data["rows"]}
    assert first["window"] == pytest.approx(first["full"], rel=1e-5)  # within the first window the caches agree
    assert first["sinks"] == pytest.approx(first["full"], rel=1e-5)
    assert len(data["sink_share"]) == cfg.model.n_layer and "| sinks |" in out
