"""A pretrained GPT-2 (a Hugging Face folder or hub id) in this project's model: the same logits as Hugging Face's
own model, under any attention type, trainable, sampled and evaluated directly.

The hub is unreachable here, so the checkpoint is a small random GPT-2 written by ``transformers`` itself (a
test dependency), with a byte-level BPE tokenizer trained on a few lines."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import pretrained
from attnlab.model import GPT, GPTConfig
from attnlab.schema import ConfigError
from conftest import FAST_TRAIN, ROOT

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["To be, or not to be, that is the question. " * 40, "ROMEO: But soft! " * 40],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def ours(folder: Path, attention: dict, **settings) -> GPT:
    model = GPT(GPTConfig(**{**pretrained.model_settings(folder), "dropout": 0.0, **settings}), attention)
    pretrained.load_into(model, folder, str(folder))
    return model.double().eval()


@pytest.mark.parametrize("attention", [{"name": "full"}, {"name": "flash"},
                                       {"name": "longformer", "window": 32, "global_tokens": 0}])
def test_the_same_logits_and_gradients_as_hugging_faces_gpt2(hf_folder, attention):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).double().eval()
    mine = ours(hf_folder, attention)  # a window as long as the context: the same keys as full attention
    idx = torch.randint(0, mine.cfg.vocab_size, (2, 32))
    torch.testing.assert_close(mine(idx), hf(idx).logits, rtol=0, atol=1e-10)
    next_token_loss = lambda logits: torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),  # noqa: E731
                                                                       idx[:, 1:].flatten())
    loss_a, loss_b = next_token_loss(mine(idx)), next_token_loss(hf(idx).logits)  # (HF's own loss is float32)
    loss_a.backward(), loss_b.backward()
    torch.testing.assert_close(mine.blocks[0].attn.qkv.weight.grad,
                               hf.transformer.h[0].attn.c_attn.weight.grad.t(), rtol=0, atol=1e-10)


def test_another_attention_type_keeps_every_weight_and_changes_only_the_keys_seen(hf_folder):
    full, local = ours(hf_folder, {"name": "full"}), ours(hf_folder, {"name": "longformer", "window": 4,
                                                                       "global_tokens": 1})
    for (name, a), (_, b) in zip(full.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), name
    idx = torch.randint(0, full.cfg.vocab_size, (1, 32))
    with torch.no_grad():
        same, different = full(idx)[:, :4], local(idx)[:, :4]  # the first 4 positions see the same keys
        assert torch.allclose(same, different) and not torch.allclose(full(idx)[:, 8:], local(idx)[:, 8:])


def test_a_longer_context_copies_the_position_table(hf_folder):
    long = ours(hf_folder, {"name": "longformer", "window": 8}, context=80)
    table = long.pos_emb.weight  # (80, C)
    torch.testing.assert_close(table[32:64], table[:32], rtol=0, atol=0)
    torch.testing.assert_close(table[64:80], table[:16], rtol=0, atol=0)


def test_clear_lines_for_a_clash_a_foreign_model_and_an_unreachable_hub(hf_folder, tmp_path, monkeypatch):
    settings = pretrained.model_settings(hf_folder)
    with pytest.raises(ConfigError, match=r"model.d_model=64 \(the checkpoint has 32\)"):
        pretrained.merge_settings({}, settings, {"d_model": 64}, str(hf_folder))
    foreign = tmp_path / "bert"
    shutil.copytree(hf_folder, foreign)
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"model_type='bert'; only GPT-2 checkpoints"):
        pretrained.model_settings(foreign)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"init_from=hf:gpt2: could not get 'gpt2' from the Hugging Face hub .* "
                                          r"give the folder: init_from=/path/to/folder"):
        pretrained.fetch("hf:gpt2", tmp_path / "cache")
    (foreign / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"not a Hugging Face model folder \(missing model.safetensors or"):
        pretrained.fetch(str(foreign))


def test_a_folder_with_vocab_and_merges_gets_its_tokenizer(hf_folder, tmp_path):
    folder = tmp_path / "old-style"
    shutil.copytree(hf_folder, folder)
    from tokenizers import Tokenizer
    Tokenizer.from_file(str(folder / "tokenizer.json")).model.save(str(folder))  # vocab.json + merges.txt
    (folder / "tokenizer.json").unlink()
    from attnlab.data.tokenizers import load_tokenizer
    made = load_tokenizer(pretrained.tokenizer_folder(folder, tmp_path / "cache"))
    original = load_tokenizer(hf_folder)
    assert made.encode("To be, or not to be") == original.encode("To be, or not to be")


def test_fine_tuning_with_longformer_then_sampling_and_evaluating(hf_folder, make_cfg, tmp_path):
    from attnlab import checkpoints, runs
    from attnlab.train import train
    cfg = make_cfg([*FAST_TRAIN, f"init_from={hf_folder}", "attention=longformer", "attention.window=8",
                    "model.context=64", "trainer.limit_train_batches=3"])
    train(cfg)
    state = checkpoints.safe_load(Path(cfg.paths.checkpoint_dir) / "last.ckpt")
    assert state["attnlab"]["settings"]["model"]["d_model"] == 32 and state["attnlab"]["settings"]["model"]["context"] == 64
    loaded = runs.load_run(cfg.paths.output_dir, str(tmp_path / "cache"))  # the run folder alone
    vocab = pretrained.model_settings(hf_folder)["vocab_size"]
    assert loaded.tokenizer.vocab_size == vocab and loaded.model.model.cfg.activation == "gelu_tanh"
    direct = runs.load_run(str(hf_folder), str(tmp_path / "cache"))  # the pretrained model, no training run
    assert direct.model.model.cfg.context == 32 and direct.tokenizer.fingerprint == loaded.tokenizer.fingerprint
    # named from what ran, not from the config groups' defaults (small / char)
    from attnlab.report import read_run
    row = read_run(Path(cfg.paths.output_dir))
    assert (row.model, row.tokenizer) == ("tiny-gpt2", "pretrained-tiny-gpt2")
    from attnlab.sweep import pretrained_name
    assert pretrained_name(str(hf_folder), "small") == "tiny-gpt2" and pretrained_name("hf:openai/gpt2", "x") == "gpt2"
    assert pretrained_name(None, "small") == "small"


@pytest.mark.subprocess
def test_evaluate_and_sample_take_a_hugging_face_folder(hf_folder, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=tmp_path, capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run(str(ROOT / "sample.py"), f"run={hf_folder}", "prompt=To be", "max_new_tokens=5")
    assert r.returncode == 0 and "--- sample 1 of 1 ---\nTo be" in r.stdout, (r.stdout + r.stderr)[-2000:]
    r = run(str(ROOT / "evaluate.py"), f"run={hf_folder}")
    assert r.returncode == 2 and "a pretrained model without training data of its own" in r.stdout + r.stderr
    r = run(str(ROOT / "evaluate.py"), f"run={hf_folder}", "dataset=shakespeare", "limit_batches=2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    [metrics] = tmp_path.glob("outputs/evaluate/*/metrics.json")
    assert json.loads(metrics.read_text())["ppl"] > 1


def test_export_then_hugging_face_reads_the_same_model_and_import_is_lossless(hf_folder, make_cfg, tmp_path):
    from attnlab.export import export, unsupported
    from attnlab.train import train
    from test_commands import command_cfg
    cfg = make_cfg([*FAST_TRAIN, f"init_from={hf_folder}", "trainer.limit_train_batches=3"])  # full attention
    train(cfg)
    out = export(command_cfg("export", [f"run={cfg.paths.output_dir}", f"out={tmp_path / 'hf-out'}"], tmp_path / "o"))
    from attnlab import runs
    mine = runs.load_run(cfg.paths.output_dir, str(tmp_path / "cache")).model.model.double().eval()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).double().eval()
    idx = torch.randint(0, mine.cfg.vocab_size, (2, 32))
    torch.testing.assert_close(theirs(idx).logits, mine(idx), rtol=0, atol=1e-10)
    again = ours(out, {"name": "full"})  # import -> export -> import: the same weights, bit for bit
    for (name, a), (_, b) in zip(mine.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    local = ours(hf_folder, {"name": "longformer", "window": 8})
    assert "attention=longformer" in "; ".join(unsupported(local))


def test_greedy_decoding_with_our_cache_gives_hugging_faces_tokens(hf_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    mine = GPT(GPTConfig(**{**pretrained.model_settings(hf_folder), "dropout": 0.0}), {"name": "full"}).eval()
    pretrained.load_into(mine, hf_folder, str(hf_folder))
    prompt = torch.randint(0, mine.cfg.vocab_size, (1, 6))
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(mine.generate(prompt, 20, top_k=1), theirs)


def test_the_conversion_back_gives_hugging_faces_model_and_names_what_it_cannot_represent(hf_folder):
    from attnlab.export import to_hugging_face, unsupported
    mine = ours(hf_folder, {"name": "full"})
    assert unsupported(mine) == []
    config, state = to_hugging_face(mine)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).double().eval()
    theirs.load_state_dict(state, strict=False)  # the causal-mask buffers are not weights
    idx = torch.randint(0, mine.cfg.vocab_size, (2, 32))
    torch.testing.assert_close(theirs(idx).logits, mine(idx), rtol=0, atol=1e-10)
    other = GPT(GPTConfig(**{**pretrained.model_settings(hf_folder), "positions": "rope", "bias": False,
                             "activation": "gelu"}), {"name": "longformer", "window": 8, "causal": True})
    said = "; ".join(unsupported(other))
    for problem in ("attention=longformer", "model.positions=rope", "model.bias=false", "model.activation=gelu"):
        assert problem in said, problem


def test_global_projections_converted_from_gpt2_start_as_copies_and_change_nothing(hf_folder):
    longformer = {"name": "longformer", "window": 8, "global_tokens": 2}
    shared = ours(hf_folder, longformer)
    separate = ours(hf_folder, {**longformer, "global_projections": True})
    assert separate.blocks[0].attn.qkv_global is not None
    torch.testing.assert_close(separate.blocks[1].attn.qkv_global.weight, separate.blocks[1].attn.qkv.weight)
    idx = torch.randint(0, shared.cfg.vocab_size, (2, 32))
    torch.testing.assert_close(separate(idx), shared(idx), rtol=0, atol=1e-12)


def test_a_presets_longer_context_counts_as_chosen(hf_folder, make_cfg):
    """experiment=finetune_cpu sets model.context=512 in its file, not on the command line: the run must still
    get the longer context (copying the positions), not the checkpoint's 32."""
    from attnlab.spec import RunSpec
    cfg = make_cfg(["experiment=finetune_cpu", f"init_from={hf_folder}", "attention=longformer"])
    model_cfg = RunSpec.from_hydra(cfg).model
    assert model_cfg["context"] == 512 and cfg.model.context == 512
    assert model_cfg["n_layer"] == 2  # the checkpoint's shape still decides the rest


