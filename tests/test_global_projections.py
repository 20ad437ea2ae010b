"""Longformer's separate global projections (attention.global_projections=true): the global queries' rows use
their own Q/K/V, every other row (global keys included) the shared ones; copied from shared weights they change
nothing; the KV cache computes exactly what the whole sequence does."""
import math

import pytest
import torch

from attnlab.model import GPT, GPTConfig

GLOBAL = [0, 9]  # a first-position global and a later one (a global query that generation meets)


def model(global_projections: bool, positions="learned", **attention) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=37, context=32, n_layer=2, n_head=4, d_model=32, dropout=0.0, positions=positions)
    settings = {"name": "longformer", "window": 4, "global_tokens": GLOBAL, "global_projections": global_projections,
                **attention}
    return GPT(cfg, settings).double().eval()


def shared_to_global(shared: GPT, **attention) -> GPT:
    separate = model(True, shared.cfg.positions, **attention)
    state = dict(shared.state_dict())
    filled = separate.fill_global_projections(state)
    assert filled and filled == [n for n in separate.state_dict() if ".qkv_global." in n]
    separate.load_state_dict(state)
    return separate


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_copied_from_the_shared_projections_they_change_nothing(positions):
    shared = model(False, positions)
    separate = shared_to_global(shared)
    idx = torch.randint(0, 37, (2, 32))
    torch.testing.assert_close(separate(idx), shared(idx), rtol=0, atol=1e-12)


def reference_layer(attn, x):
    """One attention layer written out densely: local rows from qkv under the pattern, global rows from
    qkv_global over every key (every earlier one when causal)."""
    B, T, C = x.shape
    H, D = attn.n_head, attn.head_dim
    pos = torch.arange(T)
    allowed = attn.attention.pattern(T).dense(T, n_heads=H)  # (H, T, T)

    def heads(t):  # (B, T, C) -> (B, H, T, D)
        return t.view(B, T, H, D).transpose(1, 2)
    q, k, v = (heads(t) for t in attn.qkv(x).split(C, 2))
    qg, kg, vg = (heads(t) for t in attn.qkv_global(x).split(C, 2))
    local = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~allowed, -math.inf), -1) @ v
    causal = pos.view(-1, 1) >= pos.view(1, -1) if attn.attention.causal else torch.ones(T, T, dtype=torch.bool)
    glob = torch.softmax((qg @ kg.transpose(-2, -1) / math.sqrt(D)).masked_fill(~causal, -math.inf), -1) @ vg
    is_global = torch.isin(pos, torch.tensor(GLOBAL)).view(1, 1, T, 1)
    y = torch.where(is_global, glob, local)  # (B, H, T, D)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("causal", [True, False])
def test_global_rows_use_their_own_projections_and_the_rest_the_shared_ones(causal):
    m = shared_to_global(model(False, causal=causal), causal=causal)
    with torch.no_grad():
        for block in m.blocks:  # move the global projections away from the shared ones
            block.attn.qkv_global.weight.add_(torch.randn_like(block.attn.qkv_global.weight) * 0.5)
    x = torch.randn(2, 32, 32, dtype=torch.double, requires_grad=True)
    attn = m.blocks[0].attn
    ours = attn(x, torch.arange(32))
    theirs = reference_layer(attn, x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * g).sum(), [x, attn.qkv_global.weight, attn.qkv.weight])
    expected = torch.autograd.grad((theirs * g).sum(), [x, attn.qkv_global.weight, attn.qkv.weight])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert grads[1].abs().sum() > 0  # the global rows do read them


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_the_kv_cache_gives_the_whole_sequences_logits(positions):
    m = shared_to_global(model(False, positions))
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv_global.weight.add_(torch.randn_like(block.attn.qkv_global.weight) * 0.5)
    idx = torch.randint(0, 37, (1, 24))
    whole = m(idx)  # (1, 24, V)
    cache = m.new_cache()
    pieces = [m(idx[:, :5], cache)] + [m(idx[:, t:t + 1], cache) for t in range(5, 24)]  # prompt, then one by one
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-10)
    assert all(layer.global_kv is None for layer in cache.layers)  # past the last global query: nothing kept


def test_off_or_without_global_tokens_there_are_no_extra_weights():
    assert model(False).blocks[0].attn.qkv_global is None
    assert model(True, global_tokens=0).blocks[0].attn.qkv_global is None
    assert model(True).blocks[0].attn.qkv_global is not None


def test_analysis_reads_the_global_rows_from_their_own_projections():
    from attnlab.analysis import inspect
    m = shared_to_global(model(False))
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv_global.weight.add_(torch.randn_like(block.attn.qkv_global.weight) * 0.5)
    idx = torch.randint(0, 37, (2, 32))
    probs = inspect(m, idx).probabilities[0]  # (B, H, T, T) of layer 0
    attn, pos = m.blocks[0].attn, torch.arange(32)
    h = m.blocks[0].ln_attn(m.drop(m.tok_emb(idx) + m.pos_emb(pos)))
    _, _, v = attn.project(h, pos)
    _, _, vg = attn.project(h, pos, attn.qkv_global)
    rows = attn.attention.is_global(pos).view(1, 1, 32, 1)
    y = torch.where(rows, probs @ vg, probs @ v)  # (B, H, T, D): what the layer attends to, row by row
    expected = attn(h, pos)  # proj(heads side by side) of the layer's own computation
    torch.testing.assert_close(attn.proj(y.transpose(1, 2).reshape(2, 32, 32)), expected, rtol=0, atol=1e-10)
