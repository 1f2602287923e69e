"""Corpus records in the four formats of the CLI: every read and every format decision lives here.

A path ending ``.jsonl`` or ``.jsonl.gz`` is JSON Lines, ``.parquet`` a Parquet file, and any other
path a ``datasets`` ``save_to_disk`` directory. Rows are dicts; every input field is kept on output.
Parquet and datasets need pyarrow / datasets (the ``sft`` extra brings both), imported on use.

JSON Lines is read as bytes and split at ``\\n`` only (a bare ``\\r`` inside a row is not a line
end, as the JSON Lines format says), so one damaged line never costs its neighbours: a line that is
not UTF-8, not JSON, not an object, or holds a lone surrogate escape (text no UTF-8 file can hold)
becomes a row carrying its error, which the run engine writes as a reject. A compressed file that
ends early (a truncated ``.jsonl.gz``) yields every complete row before the damage and then raises
:class:`InputDamaged`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "jsonl.gz", "parquet", "datasets")
_SNIFF_BYTES = 1 << 16
# A \uD800-\uDFFF escape; only lines that have one pay for the full surrogate check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InputError(ValueError):
    """The input cannot be read at all (missing, unsupported, not text); one line."""


class InputDamaged(InputError):
    """The input ends in damage after ``rows`` complete rows (e.g. a truncated gzip stream)."""

    def __init__(self, path: Path, rows: int, cause: str):
        self.path, self.rows, self.cause = path, rows, cause
        super().__init__(f"{path} is damaged after its first {rows} rows: {cause}")


@dataclass
class Row:
    """One input row: where it was (1-based line of a JSONL file, or row number), and the record
    or why it could not be read."""

    line: int
    record: dict | None
    error: str | None = None
    unit: str = "line"
    # JSON Lines: (bytes of the input up to the end of this row's line, their BLAKE2b), what a
    # commit records so that a resume can prove the input it skips is the input it processed
    prefix: tuple[int, str] | None = None

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
        raise InputError(f"unsupported format {name!r}: use .jsonl, .jsonl.gz, .parquet or a datasets directory")
    return "datasets"


def open_text(path: Path, mode: str):
    """Text file handle, gzip-compressed when the name ends with .gz (for files we write)."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def check_input(path: str | os.PathLike) -> Path:
    """The input path, once it exists, has a supported format and looks like one: a JSON Lines
    file must be text (no NUL bytes in its first 64 KiB; a .gz one must be gzip), a Parquet file
    must carry Parquet's magic. Called before any model loads or any output is created."""
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if fmt == "datasets":
        if not path.is_dir():
            raise InputError(f"input {path} is neither .jsonl, .jsonl.gz, .parquet nor a datasets directory")
        return path
    if path.is_dir():
        raise InputError(f"input {path} is a directory, not a {fmt} file")
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise InputError(f"cannot read input {path}: {e.strerror or e}") from None
    if fmt == "parquet":
        if head[:4] != b"PAR1":
            raise InputError(f"input {path} is not a Parquet file (no PAR1 magic)")
        return path
    if fmt == "jsonl.gz":
        if head and head[:2] != b"\x1f\x8b":
            raise InputError(f"input {path} is not gzip-compressed, though its name ends in .gz")
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        except (OSError, EOFError, zlib.error):
            head = b""  # damage is reported where it is met, after the rows before it
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputError(f"input {path} is not a text file (a NUL byte at offset {nul}); JSON Lines is UTF-8 text")
    return path


class InputChanged(InputError):
    """The input's bytes before the resume point are not those the committed rows were read from."""


def read_rows(path: str | os.PathLike, start: int = 0, stop: int | None = None, *,
              expect_prefix: tuple[int, str] | None = None) -> Iterator[Row]:
    """Rows ``start <= k < stop`` of any supported input, in order, with bounded memory, each with
    its 1-based line (JSON Lines) or row number, without parsing the rows before ``start``.

    JSON Lines rows carry ``prefix`` (see Row). ``expect_prefix``: the prefix a previous run
    recorded for row ``start - 1``; the rows skipped to get there are hashed on the way (the one
    sequential read a resume makes anyway) and InputChanged is raised when they differ."""
    path = check_input(path)
    fmt = format_of(path)
    if stop is not None and stop <= start:
        return
    if fmt in ("jsonl", "jsonl.gz"):
        yield from _read_jsonl(path, start, stop, expect_prefix)
    elif fmt == "parquet":
        yield from _read_parquet(path, start, stop)
    else:
        yield from _read_datasets(path, start, stop)


def read_jsonl(path: str | os.PathLike) -> Iterator[Row]:
    """Every non-blank line of a .jsonl / .jsonl.gz file as a Row."""
    yield from read_rows(path)


