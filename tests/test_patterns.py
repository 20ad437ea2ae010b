"""Each predicate means exactly what its docstring says; layouts agree with the dense mask."""
import itertools

import pytest
import torch

from attnlab.attention import patterns as P
from attnlab.attention.layout import block_layout


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
    m = (P.causal() & (P.sliding_window(2, True) | P.global_tokens(3, N))).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (i - 2 < j or i < 3 or j < 3)))
    m = (P.bidirectional() & (P.sliding_window(2, False) | P.global_tokens([5, 11], N))).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: abs(i - j) <= 1 or i in (5, 11) or j in (5, 11)))


def test_child_strided_and_fixed():
    l, c = 5, 2
    m = P.child_sparse("strided", l, 0, True, "union", 0).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (i - j < l or (i - j) % l == 0)))
    m = P.child_sparse("fixed", l, c, True, "union", 0).dense(N)[0]
    assert torch.equal(m, brute(N, lambda i, j: j <= i and (j // l == i // l or j % l >= l - c or i == j)))


def test_split_heads_and_alternate_layers():
    m = P.child_sparse("strided", 4, 0, True, "split", 0).dense(N, n_heads=2)
    assert torch.equal(m[0], brute(N, lambda i, j: 0 <= i - j < 4))
    assert torch.equal(m[1], brute(N, lambda i, j: j <= i and (i - j) % 4 == 0))
    assert torch.equal(P.child_sparse("strided", 4, 0, True, "alternate", 1).dense(N)[0], m[1])


def test_global_positions_past_a_short_sequence_are_ignored():
    m = P.global_tokens([2, 40], 10).dense(10)[0]
    assert torch.equal(m, brute(10, lambda i, j: i == 2 or j == 2))
    assert P.global_tokens(40, 10).dense(10).all()


def test_every_pattern_sees_itself_in_causal_mode():
    pats = [P.causal(), P.longformer(3, 2, N, True), P.child_sparse("fixed", 4, 1, True, "split", 0),
            P.child_sparse("strided", 4, 0, True, "alternate", 1)]
    for p in pats:
        assert p.dense(N, n_heads=2).diagonal(dim1=1, dim2=2).all(), p.name


@pytest.mark.parametrize("block", [1, 4, 8, 30])
def test_layout_matches_dense_mask(block):
    pats = [P.causal(), P.longformer(5, [0, 9], N, False), P.child_sparse("fixed", 6, 2, True, "split", 0)]
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


@pytest.mark.parametrize("bad,match", [
    (lambda: P.sliding_window(0), "window must be > 0"),
    (lambda: P.child_sparse("fixed", 4, 5, True, "union", 0), "summary c <= block"),
    (lambda: P.child_sparse("zigzag", 4, 1, True, "union", 0), "valid: \\['fixed', 'strided'\\]"),
    (lambda: P.child_sparse("fixed", 4, 1, True, "mixed", 0), "valid: \\['alternate', 'split', 'union'\\]"),
])
def test_pattern_errors_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
