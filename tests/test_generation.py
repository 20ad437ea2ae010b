"""Generation with the KV cache: each type's cache keeps what its pattern can reach, and decodes exactly the
tokens (and logits) of recomputing the whole sequence, for every type, backend and position scheme."""
import pytest
import torch

from attnlab.attention import ATTENTION_TYPES, build_attention
from attnlab.attention.backends import get_backend
from attnlab.model import GPT, GPTConfig, Rotary

N = 48  # the test models' context


def cases():
    """(type, settings) for every causal variant of every registered type."""
    return [(name, v) for name, cls in ATTENTION_TYPES.items() for v in cls.variants(N)]


SLOW_ON_CPU = ("flex", "triton")  # compiled / interpreted here: one variant per type


def backend_cases():
    out, slow_done = [], set()
    for name, v in cases():
        for backend in build_attention({"name": name, **v}).backends():
            impl = get_backend(backend)
            if impl.unavailable_reason(torch.device("cpu")) or impl.bad_block(v.get("block_size", 64)) \
                    or (name, backend) in slow_done:
                continue
            if backend in SLOW_ON_CPU:
                slow_done.add((name, backend))
            out.append(pytest.param(name, v, backend, id=f"{name}-{backend}-{sorted(v.items())}"))
    return out


def sharp_model(attention: dict, positions: str = "learned", context: int = N, seed: int = 0,
                n_kv_head: int | None = None, document_end: int | None = None) -> GPT:
    """A random model whose attention is peaked (scaled q, k, v), so that a key missing from the cache changes
    the logits visibly; float64 so that exact equality of greedy tokens is not left to rounding."""
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=50, context=context, n_layer=2, n_head=4, d_model=32, positions=positions,
                      n_kv_head=n_kv_head, document_end=document_end), build_attention(attention)).double().eval()
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv.weight.mul_(8)
    return m


@torch.no_grad()
def greedy_cached(m: GPT, prompt: torch.Tensor, steps: int, cache=None):
    """Greedy decoding through the cache: (tokens (B, T + steps), logits (steps, B, V), cache)."""
    cache = cache or m.new_cache()
    seq, out = prompt, []
    logits = m(prompt, cache)[:, -1]
    for _ in range(steps):
        out.append(logits)
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], 1)
        logits = m(nxt, cache)[:, -1]
    return seq, torch.stack(out), cache


# --- each type's eviction rule against its own pattern -------------------------------------------------------

@pytest.mark.parametrize("name,settings", cases(), ids=lambda x: str(x))
def test_cache_keeps_every_key_a_later_query_can_see(name, settings):
    attention = build_attention({"name": name, **settings})
    for layer in range(3):
        allowed = attention.pattern(N, layer).dense(N, N, n_heads=4)  # (H, N, N)
        for next_query in range(1, N):
            keys = torch.arange(next_query)
            visible = attention.keys_still_visible(keys, next_query, layer)
            if visible is None:
                continue
            needed = allowed[:, next_query:, :next_query].any(dim=1).any(dim=0)  # (next_query,)
            lost = keys[needed & ~visible].tolist()
            assert not lost, f"{name} {settings} layer {layer}: keys {lost} dropped at {next_query} are still needed"


