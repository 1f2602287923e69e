"""Deterministic shards of a corpus run and their merge.

Shards (``--shard i/n`` on ``asap fine`` and ``asap compress``)
    Shard ``i`` of ``n`` processes the contiguous input rows ``[i*N//n, (i+1)*N//n)``, where ``N``
    is the input's row count (non-blank lines of JSON Lines, the Parquet metadata's row count, the
    length of a datasets directory). Each shard is an ordinary resumable run writing its own OUT;
    its manifest records the shard, its progress file ``shard`` [i, n], ``input_rows`` N,
    ``expected`` (the slice's length), and ``finished`` once OUT is assembled. Shards can run
    anywhere (one per GPU, one per node, one per SLURM array task); concatenating their outputs in
    shard order is exactly the unsharded output (byte for byte for JSON Lines: every trace is scored
    on its own, so no score depends on how the rows were cut), which is what ``asap merge`` does.

Merge (``asap merge OUT SHARD_OUT...``)
    Checks that the shard outputs are the complete shards 0..n-1 of one split of one input, written
    with the same manifest (stage, input, options, version), given in shard order, then writes OUT
    (and OUT's rejects) as their concatenation. An incomplete shard (still running, killed, or never
    started) is refused with the command that finishes it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from asap_fast.pipeline.claim import claim_output, release, same_file
from asap_fast.pipeline.manifest import first_difference, read_manifest
from asap_fast.pipeline.records import (
    count_rows,
    format_of,
    open_text,
    rejects_path,
    sidecar,
)

__all__ = ["check_shards", "merge_shards", "shard_plan", "shard_range"]


def shard_range(total: int, index: int, count: int) -> tuple[int, int]:
    return index * total // count, (index + 1) * total // count


def shard_plan(input: str | os.PathLike, shard: tuple[int, int] | None) -> tuple[tuple[int, int] | None, dict | None]:
    """(rows, meta) for :func:`~asap_fast.pipeline.engine.run_corpus`: the shard's row range and
    what its progress file records; (None, None) without a shard."""
    if shard is None:
        return None, None
    index, count = shard
    total = count_rows(input)
    start, stop = shard_range(total, index, count)
    return (start, stop), {"shard": [index, count], "input_rows": total, "expected": stop - start}


def _progress_of(out: Path) -> dict | None:
    path = sidecar(out, "progress.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_shards(shards: list[Path]) -> list[dict]:
    """The progress of each shard output, once every one is known complete and the list is the
    shards 0..n-1 of one split of one input, in order; ValueError (one line) otherwise."""
    if not shards:
        raise ValueError("no shard outputs given")
    progresses = []
    for path in shards:
        progress = _progress_of(path)
        if progress is None:
            raise ValueError(f"{path} is not an asap run's output (no {path.name}.progress.json)")
        if "shard" not in progress:
            raise ValueError(f"{path} was not written with --shard")
        progresses.append(progress)
    count = progresses[0]["shard"][1]
    total = progresses[0]["input_rows"]
    for path, progress in zip(shards, progresses):
        i, n = progress["shard"]
        if n != count or progress["input_rows"] != total:
            raise ValueError(f"{path} is shard {i}/{n} of an input of {progress['input_rows']} rows; "
                             f"{shards[0]} is of a split into {count} shards of {total} rows")
    manifests = [read_manifest(sidecar(path, "manifest.json")) for path in shards]
    for path, manifest in zip(shards[1:], manifests[1:]):
        found = first_difference({**manifests[0], "shard": None}, {**manifest, "shard": None})
        if found:
            field, first, this = found
            raise ValueError(f"{path} was written with {field} = {json.dumps(this)}, {shards[0]} with "
                             f"{json.dumps(first)}: shards of one run must share input and options")
    given = [p["shard"][0] for p in progresses]
    if given != list(range(count)):
        missing = sorted(set(range(count)) - set(given))
        if missing:
            raise ValueError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}")
        raise ValueError(f"give the shards in order 0..{count - 1}; got {', '.join(f'{i}/{count}' for i in given)}")
    for path, progress in zip(shards, progresses):
        i, n = progress["shard"]
        if progress["rows"] < progress["expected"] or not progress.get("finished"):
            raise ValueError(f"shard {i}/{n} ({path}) is incomplete: {progress['rows']} of {progress['expected']} "
                             f"rows done; re-run its command to finish it")
        if not path.exists():
            raise ValueError(f"shard {i}/{n} output {path} is missing")
    return progresses


def merge_shards(output: str | os.PathLike, shards: list[str | os.PathLike], *, overwrite: bool = False) -> dict:
    """Concatenate complete shard outputs (and their rejects) into ``output``, in shard order.
    Returns {"shards", "rows", "rejects"}. The output format may differ from the shards'."""
    out = Path(output)
    shard_paths = [Path(s) for s in shards]
    try:
        for path in [*shard_paths, out]:  # a shard still being written is refused, naming its run
            if path.exists() or path is out:
                claim_output(path)
        return _merge_claimed(out, shard_paths, overwrite)
    finally:
        for path in shard_paths + [out]:
            release(path)


