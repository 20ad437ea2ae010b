"""Our Triton kernel (flash, sparse and Longformer layouts) equals the dense reference, forward and gradients.

Without a GPU it runs in Triton's CPU interpreter at small sizes (TRITON_INTERPRET=1, set by conftest);
on a GPU the same tests run compiled, at larger sizes and in bf16 too.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from attnlab.attention import ATTENTION_TYPES, build_attention  # noqa: E402
from attnlab.attention.backends.dense import masked_attention  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
if not GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}


def triton_cases():
    """Every registered type and settings variant that the triton backend claims, from the registry. In the
    interpreter: small sizes, lengths not divisible by the block, length 1, head dims 32/64/128, fp32 and fp16
    (bf16 only on a GPU: the interpreter computes bf16 tl.dot wrongly, checked on a plain 16x16 product).
    On a GPU: larger sizes and bf16 too."""
    cases, i = [], 0
    for name, cls in ATTENTION_TYPES.items():
        for j, settings in enumerate(cls.variants(64)):
            if "triton" not in build_attention({"name": name, **settings}).backends():
                continue
            d = (32, 64, 128)[i % 3]
            dtype = torch.float16 if i % 4 == 3 else torch.float32
            n = (70, 33, 1, 90, 50, 61)[i % 6]
            block = 32 if i % 5 == 4 else 16
            cases.append(pytest.param(name, settings, i % 3 != 1, d, dtype, n, block,
                                      id=f"{name}-v{j}-d{d}-{str(dtype)[6:]}-n{n}"))
            if GPU:
                cases += [pytest.param(name, settings, causal, d, dt, n, 64, id=f"gpu-{name}-v{j}-{causal}-{d}-{dt}-{n}")
                          for causal in (True, False) for d in (64, 128) for dt in (torch.bfloat16, torch.float16)
                          for n in (1000, 2048)]
            i += 1
    return cases
@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every output buffer the kernels write starts as NaN, so an element left unwritten shows up."""
    from attnlab.attention.backends import triton_kernel

    def nan_buffer(like, shape=None, dtype=None):
        return torch.full(shape or like.shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(triton_kernel, "_new_buffer", nan_buffer)


@pytest.mark.parametrize("name,settings,causal,d,dtype,n,block", triton_cases())
def test_triton_equals_dense_reference(name, settings, causal, d, dtype, n, block, poisoned_buffers):
    torch.manual_seed(n + d)
    att = build_attention({"name": name, **settings, "backend": "triton", "causal": causal, "block_size": block})
    att.check(max(n, 64), 4, DEVICE)
    B, H = 2, 2
    q, k, v = (torch.randn(B, H, n, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    out = att(q, k, v)
    assert out.dtype == dtype and not out.isnan().any()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    mask = att.pattern(n).dense(n, n_heads=H, device=DEVICE)  # (H, n, n)
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
    from attnlab.attention.backends.triton_kernel import triton_attention
    q = torch.randn(1, 1, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="attention.block_size=24: the triton backend needs a power of two"):
        triton_attention(q, q, q, causal(), 24)


@pytest.mark.parametrize("name", [n for n in ATTENTION_TYPES
                                  if "triton" in build_attention({"name": n, **ATTENTION_TYPES[n].variants(64)[0]}).backends()])
def test_triton_with_documents_equals_the_dense_reference(name, poisoned_buffers):
    """Every visited tile applies the document check, forward and both backward kernels."""
    from attnlab.attention.backends.dense import full_mask
    from attnlab.attention.patterns import document_ids
    torch.manual_seed(5)
    n, d, B, H = 45, 32, 2, 2
    att = build_attention({"name": name, **ATTENTION_TYPES[name].variants(64)[0], "backend": "triton", "block_size": 16})
    tokens = torch.randint(1, 9, (B, n))
    tokens[0, [3, 16, 30]], tokens[1, 22] = 0, 0  # ends inside blocks and at a block's last position
    documents = document_ids(tokens, 0).to(DEVICE)
    q, k, v = (torch.randn(B, H, n, d, device=DEVICE, requires_grad=True) for _ in range(3))
    out = att(q, k, v, 0, documents)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = masked_attention(qd, kd, vd, full_mask(att.pattern(n), B, H, n, documents, DEVICE))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    for got, want, which in zip(grads, torch.autograd.grad(ref, (qd, kd, vd), g.double()), "qkv"):
        torch.testing.assert_close(got.double(), want, atol=8e-5, rtol=4e-4, msg=lambda m: f"d{which}: {m}")
    from attnlab.attention.score_mods import alibi
    with pytest.raises(ValueError, match="triton backend cannot add the score modification alibi2"):
        att(q, k, v, 0, None, alibi(2))
