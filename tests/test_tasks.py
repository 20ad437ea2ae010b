"""The synthetic long-range tasks: reproducible from their seed, answers where they say, learnable by full
attention in seconds, and provably out of a window's reach beyond it."""
import pytest
import torch

from attnlab.data.tasks import CHANCE, KEYS, examples
from attnlab.model import GPT, GPTConfig


@pytest.mark.parametrize("task", ["copy", "mqar"])
def test_the_same_seed_gives_the_same_examples_and_the_answers_are_where_they_say(task):
    a, b = examples(task, 200, 63, seed=5), examples(task, 200, 63, seed=5)
    assert a == b and a != examples(task, 200, 63, seed=6)
    for e in a:
        assert len(e.text) == 63
        for pos, distance in e.answers:
            query = pos - 1  # the position whose prediction is the answer
            source = query - distance  # what the attention must reach
            if task == "copy":
                assert e.text[query] == "?" and e.text[source] == e.text[pos] in KEYS
            else:  # the query key repeats the key just before the value it must copy
                assert e.text[query] == e.text[source - 1] in KEYS and e.text[pos] == e.text[source]
    distances = [d for e in examples(task, 2000, 63, seed=0) for _, d in e.answers]
    assert min(distances) == 1 and max(distances) >= 55  # near and far both drawn


@pytest.mark.parametrize("task, length, pairs", [("copy", 2, 1), ("mqar", 20, 8), ("mqar", 40, 0)])
def test_an_example_too_short_for_its_task_is_refused(task, length, pairs):
    with pytest.raises(ValueError, match="needs at least"):
        examples(task, 1, length, 0, pairs)


def vocabulary():
    chars = sorted(set(".?" + KEYS))
    return {c: i for i, c in enumerate(chars)}


def accuracy(model, batch, stoi) -> float:
    x = torch.tensor([[stoi[c] for c in e.text] for e in batch])  # (N, L)
    with torch.no_grad():
        predicted = model(x).argmax(-1)  # (N, L)
    hits = [int(predicted[n, pos - 1] == x[n, pos]) for n, e in enumerate(batch) for pos, _ in e.answers]
    return sum(hits) / len(hits)


def test_full_attention_learns_to_copy_in_seconds():
    torch.manual_seed(0)
    stoi = vocabulary()
    model = GPT(GPTConfig(vocab_size=len(stoi), context=15, n_layer=1, n_head=4, d_model=64), {"name": "full"})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for step in range(500):
        x = torch.tensor([[stoi[c] for c in e.text] for e in examples("copy", 32, 15, seed=step)])  # (32, 15)
        logits = model(x[:, :-1])  # (32, 14, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(model.eval(), examples("copy", 256, 15, seed=10_000), stoi) > 0.9


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
        assert sum(stoi[letter] == guess for letter in KEYS) / len(KEYS) <= CHANCE


def test_a_task_run_scores_recall_by_distance_and_the_report_plots_it(make_cfg, tmp_path):
    import json
    from pathlib import Path

    from attnlab.report import report
    from attnlab.train import train
    cfg = make_cfg(["experiment=long_range_cpu", "model.context=32", "trainer.max_steps=6",
                    "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "dataset.train_examples=300",
                    "callbacks.task_accuracy.examples=64", "callbacks.model_summary=null",
                    "callbacks.attention_picture=null", "callbacks.rich_progress=null"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    x, _ = next(iter(run_loader(cfg)))
    assert (x[:, -1] == x[0, -1]).all()  # every window ends with the end token: one example per window
    scores = json.loads((run / "task_accuracy.json").read_text())
    assert scores["task"] == "copy" and sum(scores["count"]) == 64 and scores["step"] == 6
    assert 0 <= metrics["task/acc"] <= 1 and metrics["task/acc"] == pytest.approx(scores["overall"])
    [row], files = report([str(run)], str(tmp_path / "report"))
    assert row.task_acc == pytest.approx(scores["overall"]) and files["task_accuracy"].exists()


def run_loader(cfg):
    from attnlab.train import build_datamodule
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm.train_dataloader()
