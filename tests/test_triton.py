"""Our Triton kernel (flash, sparse and Longformer layouts) equals the dense reference, forward and gradients.

Without a GPU it runs in Triton's CPU interpreter at small sizes (TRITON_INTERPRET=1, set by conftest);
on a GPU the same tests run compiled, at larger sizes and in bf16 too.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from attnlab.attention import build_attention  # noqa: E402
from attnlab.attention.dense import masked_attention  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
if not GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}

CONFIGS = {
    "flash": {"name": "flash"},
    "sparse-fixed": {"name": "sparse", "pattern_kind": "fixed", "stride": 32, "summary": 4},
    "sparse-strided-split": {"name": "sparse", "pattern_kind": "strided", "stride": 8, "heads": "split"},
    "longformer": {"name": "longformer", "window": 24, "global_tokens": 3},
    "longformer-list": {"name": "longformer", "window": 9, "global_tokens": [0, 40], "dilation": 2},
}

# (config, causal, head dim, dtype, length, block): head dims 32/64/128, fp32 and fp16 (bf16 on GPU),
# lengths not divisible by the block, length 1; interpreter sizes small, GPU sizes larger. bf16 is tested on
# a GPU only: Triton's CPU interpreter computes bf16 tl.dot wrongly (checked on a plain 16x16 product).
CASES = [
    ("flash", True, 32, torch.float32, 70, 16),
    ("flash", False, 64, torch.float32, 33, 32),
    ("flash", True, 128, torch.float16, 50, 16),
    ("flash", True, 64, torch.float32, 1, 16),
    ("sparse-fixed", True, 32, torch.float32, 100, 16),
    ("sparse-strided-split", False, 64, torch.float32, 45, 16),
    ("sparse-fixed", True, 64, torch.float16, 64, 32),
    ("longformer", True, 64, torch.float32, 90, 16),
    ("longformer", False, 32, torch.float32, 61, 32),
    ("longformer-list", True, 128, torch.float32, 50, 16),
    ("longformer", True, 32, torch.float16, 77, 16),
]
if GPU:
    CASES += [(c, causal, d, torch.bfloat16, n, 64) for c in CONFIGS for causal in (True, False)
              for d in (64, 128) for n in (1000, 2048)]
    CASES += [(c, True, d, torch.float16, 3000, 128) for c in CONFIGS for d in (32, 64, 128)]


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every output buffer the kernels write starts as NaN, so an element left unwritten shows up."""
    from attnlab.attention import triton_kernel

    def nan_buffer(like, shape=None, dtype=None):
        return torch.full(shape or like.shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(triton_kernel, "_new_buffer", nan_buffer)


@pytest.mark.parametrize("config,causal,d,dtype,n,block", CASES)
def test_triton_equals_dense_reference(config, causal, d, dtype, n, block, poisoned_buffers):
    torch.manual_seed(n + d)
    att = build_attention({**CONFIGS[config], "backend": "triton", "causal": causal, "block_size": block})
    att.check(max(n, 64), 4, DEVICE)
    B, H = 2, 2
    q, k, v = (torch.randn(B, H, n, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    out = att(q, k, v)
    assert out.dtype == dtype and not out.isnan().any()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    mask = att.cached_pattern(n).dense(n, n_heads=H, device=DEVICE)  # (H, n, n)
    ref = masked_attention(qd, kd, vd, mask.unsqueeze(0))
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), g.double())
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    for got, want, name in zip(grads, ref_grads, "qkv"):
        assert not got.isnan().any(), f"d{name} has unwritten (NaN) elements"
        torch.testing.assert_close(got.double(), want, atol=atol * 4, rtol=rtol * 4, msg=lambda m: f"d{name}: {m}")


def test_triton_trains_a_model_step():
    from attnlab.model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=20, context=48, n_layer=1, n_head=2, d_model=32)
    m_tr = GPT(cfg, {"name": "longformer", "window": 16, "backend": "triton", "block_size": 16}).to(DEVICE)
    m_ref = GPT(cfg, {"name": "longformer", "window": 16, "backend": "dense"}).to(DEVICE)
    m_ref.load_state_dict(m_tr.state_dict())
    x = torch.randint(0, 20, (2, 48), device=DEVICE)
    l_tr, l_ref = m_tr(x).logsumexp(-1).mean(), m_ref(x).logsumexp(-1).mean()
    l_tr.backward(), l_ref.backward()
    torch.testing.assert_close(l_tr, l_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m_tr.blocks[0].attn.qkv.weight.grad, m_ref.blocks[0].attn.qkv.weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_block_must_be_a_power_of_two():
    from attnlab.attention.patterns import causal
    from attnlab.attention.triton_kernel import triton_attention
    q = torch.randn(1, 1, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="attention.block_size=24: the triton backend needs a power of two"):
        triton_attention(q, q, q, causal(), 24)
