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
