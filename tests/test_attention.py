"""Every attention type and CPU backend equals the dense reference (forward and gradients), leaks nothing
from the future, and the efficient ones keep sub-quadratic memory for backward."""
import random

import pytest
import torch

from attnlab.attention import ATTENTION_TYPES, build_attention
from attnlab.attention.dense import masked_attention

CPU_BACKENDS = {"full": ["dense", "sdpa"], "flash": ["blocked", "sdpa"],
                "sparse": ["blocked", "dense"], "longformer": ["blocked", "dense"]}


def make(name, backend, causal, n, block, variant=0):
    extra = {
        "full": {}, "flash": {},
        "sparse": [{"pattern_kind": "fixed", "stride": 8, "summary": 2, "heads": "union"},
                   {"pattern_kind": "strided", "stride": 5, "heads": "split"},
                   {"pattern_kind": "fixed", "stride": 6, "summary": 3, "heads": "alternate"}][variant % 3],
        "longformer": [{"window": 7, "global_tokens": 2}, {"window": 4, "global_tokens": [0, max(0, n - 2)]},
                       {"window": 3, "global_tokens": 0, "dilation": 2, "windows": [3, 9]}][variant % 3],
    }[name]
    return build_attention({"name": name, "backend": backend, "causal": causal, "block_size": block, **extra})


def reference(att, q, k, v, layer):
    """Dense attention in float64 with the explicit mask from the same predicate."""
    H, N = q.shape[1], q.shape[2]
    mask = att.pattern(N, layer).dense(N, n_heads=H)  # (H, N, N)
    return masked_attention(q.double(), k.double(), v.double(), mask.unsqueeze(0))


CASES = []
rng = random.Random(0)
for name, backends in CPU_BACKENDS.items():
    for backend in backends:
        for causal in (True, False):
            for i in range(3):
                n = [1, rng.choice([17, 33, 50]), rng.choice([64, 75])][i]
                CASES.append((name, backend, causal, n, rng.choice([16, 32, 64, 128]), rng.choice([8, 16]), i))


@pytest.mark.parametrize("name,backend,causal,n,d,block,variant", CASES)
def test_equals_dense_reference_forward_and_gradients(name, backend, causal, n, d, block, variant):
    torch.manual_seed(n * 7 + d)
    att = make(name, backend, causal, n, block, variant)
    B, H = 2, 3
    q, k, v = (torch.randn(B, H, n, d, requires_grad=True) for _ in range(3))
    layer = variant % 2
    out = att(q, k, v, layer)
    assert out.shape == (B, H, n, d)
    ref = reference(att, q, k, v, layer)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for got, want, which in zip(grads, ref_grads, "qkv"):
        torch.testing.assert_close(got.double(), want.double(), atol=5e-5, rtol=1e-4, msg=lambda m: f"d{which}: {m}")


@pytest.mark.parametrize("name", sorted(CPU_BACKENDS))
def test_no_information_from_future_tokens(name):
    torch.manual_seed(0)
    n, t = 40, 17
    for backend in CPU_BACKENDS[name]:
        att = make(name, backend, True, n, 8)
        q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
        out = att(q, k, v)
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1:] += torch.randn_like(x[:, :, t + 1:]) * 10  # perturb everything after t
        out2 = att(q2, k2, v2)
        assert torch.equal(out[:, :, :t + 1], out2[:, :, :t + 1]), backend
        assert not torch.allclose(out[:, :, t + 1:], out2[:, :, t + 1:])  # and the future does matter


def saved_bytes(att, n, d=32, H=2):
    """Bytes autograd keeps for the backward pass of one attention call."""
    q, k, v = (torch.randn(1, H, n, d, requires_grad=True) for _ in range(3))
    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        att(q, k, v)
    return total[0]


@pytest.mark.parametrize("name,kwargs", [
    ("flash", {"backend": "blocked", "block_size": 32}),
    ("sparse", {"backend": "blocked", "block_size": 16, "stride": 16, "summary": 4}),
    ("longformer", {"backend": "blocked", "block_size": 32, "window": 32}),
])
def test_memory_for_backward_grows_far_less_than_quadratic(name, kwargs):
    full = build_attention({"name": "full"})
    att = build_attention({"name": name, **kwargs})
    n = 256
    full_ratio = saved_bytes(full, 4 * n) / saved_bytes(full, n)
    ratio = saved_bytes(att, 4 * n) / saved_bytes(att, n)
    assert full_ratio > 12, full_ratio  # the n x n probabilities: ~16x
    assert ratio < 5, ratio  # q, k, v, out, lse: ~4x


