"""The banded backend: what is specific to it (its exactness against the dense reference is in test_attention.py,
with every other backend): the cover is checked, its shapes follow the pattern, and its backward memory grows
with the cover, not with n^2."""
import pytest
import torch

from attnlab.attention import build_attention
from attnlab.attention.backends.banded import banded_attention, band_plan
from attnlab.attention.patterns import Cover, Pattern, causal, global_tokens, sliding_window

from test_attention import saved_bytes


def test_a_cover_that_misses_allowed_pairs_is_refused():
    window = causal() & sliding_window(8)
    too_narrow = Pattern("window8-claimed-as-4", window.fn, cover=Cover(band=(-3, 0)))
    q = torch.randn(1, 1, 40, 8)
    with pytest.raises(RuntimeError, match=r"cover of pattern window8-claimed-as-4 holds \d+ allowed pairs of \d+"):
        banded_attention(q, q, q, too_narrow, 8)


def test_longformer_plan_is_one_band_plus_the_global_columns():
    pattern = causal() & (sliding_window(16) | global_tokens(3))
    plan = band_plan(pattern, 256, 32, 1, "cpu")
    assert (plan.K, plan.band_len, plan.lo) == (32, 32 + 15, -15)  # each block: its 32 queries' 16-key windows
    assert [g.columns.tolist() for g in plan.groups] == [[0, 1, 2]]  # global keys, not a whole block of them
    assert plan.dense_rows is None  # causal: the first 3 queries see nothing outside their window


def test_bidirectional_global_queries_are_computed_densely():
    pattern = sliding_window(4, is_causal=False) | global_tokens([5, 30])
    plan = band_plan(pattern, 40, 8, 1, "cpu")
    assert plan.dense_rows.tolist() == [5, 30]


def test_fixed_sparse_groups_trim_the_summary_columns_to_the_causal_past():
    att = build_attention({"name": "sparse", "pattern_kind": "fixed", "stride": 16, "summary": 4})
    plan = band_plan(att.pattern(1024), 1024, 16, 1, "cpu")
    assert plan.K == 16 and plan.band_len == 16  # the query block is the pattern's own block of l
    columns = [len(g.columns) for g in plan.groups]
    assert len(columns) == 8 and columns == sorted(columns) and columns[0] < columns[-1] / 4


@pytest.mark.parametrize("settings", [{"name": "longformer", "window": 32, "global_tokens": 4, "block_size": 32},
                                      {"name": "sparse", "pattern_kind": "fixed", "stride": 32, "summary": 4}])
def test_backward_memory_grows_with_the_cover_not_quadratically(settings):
    att = build_attention({**settings, "backend": "banded"})
    ratio = saved_bytes(att, 2048) / saved_bytes(att, 512)
    # Longformer: O(n (w + g)), ~4x; fixed sparse at constant l: the summaries grow with n, < 16x
    assert ratio < (5 if settings["name"] == "longformer" else 12), ratio


def test_cpu_auto_picks_banded_where_the_pattern_has_the_shape():
    cpu = torch.device("cpu")
    assert build_attention({"name": "longformer"}).resolved_backend(cpu) == "banded"
    assert build_attention({"name": "sparse", "pattern_kind": "fixed"}).resolved_backend(cpu) == "banded"
    assert build_attention({"name": "sparse", "pattern_kind": "strided"}).resolved_backend(cpu) == "blocked"


def test_a_plan_first_built_under_inference_mode_still_trains():
    """The backends' derived plans are cached for the process: one first built by an evaluation (inference mode)
    must still serve a training step (autograd) afterwards, as in a sweep run in one process."""
    from attnlab.attention import build_attention
    from attnlab.attention.backends.layout import DERIVED
    DERIVED._entries.clear()
    attention = build_attention({"name": "longformer", "window": 8, "backend": "banded", "block_size": 16})
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    with torch.inference_mode():
        attention(q, k, v)
    for t in (q, k, v):
        t.requires_grad_(True)
    attention(q, k, v).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
