"""BigBird's random blocks as the paper draws them: only blocks that add keys (outside the query block's window
and the global blocks; causal: earlier ones), exactly r per query block where that many exist, reproducible
from the seed, a different draw per head and per layer. Written from the rule, not from the code."""
import itertools
from collections import Counter

import pytest
import torch

from attnlab.attention.types.bigbird import BigBirdAttention


def chosen_blocks(attention: BigBirdAttention, n: int, heads: int, layer: int = 0) -> dict:
    """{(head, query block): set of key blocks} read from the random component's mask, checking that each
    drawn block is whole (every query of the block sees every key of it)."""
    blk = attention.random_block
    mask = attention.random_keys(n, layer).dense(n, n, heads)  # (H, n, n)
    out = {}
    for h, qb in itertools.product(range(heads), range(n // blk)):
        rows = mask[h, qb * blk:(qb + 1) * blk].view(blk, n // blk, blk)  # (queries, key block, keys)
        whole = rows.all(-1).all(0)  # (key blocks,)
        assert torch.equal(rows.any(-1).any(0), whole), "a random block is drawn whole or not at all"
        out[h, qb] = set(whole.nonzero().flatten().tolist())
    return out


def candidates(attention: BigBirdAttention, qb: int, n_blocks: int) -> set:
    """The key blocks the paper allows for query block qb: no key of the block is within the window of any query
    of qb, no key of it is a global token, and (causal) it lies before the query block."""
    blk, w, g = attention.random_block, attention.window, attention.global_tokens
    queries = range(qb * blk, (qb + 1) * blk)
    out = set()
    for kb in range(n_blocks):
        keys = range(kb * blk, (kb + 1) * blk)
        if any(k < g for k in keys):
            continue
        if attention.causal:
            in_window = any(0 <= q - k < w for q in queries for k in keys)
            if kb > qb or in_window:
                continue
        elif any(abs(q - k) <= w // 2 for q in queries for k in keys):
            continue
        out.add(kb)
    return out


SETTINGS = [dict(window=32, global_tokens=2, random_blocks=2, random_block=16),  # the preset's
            dict(window=6, global_tokens=2, random_blocks=3, random_block=8),
            dict(window=20, global_tokens=0, random_blocks=1, random_block=8, seed=5),
            dict(window=6, global_tokens=9, random_blocks=2, random_block=8, causal=False)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_random_blocks_are_r_of_the_blocks_that_add_keys(settings):
    attention = BigBirdAttention(**settings)
    n, heads = 256 if attention.random_block == 16 else 128, 4
    n_blocks = n // attention.random_block
    for layer in (0, 1):
        for (h, qb), got in chosen_blocks(attention, n, heads, layer).items():
            allowed = candidates(attention, qb, n_blocks)
            assert got <= allowed, (h, qb, got, allowed)  # never a window, global or later block
            assert len(got) == min(attention.random_blocks, len(allowed))  # exactly r where that many exist


def test_the_draw_is_seeded_and_differs_across_heads_and_layers():
    a = BigBirdAttention(window=16, global_tokens=1, random_blocks=2, random_block=8)
    n = 256
    first = chosen_blocks(a, n, 8)
    assert chosen_blocks(BigBirdAttention(window=16, global_tokens=1, random_blocks=2, random_block=8), n, 8) == first
    other_seed = chosen_blocks(BigBirdAttention(window=16, global_tokens=1, random_blocks=2, random_block=8, seed=1), n, 8)
    assert other_seed != first
    late = [qb for qb in range(n // 8) if len(candidates(a, qb, n // 8)) >= 6]
    assert sum(len({frozenset(first[h, qb]) for h in range(8)}) > 1 for qb in late) >= 0.8 * len(late)  # heads differ
    assert chosen_blocks(a, n, 8, layer=1) != first  # layers differ


def test_every_candidate_is_drawn_about_equally_often():
    """Uniform among the candidates (Floyd's algorithm): over many query blocks, heads and seeds, each candidate
    (by its rank among its query block's candidates) is drawn r/m of the time, within 4 binomial standard errors."""
    observed, expected = Counter(), Counter()
    for seed in range(40):
        a = BigBirdAttention(window=8, global_tokens=0, random_blocks=2, random_block=4, seed=seed)
        for (h, qb), got in chosen_blocks(a, 64, 8).items():
            allowed = sorted(candidates(a, qb, 16))
            if len(allowed) >= 6:
                observed.update((len(allowed), allowed.index(kb)) for kb in got)
                expected.update({(len(allowed), i): 2 / len(allowed) for i in range(len(allowed))})
    assert len(expected) > 30
    for cell, e in expected.items():
        assert abs(observed[cell] - e) < 4 * (e * (1 - 2 / cell[0])) ** 0.5, (cell, observed[cell], e)


def test_more_of_the_beyond_window_pairs_are_reachable_than_under_the_old_rule():
    """At the preset's settings (context 128, window 32, 2 global tokens, r = 2 blocks of 16) every random block
    adds keys beyond window and global tokens, so the reachable share of those pairs is what r blocks give."""
    a = BigBirdAttention(window=32, global_tokens=2, random_blocks=2, random_block=16)
    n = 128
    local = (BigBirdAttention(window=32, global_tokens=2, random_blocks=0, random_block=16).pattern(n).dense(n))[0]
    causal = torch.ones(n, n).tril().bool()
    beyond = causal & ~local  # (n, n): pairs neither the window nor a global token covers
    reached = (a.pattern(n).dense(n, n, 4) & beyond).float().sum((1, 2)) / beyond.sum()  # (H,)
    drawn = sum(min(2, len(candidates(a, qb, 8))) for qb in range(8)) * 16 * 16
    assert torch.allclose(reached, torch.full_like(reached, drawn / float(beyond.sum())))
