"""The synthetic recall tasks: reproducible from their seed, answers where they say, MQAR as Zoology defines it,
the loss on the answers only, learnable by full attention, and provably out of a window's reach beyond it."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from attnlab.data.corpus import DataError
from attnlab.data.tasks import KEYS, TOKEN_BASE, examples, get_task
from attnlab.errors import ConfigError
from attnlab.model import GPT, GPTConfig

COPY = get_task("copy")


def token_ids(text: str) -> list[int]:
    """An MQAR example's token ids back from its characters (the filler is id 0)."""
    return [0 if c == "." else ord(c) - TOKEN_BASE for c in text]


@pytest.mark.parametrize("task", ["copy", "mqar"])
def test_the_same_seed_gives_the_same_examples_and_the_answers_are_where_they_say(task):
    t = get_task(task, **({"pairs": 4} if task == "mqar" else {}))
    a, b = examples(t, 200, 63, seed=5), examples(t, 200, 63, seed=5)
    assert a == b and a != examples(t, 200, 63, seed=6)
    for e in a:
        assert len(e.text) == 63
        assert len(e.expected) == len(e.answers)
        for (pos, distance), answer in zip(e.answers, e.expected):
            query = pos - 1  # the position whose prediction is the answer
            source = query - distance  # what the attention must reach
            if task == "copy":
                assert e.text[query] == "?" and e.text[source] == e.text[pos] == answer and answer in KEYS
            else:  # the query key repeats the key just before the value it must copy; the value is not in the text
                assert e.text[query] == e.text[source - 1] and e.text[source] == answer and e.text[pos] == "."
    distances = [d for e in examples(t, 2000, 63, seed=0) for _, d in e.answers]
    assert min(distances) == 1 if task == "copy" else min(distances) >= 1
    assert max(distances) >= 55  # near and far both drawn


def test_mqar_draws_keys_and_values_as_zoology_does():
    """Disjoint key (1 .. V/2 - 1) and value (V/2 .. V - 1) vocabularies, distinct within an example, the pairs
    first, each key asked once at an even slot after them with its value right after (the answer), fillers 0."""
    t = get_task("mqar", pairs=4, vocab_size=64)
    seen_keys, seen_values = set(), set()
    for e in examples(t, 500, 63, seed=1):
        ids = token_ids(e.text)
        keys, values = ids[0:8:2], ids[1:8:2]
        assert all(1 <= k < 32 for k in keys) and all(32 <= v < 64 for v in values)
        assert len(set(keys)) == 4 and len(set(values)) == 4  # without replacement
        seen_keys |= set(keys)
        seen_values |= set(values)
        assert len(e.answers) == 4
        asked = []
        for (pos, distance), answer in zip(e.answers, token_ids(e.expected)):
            q = pos - 1
            assert q >= 8 and (q - 8) % 2 == 0  # a slot: 2 pairs + 2 g
            i = (q - distance - 1) // 2  # the pair whose value the query must copy
            assert ids[q] == keys[i] and answer == values[i]
            asked.append(i)
        assert sorted(asked) == [0, 1, 2, 3]  # every key asked exactly once
        query_slots = {pos - 1 for pos, _ in e.answers}
        assert all(ids[j] == 0 for j in range(8, 63) if j not in query_slots)  # fillers only (Zoology's figure 2):
        assert not set(values) & set(ids[8:])  # no value shows after the pairs
    assert seen_keys <= set(range(1, 32)) and len(seen_keys) == 31 and len(seen_values) == 32


