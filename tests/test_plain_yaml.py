"""The plain YAML reader for files from someone else's run folder: data only, references only."""
import pytest

from attnlab import plain_yaml
from attnlab.plain_yaml import PlainYAMLError


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_plain_data_and_references_resolve(tmp_path):
    data = plain_yaml.load(write(tmp_path, "model:\n  d_model: 64\n  d_ff: ${model.d_model}\nsizes: [1, '${model.d_ff}']\n"))
    assert plain_yaml.resolve(data, data, "cfg") == {"model": {"d_model": 64, "d_ff": 64}, "sizes": [1, 64]}


@pytest.mark.parametrize("text, says", [
    ("a: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),  # a tag: code
    ("a: &x [1, 2]\nb: *x\n", "anchors or aliases"),
    ("a: [1, 2\n", "flow sequence"),
])
def test_anything_but_plain_data_is_refused(tmp_path, text, says):
    with pytest.raises(PlainYAMLError, match=says):
        plain_yaml.load(write(tmp_path, text))


def test_a_file_larger_than_any_config_is_refused_before_it_is_read(tmp_path):
    path = write(tmp_path, "a: 1\n")
    with open(path, "a") as f:
        f.write("#" * plain_yaml.MAX_BYTES)
    with pytest.raises(PlainYAMLError, match="more than a config holds"):
        plain_yaml.load(path)


@pytest.mark.parametrize("value, says", [
    ("${oc.env:HOME}", "other than a plain reference"),  # a resolver call
    ("x${a}", "other than a plain reference"),  # a partial interpolation
    ("${${a}}", "other than a plain reference"),  # a nested one
    ("${missing.key}", "missing.key is not set"),
])
def test_only_plain_references_resolve(value, says):
    root = {"a": "b", "v": value}
    with pytest.raises(PlainYAMLError, match=says):
        plain_yaml.resolve(root, root, "cfg")


def test_a_reference_cycle_is_refused():
    root = {"a": "${b}", "b": "${a}"}
    with pytest.raises(PlainYAMLError, match="nest too deep"):
        plain_yaml.resolve(root, root, "cfg")


def test_references_that_multiply_are_refused_before_they_expand(tmp_path):
    """10 plain references a level over 9 levels (1.6 kB) would be 10^9 values."""
    import time
    lines = ["l0: [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: [{', '.join([repr('${l' + str(i - 1) + '}')] * 10)}]" for i in range(1, 10)]
    data = plain_yaml.load(write(tmp_path, "\n".join(lines) + "\n"))
    started = time.time()
    with pytest.raises(PlainYAMLError, match=r"expand to more than 100,000 values"):
        plain_yaml.resolve(data["l9"], data, "l9")
    assert time.time() - started < 5


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000 + "\n",  # 200 kB of brackets
                                  "".join(f"{'  ' * i}k{i}:\n" for i in range(800)) + "  " * 800 + "v: 1\n",  # 800 block levels
                                  "a: " + "{b: " * 80 + "1" + "}" * 80 + "\n"])
def test_deep_nesting_is_refused_at_once(tmp_path, text):
    import time
    started = time.time()
    with pytest.raises(PlainYAMLError, match=r"nests .*levels"):
        plain_yaml.load(write(tmp_path, text))
    assert time.time() - started < 5


def test_a_saved_config_is_far_from_the_bounds(tmp_path):
    from conftest import ROOT
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(ROOT / "conf" / "config.yaml")
    path = tmp_path / "c.yaml"
    OmegaConf.save(cfg, path)
    assert plain_yaml.nesting(path.read_text()) < plain_yaml.MAX_DEPTH // 4
    assert plain_yaml.nesting("a: x\nb: 1\n") == 0 and plain_yaml.nesting("a: 'x[[y'\n") == 2  # an upper bound: quotes count


def test_an_oversized_tokenizer_file_is_refused_before_it_is_read(tmp_path):
    import os
    from attnlab.data.corpus import DataError
    from attnlab.data.tokenizers import MAX_TOKENIZER_BYTES, load_tokenizer
    with open(tmp_path / "tokenizer.json", "wb") as f:
        f.truncate(MAX_TOKENIZER_BYTES + 1)  # sparse: no disk, no memory
    with pytest.raises(DataError, match=r"more than a tokenizer holds"):
        load_tokenizer(tmp_path)
    assert os.path.getsize(tmp_path / "tokenizer.json") > MAX_TOKENIZER_BYTES