def test_longformer_and_fixed_sparse_drop_keys():
    lf = build_attention({"name": "longformer", "window": 8, "global_tokens": 2})
    kept = lf.keys_still_visible(torch.arange(100), 100)
    assert kept.sum() == 8 - 1 + 2  # the window's earlier keys and the globals
    sp = build_attention({"name": "sparse", "pattern_kind": "fixed", "stride": 8, "summary": 2})
    kept = sp.keys_still_visible(torch.arange(100), 100)
    assert kept.sum() == 4 + 2 * (96 // 8)  # the current block's 4 keys and 2 summaries per finished block


# --- cached decoding == recomputation -----------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("name,settings,backend", backend_cases())
def test_cached_generation_matches_recomputation(name, settings, backend, positions):
    m = sharp_model({"name": name, **settings, "backend": backend}, positions)
    prompt = torch.randint(0, 50, (2, 11))  # not a multiple of any block; 11 + 30 crosses blocks and windows
    cached, cached_logits, _ = greedy_cached(m, prompt, 30)
    if backend in SLOW_ON_CPU:  # the prompt went through it; recompute with an exact fast backend (same weights)
        fast = "dense" if "dense" in m.attention.backends() else "sdpa"
        m = sharp_model({"name": name, **settings, "backend": fast}, positions)
    # recomputation of every step at once: a causal model's logits at position t of the whole decoded sequence are
    # the logits of recomputing the prefix up to t (41 tokens fit the context: nothing is cropped)
    with torch.no_grad():
        recomputed_logits = m(cached[:, :-1])[:, prompt.shape[1] - 1:].transpose(0, 1)  # (steps, B, V)
    torch.testing.assert_close(cached_logits, recomputed_logits, rtol=0, atol=1e-9)
    assert torch.equal(cached[:, prompt.shape[1]:], recomputed_logits.argmax(-1).T)  # the same greedy tokens


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("name,settings,backend", backend_cases())
def test_grouped_query_cache_holds_fewer_heads_and_matches_recomputation(name, settings, backend, n_kv_head):
    """Grouped-query (2 key/value heads for 4 query heads) and multi-query (1): the cache keeps only the key/value
    heads, and cached decoding equals recomputing every step, for every type and backend."""
    m = sharp_model({"name": name, **settings, "backend": backend}, "rope", n_kv_head=n_kv_head)
    prompt = torch.randint(0, 50, (2, 11))
    cached, cached_logits, cache = greedy_cached(m, prompt, 20)
    assert all(layer.k.shape[1] == n_kv_head and layer.v.shape[1] == n_kv_head for layer in cache.layers)
    if backend in SLOW_ON_CPU:
        fast = "dense" if "dense" in m.attention.backends() else "sdpa"
        m = sharp_model({"name": name, **settings, "backend": fast}, "rope", n_kv_head=n_kv_head)
    with torch.no_grad():
        recomputed_logits = m(cached[:, :-1])[:, prompt.shape[1] - 1:].transpose(0, 1)  # (steps, B, V)
    torch.testing.assert_close(cached_logits, recomputed_logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("extra", ["documents", "alibi", "documents-alibi-kv2"])
@pytest.mark.parametrize("name,settings,backend", backend_cases())
def test_cache_across_document_boundaries_and_with_alibi_equals_the_whole_sequence(name, settings, backend, extra):
    """Tokens fed one at a time through the cache (the prompt through the backend), ends of documents among them
    in the prompt and after it: every step's logits equal one whole-sequence forward, which masks documents and
    adds ALiBi through the backend."""
    if "alibi" in extra and not get_backend(backend).adds_scores:
        pytest.skip(f"{backend} cannot add a score modification (refused: tested in test_attention.py)")
    kwargs = dict(positions="alibi" if "alibi" in extra else "rope", n_kv_head=2 if "kv2" in extra else None,
                  document_end=0 if "documents" in extra else None)
    m = sharp_model({"name": name, **settings, "backend": backend}, **kwargs)
    torch.manual_seed(3)
    tokens = torch.randint(1, 50, (2, 40))
    tokens[0, [4, 15, 27]] = 0  # ends in the prompt (first 11 tokens) and after it, different in each row
    tokens[1, [20]] = 0
    cache = m.new_cache()
    with torch.no_grad():
        steps = [m(tokens[:, :11], cache)[:, -1]] + [m(tokens[:, t:t + 1], cache)[:, -1] for t in range(11, 40)]
        if backend in SLOW_ON_CPU:
            fast = "dense" if "dense" in m.attention.backends() else "sdpa"
            m = sharp_model({"name": name, **settings, "backend": fast}, **kwargs)
        whole = m(tokens)[:, 10:]  # (B, 30, V)
    torch.testing.assert_close(torch.stack(steps, 1), whole, rtol=0, atol=1e-9)
    if "documents" in extra:  # and the masking is real: without it the logits after an end differ
        blind = sharp_model({"name": name, **settings, "backend": "dense" if "dense" in m.attention.backends()
                             else m.attention.backends()[0]}, **{**kwargs, "document_end": None})
        with torch.no_grad():
            assert not torch.allclose(blind(tokens)[0, 16:], whole[0, 6:], atol=1e-6)


def test_generate_with_and_without_cache_agree_past_a_learned_context():
    """Learned positions end at the context: from there both ways re-encode the last `context` tokens."""
    m = sharp_model({"name": "longformer", "window": 7, "global_tokens": 2}, "learned", context=24)
    prompt = torch.randint(0, 50, (1, 5))
    with_cache = m.generate(prompt, 40, top_k=1)
    without = m.generate(prompt, 40, top_k=1, use_cache=False)
    assert torch.equal(with_cache, without)


def test_streaming_longformer_past_the_context_matches_one_uncropped_pass():
    w, g, context = 8, 2, 32
    m = sharp_model({"name": "longformer", "window": w, "global_tokens": g, "block_size": 8}, "rope", context)
    prompt = torch.randint(0, 50, (2, 5))
    steps = 4 * context  # far past the training context and 16 windows
    streamed, streamed_logits, cache = greedy_cached(m, prompt, steps)
    with torch.no_grad():  # one uncropped pass over all 133 tokens (> context: rotary has no table) = every step
        full_logits = m(streamed[:, :-1])[:, prompt.shape[1] - 1:].transpose(0, 1)  # (steps, B, V)
    torch.testing.assert_close(streamed_logits, full_logits, rtol=0, atol=1e-9)
    assert torch.equal(streamed[:, prompt.shape[1]:], full_logits.argmax(-1).T)


def test_longformer_cache_stays_bounded_while_generating_four_windows():
    w, g = 8, 2
    m = sharp_model({"name": "longformer", "window": w, "global_tokens": g}, "rope", context=32)
    cache = m.new_cache()
    sizes = []
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 3)), cache)
        for _ in range(4 * w * 4):
            m(torch.randint(0, 50, (1, 1)), cache)
            sizes.append((cache.kept(), cache.slots()))
    layers = m.cfg.n_layer
    assert max(k for k, _ in sizes) <= layers * (w - 1 + g)
    assert max(s for _, s in sizes) <= layers * (w + g)  # the slots are reused: a ring buffer
    assert len({s for _, s in sizes[2 * w:]}) == 1  # constant once the window has filled