def test_mqar_query_gaps_follow_zoologys_power_law():
    """The first pair's query gap g (slot 2 pairs + 2 g) is the first of Zoology's draws: P(g) = a (g+1)^(a-1),
    normalised over the slots. Checked per gap within 4 standard errors, for a = 0.01 (most queries right after
    the pairs) and a = 1 (uniform)."""
    n = 6000
    for a in (0.01, 1.0):
        t = get_task("mqar", pairs=4, vocab_size=256, power_a=a)
        slots = (63 - 8) // 2
        expected = np.array([a * (g + 1) ** (a - 1) for g in range(slots)])
        expected /= expected.sum()
        first_gaps = Counter()
        for e in examples(t, n, 63, seed=2):
            (pos, d), = [(pos, d) for pos, d in e.answers if pos - 1 - d == 1]  # the answer copied from position 1
            first_gaps[(pos - 1 - 8) // 2] += 1
        for g in range(slots):
            se = math.sqrt(expected[g] * (1 - expected[g]) / n)
            assert abs(first_gaps[g] / n - expected[g]) < 4 * se + 1e-9, (a, g, first_gaps[g] / n, expected[g])
    assert expected.max() - expected.min() < 1e-12  # a = 1: uniform


def test_mqar_random_fillers_come_from_the_whole_vocabulary():
    t = get_task("mqar", pairs=4, vocab_size=64, random_fillers=True)
    fillers = Counter()
    for e in examples(t, 300, 63, seed=3):
        ids = token_ids(e.text)
        slots = {pos - 1 for pos, _ in e.answers} | set(range(8))
        fillers.update(ids[j] for j in range(63) if j not in slots)
    assert set(fillers) == set(range(64))  # keys, values and the filler id alike


def test_chance_and_trivial_levels():
    mqar = get_task("mqar", pairs=4, vocab_size=8192)
    assert mqar.chance == 1 / 4096 and mqar.trivial == 1 / 4
    assert COPY.chance == COPY.trivial == 1 / 26


@pytest.mark.parametrize("task, settings, length", [("copy", {}, 2), ("mqar", {"pairs": 8}, 20),
                                                    ("mqar", {"pairs": 0}, 40)])
def test_an_example_too_short_for_its_task_is_refused(task, settings, length):
    with pytest.raises(ValueError, match="needs at least|pairs >= 1"):
        examples(get_task(task, **settings), 1, length, 0)


@pytest.mark.parametrize("settings, message", [({"vocab_size": 7}, "vocab_size=7 must be even"),
                                               ({"vocab_size": 30000}, "vocab_size=30000"),
                                               ({"power_a": 0}, "power_a=0"),
                                               ({"colour": 1}, "takes the settings")])
def test_bad_mqar_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        examples(get_task("mqar", **settings), 1, 63, 0)


def answers_only_datamodule(tmp_path, task="copy", loss_on="auto", tokenizer="char", **settings):
    from attnlab.data.datamodule import TextDataModule
    dataset = {"name": task, "source": "synthetic", "task": task, "length": 32, "seed": 0, "train_examples": 64,
               "val_examples": 8, "test_examples": 8, **settings}
    dm = TextDataModule(dataset, {"name": tokenizer, "vocab_size": 300}, 32, 4, str(tmp_path), loss_on=loss_on)
    dm.prepare_data()
    return dm


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_loss_counts_the_answers_only(tmp_path, split):
    """data.loss_on=auto on a task: every target is IGNORE except the answers, which are the characters after
    the '?' (copy) or the values after a repeated key (mqar); loss_on=all counts every target."""
    from attnlab.data.datamodule import IGNORE
    for task, settings in [("copy", {}), ("mqar", {"pairs": 2, "vocab_size": 64})]:
        dm = answers_only_datamodule(tmp_path, task, **settings)
        assert dm.loss_on == "answers"
        loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
        x, y = next(iter(loader))  # (B, T)
        counted = y != IGNORE
        assert counted.sum(1).tolist() == [1 if task == "copy" else 2] * len(y)  # one example per window
        if task == "copy":
            query = dm.tokenizer.encode("?")[0]
            assert (x[counted] == query).all()  # each counted target follows the "?" ...
        for b, t in counted.nonzero().tolist():  # ... and is a token seen earlier in its window (X, or the value)
            assert y[b, t] in x[b, :t]
        everything = answers_only_datamodule(tmp_path, task, loss_on="all", **settings)
        x2, y2 = next(iter(everything.train_dataloader() if split == "train" else everything.val_dataloader()))
        assert torch.equal(x, x2) and (y2 != IGNORE).all()
        if task == "copy":  # the answer is the next character of the text ...
            assert torch.equal(y[counted], y2[counted])
        else:  # ... MQAR's is not: the text holds a filler there, the target is the value
            filler = dm.tokenizer.encode(".")[0]
            assert (y2[counted] == filler).all() and (y[counted] != filler).all()


def test_answers_need_a_task_and_one_token_per_character(tmp_path):
    from attnlab.data.datamodule import TextDataModule
    with pytest.raises(DataError, match="needs one token per character"):
        answers_only_datamodule(tmp_path, tokenizer="bpe")
    dm = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path),
                        loss_on="answers")
    with pytest.raises(DataError, match="marks no answers"):
        dm.prepare_data()
    with pytest.raises(DataError, match="data.loss_on='some'"):
        TextDataModule({"name": "x", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path), loss_on="some")


