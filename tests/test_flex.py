"""The flex backend (the GPU default for the sparse types) on the CPU: its block mask equals our layout from
the same predicate, block by block, and its forward equals the dense reference. PyTorch has no FlexAttention
backward on the CPU and compiling it here is slow, so the forward runs uncompiled; the GPU runs the rest."""
import warnings

import pytest
import torch

pytest.importorskip("torch.nn.attention.flex_attention")

from attnlab.attention import ATTENTION_TYPES, build_attention  # noqa: E402
from attnlab.attention.backends.dense import masked_attention  # noqa: E402
from attnlab.attention.backends.flex import block_mask_for, flex_attention  # noqa: E402
from attnlab.attention.backends.layout import block_layout  # noqa: E402

N, H, D = 70, 2, 16


def flex_cases():
    cases = []
    for name, cls in ATTENTION_TYPES.items():
        for i, settings in enumerate(cls.variants(N)):
            if "flex" in build_attention({"name": name, **settings}).backends():
                for causal in (True, False):
                    cases.append(pytest.param(name, settings, causal, i % 2,
                                              id=f"{name}-v{i}-{'causal' if causal else 'bidir'}"))
    return cases


@pytest.mark.parametrize("name,settings,causal,layer", flex_cases())
def test_flex_block_mask_and_forward_match_the_predicate(name, settings, causal, layer):
    att = build_attention({"name": name, **settings, "causal": causal, "block_size": 16})
    pattern = att.pattern(N, layer)
    bm = block_mask_for(pattern, N, H, 16, "cpu")
    kept_flex = bm.to_dense()[0].bool()  # (heads of the mask, n_blocks, n_blocks)
    lay = block_layout(pattern, N, 16, H)
    assert torch.equal(kept_flex.expand_as(lay.kept) if kept_flex.shape[0] == 1 else kept_flex, lay.kept)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, N, D) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile()": on purpose
        out = flex_attention(q, k, v, pattern, 16, compiled=False)
    mask = pattern.dense(N, n_heads=H)  # (H, N, N)
    torch.testing.assert_close(out.double(), masked_attention(q.double(), k.double(), v.double(), mask.unsqueeze(0)),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(ATTENTION_TYPES))
def test_flex_with_documents_and_alibi_matches_the_dense_reference(name):
    """Documents become a per-batch block mask, ALiBi a score_mod: the forward equals dense attention with both."""
    from attnlab.attention.backends.dense import full_mask
    from attnlab.attention.patterns import document_ids
    from attnlab.attention.score_mods import alibi
    att = build_attention({"name": name, **ATTENTION_TYPES[name].variants(N)[0], "block_size": 16})
    if "flex" not in att.backends():
        pytest.skip(f"{name} has no flex backend")
    pattern = att.pattern(N, 0)
    torch.manual_seed(2)
    tokens = torch.randint(1, 9, (2, N))
    tokens[0, [5, 33]], tokens[1, 47] = 0, 0
    documents = document_ids(tokens, 0)
    q, k, v = (torch.randn(2, H, N, D) for _ in range(3))
    mask = full_mask(pattern, 2, H, N, documents, None)
    kept = block_mask_for(pattern, N, H, 16, "cpu", documents).to_dense().bool()  # (B, H|1, nb, nb)
    assert kept.shape[0] == 2 and not kept[0].equal(kept[1])  # one layout per batch row: the data decides it
    for mod in (None, alibi(H)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = flex_attention(q, k, v, pattern, 16, documents, mod, compiled=False)
        bias = None if mod is None else mod.dense(N, N, H, dtype=torch.float64).unsqueeze(0)
        torch.testing.assert_close(out.double(), masked_attention(q.double(), k.double(), v.double(), mask, bias),
                                   atol=2e-5, rtol=1e-4)