def test_fixed_sparse_cache_grows_by_summaries_only():
    l, c = 8, 2
    m = sharp_model({"name": "sparse", "pattern_kind": "fixed", "stride": l, "summary": c}, "rope", context=32)
    _, _, cache = greedy_cached(m, torch.randint(0, 50, (1, 4)), 92)  # 96 tokens seen
    assert cache.kept() <= m.cfg.n_layer * (l + c * 96 // l)  # far below the 96 keys a full cache holds


def test_full_cache_keeps_everything():
    m = sharp_model({"name": "full"}, "rope")
    _, _, cache = greedy_cached(m, torch.randint(0, 50, (1, 4)), 20)
    assert cache.kept() == m.cfg.n_layer * 24


# --- rotary positions, arguments -----------------------------------------------------------------------------

def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    rope = Rotary(16, 10000.0).double()
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(i, j):
        return (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum()
    torch.testing.assert_close(score(5, 2), score(105, 102))
    assert not torch.allclose(score(5, 2), score(5, 4))  # and it does depend on the distance


def test_learned_positions_refuse_sequences_past_the_context_but_rotary_does_not():
    learned = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="longer than the model's context 8"):
        learned(torch.zeros(1, 9, dtype=torch.long))
    rotary = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, d_model=16, positions="rope"))
    assert rotary(torch.zeros(1, 9, dtype=torch.long)).shape == (1, 9, 20)
    assert "pos_emb.weight" not in rotary.state_dict()


@pytest.mark.parametrize("kwargs,message", [
    ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
    ({"temperature": 0.0}, r"temperature=0.0 must be > 0"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
    m = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, d_model=16))
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        m.generate(torch.zeros(1, 2, dtype=torch.long), **args)


def test_bidirectional_model_has_no_cache():
    m = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, d_model=16), {"name": "full", "causal": False})
    with pytest.raises(ValueError, match="needs a causal model"):
        m.new_cache()


@pytest.mark.parametrize("bad,message", [("positions", "model.positions='sinusoidal'; valid: \\['learned', 'rope', 'alibi'\\]"),
                                         ("odd", "head dimension d_model / n_head = 3 must be even")])
def test_bad_position_settings(bad, message):
    kwargs = {"positions": "sinusoidal"} if bad == "positions" else {"positions": "rope", "d_model": 6, "n_head": 2}
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{"vocab_size": 20, "context": 8, "n_layer": 1, "n_head": 2, "d_model": 16, **kwargs})


def test_sampling_is_seeded():
    m = GPT(GPTConfig(vocab_size=20, context=16, n_layer=1, n_head=2, d_model=16))
    prompt = torch.zeros(1, 2, dtype=torch.long)
    a = m.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    b = m.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("attention", [{"name": "full"},  # the no-mask fast path
                                       {"name": "sparse", "pattern_kind": "strided", "stride": 64},
                                       {"name": "bigbird", "window": 64, "global_tokens": 1, "block_size": 16}])
def test_a_pattern_that_looks_full_at_first_is_not_taken_for_full_attention(attention):
    """Strided sparse or BigBird with 64-wide parts see every key among the first 64 positions: the cache must
    still mask their later tokens (a probe of the first 64 positions once took them for full attention)."""
    from attnlab.model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, context=160, n_layer=2, n_head=2, d_model=32), attention).eval()
    idx = torch.randint(0, 40, (1, 150))
    whole = m(idx)  # (1, 150, V)
    cache = m.new_cache()
    steps = [m(idx[:, :10], cache)] + [m(idx[:, t:t + 1], cache) for t in range(10, 150)]
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-4, atol=1e-4)


