"""Every registered attention type, on every backend that claims it and runs here, equals the dense reference
(forward and gradients), leaks nothing from the future, and the efficient ones keep sub-quadratic memory
for backward. The cases come from the registry: a new type is tested here with no edit to this file."""
import pytest
import torch

from attnlab.attention import ATTENTION_TYPES, BACKENDS, build_attention, example_attention
from attnlab.attention.backends.dense import full_mask, masked_attention
from attnlab.attention.patterns import document_ids
from attnlab.attention.score_mods import alibi
from attnlab.errors import ConfigError
from attnlab.attention.backends.layout import block_layout

CPU = torch.device("cpu")


def cpu_backends(att) -> list[str]:
    """The backends of this type that train on the CPU (flex has no CPU backward: tested in test_flex.py;
    triton runs in the interpreter: tested in test_triton.py)."""
    return [b for b in att.backends() if b not in ("flex", "triton") and BACKENDS[b].unavailable_reason(CPU) is None]


def reference(att, q, k, v, layer):
    """Dense attention in float64 with the explicit mask from the same predicate."""
    H, N = q.shape[1], q.shape[2]
    mask = att.pattern(N, layer).dense(N, n_heads=H)  # (H, N, N)
    return masked_attention(q.double(), k.double(), v.double(), mask.unsqueeze(0))


def equivalence_cases():
    cases = []
    for name, cls in ATTENTION_TYPES.items():
        for i, settings in enumerate(cls.variants(64)):
            att = build_attention({"name": name, **settings})
            for backend in cpu_backends(att):
                for causal in (True, False):
                    n = (1, 33, 75)[i % 3] if causal else (50, 17, 64)[i % 3]
                    d = (16, 32, 64)[(i + causal) % 3]
                    cases.append(pytest.param(name, settings, backend, causal, n, d, i % 2,
                                              id=f"{name}-v{i}-{backend}-{'causal' if causal else 'bidir'}-n{n}"))
    return cases


@pytest.mark.parametrize("name,settings,backend,causal,n,d,layer", equivalence_cases())
def test_equals_dense_reference_forward_and_gradients(name, settings, backend, causal, n, d, layer):
    torch.manual_seed(n * 7 + d)
    att = build_attention({"name": name, **settings, "backend": backend, "causal": causal})
    B, H = 2, 3
    q, k, v = (torch.randn(B, H, n, d, requires_grad=True) for _ in range(3))
    out = att(q, k, v, layer)
    assert out.shape == (B, H, n, d)
    ref = reference(att, q, k, v, layer)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for got, want, which in zip(grads, ref_grads, "qkv"):
        torch.testing.assert_close(got.double(), want.double(), atol=5e-5, rtol=1e-4, msg=lambda m: f"d{which}: {m}")


def leak_cases():
    return [pytest.param(name, b, id=f"{name}-{b}") for name in ATTENTION_TYPES
            for b in cpu_backends(example_attention(name, 40))]


@pytest.mark.parametrize("name,backend", leak_cases())
def test_no_information_from_future_tokens(name, backend):
    torch.manual_seed(0)
    n, t = 40, 17
    att = example_attention(name, n, backend=backend, block_size=8)
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    out = att(q, k, v)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, :, t + 1:] += torch.randn_like(x[:, :, t + 1:]) * 10  # perturb everything after t
    out2 = att(q2, k2, v2)
    assert torch.equal(out[:, :, :t + 1], out2[:, :, :t + 1])
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


def test_dense_backend_keeps_quadratic_memory_for_backward():
    full = build_attention({"name": "full"})
    assert saved_bytes(full, 1024) / saved_bytes(full, 256) > 12  # the n x n probabilities: ~16x


@pytest.mark.parametrize("name", [n for n in ATTENTION_TYPES if "blocked" in example_attention(n, 256).backends()])
def test_blocked_backend_memory_for_backward_grows_far_less_than_quadratic(name):
    att = lambda n: example_attention(name, n, backend="blocked")  # noqa: E731  settings scale with n, as a user would
    ratio = saved_bytes(att(1024), 1024) / saved_bytes(att(256), 256)
    assert ratio < 5, ratio  # q, k, v, out, lse: ~4x


@pytest.mark.parametrize("name", list(ATTENTION_TYPES))
def test_kept_blocks_scale_as_the_type_says(name):
    """Work is proportional to the kept blocks. At 4x the length a quadratic type keeps ~16x the blocks;
    every sparse type (fewer than half the pairs at 4096) keeps at most ~n sqrt(n) growth: < 10x."""
    small, big = example_attention(name, 1024), example_attention(name, 4096)
    ratio = block_layout(big.pattern(4096), 4096, 16).kept_pairs() / block_layout(small.pattern(1024), 1024, 16).kept_pairs()
    density = big.attended_keys(4096) / (4096 * 4097 / 2)
    if density > 0.5:
        assert ratio > 14, ratio
    else:
        assert ratio < 10, (ratio, density)


