"""Resumable corpus runs: rows stream in, are processed in batches, and are committed durably in
input order, so a killed run resumes exactly where its last commit ended.

Layout of a run writing OUT:

    OUT                      processed rows, every input field kept plus the stage's fields
    OUT.rejects.jsonl        {"id", "stage", "error"} for each row that could not be processed
                             (``a.jsonl`` -> ``a.rejects.jsonl``; a datasets directory: OUT/rejects.jsonl)
    OUT.progress.json        {"rows", "out", "rejects_bytes"}: what the last commit made durable
    OUT.parts/               (Parquet and datasets outputs) one Parquet part per commit

A commit appends the buffered rows (JSONL: to OUT itself, a ``.gz`` output getting one gzip member
per commit, which concatenated make a valid gzip file; Parquet / datasets: as a new part), fsyncs,
then atomically replaces the progress file. On restart the outputs are cut back to the committed
state, which drops anything a kill tore mid-write, and the first ``rows`` input rows are skipped.
A run that reaches the end of its input assembles Parquet / datasets output from the parts. Rows are committed in input
order, so an interrupted and resumed run writes exactly what an uninterrupted one would: nothing
lost, nothing twice.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.pipeline.records import Row, check_input, format_of, read_rows, rejects_path


class RowError(Exception):
    """Raised (or returned) by a stage for one row it cannot process; the message is one line.
    ``stage`` (optional) names the stage in the reject when it is not the run's own (``asap compress``)."""

    stage: str | None = None


