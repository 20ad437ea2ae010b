"""Dimension mistakes are caught with messages that name the numbers; the model is causal end to end."""
import pytest
import torch

from attnlab.attention import ATTENTION_TYPES
from attnlab.errors import ConfigError
from attnlab.model import GPT, GPTConfig


def tiny(**kw):
    base = dict(vocab_size=31, context=32, n_layer=2, n_head=4, d_model=32)
    return GPTConfig(**{**base, **kw})


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"model.d_model=30 is not divisible by model.n_head=4"):
        tiny(d_model=30)


def test_batch_longer_than_context():
    m = GPT(tiny())
    with pytest.raises(ValueError, match=r"sequence length 40 is longer than the model's context 32"):
        m(torch.zeros(1, 40, dtype=torch.long))


def test_vocabulary_mismatch():
    m = GPT(tiny())
    with pytest.raises(ValueError, match=r"token id 31 is outside the model's vocabulary of 31"):
        m(torch.full((1, 8), 31))


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"shape \(batch, time\), got shape \(8,\)"):
        GPT(tiny())(torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("name", list(ATTENTION_TYPES))
def test_logits_at_t_do_not_depend_on_later_tokens(name):
    torch.manual_seed(0)
    m = GPT(tiny(), {"name": name, **ATTENTION_TYPES[name].example(32)}).eval()
    x = torch.randint(0, 31, (2, 32))
    x2 = x.clone()
    x2[:, 20:] = torch.randint(0, 31, (2, 12))
    torch.testing.assert_close(m(x)[:, :20], m(x2)[:, :20])


def test_weight_tying_and_param_count():
    m = GPT(tiny())
    assert m.head.weight is m.tok_emb.weight
    untied = GPT(tiny(tie_weights=False))
    assert untied.num_params() - m.num_params() == 31 * 32


def test_gpt2_size():
    cfg = GPTConfig(vocab_size=50257, context=1024, n_layer=12, n_head=12, d_model=768, bias=True)
    n = GPT(cfg).num_params(non_embedding=False)
    assert 123e6 < n < 125e6


def test_generate_extends_sequence():
    m = GPT(tiny())
    out = m.generate(torch.zeros(1, 3, dtype=torch.long), 5, top_k=5)
    assert out.shape == (1, 8)


def _grouped_and_multi_head(attention: dict, n_kv_head: int, seed: int = 0):
    """A grouped-query model and the multi-head model that repeats each of its key/value heads over its group:
    the same function by definition (GQA is MHA with tied key/value heads)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, context=32, n_layer=2, n_head=4, d_model=32, positions="rope")
    grouped = GPT(GPTConfig(**cfg, n_kv_head=n_kv_head), attention).double()
    multi = GPT(GPTConfig(**cfg), attention).double()
    state = grouped.state_dict()
    H, D, C = 4, 8, 32
    for name, t in list(state.items()):
        if name.endswith((".attn.qkv.weight", ".attn.qkv_global.weight")):
            q, k, v = t.split([C, n_kv_head * D, n_kv_head * D])
            spread = lambda x: x.reshape(n_kv_head, D, C).repeat_interleave(H // n_kv_head, 0).reshape(H * D, C)  # noqa: E731
            state[name] = torch.cat([q, spread(k), spread(v)])
    multi.load_state_dict(state)
    return grouped, multi


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_attention_is_multi_head_with_tied_key_value_heads(name, n_kv_head):
    """Every type, forward and the gradient of its input: a grouped model equals the multi-head model whose
    key/value heads repeat its own (each backend then sees one key/value head per query head)."""
    from attnlab.attention import ATTENTION_TYPES as TYPES
    attention = {"name": name, **TYPES[name].example(32)}
    grouped, multi = _grouped_and_multi_head(attention, n_kv_head)
    idx = torch.randint(0, 40, (2, 32))
    outs = []
    for m in (grouped, multi):
        x = m.tok_emb(idx).detach().requires_grad_(True)
        m.tok_emb.forward = lambda _, x=x: x  # the embedding's output as a leaf: its gradient is compared
        y = m(idx)
        y.pow(2).sum().backward()
        outs.append((y, x.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-9, atol=1e-9)


def test_mean_pooling_turns_a_multi_head_model_into_a_grouped_one():
    """init_from a multi-head checkpoint into n_kv_head < n_head: each group's key and value heads are averaged
    (GQA's uptraining recipe). Where a group's heads are equal, the pooled model computes the same function."""
    grouped, multi = _grouped_and_multi_head({"name": "full"}, 2)
    state = dict(multi.state_dict())
    fresh = GPT(GPTConfig(vocab_size=40, context=32, n_layer=2, n_head=4, d_model=32, positions="rope", n_kv_head=2),
                {"name": "full"}).double()
    assert fresh.pool_kv_heads(state) == ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"]
    fresh.load_state_dict(state)
    idx = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), multi(idx), rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError, match=r"model.n_kv_head=3 must divide model.n_head=4 .* one of \[1, 2, 4\]"):
        GPTConfig(n_head=4, d_model=32, n_kv_head=3)
    from attnlab.export import unsupported
    assert any("model.n_kv_head=2 (GPT-2 has a key and a value head per query head)" in p for p in unsupported(fresh))


def test_the_memory_estimate_shows_what_grouping_saves_in_the_kv_cache():
    from attnlab import memory
    common = dict(n_params=1000, batch=8, context=256, d_model=64, n_layer=2, n_head=8, vocab=65, dense_scores=False)
    multi, grouped, one = (memory.estimate(**common, n_kv_head=h) for h in (None, 2, 1))
    assert multi.kv_cache == 2 * 2 * 8 * 8 * 256 * 8 * 4  # keys and values, layers, batch, heads, positions, D, fp32
    assert multi.kv_cache == 4 * grouped.kv_cache == 8 * one.kv_cache and multi.total == grouped.total
    assert ("(KV cache of the batch at full context, generating)", one.kv_cache) in one.rows()


def test_alibi_adds_the_papers_slopes_and_changes_what_the_model_computes():
    from attnlab.attention.score_mods import alibi, alibi_slopes
    for n in (1, 3, 6, 8, 12):  # powers of two and not: the paper's two geometric runs
        bias = alibi(n).dense(2, 2, n)  # (H, 2, 2): distance 1 below the diagonal
        assert torch.allclose(-bias[:, 1, 0], torch.tensor(alibi_slopes(n)))
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=20, context=16, n_layer=1, n_head=4, d_model=16, positions="alibi"),
            {"name": "flash"}).eval()
    idx = torch.randint(0, 20, (1, 16))
    with torch.no_grad():
        with_bias = m(idx)
        m.blocks[0].attn.score_mod, m.blocks[0].attn._attend_device = None, None  # the same weights, no ALiBi
        assert not torch.allclose(with_bias, m(idx), atol=1e-4)
    assert m.blocks[0].attn.attention.resolved_backend("cpu", True) == "blocked"  # flash's sdpa cannot add it


def test_document_masking_takes_an_empty_input_and_a_window_ending_in_an_end_token_needs_no_mask():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=20, context=16, n_layer=1, n_head=2, d_model=16, document_end=0), {"name": "flash"})
    assert m(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 20)
    plain = GPT(GPTConfig(vocab_size=20, context=16, n_layer=1, n_head=2, d_model=16), {"name": "flash"})
    plain.load_state_dict(m.state_dict())
    idx = torch.randint(1, 20, (2, 16))
    idx[:, -1] = 0  # the end token last: no later token to hide anything from
    torch.testing.assert_close(m(idx), plain(idx), rtol=0, atol=0)
    idx[0, 5] = 0
    assert not torch.allclose(m(idx)[0, 6:], plain(idx)[0, 6:])


def test_the_derived_cache_refuses_a_pattern_that_depends_on_the_batch():
    from attnlab.attention.backends.layout import block_layout
    from attnlab.attention.patterns import causal, document_ids, with_documents
    masked = with_documents(causal(), document_ids(torch.tensor([[1, 0, 2]]), 0))
    with pytest.raises(ValueError, match="never cached by name"):
        block_layout(masked, 3, 2)