def test_half_precision_inputs_keep_their_dtype():
    att = build_attention({"name": "longformer", "window": 7, "global_tokens": 2, "backend": "blocked", "block_size": 16})
    q, k, v = (torch.randn(1, 2, 40, 16, dtype=torch.bfloat16) for _ in range(3))
    out = att(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference(att, q, k, v, 0), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("cfg,match", [
    ({"name": "fancy"}, r"unknown attention type 'fancy'; valid: \[" + ", ".join(f"'{n}'" for n in sorted(ATTENTION_TYPES))),
    ({"name": "flash", "backend": "cuda_magic"}, r"unknown attention backend 'cuda_magic'; valid: "),
    ({"name": "full", "backend": "blocked"}, r"does not support backend 'blocked'; valid: \['dense', 'sdpa', 'auto'\]"),
    ({"name": "sparse", "backend": "sdpa"}, r"does not support backend 'sdpa'"),
    ({"name": "longformer", "window": 0}, r"attention.window=0 must be in \[1, 64\]"),
    ({"name": "longformer", "window": 65}, r"attention.window=65 must be in \[1, 64\]"),
    ({"name": "longformer", "global_tokens": [3, 64]}, r"positions \[64\] outside the context"),
    ({"name": "longformer", "global_tokens": 65}, r"global_tokens=65"),
    ({"name": "sparse", "stride": 0}, r"attention.stride=0 makes no pattern"),
    ({"name": "sparse", "summary": 17, "stride": 16}, r"attention.summary=17 makes no pattern"),
    ({"name": "sparse", "pattern_kind": "zigzag"}, r"pattern_kind='zigzag'; valid: \['fixed', 'strided'\]"),
    ({"name": "longformer", "windw": 3}, r"has no setting\(s\) \['windw'\]; valid:"),
    ({"name": "flash", "backend": "triton", "block_size": 24}, r"block_size=24: the triton backend needs a power of two"),
])
def test_bad_settings_fail_before_training_with_clear_message(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_attention(cfg).check(64, 4)


def test_split_heads_needs_two_heads():
    with pytest.raises(ValueError, match="needs at least 2 heads"):
        build_attention({"name": "sparse", "heads": "split"}).check(64, 1)


def test_model_builds_on_cpu_with_a_gpu_backend_before_moving_to_the_gpu(monkeypatch):
    """Lightning builds the model on the CPU, then moves it: construction must not reject a GPU backend;
    the device check happens where the device is known (attnlab.train)."""
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


def test_backend_is_resolved_once_per_module_not_per_forward(monkeypatch):
    from attnlab.model import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=10, context=16, n_layer=1, n_head=2, d_model=16), {"name": "flash"})
    x = torch.zeros(1, 16, dtype=torch.long)
    m(x)
    calls = []
    monkeypatch.setattr(type(m.attention), "resolved_backend", lambda self, d: calls.append(d) or "sdpa")
    m(x), m(x)
    assert calls == []


def test_every_type_has_a_config_and_valid_examples():
    from conftest import ROOT
    for name, cls in ATTENTION_TYPES.items():
        assert (ROOT / "conf" / "attention" / f"{name}.yaml").is_file(), name
        for n in (64, 1024):
            for settings in [cls.example(n), *cls.variants(n)]:
                build_attention({"name": name, **settings}).check(n, 4)


def test_what_auto_means_is_decided_in_one_place():
    """``AttentionType.auto_backend`` owns the choice (flex on CUDA where it computes the pattern, banded or
    blocked on a CPU); only the types that are a backend choice themselves override it."""
    from attnlab.attention.base import AttentionType
    assert sorted(n for n, cls in ATTENTION_TYPES.items() if "auto_backend" in vars(cls)) == ["flash", "full"]
    for name in ("sparse", "longformer", "bigbird"):
        a = build_attention({"name": name})
        assert a.auto_backend(torch.device("cuda")) == "flex"
        assert a.auto_backend(torch.device("cpu")) == ("banded" if "banded" in a.backends() else "blocked")
    assert not AttentionType().is_global(torch.arange(4)).any() and AttentionType().last_global_query() == -1


# --- document masking, grouped key/value heads and score modifications (ALiBi) ------------------------------