def test_sparse_and_longformer_compute_only_kept_blocks():
    """Work is proportional to kept blocks: at 4x the length the kept-block count grows ~4x, not 16x."""
    from attnlab.attention.layout import block_layout
    lf = build_attention({"name": "longformer", "window": 64, "global_tokens": 2, "block_size": 32})
    small = block_layout(lf.pattern(512), 512, 32).kept_pairs()
    big = block_layout(lf.pattern(2048), 2048, 32).kept_pairs()
    assert big / small < 5, big / small  # O(n (w + g))
    # Child et al.: l ~ sqrt(n), so 4x the length doubles l and the kept blocks grow ~8x (n sqrt(n))
    sp = lambda n: build_attention({"name": "sparse", "stride": int(n ** 0.5), "summary": 4, "block_size": 16})  # noqa
    small = block_layout(sp(1024).pattern(1024), 1024, 16).kept_pairs()
    big = block_layout(sp(4096).pattern(4096), 4096, 16).kept_pairs()
    assert big / small < 10, big / small
    flash = build_attention({"name": "flash"})
    small = block_layout(flash.pattern(512), 512, 64).kept_pairs()
    big = block_layout(flash.pattern(2048), 2048, 64).kept_pairs()
    assert big / small > 14


def test_half_precision_inputs_keep_their_dtype():
    att = make("longformer", "blocked", True, 40, 16)
    q, k, v = (torch.randn(1, 2, 40, 16, dtype=torch.bfloat16) for _ in range(3))
    out = att(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference(att, q, k, v, 0), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("cfg,match", [
    ({"name": "fancy"}, r"unknown attention type 'fancy'; valid: \['flash', 'full', 'longformer', 'sparse'\]"),
    ({"name": "flash", "backend": "cuda_magic"}, r"unknown attention backend 'cuda_magic'; valid: "),
    ({"name": "full", "backend": "blocked"}, r"does not support backend 'blocked'; valid: \['dense', 'sdpa', 'auto'\]"),
    ({"name": "longformer", "window": 0}, r"attention.window=0 must be in \[1, 64\]"),
    ({"name": "longformer", "window": 65}, r"attention.window=65 must be in \[1, 64\]"),
    ({"name": "longformer", "global_tokens": [3, 64]}, r"positions \[64\] outside the context"),
    ({"name": "longformer", "global_tokens": 65}, r"global_tokens=65"),
    ({"name": "sparse", "stride": 0}, r"attention.stride=0 makes no pattern"),
    ({"name": "sparse", "summary": 17, "stride": 16}, r"attention.summary=17 makes no pattern"),
    ({"name": "sparse", "heads": "split"}, None),
    ({"name": "longformer", "windw": 3}, r"has no setting\(s\) \['windw'\]; valid:"),
])
def test_bad_settings_fail_before_training_with_clear_message(cfg, match):
    if match is None:  # split heads with one head
        with pytest.raises(ValueError, match="needs at least 2 heads"):
            build_attention(cfg).check(64, 1)
        return
    with pytest.raises(ValueError, match=match):
        build_attention(cfg).check(64, 4)


def test_model_builds_on_cpu_with_a_gpu_backend_before_moving_to_the_gpu(monkeypatch):
    """Lightning builds the model on the CPU, then moves it: construction must not reject a GPU backend;
    the device check happens where the device is known (attnlab.train.check_config)."""
    from attnlab.model import GPT, GPTConfig
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    GPT(GPTConfig(vocab_size=10, context=32, n_layer=1, n_head=2, d_model=16), {"name": "sparse", "backend": "flex"})
    with pytest.raises(ValueError, match="attention.window=64 must be in"):  # settings are still checked
        GPT(GPTConfig(vocab_size=10, context=32, n_layer=1, n_head=2, d_model=16),
            {"name": "longformer", "window": 64, "backend": "triton"})


def test_gpu_only_backends_refuse_cpu_with_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="FlexAttention trains on CUDA only"):
        build_attention({"name": "sparse", "backend": "flex"}).check(64, 4, "cpu")
    with pytest.raises(ValueError, match="not available"):
        build_attention({"name": "longformer", "backend": "triton"}).check(64, 4, "cpu")


def test_registry_lists_the_four_types():
    assert set(ATTENTION_TYPES) == {"full", "flash", "sparse", "longformer"}