@dataclass
class Summary:
    stage: str
    rows: int = 0  # rows handled by this invocation
    written: int = 0
    rejected: int = 0
    resumed_from: int = 0  # rows a previous run had already committed
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed after {self.resumed_from}" if self.resumed_from else ""
        return (f"asap {self.stage}: {self.rows} rows ({self.written} written, {self.rejected} rejected) "
                f"in {self.seconds:.2f}s, {rate:.1f} rows/s{resumed}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _JsonlSink:
    """OUT as one JSON Lines file (gzip: one member per commit); its state is the committed size."""

    def __init__(self, path: Path, committed: int):
        self.path, self.gzip = path, path.name.endswith(".gz")
        self.file = _open_truncated(path, committed)

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def commit(self, records: list[dict]) -> int:
        if records:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
            self.file.write(gzip.compress(data, mtime=0) if self.gzip else data)
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def finish(self) -> None:
        self.file.close()


class _PartsSink:
    """OUT as Parquet or a datasets directory: each commit is a Parquet part in OUT.parts/, and the
    finished run combines the parts into OUT. Its state is the number of committed parts."""

    def __init__(self, path: Path, fmt: str, committed: int):
        self.path, self.fmt, self.parts = path, fmt, committed
        self.dir = path.with_name(path.name + ".parts")
        self.dir.mkdir(parents=True, exist_ok=True)
        for part in self.dir.glob("part-*.parquet*"):  # written after the last commit: torn or unrecorded
            if not part.name.endswith(".parquet") or int(part.stem.split("-")[1]) >= committed:
                part.unlink()

    def exists(self) -> bool:
        if self.fmt == "parquet":
            return self.path.exists()
        return self.path.is_dir() and any(p.name != "rejects.jsonl" for p in self.path.iterdir())

    def commit(self, records: list[dict]) -> int:
        if records:
            pa, pq = _pyarrow()
            table = pa.Table.from_pylist(records)
            part = self.dir / f"part-{self.parts:06d}.parquet"
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(table, tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, part)
            _fsync_dir(self.dir)
            self.parts += 1
        return self.parts

    def finish(self) -> None:
        pa, pq = _pyarrow()
        parts = [self.dir / f"part-{k:06d}.parquet" for k in range(self.parts)]
        # A field that is null throughout one part and a string in another is widened to the
        # unified schema, not an error; parts are copied one at a time, so memory holds one part.
        schema = (pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
                  if parts else pa.schema([]))
        combined = self.path.with_name(self.path.name + ".tmp.parquet")
        with pq.ParquetWriter(combined, schema) as writer:
            for part in parts:
                table = pa.concat_tables([schema.empty_table(), pq.read_table(part)], promote_options="permissive")
                writer.write_table(table.select(schema.names).cast(schema))
        if self.fmt == "parquet":
            os.replace(combined, self.path)
            return
        import datasets

        staging = self.path.with_name(self.path.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        # from_parquet streams into a memory-mapped Arrow cache; save_to_disk copies it in shards.
        datasets.Dataset.from_parquet(str(combined)).save_to_disk(str(staging))
        combined.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.iterdir():  # a previous finish of this run (the input has grown since)
            if old.name != "rejects.jsonl":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for new in staging.iterdir():
            os.replace(new, self.path / new.name)
        staging.rmdir()


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing .parquet or datasets output needs pyarrow: pip install pyarrow") from None
    return pa, pq


def _open_truncated(path: Path, size: int):
    f = path.open("a+b")
    f.truncate(size)  # drops a tail a killed run wrote after its last commit
    f.seek(size)
    return f


class CorpusWriter:
    """Appends output and reject lines and commits them durably (see the module docstring)."""

    def __init__(self, output: str | os.PathLike, *, stage: str, meta: dict | None = None):
        """``meta``: extra keys kept in the progress file (a shard's slice: see asap_fast.scale); a
        resumed run must name the same ``shard`` and ``input_rows`` as the run that began OUT."""
        self.stage = stage
        self.meta = dict(meta or {})
        self.out_path = Path(output)
        fmt = format_of(self.out_path)
        self.rejects_path = rejects_path(self.out_path)
        self.progress_path = self.out_path.with_name(self.out_path.name + ".progress.json")
        self.out_path.parent.mkdir(parents=True, exist_ok=True)

        self.rows, out_state, rejects_bytes = 0, 0, 0
        resumed = self.progress_path.exists()
        if resumed:
            progress = json.loads(self.progress_path.read_text(encoding="utf-8"))
            self.rows, out_state, rejects_bytes = progress["rows"], progress["out"], progress["rejects_bytes"]
            for key in ("shard", "input_rows"):
                if progress.get(key) != self.meta.get(key):
                    raise ValueError(f"{self.out_path} was begun with {key} {_show(progress.get(key))}, not "
                                     f"{_show(self.meta.get(key))}; resume it with the same options or choose another OUT")
        if fmt in ("jsonl", "jsonl.gz"):
            if not resumed and self.out_path.exists() and self.out_path.stat().st_size > 0:
                raise self._foreign()
            self._sink = _JsonlSink(self.out_path, out_state)
        else:
            self._sink = _PartsSink(self.out_path, fmt, out_state)
            if not resumed and self._sink.exists():
                raise self._foreign()
        # The progress file exists before any output does, so a kill during the first commit
        # still leaves OUT recognisable as ours (and truncated back to empty on resume).
        self._write_progress(out_state, rejects_bytes)
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        self._rejects = _open_truncated(self.rejects_path, rejects_bytes)
        self._out_records: list[dict] = []
        self._reject_lines: list[str] = []
        self._pending_rows = 0

    def _foreign(self) -> ValueError:
        return ValueError(f"{self.out_path} exists but was not written by a resumable asap run "
                          f"(no {self.progress_path.name}); remove it or choose another OUT")

    def write(self, record: dict) -> None:
        self._out_records.append(record)
        self._pending_rows += 1

    def reject(self, row: Row, error: str, stage: str | None = None) -> None:
        entry = {"id": row.id, "stage": stage or self.stage, "error": " ".join(str(error).split())}
        self._reject_lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        self._pending_rows += 1

    def commit(self) -> None:
        if not self._pending_rows:
            return
        out_state = self._sink.commit(self._out_records)
        if self._reject_lines:
            self._rejects.write("".join(self._reject_lines).encode("utf-8"))
        self._rejects.flush()
        os.fsync(self._rejects.fileno())
        self._out_records.clear()
        self._reject_lines.clear()
        self.rows += self._pending_rows
        self._pending_rows = 0
        self._write_progress(out_state, self._rejects.tell())

    def _write_progress(self, out_state: int, rejects_bytes: int, **extra) -> None:
        progress = {"rows": self.rows, "out": out_state, "rejects_bytes": rejects_bytes, **self.meta, **extra}
        tmp = self.progress_path.with_name(self.progress_path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(progress, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.progress_path)
        _fsync_dir(self.progress_path.parent)

    def close(self, *, finished: bool) -> None:
        """Commit what is pending; a finished run also assembles Parquet / datasets output."""
        self.commit()
        rejects_bytes = self._rejects.tell()
        self._rejects.close()
        if finished:
            self._sink.finish()
            if self.meta:  # a shard: say that OUT is assembled (what `asap merge` checks)
                out_state = self._sink.parts if isinstance(self._sink, _PartsSink) else self.out_path.stat().st_size
                self._write_progress(out_state, rejects_bytes, finished=True)
        elif isinstance(self._sink, _JsonlSink):
            self._sink.file.close()


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}/{value[1]}"
    return str(value)


class ProgressReporter:
    """Rows/s, the rates of any cumulative counters (e.g. tokens/s) and, when the number of rows to
    do is known, the ETA, on stderr: one rewritten line on a terminal, a line every 30 s otherwise."""

    def __init__(self, stage: str, *, quiet: bool, total: int | None = None):
        self.stage, self.quiet, self.total = stage, quiet, total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, rows: int, **counters: float) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        elapsed = now - self.start
        parts = [f"{rows} rows" + (f"/{self.total}" if self.total is not None else ""), f"{rows / elapsed:.1f} rows/s"]
        parts += [f"{v / elapsed:,.0f} {k}/s" for k, v in counters.items()]
        if self.total is not None and rows:
            parts.append(f"ETA {max(0.0, (self.total - rows) * elapsed / rows):.0f}s")
        print(("\r" if self.tty else "") + f"asap {self.stage}: " + ", ".join(parts), end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet and self.last != self.start:
            print(file=sys.stderr)


BatchFn = Callable[[list[Row]], Sequence["dict | RowError"]]


def run_corpus(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    stage: str,
    process: BatchFn,
    batch_size: int = 64,
    commit_seconds: float = 2.0,
    quiet: bool = False,
    required: Sequence[str] = ("generation",),
    rows: tuple[int, int] | None = None,
    meta: dict | None = None,
    total_rows: int | None = None,
    counters: Callable[[], dict] | None = None,
) -> Summary:
    """Run ``process`` over the rows of ``input`` not yet committed to ``output``.

    ``process`` receives a batch of readable rows that have every ``required`` field and returns,
    in the same order, the output record (a dict: the input fields plus the stage's) or a
    RowError for each. Malformed lines and rows missing a required field become rejects without
    reaching ``process``. Commits happen at most every ``commit_seconds`` and at the end.
    ``total_rows`` (the input's row count, when the caller knows it) gives the progress line an
    ETA; ``counters()`` returns cumulative counts (e.g. ``{"tokens": n}``) shown as rates.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_input(input)  # before OUT is created
    summary = Summary(stage=stage)
    start = time.perf_counter()
    writer = CorpusWriter(output, stage=stage, meta=meta)
    summary.resumed_from = writer.rows
    start_row, stop_row = rows if rows is not None else (0, None)
    if start_row < 0 or (stop_row is not None and stop_row < start_row):
        raise ValueError(f"bad row range {rows}")
    rows = read_rows_range(input, start_row + writer.rows, stop_row)
    if stop_row is not None:  # a slice: its own length is the total
        total_rows = stop_row - start_row
    elif total_rows is not None:
        total_rows -= start_row
    todo = None if total_rows is None else max(0, total_rows - writer.rows)
    reporter = ProgressReporter(stage, quiet=quiet, total=todo)
    last_commit = time.monotonic()
    finished = False
    try:
        batch: list[Row] = []  # every row in input order; unreadable ones carry their error
        for row in rows:
            if row.error is None:
                missing = [name for name in required if name not in row.record]
                if missing:
                    row.error = f"missing field '{missing[0]}'"
            batch.append(row)
            if sum(r.error is None for r in batch) >= batch_size:
                _handle(batch, process, writer, summary)
                batch = []
                reporter.update(summary.rows, **(counters() if counters else {}))
                if time.monotonic() - last_commit >= commit_seconds:
                    writer.commit()
                    last_commit = time.monotonic()
        _handle(batch, process, writer, summary)
        finished = True
    finally:
        writer.close(finished=finished)
        reporter.close()
    summary.seconds = time.perf_counter() - start
    return summary


def read_rows_range(input: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[Row]:
    """The rows ``start <= k < stop`` of ``read_rows(input)``, the same Row objects (line numbers
    included), without parsing the rows before ``start``: JSON Lines skips raw lines, Parquet
    skips whole record batches, datasets indexes."""
    path = check_input(input)
    fmt = format_of(path)
    if stop is not None and stop <= start:
        return
    if fmt in ("jsonl", "jsonl.gz"):
        yield from _jsonl_range(path, start, stop)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        seen = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            if seen + batch.num_rows <= start:
                seen += batch.num_rows
                continue
            for offset, record in enumerate(batch.to_pylist()):
                k = seen + offset
                if k >= start and (stop is None or k < stop):
                    yield Row(k + 1, record, unit="row")
            seen += batch.num_rows
            if stop is not None and seen >= stop:
                return
    else:
        rows = read_rows(path)
        if start:
            import datasets

            data = datasets.load_from_disk(str(path))
            end = len(data) if stop is None else min(stop, len(data))
            for k in range(start, end):
                yield Row(k + 1, dict(data[k]), unit="row")
            return
        for k, row in enumerate(rows):
            if stop is not None and k >= stop:
                return
            yield row


def _jsonl_range(path: Path, start: int, stop: int | None) -> Iterator[Row]:
    from asap_fast.pipeline.records import open_text

    k = 0
    with open_text(path, "r") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if k >= start:
                if stop is not None and k >= stop:
                    return
                # exactly records.read_jsonl's row for this line
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Row(number, None, f"malformed JSON: {e.msg} at column {e.colno}")
                else:
                    if isinstance(record, dict):
                        yield Row(number, record)
                    else:
                        yield Row(number, None, f"a row must be a JSON object, got {type(record).__name__}")
            k += 1


def _handle(batch: list[Row], process: BatchFn, writer: CorpusWriter, summary: Summary) -> None:
    readable = [row for row in batch if row.error is None]
    results = list(process(readable)) if readable else []
    if len(results) != len(readable):
        raise RuntimeError(f"stage {summary.stage!r} returned {len(results)} results for {len(readable)} rows")
    results = iter(results)
    for row in batch:
        result = RowError(row.error) if row.error is not None else next(results)
        summary.rows += 1
        if isinstance(result, RowError):
            writer.reject(row, str(result), getattr(result, "stage", None))
            summary.rejected += 1
            summary.reasons[str(result).split(":")[0]] += 1
        else:
            writer.write(result)
            summary.written += 1
