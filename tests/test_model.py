"""Dimension mistakes are caught with messages that name the numbers; the model is causal end to end."""
import pytest
import torch

from attnlab.attention import ATTENTION_TYPES
from attnlab.model import GPT, GPTConfig


def tiny(**kw):
    base = dict(vocab_size=31, context=32, n_layer=2, n_head=4, d_model=32)
    return GPTConfig(**{**base, **kw})


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"model.d_model=30 is not divisible by model.n_head=4"):
        tiny(d_model=30)


def test_batch_longer_than_context():
    m = GPT(tiny())
    with pytest.raises(ValueError, match=r"sequence length 40 is longer than the model's context 32"):
        m(torch.zeros(1, 40, dtype=torch.long))


def test_vocabulary_mismatch():
    m = GPT(tiny())
    with pytest.raises(ValueError, match=r"token id 31 is outside the model's vocabulary of 31"):
        m(torch.full((1, 8), 31))


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"shape \(batch, time\), got shape \(8,\)"):
        GPT(tiny())(torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("name", list(ATTENTION_TYPES))
def test_logits_at_t_do_not_depend_on_later_tokens(name):
    torch.manual_seed(0)
    m = GPT(tiny(), {"name": name, **ATTENTION_TYPES[name].example(32)}).eval()
    x = torch.randint(0, 31, (2, 32))
    x2 = x.clone()
    x2[:, 20:] = torch.randint(0, 31, (2, 12))
    torch.testing.assert_close(m(x)[:, :20], m(x2)[:, :20])


def test_weight_tying_and_param_count():
    m = GPT(tiny())
    assert m.head.weight is m.tok_emb.weight
    untied = GPT(tiny(tie_weights=False))
    assert untied.num_params() - m.num_params() == 31 * 32


def test_gpt2_size():
    cfg = GPTConfig(vocab_size=50257, context=1024, n_layer=12, n_head=12, d_model=768, bias=True)
    n = GPT(cfg).num_params(non_embedding=False)
    assert 123e6 < n < 125e6


def test_generate_extends_sequence():
    m = GPT(tiny())
    out = m.generate(torch.zeros(1, 3, dtype=torch.long), 5, top_k=5)
    assert out.shape == (1, 8)