def _merge_claimed(out: Path, shard_paths: list[Path], overwrite: bool) -> dict:
    progresses = check_shards(shard_paths)
    if any(same_file(out, s) or same_file(rejects_path(out), rejects_path(s)) for s in shard_paths):
        raise ValueError("OUT must not be one of the shard outputs")
    out_rejects = rejects_path(out)
    if not overwrite and (out.exists() or out_rejects.exists()):
        raise ValueError(f"{out} exists; remove it or pass --overwrite")
    fmt = format_of(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shard_formats = {format_of(s) for s in shard_paths}
    if fmt in ("jsonl", "jsonl.gz") and shard_formats == {fmt}:
        rows = _concat_bytes(out, [(s, p["out"]) for s, p in zip(shard_paths, progresses)])
    else:
        rows = _merge_tables(out, fmt, shard_paths)
    reject_parts = [(rejects_path(s), p["rejects_bytes"]) for s, p in zip(shard_paths, progresses)]
    out_rejects.parent.mkdir(parents=True, exist_ok=True)
    rejects = _concat_bytes(out_rejects, reject_parts, count_gz=False)
    return {"shards": len(shard_paths), "rows": rows, "rejects": rejects}


def _concat_bytes(out: Path, parts: list[tuple[Path, int]], *, count_gz: bool = True) -> int:
    """Write the first ``size`` bytes of each part into ``out`` (atomically); the number of lines.
    gzip members concatenate to a valid gzip stream."""
    tmp = out.with_name(out.name + ".merge-tmp")
    lines = 0
    with tmp.open("wb") as dst:
        for path, size in parts:
            if size == 0 or not path.exists():
                continue
            with path.open("rb") as src:
                left = size
                while left > 0:
                    chunk = src.read(min(left, 1 << 22))
                    if not chunk:
                        raise ValueError(f"{path} is shorter than its progress file says")
                    dst.write(chunk)
                    left -= len(chunk)
                    if not path.name.endswith(".gz"):
                        lines += chunk.count(b"\n")
            if path.name.endswith(".gz") and count_gz:
                with open_text(path, "r") as f:
                    lines += sum(1 for _ in f)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out)
    return lines


def _read_table(path: Path):
    import pyarrow as pa

    fmt = format_of(path)
    if fmt in ("jsonl", "jsonl.gz"):
        with open_text(path, "r") as f:
            return pa.Table.from_pylist([json.loads(line) for line in f if line.strip()])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import datasets

    return datasets.load_from_disk(str(path)).data.table


def _merge_tables(out: Path, fmt: str, shards: list[Path]) -> int:
    """Parquet / datasets output (or shards of mixed formats): Arrow tables concatenated with
    permissive type promotion (a field null throughout one shard widens to the other's type)."""
    import pyarrow as pa

    table = pa.concat_tables([_read_table(s) for s in shards], promote_options="permissive")
    if fmt in ("jsonl", "jsonl.gz"):
        tmp = out.with_name(out.name + ".merge-tmp")
        with open_text(tmp, "w") as f:
            for batch in table.to_batches():
                for record in batch.to_pylist():
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        tmp = out.with_name(out.name + ".merge-tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    else:
        import datasets

        staging = out.with_name(out.name + ".merge-staging")
        shutil.rmtree(staging, ignore_errors=True)
        datasets.Dataset(table).save_to_disk(str(staging))
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            if old.name != "rejects.jsonl":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for new in staging.iterdir():
            os.replace(new, out / new.name)
        staging.rmdir()
    return table.num_rows