def test_the_loss_on_answers_equals_the_full_loss_restricted_to_them():
    """LitGPT's answers-only path computes the output layer at the counted positions only: the same loss."""
    from attnlab.attention import build_attention
    from attnlab.data.datamodule import IGNORE
    from attnlab.lit import LitGPT
    torch.manual_seed(0)
    lit = LitGPT(GPTConfig(vocab_size=50, context=16, n_layer=2, n_head=2, d_model=32), build_attention({"name": "full"}))
    x = torch.randint(0, 50, (3, 16))
    y = torch.full((3, 16), IGNORE)
    y[0, 3], y[1, 7], y[2, 15], y[2, 0] = 4, 9, 11, 2
    full, n = lit.loss((x, y))
    lit.answers_only = True
    sparse, n2 = lit.loss((x, y))
    assert n == n2 == 4 and torch.allclose(full, sparse, atol=1e-6)
    grads = torch.autograd.grad(sparse, lit.model.tok_emb.weight)[0]
    lit.answers_only = False
    assert torch.allclose(grads, torch.autograd.grad(lit.loss((x, y))[0], lit.model.tok_emb.weight)[0], atol=1e-6)


def vocabulary():
    chars = sorted(set(".?" + KEYS))
    return {c: i for i, c in enumerate(chars)}


def accuracy(model, batch, stoi) -> float:
    x = torch.tensor([[stoi[c] for c in e.text] for e in batch])  # (N, L)
    with torch.no_grad():
        predicted = model(x).argmax(-1)  # (N, L)
    hits = [int(predicted[n, pos - 1] == x[n, pos]) for n, e in enumerate(batch) for pos, _ in e.answers]
    return sum(hits) / len(hits)


@pytest.mark.integration  # 500 optimizer steps: the integration tier
def test_full_attention_learns_to_copy_in_seconds():
    torch.manual_seed(0)
    stoi = vocabulary()
    model = GPT(GPTConfig(vocab_size=len(stoi), context=15, n_layer=1, n_head=4, d_model=64), {"name": "full"})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for step in range(500):
        x = torch.tensor([[stoi[c] for c in e.text] for e in examples(COPY, 32, 15, seed=step)])  # (32, 15)
        logits = model(x[:, :-1])  # (32, 14, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(model.eval(), examples(COPY, 256, 15, seed=10_000), stoi) > 0.9


@pytest.mark.parametrize("global_tokens", [0, 1])
def test_a_window_cannot_see_beyond_its_reach(global_tokens):
    """n_layer windows of w keys reach n_layer * (w - 1) positions back: a copy from farther is a guess at
    chance, whatever the weights, unless a global token can carry it (position 0 can: it is X itself here)."""
    torch.manual_seed(0)
    w, layers, length = 4, 2, 31
    stoi = vocabulary()
    model = GPT(GPTConfig(vocab_size=len(stoi), context=length, n_layer=layers, n_head=2, d_model=32),
                {"name": "longformer", "window": w, "global_tokens": global_tokens}).eval()
    reach = layers * (w - 1)
    text = list("." * length)
    text[0], text[reach + 5], text[reach + 6] = "K", "?", "K"  # X at 0, the "?" 11 positions later
    outputs = []
    for letter in KEYS:  # every possible X
        text[0] = text[reach + 6] = letter
        x = torch.tensor([[stoi[c] for c in text]])
        with torch.no_grad():
            outputs.append(model(x)[0, reach + 5])  # (V,): the prediction after "?"
    same = all(torch.equal(o, outputs[0]) for o in outputs)
    if global_tokens:
        assert not same  # the global token at 0 is seen by every query
    else:  # the same scores whatever X is: one fixed guess, right for at most one of the 26 letters (chance)
        assert same
        guess = int(outputs[0].argmax())
        assert sum(stoi[letter] == guess for letter in KEYS) / len(KEYS) <= COPY.chance