def test_a_char_run_exports_a_tokenizer_hugging_face_reads_and_export_refuses_cleanly(make_cfg, tmp_path):
    """A char-tokenizer run's export holds a real tokenizers file (Hugging Face's AutoTokenizer gives the run's own
    ids), importing it back gives the same ids; out= a file is one line; a leftover temporary folder of an
    interrupted export leaks nothing into the next one."""
    from attnlab import runs
    from attnlab.data.tokenizers import load_tokenizer
    from attnlab.export import export
    from attnlab.train import train
    from test_commands import command_cfg
    cfg = make_cfg([*FAST_TRAIN, "model.bias=true", "model.activation=gelu_tanh", "trainer.limit_train_batches=2"])
    train(cfg)
    ours_tok = runs.load_run(cfg.paths.output_dir, str(tmp_path / "cache")).tokenizer
    out = tmp_path / "hf-char"
    leftover = tmp_path / ".hf-char.tmp"
    leftover.mkdir()
    (leftover / "stray.bin").write_text("from an interrupted export")
    export(command_cfg("export", [f"run={cfg.paths.output_dir}", f"out={out}"], tmp_path / "o"))
    assert not (out / "stray.bin").exists() and not leftover.exists()
    text = "ROMEO: What light\nthrough yonder window breaks?"
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs(text)["input_ids"] == ours_tok.encode(text)
    assert theirs.decode(theirs(text)["input_ids"]) == text
    assert load_tokenizer(out).encode(text) == ours_tok.encode(text)  # init_from= / run= of the export
    assert transformers.GPT2LMHeadModel.from_pretrained(out).config.eos_token_id == ours_tok.eos_id
    a_file = tmp_path / "model.bin"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"out=.*model.bin is a file; give a new folder"):
        export(command_cfg("export", [f"run={cfg.paths.output_dir}", f"out={a_file}"], tmp_path / "o2"))


