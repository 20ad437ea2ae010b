"""Each primitive and each type's predicate means exactly what its docstring says; layouts agree with the dense mask."""
import itertools

import pytest
import torch

from attnlab.attention import patterns as P
from attnlab.attention import build_attention
from attnlab.attention.backends.layout import DerivedCache, block_layout


def brute(n, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(n)] for i in range(n)])


N = 23


@pytest.mark.parametrize("w", [1, 4, 7])
def test_sliding_window_causal_sees_w_keys_including_itself(w):
    m = P.sliding_window(w, True).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: i - w < j <= i))
    assert m.sum(1).tolist() == [min(i + 1, w) for i in range(N)]


def test_sliding_window_bidirectional_and_dilation():
    assert torch.equal(P.sliding_window(6, False).dense(N)[0], brute(N, lambda i, j: abs(i - j) <= 3))
    m = P.sliding_window(3, True, dilation=2).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (i - j) in (0, 2, 4)))


def test_global_tokens_first_k_and_list_respect_causality():
    m = (P.causal() & (P.sliding_window(2, True) | P.global_tokens(3))).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (i - 2 < j or i < 3 or j < 3)))
    m = (P.everything() & (P.sliding_window(2, False) | P.global_tokens([5, 11]))).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: abs(i - j) <= 1 or i in (5, 11) or j in (5, 11)))


def sparse(kind, l, c, heads, layer=0, causal=True):
    return build_attention({"name": "sparse", "pattern_kind": kind, "stride": l, "summary": c, "heads": heads,
                            "causal": causal}).pattern(N, layer)


def test_child_strided_and_fixed():
    l, c = 5, 2
    m = sparse("strided", l, 1, "union").dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (i - j < l or (i - j) % l == 0)))
    m = sparse("fixed", l, c, "union").dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (j // l == i // l or j % l >= l - c or i == j)))


def test_split_heads_and_alternate_layers():
    m = sparse("strided", 4, 1, "split").dense(N, n_heads=2)
    assert torch.equal(m[0], brute(N, lambda i, j: 0 <= i - j < 4))
    assert torch.equal(m[1], brute(N, lambda i, j: j <= i and (i - j) % 4 == 0))
    assert torch.equal(sparse("strided", 4, 1, "alternate", layer=1).dense(N)[0], m[1])


def test_global_positions_past_a_short_sequence_are_ignored():
    m = P.global_tokens([2, 40]).dense(10)[0]
    assert torch.equal(m, brute(10, lambda i, j: i == 2 or j == 2))
    assert P.global_tokens(40).dense(10).all()


def longformer(window, g, causal=True):
    return build_attention({"name": "longformer", "window": window, "global_tokens": g, "causal": causal}).pattern(N)


def test_every_pattern_sees_itself_in_causal_mode():
    pats = [P.causal(), longformer(3, 2), sparse("fixed", 4, 1, "split"), sparse("strided", 4, 1, "alternate", 1)]
    for p in pats:
        assert p.dense(N, n_heads=2).diagonal(dim1=1, dim2=2).all(), p.name


@pytest.mark.parametrize("block", [1, 4, 8, 30])
def test_layout_matches_dense_mask(block):
    pats = [P.causal(), longformer(5, [0, 9], causal=False), sparse("fixed", 6, 2, "split")]
    for p in pats:
        lay = block_layout(p, N, block, n_heads=2)
        dense = p.dense(N, n_heads=lay.n_heads)
        nb = lay.n_blocks
        for h, i, j in itertools.product(range(lay.n_heads), range(nb), range(nb)):
            tile = dense[h, i * block:(i + 1) * block, j * block:(j + 1) * block]
            assert lay.kept[h, i, j] == tile.any(), (p.name, h, i, j)
            full = tile.all() and tile.shape == (block, block)
            assert lay.full[h, i, j] == full, (p.name, h, i, j)


def test_causal_layout_keeps_lower_triangle_only():
    lay = block_layout(P.causal(), 64, 16)
    assert torch.equal(lay.kept[0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_equal_patterns_share_their_derived_layout_and_the_cache_is_bounded():
    a, b = longformer(5, [0, 9]), longformer(5, [0, 9])
    assert a == b and a is not b  # rebuilt, but the same predicate by name
    assert block_layout(a, N, 4) is block_layout(b, N, 4)
    assert longformer(5, [0, 10]) != a
    cache = DerivedCache(max_entries=3)
    for i in range(5):
        cache.get(i, lambda: object())
    assert len(cache) == 3


def test_sliding_window_rejects_empty_windows():
    with pytest.raises(ValueError, match="window must be > 0"):
        P.sliding_window(0)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        P.sliding_window(3, dilation=0)
