"""Data shipped with the package: 294 real reasoning traces (see ``README.md`` beside this file).

``COT_TRACES`` is the path of ``cot-traces.jsonl.gz``; the tests, ``asap bench`` and the scripts in
benchmarks/ read it, so a clone or an installed wheel needs nothing beside it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

COT_TRACES: Path = Path(__file__).resolve().parent / "cot-traces.jsonl.gz"

__all__ = ["COT_TRACES", "iter_jsonl", "read_cot_traces"]


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows of a ``.jsonl`` or ``.jsonl.gz`` file (by its suffix), in order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_cot_traces(path: str | Path | None = None) -> list[dict]:
    """Every row of the bundled traces (or of ``path``, a ``.jsonl`` / ``.jsonl.gz`` of the same schema)."""
    return list(iter_jsonl(COT_TRACES if path is None else path))