@pytest.mark.parametrize("task,answers", [("copy", 1), ("passkey", 5)])
def test_a_task_run_scores_recall_by_distance_and_the_report_plots_it(make_cfg, tmp_path, task, answers):
    import json
    from pathlib import Path

    from attnlab.report import report
    from attnlab.train import train
    cfg = make_cfg(["experiment=long_range_cpu", f"dataset={task}", "model.context=32", "trainer.max_steps=6",
                    "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "dataset.train_examples=300",
                    "callbacks.task_accuracy.examples=64", "callbacks.model_summary=null",
                    "callbacks.attention_picture=null", "callbacks.rich_progress=null"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    x, _ = next(iter(run_loader(cfg)))
    assert (x[:, -1] == x[0, -1]).all()  # every window ends with the end token: one example per window
    scores = json.loads((run / "task_accuracy.json").read_text())
    assert scores["task"] == task and sum(scores["count"]) == 64 * answers and scores["step"] == 6
    assert 0 <= metrics["task/acc"] <= 1 and metrics["task/acc"] == pytest.approx(scores["overall"])
    [row], files = report([str(run)], str(tmp_path / "report"))
    assert row.task_acc == pytest.approx(scores["overall"]) and files["task_accuracy"].exists()


def run_loader(cfg):
    from attnlab.spec import RunSpec
    dm = RunSpec.from_hydra(cfg).data.build()
    dm.setup("fit")
    return dm.train_dataloader()


def test_a_synthetic_example_is_exactly_one_window(tmp_path):
    """Shorter examples than the context would cut windows across examples, and a counted answer could then need
    a token from the window before: refused, as longer ones are."""
    with pytest.raises(DataError, match=r"dataset.length=24 is shorter than model.context=32"):
        answers_only_datamodule(tmp_path, length=24)


def test_overfit_mode_on_a_small_task_validates_on_what_it_has(tmp_path):
    from attnlab.data.datamodule import TextDataModule
    dataset = {"name": "copy", "source": "synthetic", "task": "copy", "length": 32, "seed": 0, "train_examples": 9,
               "val_examples": 4, "test_examples": 4}
    dm = TextDataModule(dataset, {"name": "char"}, 32, 4, str(tmp_path), overfit_batches=3)
    dm.prepare_data()
    assert sum(len(x) for x, _ in dm.val_dataloader()) == 8  # 8 windows, not a crash asking for 12


def test_passkey_hides_the_key_at_a_random_depth_and_asks_for_it_at_the_end():
    """Mohtashami and Jaggi's pass key test at character scale: the key stated once (``key=<digits>;``) at a
    depth spread over the whole text, asked at the very end; the answers are its digits, each with the distance
    from the position that predicts it back to the same digit of the stated key."""
    t = get_task("passkey", digits=5)
    starts = []
    for e in examples(t, 400, 95, seed=3):
        assert len(e.text) == 95 and e.text.endswith(f"key?{e.expected}") and len(e.expected) == 5
        assert e.expected.isdigit() and e.text.count(f"key={e.expected};") == 1
        start = e.text.index(f"key={e.expected};")
        starts.append(start)
        assert [p for p, _ in e.answers] == list(range(90, 95))
        for (p, d), digit in zip(e.answers, e.expected):
            assert e.text[p] == digit and e.text[p - 1 - d] == digit and p - 1 - d == start + 4 + (p - 90)
    assert min(starts) < 8 and max(starts) > 70  # every depth, from the start to right before the question
    assert examples(t, 3, 95, seed=3) == examples(t, 3, 95, seed=3) != examples(t, 3, 95, seed=4)
    with pytest.raises(ConfigError, match="passkey with 5 digits needs at least 20 characters"):
        t.check(19)
