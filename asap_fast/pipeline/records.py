"""Corpus records in the four formats of the CLI, read as a stream of rows.

A path ending ``.jsonl`` or ``.jsonl.gz`` is JSON Lines, ``.parquet`` a Parquet file, and any other
path a ``datasets`` ``save_to_disk`` directory. Rows are dicts; every input field is kept on
output. A line that is not a JSON object becomes a row carrying its error (a reject), never a crash.
Parquet and datasets need pyarrow / datasets (the ``sft`` extra brings both), imported on use.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "jsonl.gz", "parquet", "datasets")


@dataclass
class Row:
    """One input row: where it was (1-based line of a JSONL file, or row number), and the record
    or why it could not be read."""

    line: int
    record: dict | None
    error: str | None = None
    unit: str = "line"

    @property
    def id(self) -> str:
        if self.record is not None and isinstance(self.record.get("id"), (str, int)):
            return str(self.record["id"])
        return f"{self.unit}:{self.line}"


def format_of(path: str | os.PathLike) -> str:
    name = Path(path).name
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".json", ".gz", ".csv", ".arrow", ".txt")):
        raise ValueError(f"unsupported format {name!r}: use .jsonl, .jsonl.gz, .parquet or a datasets directory")
    return "datasets"


def open_text(path: Path, mode: str):
    """Text file handle, gzip-compressed when the name ends with .gz."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def check_input(path: str | os.PathLike) -> Path:
    """The input path, once it is known to exist and to have a supported format."""
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if fmt == "datasets" and not path.is_dir():
        raise ValueError(f"input {path} is neither .jsonl, .jsonl.gz, .parquet nor a datasets directory")
    return path


def read_rows(path: str | os.PathLike) -> Iterator[Row]:
    """Stream the rows of any supported input, in order, with bounded memory."""
    path = check_input(path)
    fmt = format_of(path)
    if fmt in ("jsonl", "jsonl.gz"):
        yield from read_jsonl(path)
    elif fmt == "parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_datasets(path)


def read_jsonl(path: str | os.PathLike) -> Iterator[Row]:
    """Yield every non-blank line of a .jsonl / .jsonl.gz file as a Row."""
    with open_text(Path(path), "r") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield Row(number, None, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(record, dict):
                yield Row(number, None, f"a row must be a JSON object, got {type(record).__name__}")
                continue
            yield Row(number, record)


def _read_parquet(path: Path) -> Iterator[Row]:
    pq = _require("pyarrow.parquet", "pyarrow")
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for record in batch.to_pylist():
            number += 1
            yield Row(number, record, unit="row")


def _read_datasets(path: Path) -> Iterator[Row]:
    datasets = _require("datasets", "datasets")
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        raise ValueError(f"{path} holds a DatasetDict with splits {sorted(data)}; pass one split's directory")
    for number, record in enumerate(data, 1):  # memory-mapped Arrow: rows are read as iterated
        yield Row(number, dict(record), unit="row")


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading or writing this format needs {package}: pip install {package}") from None


def rejects_path(out: str | os.PathLike) -> Path:
    """Where the rejects of OUT go: ``a.jsonl[.gz]`` / ``a.parquet`` -> ``a.rejects.jsonl``; a
    datasets directory ``d`` -> ``d/rejects.jsonl``."""
    out = Path(out)
    fmt = format_of(out)
    if fmt == "datasets":
        return out / "rejects.jsonl"
    suffix = "." + fmt if fmt != "jsonl.gz" else ".jsonl.gz"
    return out.with_name(out.name[: -len(suffix)] + ".rejects.jsonl")
