"""The run engine: every corpus command reads rows, processes them in batches, and commits the
results durably in input order, so a stopped run resumes exactly where its last commit ended.

Layout of a run writing OUT:

    OUT                      processed rows, every input field kept plus the stage's fields
    OUT.rejects.jsonl        {"id", "stage", "error"} for each row that could not be processed
                             (``a.jsonl`` -> ``a.rejects.jsonl``; a datasets directory: OUT/rejects.jsonl)
    OUT.manifest.json        what determines OUT's bytes (see asap_fast.pipeline.manifest)
    OUT.progress.json        {"rows", "out", "rejects_bytes", ...}: what the last commit made durable
    OUT.parts/               (Parquet and datasets outputs) one Parquet part per commit
    OUT.lock                 the running process's lock on OUT (asap_fast.pipeline.claim)

One run per OUT at a time: a second run (or an ``asap merge`` reading a shard that is still being
written) stops at once naming the running one's pid. OUT and every side file may never be the
input, whatever the spelling, symlink or hard link. A side file that exists when a run starts OUT
afresh was not written by it and is refused like a foreign OUT.

A commit appends the buffered rows (JSONL: to OUT itself, a ``.gz`` output getting one gzip member
per commit, which concatenated make a valid gzip file; Parquet / datasets: as a new part), fsyncs,
then atomically replaces the progress file. On restart the outputs are cut back to the committed
state, which drops anything a kill tore mid-write, and the first ``rows`` input rows are skipped. A
commit that fails (a full disk) is cut back the same way before the error is raised. Ctrl-C (or
SIGTERM) commits every finished row and raises :class:`Interrupted`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.core.chat import unwrap_rendered_chat
from asap_fast.core.errors import RowError
from asap_fast.pipeline.claim import claim_output, lock_path, release, same_file
from asap_fast.pipeline.manifest import build_manifest, check_same, read_manifest
from asap_fast.pipeline.progress import Progress
from asap_fast.pipeline.records import (
    InputDamaged,
    Row,
    check_input,
    count_rows,
    format_of,
    read_rows,
    rejects_path,
    sidecar,
    unwritable_text,
)

__all__ = ["Interrupted", "OutputError", "RunOptions", "Summary", "check_resumable", "remove_run", "run_corpus"]


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: every finished row was committed; re-running the same command resumes."""

    def __init__(self, rows: int):
        self.rows = rows
        super().__init__(f"interrupted after {rows} rows; run the same command again to resume")