def _edited(hf_folder, tmp_path, **changes) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        config.pop(k)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"n_layer": 1}, r"2-layer weights|tensors its config.json does not describe \(e.g. 'h.1"),
    ({"n_layer": True}, r"n_layer=True; it must be a whole number"),
    ({"n_layer": 2.7}, r"n_layer=2.7; it must be a whole number"),
    ({"n_head": "4"}, r"n_head='4'; it must be a whole number"),
    ({"n_embd": -32}, r"n_embd=-32; it must be a whole number in \[1, 65,536\]"),
    ({"n_embd": 30}, r"n_embd=30 not divisible by n_head=4"),
    ({"n_positions": None}, r"config.json has no n_positions"),
    ({"vocab_size": 2_000_000, "n_embd": 65536, "n_head": 1}, r"B parameters, more than the 4B"),
    ({"n_embd": 64}, r"do not have the shapes its config.json gives"),
    ({"tie_word_embeddings": "yes"}, r"tie_word_embeddings='yes'; it must be true or false"),
])
def test_a_hugging_face_folder_must_be_the_model_its_weights_are(hf_folder, tmp_path, changes, message):
    """config.json is checked before anything is allocated, and the weights load strictly: every tensor used,
    none missing, every shape equal to the one config.json gives."""
    folder = _edited(hf_folder, tmp_path, **changes)
    with pytest.raises(ConfigError, match=message):
        settings = pretrained.model_settings(folder)
        model = GPT(GPTConfig(**settings), {"name": "full"})
        pretrained.load_into(model, folder, str(folder))


