"""The pictures: one panel per head where the pattern depends on it, sized for reading, analysis maps drawn
over the type's mask."""
import matplotlib.image
import pytest
import torch

from attnlab.analyze import draw_extrapolation, draw_layer, draw_loss_by_position, layer_figure, token_labels
from attnlab.attention import build_attention
from attnlab.attention.pictures import save_pattern_picture


def width_and_height(path):
    image = matplotlib.image.imread(path)  # (height, width, channels)
    return image.shape[1], image.shape[0]


@pytest.mark.parametrize("settings, panels", [({"name": "full"}, 1), ({"name": "sparse", "heads": "split"}, 3)])
def test_a_pattern_picture_has_a_panel_per_distinct_head(tmp_path, settings, panels):
    pattern = build_attention(settings).pattern(32)  # sparse with split heads: even and odd heads differ
    path = save_pattern_picture(pattern, 32, tmp_path / "sub" / "pattern.png", n_heads=3, title="pattern")
    width, height = width_and_height(path)
    assert width == pytest.approx(4 * panels * 110, abs=2) and height == pytest.approx(4.3 * 110, abs=2)


def test_analysis_pictures_are_written(tmp_path):
    heads, T = 2, 16
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(heads, T, T)
    probs = allowed.float() / allowed.float().sum(-1, keepdim=True)  # uniform over the causal past
    width, _ = width_and_height(draw_layer(probs, allowed, 0, "uniform", tmp_path / "layer0.png"))
    assert width == pytest.approx((3.2 * heads + 0.8) * 110, abs=2)
    curve = {"mean": [3.0, 2.5, 2.0], "ci95": [0.1, 0.1, 0.1]}
    assert draw_loss_by_position(curve, "loss", tmp_path / "loss.png").stat().st_size > 0
    extrapolation = {"lengths": [16, 32, 64], "perplexity": [10.0, 12.0, 30.0]}
    assert draw_extrapolation(extrapolation, 16, "rope", tmp_path / "extra.png").stat().st_size > 0


def test_attention_maps_label_their_axes_with_the_tokens_and_carry_a_colour_bar():
    heads, T = 2, 12
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(heads, T, T)
    probs = allowed.float() / allowed.float().sum(-1, keepdim=True)
    tokens = list("ROMEO: hi\nyo")
    fig = layer_figure(probs, allowed, 0, "t", tokens)
    assert len(fig.axes) == heads + 1  # a panel per head and the colour bar
    colour_bar = fig.axes[-1]
    assert "probability" in colour_bar.get_ylabel()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["R", "O", "M", "E", "O", ":", "␣", "h", "i", "⏎", "y", "o"]
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == labels
    ticks, many = token_labels([f"w{i}" for i in range(200)])
    assert len(many) <= 48 and many[1].startswith(f"{ticks[1]}:")  # every k-th token, with its position