class OutputError(OSError):
    """OUT (or a file beside it) cannot be written; one line naming the path and the cause."""

    def __init__(self, path: Path, cause: OSError):
        self.path = path
        super().__init__(cause.errno, f"cannot write {path}: {cause.strerror or cause}")

    def __str__(self) -> str:
        return self.strerror


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed; none of these changes OUT's bytes, so they may differ on resume.

    batch:          readable rows per ``process`` call
    commit_seconds: make finished rows durable at most this often (and at the end)
    quiet:          no progress output
    overwrite:      start OUT afresh instead of resuming (or refusing a mismatch)
    """

    batch: int = 64
    commit_seconds: float = 2.0
    quiet: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not self.commit_seconds >= 0:
            raise ValueError(f"commit seconds must be >= 0, got {self.commit_seconds}")


@dataclass
class Summary:
    stage: str
    output: Path
    rows: int = 0  # rows handled by this invocation
    written: int = 0
    rejected: int = 0
    resumed_from: int = 0  # rows a previous run had already committed
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    tokens_before: int = 0  # of the rows written that carry stage-2 fields
    tokens_after: int = 0
    steps: int = 0
    steps_kept: int = 0
    prompts_unwrapped: int = 0  # rows written with SFT messages whose prompt held a rendered chat template

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed after {self.resumed_from}" if self.resumed_from else ""
        out = [f"asap {self.stage}: {self.rows} rows ({self.written} written, {self.rejected} rejected) "
               f"in {self.seconds:.2f}s, {rate:.2f} rows/s{resumed}"]
        out += [f"  rejected {count}: {reason}" for reason, count in self.reasons.most_common()]
        if self.tokens_before:
            ratio = self.tokens_after / self.tokens_before
            steps = f"steps kept {self.steps_kept:,} of {self.steps:,}; " if self.steps else ""
            out.append(f"  trace tokens {self.tokens_before:,} -> {self.tokens_after:,} (x{ratio:.3f}), {steps}"
                       f"{self.tokens_before / max(self.seconds, 1e-9):,.0f} trace tokens/s")
        if self.prompts_unwrapped:
            out.append(f"  prompts holding a rendered chat template: {self.prompts_unwrapped:,} "
                       "(the user's content was used, without the template's tags)")
        out.append(f"  wrote {self.output} and {rejects_path(self.output)}")
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_truncated(path: Path, size: int):
    """OUT-side files are unbuffered, so a failed write leaves nothing in a buffer that a later
    seek or close would try (and fail) to flush, and a rollback is one ftruncate."""
    f = open(path, "a+b", buffering=0)  # noqa: SIM115 - kept open for the whole run
    os.ftruncate(f.fileno(), size)  # drops a tail a stopped run wrote after its last commit
    return f


def _append(f, data: bytes) -> None:
    """Append all of ``data`` (a raw write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


class _JsonlSink:
    """OUT as one JSON Lines file (gzip: one member per commit). Its state is the committed size;
    ``write`` appends and fsyncs a batch, ``confirm`` makes it committed once the progress file
    says so, ``rollback`` cuts an unconfirmed batch off."""

    def __init__(self, path: Path, committed: int):
        self.path, self.gzip = path, path.name.endswith(".gz")
        self.committed = committed
        self.file = _open_truncated(path, committed)

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def write(self, lines: list[bytes]) -> int:
        if lines:
            data = b"".join(lines)
            _append(self.file, gzip.compress(data, mtime=0) if self.gzip else data)
        os.fsync(self.file.fileno())
        return os.fstat(self.file.fileno()).st_size

    def confirm(self, state: int) -> None:
        self.committed = state

    def rollback(self) -> None:
        os.ftruncate(self.file.fileno(), self.committed)

    def finish(self) -> None:
        self.file.close()

    def state(self) -> int:
        return self.committed


class _PartsSink:
    """OUT as Parquet or a datasets directory: each commit is a Parquet part in OUT.parts/, and the
    finished run combines the parts into OUT. Its state is the number of committed parts."""

    def __init__(self, path: Path, fmt: str, committed: int):
        self.path, self.fmt, self.parts = path, fmt, committed
        self.dir = sidecar(path, "parts")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rollback()

    def rollback(self) -> None:
        for part in self.dir.glob("part-*.parquet*"):  # written after the last commit: torn or unrecorded
            if not part.name.endswith(".parquet") or int(part.stem.split("-")[1]) >= self.parts:
                part.unlink()

    def exists(self) -> bool:
        if self.fmt == "parquet":
            return self.path.exists()
        return self.path.is_dir() and any(p.name != "rejects.jsonl" for p in self.path.iterdir())

    def write(self, lines: list[bytes]) -> int:
        if not lines:
            return self.parts
        table = _rows_table([json.loads(line) for line in lines])
        _, pq = _pyarrow()
        part = self.dir / f"part-{self.parts:06d}.parquet"
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(table, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, part)
        _fsync_dir(self.dir)
        return self.parts + 1

    def confirm(self, state: int) -> None:
        self.parts = state

    def state(self) -> int:
        return self.parts

    def finish(self) -> None:
        pa, pq = _pyarrow()
        parts = [self.dir / f"part-{k:06d}.parquet" for k in range(self.parts)]
        schemas = [pq.read_schema(p) for p in parts]
        # Fields stored as JSON text in any part, or whose types no promotion unifies (a prompt
        # that is text in one part and chat messages in another), are JSON text in every part.
        as_json = set().union(*(json_fields(s) for s in schemas)) | _conflicting_fields(schemas)
        schemas = [_json_schema(s, as_json) for s in schemas]
        # A field that is null throughout one part and a string in another is widened to the
        # unified schema, not an error; parts are copied one at a time, so memory holds one part.
        schema = pa.unify_schemas(schemas, promote_options="permissive") if parts else pa.schema([])
        if as_json:
            schema = schema.with_metadata({JSON_FIELDS_KEY: json.dumps(sorted(as_json))})
        combined = self.path.with_name(self.path.name + ".tmp.parquet")
        with pq.ParquetWriter(combined, schema) as writer:
            for part in parts:
                table = _json_columns(pq.read_table(part), as_json)
                table = pa.concat_tables([schema.empty_table(), table.replace_schema_metadata(schema.metadata)],
                                         promote_options="permissive")
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


JSON_FIELDS_KEY = b"asap_fast.json_fields"


def json_fields(schema) -> set[str]:
    """The fields a Parquet OUT stores as JSON text (its metadata key ``asap_fast.json_fields``)."""
    raw = (schema.metadata or {}).get(JSON_FIELDS_KEY)
    return set(json.loads(raw)) if raw else set()


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__  # str, list, dict


def _rows_table(records: list[dict]):
    """An Arrow table of ``records``. A field whose values are of more than one JSON type (text in
    one row, chat messages in another), or that Arrow cannot hold as one type, is stored as JSON
    text (``json.dumps`` of each value) and named in the table's metadata."""
    pa, _ = _pyarrow()
    # Every field of every row, in order of first appearance (Table.from_pylist would take the
    # first row's fields only and drop the others': a field only math rows have, say).
    kinds: dict[str, set] = {}
    for record in records:
        for key, value in record.items():
            kinds.setdefault(key, set()).add(_kind(value))
    columns, mixed = {}, set()
    for key, seen in kinds.items():
        values = [r.get(key) for r in records]
        if len(seen - {None}) <= 1:
            try:
                columns[key] = pa.array(values)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                pass  # e.g. dicts with differently typed values, integers past 64 bits
        mixed.add(key)
        columns[key] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
    table = pa.Table.from_pydict(columns)
    return table.replace_schema_metadata({JSON_FIELDS_KEY: json.dumps(sorted(mixed))}) if mixed else table


def _conflicting_fields(schemas) -> set[str]:
    pa, _ = _pyarrow()
    conflicting: set[str] = set()
    names = {name for s in schemas for name in s.names}
    for name in names:
        types = [s.field(name).type for s in schemas if name in s.names]
        try:
            pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            conflicting.add(name)
    return conflicting


def _json_schema(schema, as_json: set[str]):
    pa, _ = _pyarrow()
    fields = [pa.field(f.name, pa.string()) if f.name in as_json else f for f in schema]
    return pa.schema(fields)


def _json_columns(table, as_json: set[str]):
    """``table`` with every field of ``as_json`` as JSON text (those it already stores so, kept)."""
    pa, _ = _pyarrow()
    done = json_fields(table.schema)
    for name in as_json - done:
        if name in table.column_names:
            values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in table.column(name).to_pylist()]
            table = table.set_column(table.column_names.index(name), pa.field(name, pa.string()),
                                     pa.array(values, pa.string()))
    return table


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing .parquet or datasets output needs pyarrow: pip install pyarrow") from None
    return pa, pq