def _lines(path: Path, hasher=None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the final \\n) of each line; split at \\n only. ``hasher``
    (a hashlib object) is updated with every line read, blank ones included."""
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    with opener(path, "rb") as f:
        try:
            for line in f:  # binary iteration splits at b"\n" only
                number += 1
                if hasher is not None:
                    hasher.update(line)
                yield number, line[:-1] if line.endswith(b"\n") else line
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise _Damage(number, _why(e)) from None


class _Damage(Exception):
    def __init__(self, line: int, cause: str):
        self.line, self.cause = line, cause


def _why(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "the compressed stream ends early (truncated file)"
    return f"{type(e).__name__}: {e}"


def parse_line(number: int, line: bytes) -> Row:
    """One JSON Lines line as a Row: the record, or the one-line reason it cannot be one. Whatever
    the line holds (deep nesting, a 5,000-digit integer, NaN), the answer is a Row, never an error."""
    if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark opens the file
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Row(number, None, f"invalid UTF-8 at byte {e.start} of the line")
    try:
        # NaN and Infinity are read (files written by Python's json hold them); a row that still
        # holds one when it is written is a reject, so OUT is strict JSON
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return Row(number, None, f"malformed JSON: {e.msg} at column {e.colno}")
    except RecursionError:
        return Row(number, None, "unreadable JSON: nested too deeply")
    except Exception as e:  # noqa: BLE001 - e.g. an integer past Python's digit limit
        return Row(number, None, f"unreadable JSON: {' '.join(str(e).split())[:200]}")
    if not isinstance(record, dict):
        return Row(number, None, f"a row must be a JSON object, got {type(record).__name__}")
    if _SURROGATE_ESCAPE.search(line):
        bad = unwritable_text(record)
        if bad is not None:
            return Row(number, None, bad)
    return Row(number, record)


def unwritable_text(record) -> str | None:
    """Why ``record`` cannot be written as strict UTF-8 JSON (a lone surrogate, NaN or Infinity,
    nesting too deep), or None."""
    try:
        json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return f"text with a lone surrogate ({e.object[e.start:e.end]!a}) cannot be written as UTF-8"
    except RecursionError:
        return "the row is nested too deeply to be written"
    except ValueError as e:  # NaN / Infinity: strict JSON readers refuse them
        return f"the row cannot be written as strict JSON: {e}"
    return None


def _read_jsonl(path: Path, start: int, stop: int | None, expect_prefix=None) -> Iterator[Row]:
    k = 0
    hasher, consumed = hashlib.blake2b(digest_size=16), 0
    try:
        for number, line in _lines(path, hasher):
            consumed += len(line) + 1
            if not line.strip():
                continue
            if k == start - 1 and expect_prefix is not None and expect_prefix != (consumed, hasher.hexdigest()):
                raise InputChanged(f"{path} has changed since OUT was begun: its first {start} rows "
                                   f"({expect_prefix[0]:,} bytes) are not the ones processed; run with the "
                                   f"original input, or pass --overwrite to start afresh")
            if k >= start:
                if stop is not None and k >= stop:
                    return
                row = parse_line(number, line)
                row.prefix = (consumed, hasher.hexdigest())
                yield row
            k += 1
    except _Damage as d:
        raise InputDamaged(path, k, f"{d.cause} (after line {d.line})") from None


def _read_parquet(path: Path, start: int, stop: int | None) -> Iterator[Row]:
    pq = _require("pyarrow.parquet", "pyarrow")
    seen = 0
    source = pq.ParquetFile(path)
    # fields an asap Parquet OUT stored as JSON text (values of mixed types): read back as values
    raw = (source.schema_arrow.metadata or {}).get(b"asap_fast.json_fields")
    as_json = json.loads(raw) if raw else []
    for batch in source.iter_batches(batch_size=256):
        if seen + batch.num_rows <= start:  # skipped without converting its rows
            seen += batch.num_rows
            continue
        for offset, record in enumerate(batch.to_pylist()):
            k = seen + offset
            if k >= start and (stop is None or k < stop):
                try:
                    for name in as_json:
                        if isinstance(record.get(name), str):
                            record[name] = json.loads(record[name])
                except ValueError as e:
                    yield Row(k + 1, None, f"field stored as JSON text is not JSON: {e}", unit="row")
                    continue
                yield Row(k + 1, record, unit="row")
        seen += batch.num_rows
        if stop is not None and seen >= stop:
            return


def _read_datasets(path: Path, start: int, stop: int | None) -> Iterator[Row]:
    datasets = _require("datasets", "datasets")
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        raise InputError(f"{path} holds a DatasetDict with splits {sorted(data)}; pass one split's directory")
    end = len(data) if stop is None else min(stop, len(data))
    for k in range(start, end):  # memory-mapped Arrow: rows are read as indexed
        yield Row(k + 1, dict(data[k]), unit="row")


def count_rows(path: str | os.PathLike) -> int:
    """The input's row count as :func:`read_rows` counts rows: non-blank lines of JSON Lines
    (unreadable ones included: they are rows that become rejects), Parquet metadata, len() of a
    datasets directory. A damaged compressed file counts its rows up to the damage."""
    path = check_input(path)
    fmt = format_of(path)
    if fmt in ("jsonl", "jsonl.gz"):
        count = 0
        try:
            for _, line in _lines(path):
                count += bool(line.strip())
        except _Damage:
            pass
        return count
    if fmt == "parquet":
        return _require("pyarrow.parquet", "pyarrow").ParquetFile(path).metadata.num_rows
    return len(_require("datasets", "datasets").load_from_disk(str(path)))


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading or writing this format needs {package}: pip install {package}") from None


def rejects_path(out: str | os.PathLike) -> Path:
    """Where the rejects of OUT go: ``a.jsonl`` -> ``a.rejects.jsonl``; ``a.jsonl.gz`` ->
    ``a.jsonl.gz.rejects.jsonl`` and ``a.parquet`` -> ``a.parquet.rejects.jsonl`` (OUT's full name,
    so that OUTs differing only in format never share one); a datasets directory ``d`` ->
    ``d/rejects.jsonl``."""
    out = Path(out)
    fmt = format_of(out)
    if fmt == "datasets":
        return out / "rejects.jsonl"
    if fmt == "jsonl":
        return out.with_name(out.name[: -len(".jsonl")] + ".rejects.jsonl")
    return sidecar(out, "rejects.jsonl")


def sidecar(out: str | os.PathLike, name: str) -> Path:
    """``OUT.<name>`` beside OUT (progress.json, manifest.json, parts, llm-cache.jsonl)."""
    out = Path(out)
    return out.with_name(out.name + "." + name)