def test_the_decoding_layout_is_the_generation_paths_and_leaves_the_model_as_it_was():
    """``generation.decode_layout`` computes Linear products from (in, out)-laid copies for one call: the logits
    equal the model's up to rounding (float64 here: greedy tokens too), the model's own tensors, state dict and
    tied head are untouched after it (``train()`` changes no storage), the copies are kept for a model in eval
    mode and remade once its weights change, and an interrupted or inference-mode call leaves it trainable."""
    import copy
    from attnlab.generation import decode_layout
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context=32, n_layer=2, n_head=2, d_model=16, bias=True)
    m = GPT(cfg, {"name": "longformer", "window": 4, "global_tokens": 1, "global_projections": True}).double().eval()
    plain = copy.deepcopy(m)
    own = {n: (p.data_ptr(), p.stride()) for n, p in m.named_parameters()}
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = m(idx)
        with decode_layout(m):
            assert m.blocks[0].mlp.up.weight.stride() == (1, 4 * 16)  # (out, in) shaped, stored as (in, out) rows
            assert m.head.weight is m.tok_emb.weight and m.head.weight.stride() == (1, 50)
            torch.testing.assert_close(m(idx), before, rtol=1e-12, atol=1e-12)
    assert {n: (p.data_ptr(), p.stride()) for n, p in m.named_parameters()} == own  # its own tensors again
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), plain.state_dict().values()))
    greedy = plain.generate(idx, 6, top_k=1)
    assert torch.equal(m.generate(idx, 6, top_k=1), greedy)
    made = {k: v[1].data_ptr() for k, v in m._decode_copies.copies.items()}
    assert torch.equal(m.generate(idx, 6, top_k=1), greedy)  # eval mode: the copies were kept and reused
    assert {k: v[1].data_ptr() for k, v in m._decode_copies.copies.items()} == made
    assert {n: (p.data_ptr(), p.stride()) for n, p in m.named_parameters()} == own
    m.train()  # no storage side effect: nothing to put back
    assert {n: (p.data_ptr(), p.stride()) for n, p in m.named_parameters()} == own
    fresh = copy.deepcopy(plain)
    with torch.inference_mode():
        assert torch.equal(fresh.generate(idx, 6, top_k=1), greedy)
    assert not any(p.is_inference() for p in fresh.parameters())  # still trainable
    fresh.train()
    with pytest.raises(ValueError, match="outside the model's vocabulary"):  # interrupted: still as found
        fresh.generate(torch.full((1, 3), 99), 2)
    assert fresh.training and all(p.is_contiguous() for p in fresh.parameters())
    for model in (m, fresh):  # one optimizer step from each: the same weights after it
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))
    m.eval()  # its kept copies are of the weights before the step: remade, never used stale
    assert torch.equal(m.generate(idx, 6, top_k=1), copy.deepcopy(fresh).eval().generate(idx, 6, top_k=1))


def test_sinks_stream_past_the_context_keeping_only_the_sinks_and_the_window():
    """StreamingLLM's cache: after the sinks, a query sees the first ``sinks`` tokens and the last ``window`` keys,
    so the cache evicts the middle and holds at most sinks + window keys per layer however long the generation;
    the streamed logits equal one uncropped pass over the whole sequence (rotary positions: no table to outgrow)."""
    sinks, w, context = 4, 8, 32
    m = sharp_model({"name": "sinks", "sinks": sinks, "window": w, "block_size": 8}, "rope", context)
    prompt = torch.randint(0, 50, (2, 5))
    steps = 4 * context
    streamed, streamed_logits, cache = greedy_cached(m, prompt, steps)
    assert all(layer.kept <= sinks + w for layer in cache.layers)
    kept = sorted(int(p) for p in cache.layers[0].pos if p >= 0)
    # fed every token up to 5 + steps - 1: the next query sees itself and the w - 1 keys before it
    assert kept[:sinks] == list(range(sinks)) and kept[sinks:] == list(range(5 + steps - w + 1, 5 + steps))
    with torch.no_grad():
        full_logits = m(streamed[:, :-1])[:, prompt.shape[1] - 1:].transpose(0, 1)  # (steps, B, V)
    torch.testing.assert_close(streamed_logits, full_logits, rtol=0, atol=1e-9)
    from attnlab.attention import build_attention
    from attnlab.errors import ConfigError
    with pytest.raises(ConfigError, match=r"attention.sinks=9 must be in \[0, 8\]"):
        build_attention({"name": "sinks", "sinks": 9, "window": 8}).check(32, 4)