def run_files(output: str | os.PathLike) -> list[Path]:
    """Every file a run writing ``output`` may create (OUT first), its lock aside."""
    out = Path(output)
    return [out, rejects_path(out), sidecar(out, "progress.json"), sidecar(out, "manifest.json"),
            sidecar(out, "parts")]


def refuse_foreign_side_files(output: str | os.PathLike) -> None:
    """For a fresh OUT (no progress file): rejects or parts already there are somebody else's
    (another OUT's, the user's) and would be overwritten. (A manifest is rewritten: it holds no rows.)"""
    out = Path(output)
    for path in (rejects_path(out), sidecar(out, "parts")):
        if path.exists() and not (path.is_file() and path.stat().st_size == 0):
            raise ValueError(f"{path} exists but was not written by a run of {out}; "
                             f"remove it, choose another OUT or pass --overwrite")


def claim_run(input: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse an OUT that is the input (or a side file that is), then take OUT's lock for this
    process; both before anything is written, removed or loaded."""
    for path in [*run_files(output), lock_path(output)]:
        if Path(input).exists() and same_file(input, path):
            raise ValueError(f"{path} would overwrite the input {input} (the same file): choose another OUT")
    out = Path(output)
    if out.exists() and not (out.is_file() or out.is_dir()):
        raise ValueError(f"OUT {out} is not a regular file or directory")
    try:
        claim_output(output)
    except OSError as e:  # OUT's folder cannot be written (read-only, no permission)
        raise OutputError(Path(e.filename) if e.filename and not str(e.filename).endswith(".lock") else out, e) from None


def remove_run(output: str | os.PathLike) -> None:
    """Delete what a run writing ``output`` left (``--overwrite``)."""
    for path in run_files(output):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


class CorpusWriter:
    """Appends output and reject lines and commits them durably (see the module docstring)."""

    def __init__(self, output: str | os.PathLike, *, stage: str, manifest: dict | None = None,
                 meta: dict | None = None, overwrite: bool = False):
        """``manifest``: what determines OUT's bytes; a resumed run must have an equal one.
        ``meta``: extra keys kept in the progress file (a shard's slice, see asap_fast.pipeline.shards)."""
        self.stage = stage
        self.meta = dict(meta or {})
        self.out_path = Path(output)
        fmt = format_of(self.out_path)
        self.rejects_path = rejects_path(self.out_path)
        self.progress_path = sidecar(self.out_path, "progress.json")
        self.manifest_path = sidecar(self.out_path, "manifest.json")
        try:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(self.out_path.parent, e) from None
        if overwrite:
            try:
                remove_run(self.out_path)
            except OSError as e:
                raise OutputError(self.out_path, e) from None
        elif not self.progress_path.exists():
            refuse_foreign_side_files(self.out_path)

        self.rows, out_state, rejects_bytes = 0, 0, 0
        # (bytes, BLAKE2b) of the input up to the last committed row: a resume re-hashes that prefix
        self.input_prefix: tuple[int, str] | None = None
        self._pending_prefix: tuple[int, str] | None = None
        resumed = self.progress_path.exists()
        if resumed:
            recorded = read_manifest(self.manifest_path)
            if recorded is None:
                raise ValueError(f"{self.out_path} has no {self.manifest_path.name} (written by an older asap); "
                                 f"pass --overwrite to start it afresh")
            if manifest is not None:
                check_same(recorded, manifest, self.out_path)
            progress = json.loads(self.progress_path.read_text(encoding="utf-8"))
            self.rows, out_state, rejects_bytes = progress["rows"], progress["out"], progress["rejects_bytes"]
            if progress.get("input_prefix"):
                self.input_prefix = tuple(progress["input_prefix"])
        try:
            if fmt in ("jsonl", "jsonl.gz"):
                if not resumed and self.out_path.exists() and self.out_path.stat().st_size > 0:
                    raise self._foreign()
                self._sink = _JsonlSink(self.out_path, out_state)
            else:
                self._sink = _PartsSink(self.out_path, fmt, out_state)
                if not resumed and self._sink.exists():
                    raise self._foreign()
            if not resumed:
                self._write_json(self.manifest_path, manifest or {})
            # The progress file exists before any output does, so a kill during the first commit
            # still leaves OUT recognisable as ours (and truncated back to empty on resume).
            self._write_progress(out_state, rejects_bytes)
            self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
            self._rejects = _open_truncated(self.rejects_path, rejects_bytes)
        except OSError as e:
            raise OutputError(Path(e.filename) if e.filename else self.out_path, e) from None
        self._rejects_committed = rejects_bytes
        self._out_lines: list[bytes] = []
        self._reject_lines: list[bytes] = []
        self._pending_rows = 0

    def _foreign(self) -> ValueError:
        return ValueError(f"{self.out_path} exists but was not written by a resumable asap run "
                          f"(no {self.progress_path.name}); remove it, choose another OUT or pass --overwrite")

    def write(self, row: Row, record: dict) -> bool:
        """Buffer one output row; a record that cannot be written as UTF-8 becomes a reject.
        Returns whether it was written."""
        try:
            line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        except (UnicodeEncodeError, ValueError, RecursionError):  # strict UTF-8 JSON or a reject
            self.reject(row, unwritable_text(record) or "row cannot be written as UTF-8 JSON")
            return False
        self._out_lines.append(line)
        self._pending_rows += 1
        self._pending_prefix = row.prefix
        return True

    def reject(self, row: Row, error: str, stage: str | None = None) -> None:
        entry = {"id": row.id, "stage": stage or self.stage, "error": " ".join(str(error).split())}
        try:
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # an id with a lone surrogate: escaped, so the line is valid UTF-8
            line = (json.dumps(entry, ensure_ascii=True) + "\n").encode("ascii")
        self._reject_lines.append(line)
        self._pending_rows += 1
        self._pending_prefix = row.prefix

    def commit(self) -> None:
        """Append the buffered rows to OUT and the rejects (fsynced), then replace the progress file:
        that replace is the commit point. An error or interrupt before it cuts both files back to
        the last commit and keeps the rows buffered; one after it keeps the commit."""
        if not self._pending_rows:
            return
        self._progress_replaced = False
        try:
            out_state = self._sink.write(self._out_lines)
            if self._reject_lines:
                _append(self._rejects, b"".join(self._reject_lines))
            os.fsync(self._rejects.fileno())
            rejects_state = os.fstat(self._rejects.fileno()).st_size
            self._write_progress(out_state, rejects_state, rows=self.rows + self._pending_rows)
        except BaseException as e:  # a full disk, or Ctrl-C / SIGTERM mid-commit
            if self._progress_replaced:  # only the directory fsync was left: the commit stands
                self._committed(out_state, rejects_state)
                raise
            self._rollback()
            if isinstance(e, OSError):
                raise OutputError(Path(e.filename) if e.filename else self.out_path, e) from None
            raise
        self._committed(out_state, rejects_state)

    def _committed(self, out_state: int, rejects_state: int) -> None:
        self._sink.confirm(out_state)
        self._rejects_committed = rejects_state
        self._out_lines.clear()
        self._reject_lines.clear()
        self.rows += self._pending_rows
        self._pending_rows = 0
        self.input_prefix = self._pending_prefix

    def _rollback(self) -> None:
        """Cut OUT and the rejects back to the last commit (best effort: the next run truncates to
        the progress file's sizes anyway)."""
        for undo in (self._sink.rollback, lambda: os.ftruncate(self._rejects.fileno(), self._rejects_committed)):
            try:
                undo()
            except OSError:
                pass

    def _write_progress(self, out_state: int, rejects_bytes: int, *, rows: int | None = None, **extra) -> None:
        prefix = self.input_prefix if rows is None else self._pending_prefix
        self._write_json(self.progress_path, {"rows": self.rows if rows is None else rows, "out": out_state,
                                              "rejects_bytes": rejects_bytes, **self.meta,
                                              **({"input_prefix": list(prefix)} if prefix else {}), **extra})

    def _write_json(self, path: Path, data: dict) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._progress_replaced = path == self.progress_path
        _fsync_dir(path.parent)

    def close(self, *, finished: bool) -> None:
        """Commit what is pending; a finished run also assembles Parquet / datasets output and
        marks the progress file finished (what `asap merge` checks)."""
        try:
            self.commit()
        finally:
            rejects_bytes = self._rejects_committed
            self._rejects.close()
            if not finished and isinstance(self._sink, _JsonlSink):
                self._sink.file.close()
        if finished:
            try:
                self._sink.finish()
                self._write_progress(self._sink.state() if isinstance(self._sink, _PartsSink)
                                     else self.out_path.stat().st_size, rejects_bytes, finished=True)
            except OSError as e:
                raise OutputError(Path(e.filename) if e.filename else self.out_path, e) from None


BatchFn = Callable[[list[dict]], "Iterable[dict | RowError]"]
_MISSING = object()


class SigtermAsInterrupt:
    """SIGTERM (a scheduler's stop, `kill`) handled like Ctrl-C while a run is in progress."""

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread (e.g. a test runner's worker): leave it
            self.previous = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def check_resumable(input, output, *, stage: str, manifest_options: dict, shard=None,
                    overwrite: bool = False) -> int | None:
    """Raise ManifestMismatch now, before a model or an LLM backend loads, when OUT was begun by a
    run with another input or other options (run_corpus checks again; this only answers sooner).
    Returns the number of rows when OUT is a finished run of this very input and these options
    (nothing is left to do, so no model needs to load), else None."""
    claim_run(input, output)
    progress_file = sidecar(output, "progress.json")
    if overwrite:
        return None
    if not progress_file.exists():
        refuse_foreign_side_files(output)  # now, not after a model has loaded
        return None
    recorded = read_manifest(sidecar(output, "manifest.json"))
    if recorded is None:
        return None
    check_same(recorded, build_manifest(stage, check_input(input), manifest_options, shard), Path(output))
    try:
        progress = json.loads(progress_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return progress["rows"] if progress.get("finished") else None



def run_corpus(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    stage: str,
    process: BatchFn,
    options: RunOptions = RunOptions(),
    manifest_options: dict | None = None,
    required: Sequence[str] = ("generation",),
    rows: tuple[int, int] | None = None,
    shard: tuple[int, int] | None = None,
    meta: dict | None = None,
) -> Summary:
    """Run ``process`` over the rows of ``input`` not yet committed to ``output``.

    ``process`` receives a list of readable records that have every ``required`` field and returns,
    in the same order, the output record (a dict: the input fields plus the stage's) or a RowError
    for each. Unreadable lines and rows missing a required field become rejects without reaching
    ``process``. ``manifest_options`` are the options that determine the output's bytes (see
    asap_fast.pipeline.manifest); ``rows`` restricts the run to the input rows [start, stop) of a
    shard, whose progress file also records ``meta``.

    Raises Interrupted (after committing every finished row) on Ctrl-C / SIGTERM, OutputError when
    OUT cannot be written, InputDamaged after committing the rows before damage in the input.
    """
    input = check_input(input)  # before OUT is created
    claim_run(input, output)
    try:
        return _run_claimed(input, output, stage=stage, process=process, options=options,
                            manifest_options=manifest_options, required=required, rows=rows, shard=shard, meta=meta)
    finally:
        release(output)


def _run_claimed(input: Path, output, *, stage, process, options, manifest_options, required, rows, shard,
                 meta) -> Summary:
    manifest = build_manifest(stage, input, manifest_options or {}, shard)
    summary = Summary(stage=stage, output=Path(output))
    start = time.perf_counter()
    writer = CorpusWriter(output, stage=stage, manifest=manifest, meta=meta, overwrite=options.overwrite)
    summary.resumed_from = writer.rows
    start_row, stop_row = rows if rows is not None else (0, None)
    if start_row < 0 or (stop_row is not None and stop_row < start_row):
        raise ValueError(f"bad row range {rows}")
    todo = None if stop_row is None else stop_row - start_row
    progress = Progress(stage, quiet=options.quiet, done=writer.rows, total=todo,
                        count_total=lambda: count_rows(input))
    last_commit = time.monotonic()

    def commit_when_due() -> None:  # between rows, so a slow stage's finished rows are kept too
        nonlocal last_commit
        if time.monotonic() - last_commit >= options.commit_seconds:
            writer.commit()
            last_commit = time.monotonic()

    damage: InputDamaged | None = None
    try:
        with SigtermAsInterrupt():
            batch: list[Row] = []  # every row in input order; unreadable ones carry their error
            rows_read = read_rows(input, start_row + writer.rows, stop_row,
                                  expect_prefix=writer.input_prefix if writer.rows else None)
            while True:
                try:
                    row = next(rows_read)
                except StopIteration:
                    break
                except InputDamaged as e:  # the complete rows before the damage are still processed
                    damage = e
                    break
                if row.error is None:
                    missing = [name for name in required if name not in row.record]
                    if missing:
                        row.error = f"missing field '{missing[0]}'"
                batch.append(row)
                if sum(r.error is None for r in batch) >= options.batch:
                    _handle(batch, process, writer, summary, progress, commit_when_due)
                    batch = []
            _handle(batch, process, writer, summary, progress, commit_when_due)
    except KeyboardInterrupt:
        progress.close()
        writer.close(finished=False)
        raise Interrupted(writer.rows) from None
    except BaseException:
        progress.close()
        try:
            writer.close(finished=False)
        except OSError:
            pass  # the original error says more
        raise
    progress.close()
    writer.close(finished=damage is None)
    if damage is not None:
        raise InputDamaged(damage.path, start_row + writer.rows, damage.cause)
    summary.seconds = time.perf_counter() - start
    return summary


def reason_kind(reason: str) -> str:
    """A reject reason without its particulars (what follows a colon; numbers), for counting."""
    return re.sub(r"(?<![\w-])\d[\d,.]*", "N", reason.split(":")[0]).strip()


def _handle(batch: list[Row], process: BatchFn, writer: CorpusWriter, summary: Summary, progress: Progress,
            commit_when_due: Callable[[], None]) -> None:
    """Write the results of one batch in input order. ``process`` may return a list or yield its
    results one by one as rows finish: then each row is written, shown and (every commit interval)
    committed as soon as it is done, so a slow stage (SPIRIT: K + 1 passes per row) keeps its work."""
    readable = [row for row in batch if row.error is None]
    results = iter(process([row.record for row in readable]) if readable else ())
    handled = 0
    for row in batch:
        if row.error is not None:
            result = RowError(row.error)
        else:
            result = next(results, _MISSING)
            if result is _MISSING:
                raise RuntimeError(f"stage {summary.stage!r} returned {handled} results for {len(readable)} rows")
            handled += 1
        before = after = 0
        summary.rows += 1
        if not isinstance(result, RowError) and writer.write(row, result):
            summary.written += 1
            if isinstance(result.get("tokens_before"), int) and isinstance(result.get("tokens_after"), int):
                before, after = result["tokens_before"], result["tokens_after"]
                # step scores: stage 2's surprisal, or a step method's own (asap compress --method)
                summary.steps += len(result.get("step_surprisal") or result.get("step_importance") or ())
                summary.steps_kept += len(result.get("kept_steps") or ())
            if "messages" in result and unwrap_rendered_chat(row.record.get("prompt")) is not None:
                summary.prompts_unwrapped += 1
        else:
            if isinstance(result, RowError):
                writer.reject(row, str(result), result.stage)
                reason = str(result)
            else:
                reason = unwritable_text(result) or "row cannot be written as UTF-8"
            summary.rejected += 1
            summary.reasons[reason_kind(reason)] += 1
        summary.tokens_before += before
        summary.tokens_after += after
        progress.update(1, before, after)
        commit_when_due()
    if next(results, _MISSING) is not _MISSING:
        raise RuntimeError(f"stage {summary.stage!r} returned more results than the {len(readable)} rows it was given")
