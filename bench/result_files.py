"""Where a benchmark writes what it measured: ``<kind>-<device>-<YYYYmmdd-HHMM>`` in ``--out``, as a Markdown
table (``.md``), the rows with the machine and arguments (``.json``) and, where matplotlib is installed, a
plot (``.png``)."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Callable


def write(out: str | Path, kind: str, table: str, data: dict, draw: Callable | None = None,
          device: str = "cpu") -> Path:
    """Write the table, the data and the figure ``draw(plt)`` returns; the stem they share."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{kind}-{device}-{dt.datetime.now().strftime('%Y%m%d-%H%M')}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    if draw is not None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib not installed: no plot)")
        else:
            fig = draw(plt)
            fig.tight_layout()
            fig.savefig(stem.with_suffix(".png"), dpi=120)
    print(f"wrote {stem}.md, .json" + (", .png" if draw is not None else ""))
    return stem