def packed_documents(B: int, n: int, seed: int = 0) -> torch.Tensor:
    """Document ids (B, n) of packed windows: each row cut at different end tokens, one row without any."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 9, (B, n), generator=g)
    tokens[0, [3, n // 2, n - 5]] = 0  # three ends: a short document first
    if B > 1:
        tokens[1, [n // 3]] = 0
    return document_ids(tokens, end_token=0)


def extended_cases():
    """Every type (its first causal variant) x every CPU backend x documents off/on x key/value heads (all, 1, half)
    x score modification none/ALiBi where the backend can add one."""
    cases = []
    for name, cls in ATTENTION_TYPES.items():
        att = build_attention({"name": name, **cls.variants(64)[0]})
        for backend in cpu_backends(att):
            for docs in (False, True):
                for kv in (4, 1, 2):
                    for alibi_on in ((False, True) if BACKENDS[backend].adds_scores else (False,)):
                        if not docs and kv == 4 and not alibi_on:
                            continue  # today's case, tested above
                        cases.append(pytest.param(name, backend, docs, kv, alibi_on,
                                                  id=f"{name}-{backend}-{'docs' if docs else 'nodocs'}-kv{kv}"
                                                     f"{'-alibi' if alibi_on else ''}"))
    return cases


@pytest.mark.parametrize("name,backend,docs,kv,alibi_on", extended_cases())
def test_documents_grouped_heads_and_alibi_equal_the_dense_reference(name, backend, docs, kv, alibi_on):
    """Forward and gradients equal float64 dense attention under ``pattern & same_document`` with the ALiBi bias,
    key/value heads shared by groups of query heads as the model shares them."""
    torch.manual_seed(kv + 10 * docs + 100 * alibi_on)
    B, H, n, d = 2, 4, 45, 16
    settings = ATTENTION_TYPES[name].variants(64)[0]
    att = build_attention({"name": name, **settings, "backend": backend, "block_size": 16})
    documents = packed_documents(B, n) if docs else None
    mod = alibi(H) if alibi_on else None
    q = torch.randn(B, H, n, d, requires_grad=True)
    k, v = (torch.randn(B, kv, n, d, requires_grad=True) for _ in range(2))
    spread = lambda t: t.repeat_interleave(H // kv, dim=1)  # noqa: E731  as SelfAttention.heads_of
    out = att(q, spread(k), spread(v), 1, documents, mod)
    pattern = att.pattern(n, 1)
    mask = full_mask(pattern, B, H, n, documents, None)
    bias = None if mod is None else mod.dense(n, n, H, dtype=torch.float64).unsqueeze(0)
    ref = masked_attention(q.double(), spread(k).double(), spread(v).double(), mask, bias)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    for got, want, which in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g.double()),
                                "qkv"):
        torch.testing.assert_close(got.double(), want.double(), atol=5e-5, rtol=1e-4, msg=lambda m: f"d{which}: {m}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,backend", leak_cases())
def test_no_information_crosses_a_document_boundary(name, backend, causal):
    """Perturb every query, key and value of one document: the outputs of every other document stay the same to
    the last bit (as the causal-leak test does for the future), and the perturbed document's do change."""
    torch.manual_seed(1)
    n = 40
    att = example_attention(name, n, backend=backend, block_size=8, causal=causal)
    tokens = torch.randint(1, 9, (2, n))
    tokens[:, [9, 25]] = 0  # three documents: 0..9, 10..25, 26..39
    documents = document_ids(tokens, end_token=0)
    q, k, v = (torch.randn(2, 2, n, 16) for _ in range(3))
    out = att(q, k, v, 0, documents)
    inside = documents[0] == 1  # the middle document
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, inside] += torch.randn_like(x[:, :, inside]) * 10
    out2 = att(q2, k2, v2, 0, documents)
    assert torch.equal(out[:, :, ~inside], out2[:, :, ~inside])
    assert not torch.allclose(out[:, :, inside], out2[:, :, inside])


def test_a_backend_that_cannot_add_scores_is_refused_in_one_line_and_auto_avoids_it():
    flash = build_attention({"name": "flash", "backend": "sdpa"})
    with pytest.raises(ConfigError, match=r"backend 'sdpa' cannot add a score modification \(alibi\).*valid with it: "
                                          r"\['blocked', 'flex', 'auto'\]"):
        flash.check(64, 4, score_mod="alibi")
    assert build_attention({"name": "flash"}).resolved_backend(CPU, adds_scores=True) == "blocked"
    assert build_attention({"name": "full"}).resolved_backend(CPU, adds_scores=True) == "dense"
    for name in ATTENTION_TYPES:  # whatever auto picks with a score modification can add one
        assert BACKENDS[build_attention({"name": name}).resolved_backend(CPU, adds_scores=True)].adds_scores