def test_run_refuses_a_tokenizer_of_another_size_and_names_run(hf_folder, tmp_path):
    from attnlab import runs
    folder = _edited(hf_folder, tmp_path)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens(["<|extra|>"])  # one token more than config.json's vocab_size
    tok.save(str(folder / "tokenizer.json"))
    with pytest.raises(ConfigError, match=r"run=.*its tokenizer has \d+ tokens, its config.json vocab_size"):
        runs.load_run(str(folder), str(tmp_path / "cache"))
    narrower = _edited(hf_folder, tmp_path / "b", n_layer=1)
    with pytest.raises(ConfigError, match=r"^run="):
        runs.load_run(str(narrower), str(tmp_path / "cache"))


def test_a_hugging_face_checkpoint_with_a_stride_zero_view_or_deep_config_is_one_line(hf_folder, tmp_path):
    folder = _edited(hf_folder, tmp_path)
    from safetensors.torch import load_file
    weights = load_file(str(folder / "model.safetensors"))
    weights["h.0.mlp.c_fc.weight"] = torch.zeros(1, 1).expand(2 ** 17, 2 ** 16)  # 32 GiB if made contiguous
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    model = GPT(GPTConfig(**pretrained.model_settings(folder)), {"name": "full"})
    with pytest.raises(ConfigError, match=r"views more elements than the file stores"):
        pretrained.load_into(model, folder, str(folder))
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"config.json cannot be read .*nests more than"):
        pretrained.model_settings(folder)
