"""YAML from someone else's folder, read as plain values: no tags (safe_load), no anchors or aliases (a few
hundred bytes of nested aliases expand to gigabytes), at most 1 MiB, at most ``MAX_DEPTH`` levels of nesting
(checked before the parser runs: deep brackets keep PyYAML's scanner busy for minutes and deep blocks exhaust
its recursion), and interpolations resolved here by plain reference only (``${a.b}``), never through a resolver
(``${name:...}`` calls code), producing at most ``MAX_VALUES`` values (references to references multiply: 10 a
level over 9 levels would be 10^9)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
MAX_DEPTH = 64  # a saved config nests 4 or 5 levels
MAX_VALUES = 100_000  # values one resolve may produce (a whole saved config has a few hundred)
REFERENCE = re.compile(r"^\$\{\s*([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\s*\}$")  # ${a.b}: a plain reference


class PlainYAMLError(ValueError):
    """The file is not plain YAML data; the message says why."""


def read_bounded(path: str | Path, max_bytes: int = MAX_BYTES, what: str = "a config") -> bytes:
    """A received file's bytes: a regular file only (a named pipe would block the reader forever, a device never
    end), at most ``max_bytes`` of it read whatever its size claims (a /proc file says 0); PlainYAMLError else."""
    path = Path(path)
    if not path.is_file():
        raise PlainYAMLError("not a regular file")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PlainYAMLError(f"more than {max_bytes:,} bytes, more than {what} holds")
    return data


def load_json(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """A received JSON file (status.json, run.json, config.json, meta.json ...) as plain values, bounded: a regular
    file of at most ``max_bytes``, nested at most MAX_DEPTH levels (Python's parser recurses: 100,000 brackets
    were a RecursionError); PlainYAMLError with the reason else."""
    data = read_bounded(path, max_bytes, "such a file")
    if nesting(data.decode("utf-8", errors="replace")) > MAX_DEPTH:
        raise PlainYAMLError(f"it nests more than {MAX_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise PlainYAMLError(f"not JSON ({str(e).splitlines()[0][:100]})") from None


def load(path: str | Path) -> Any:
    path = Path(path)
    text = read_bounded(path).decode("utf-8")
    depth = nesting(text)
    if depth > MAX_DEPTH:
        raise PlainYAMLError(f"it nests {depth} levels deep, more than a config does ({MAX_DEPTH})")
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise PlainYAMLError("it uses YAML anchors or aliases, which a saved config never does")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlainYAMLError(str(e).splitlines()[0]) from None
    except RecursionError:
        raise PlainYAMLError(f"it nests deeper than a config does ({MAX_DEPTH} levels)") from None


def nesting(text: str) -> int:
    """An upper bound of the text's nesting depth, in one pass without parsing: every open bracket ([ and {, even
    inside quotes or after a '#': YAML's plain scalars may hold both, so skipping them could be fooled) plus the
    indentation steps of block lines (two spaces each) and compact sequence dashes."""
    deepest, flow = 0, 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if stripped:
            dashes = len(stripped) - len(stripped.lstrip("- "))  # "- - - x": nested sequences on one line
            block = (len(line) - len(stripped) + 1) // 2 + dashes // 2 + stripped.startswith("-")
            deepest = max(deepest, block + flow)
        for c in line:
            if c in "[{":
                flow += 1
                deepest = max(deepest, flow)
            elif c in "]}":
                flow = max(0, flow - 1)
    return deepest


def lookup(root: dict, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PlainYAMLError(f"{dotted} is not set")
        node = node[part]
    return node


def resolve(value: Any, root: dict, where: str, depth: int = 0, budget: list | None = None) -> Any:
    """``value`` with every plain reference ``${a.b}`` replaced by the value it names (recursively); any other
    ``${`` (a resolver call, a nested or partial interpolation) is refused, and so is a value that would expand to
    more than MAX_VALUES values."""
    budget = [MAX_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise PlainYAMLError(f"{where}: its references expand to more than {MAX_VALUES:,} values, more than a "
                             f"config holds")
    if depth > 20:
        raise PlainYAMLError(f"{where}: interpolations nest too deep (a cycle?)")
    if isinstance(value, dict):
        return {k: resolve(v, root, f"{where}.{k}", depth, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, root, f"{where}[{i}]", depth, budget) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        m = REFERENCE.match(value.strip())
        if not m:
            raise PlainYAMLError(f"{where}={value!r} is an interpolation other than a plain reference ${{a.b}} "
                                 f"(a resolver call runs code)")
        return resolve(lookup(root, m.group(1)), root, m.group(1), depth + 1, budget)
    return value
