"""YAML from someone else's folder, read as plain values: no tags (safe_load), no anchors or aliases (a few
hundred bytes of nested aliases expand to gigabytes), at most 1 MiB, and interpolations resolved here by plain
reference only (``${a.b}``), never through a resolver (``${name:...}`` calls code)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
REFERENCE = re.compile(r"^\$\{\s*([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\s*\}$")  # ${a.b}: a plain reference


class PlainYAMLError(ValueError):
    """The file is not plain YAML data; the message says why."""


def load(path: str | Path) -> Any:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise PlainYAMLError(f"{size:,} bytes, more than a config holds ({MAX_BYTES:,})")
    text = path.read_text(encoding="utf-8")
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise PlainYAMLError("it uses YAML anchors or aliases, which a saved config never does")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlainYAMLError(str(e).splitlines()[0]) from None


def lookup(root: dict, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PlainYAMLError(f"{dotted} is not set")
        node = node[part]
    return node


def resolve(value: Any, root: dict, where: str, depth: int = 0) -> Any:
    """``value`` with every plain reference ``${a.b}`` replaced by the value it names (recursively); any other
    ``${`` (a resolver call, a nested or partial interpolation) is refused."""
    if depth > 20:
        raise PlainYAMLError(f"{where}: interpolations nest too deep (a cycle?)")
    if isinstance(value, dict):
        return {k: resolve(v, root, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, root, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        m = REFERENCE.match(value.strip())
        if not m:
            raise PlainYAMLError(f"{where}={value!r} is an interpolation other than a plain reference ${{a.b}} "
                                 f"(a resolver call runs code)")
        return resolve(lookup(root, m.group(1)), root, m.group(1), depth + 1)
    return value
