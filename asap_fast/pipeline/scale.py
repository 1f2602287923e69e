"""Scaling a corpus run out: deterministic shards, their merge, and Ray Data scorer actors.

Shards (``--shard i/n`` on ``asap fine`` and ``asap compress``)
    Shard ``i`` of ``n`` processes the contiguous input rows ``[i*N//n, (i+1)*N//n)``, where ``N``
    is the input's row count (non-blank lines of JSON Lines, the Parquet metadata's row count, the
    length of a datasets directory). Each shard is an ordinary resumable run writing its own OUT;
    its progress file also records ``shard`` [i, n], ``input_rows`` N and ``expected`` (the slice's
    length), and ``finished`` once OUT is assembled. Shards can run anywhere (one per GPU, one per
    node, one per SLURM array task); concatenating their outputs in shard order is exactly the
    unsharded output (byte for byte for JSON Lines), which is what ``asap merge`` does.

Merge (``asap merge OUT SHARD_OUT...``)
    Checks that the shard outputs are the complete shards 0..n-1 of one split of one input, given
    in shard order, then writes OUT (and OUT's rejects) as their concatenation. An incomplete shard
    (still running, killed, or never started) is refused with the command that finishes it.

Ray (``--ray`` on ``asap fine``; the ``ray`` extra)
    The corpus is still read, committed and resumed by :func:`~asap_fast.corpus.run_corpus` on
    the driver, in chunks of ``--ray-chunk`` rows; each chunk is scored by a Ray Data pipeline
    (``map_batches`` over an actor pool holding one loaded scorer per actor: one actor per GPU, or
    ``--ray-actors N`` CPU actors). Results come back in input order, so the output (and resume
    after a kill) is exactly that of a run without Ray. Rows travel pickled, so any field type the
    input has survives. Connects to a running cluster when ``RAY_ADDRESS`` is set, else starts a
    local Ray runtime. Known cost: each chunk is one Ray Data execution, so its actor pool (and
    the model) is loaded once per chunk; keep ``--ray-chunk`` large for big models.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

from asap_fast.pipeline.records import check_input, format_of, open_text, rejects_path

__all__ = ["add_merge", "add_scale_options", "count_rows", "merge_shards", "parse_shard", "shard_plan",
           "RayProcessor"]


# --------------------------------------------------------------------------------------------------
# Shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; ValueError (argparse-friendly) otherwise."""
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"a shard is i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def count_rows(path: str | os.PathLike) -> int:
    """The input's row count as ``read_rows`` counts rows: non-blank lines of JSON Lines (malformed
    ones included: they are rows that become rejects), Parquet metadata, len() of a datasets dir."""
    path = check_input(path)
    fmt = format_of(path)
    if fmt in ("jsonl", "jsonl.gz"):
        with open_text(path, "r") as f:
            return sum(1 for line in f if line.strip())
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    import datasets

    return len(datasets.load_from_disk(str(path)))


def shard_range(total: int, index: int, count: int) -> tuple[int, int]:
    return index * total // count, (index + 1) * total // count


def shard_plan(input: str | os.PathLike, shard: tuple[int, int] | None) -> tuple[tuple[int, int] | None, dict | None]:
    """(rows, meta) for :func:`~asap_fast.corpus.run_corpus`: the shard's row range and what its
    progress file records; (None, None) without a shard."""
    if shard is None:
        return None, None
    index, count = shard
    total = count_rows(input)
    start, stop = shard_range(total, index, count)
    return (start, stop), {"shard": [index, count], "input_rows": total, "expected": stop - start}


def add_shard_option(p) -> None:
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="process only shard I of N (0-based): the contiguous input rows [I*rows//N, "
                        "(I+1)*rows//N). Each shard writes its own OUT and resumes on its own; `asap merge` "
                        "concatenates the finished shards into the unsharded output")


# --------------------------------------------------------------------------------------------------
# Merge


def _progress_of(out: Path) -> dict | None:
    path = out.with_name(out.name + ".progress.json")
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
    progresses = check_shards(shard_paths)
    if any(out.resolve() == s.resolve() for s in shard_paths):
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


def add_merge(subparsers) -> None:
    from asap_fast.cli import PATH_HELP

    p = subparsers.add_parser(
        "merge",
        help="concatenate the outputs of `--shard i/n` runs into one corpus, in shard order",
        description=(
            "Check that SHARD_OUT... are the finished outputs of shards 0/n .. n-1/n of one input (each "
            "run's progress file records its shard, the input's row count and whether it finished), then "
            "write OUT as their concatenation in shard order, and OUT's rejects file as the concatenation of "
            "theirs. The result is exactly what one unsharded run writes (byte for byte for JSON Lines). "
            "Incomplete or missing shards are refused."
        ),
    )
    p.add_argument("output", metavar="OUT", help=PATH_HELP)
    p.add_argument("shards", metavar="SHARD_OUT", nargs="+", help="the shard outputs, in shard order")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run_merge)


def run_merge(args) -> int:
    result = merge_shards(args.output, args.shards, overwrite=args.overwrite)
    if not args.quiet:
        print(f"asap merge: {result['shards']} shards, {result['rows']} rows and {result['rejects']} rejects "
              f"into {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# Ray


def add_scale_options(p, *, ray: bool = True) -> None:
    """--shard, and (``ray``) --ray, --ray-actors, --ray-chunk."""
    g = p.add_argument_group("scaling out")
    add_shard_option(g)
    if ray:
        g.add_argument("--ray", action="store_true",
                       help="score through Ray Data: one scorer actor per GPU of the Ray cluster ($RAY_ADDRESS, "
                            "else a local runtime), or --ray-actors CPU actors. Output and resume are those of a "
                            "run without Ray (needs the 'ray' extra)")
        g.add_argument("--ray-actors", type=int, metavar="N",
                       help="with --ray: N scorer actors on CPU (default: one per GPU; 1 on CPU)")
        g.add_argument("--ray-chunk", type=int, default=4096, metavar="N",
                       help="with --ray: rows per Ray Data execution; each is committed when done, and its "
                            "actors load the scorer once (default: 4096)")


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray Data: pip install 'asap-fast[ray]' (or pip install 'ray[data]')") from None
    return ray


class _ScorerActor:
    """A Ray Data actor: loads the scorer once, then runs a stage's ``process`` over batches of
    pickled rows. ``make(args)`` builds the stage; it is pickled to the actor."""

    def __init__(self, make, args, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.stage = make(args)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from asap_fast.pipeline.engine import RowError

        rows = [pickle.loads(b) for b in batch["row"]]
        before = getattr(self.stage, "tokens_scored", 0)
        results = self.stage.process(rows)
        tokens = getattr(self.stage, "tokens_scored", 0) - before
        out = [pickle.dumps(("error", str(r)) if isinstance(r, RowError) else ("ok", r)) for r in results]
        return {"idx": np.asarray(batch["idx"]), "out": np.array(out, dtype=object),
                "tokens": np.full(len(out), 0, dtype=np.int64) if not out else
                np.array([tokens] + [0] * (len(out) - 1), dtype=np.int64)}


class RayProcessor:
    """A ``run_corpus`` process function that sends each chunk of rows through a Ray Data
    ``map_batches`` over an actor pool, and returns the results in input order.

    make:    picklable ``make(args) -> stage`` with ``stage.process(rows)`` (e.g. FineStage's)
    actors:  CPU actors; None = one per GPU of the cluster (1 CPU actor when it has none)
    batch:   rows per actor call
    """

    def __init__(self, make, args, *, actors: int | None = None, batch: int = 64, device: str | None = None):
        ray = _require_ray()
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            kwargs = {"address": address} if address else {}
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False, **kwargs)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        use_gpu = actors is None and gpus > 0 and (device is None or device.startswith("cuda"))
        self.actors = gpus if use_gpu else max(1, actors or 1)
        self.num_gpus = 1 if use_gpu else 0
        self.threads = None if use_gpu else max(1, cpus // self.actors)
        self.make, self.args, self.batch = make, args, batch
        self.tokens_scored = 0
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        self.ray = ray

    def __call__(self, rows) -> list:

        from asap_fast.pipeline.engine import RowError

        if not rows:
            return []
        ds = self.ray.data.from_items([{"idx": i, "row": pickle.dumps(r)} for i, r in enumerate(rows)])
        ds = ds.map_batches(
            _ScorerActor,
            fn_constructor_args=(self.make, self.args, self.threads),
            batch_size=self.batch,
            batch_format="numpy",
            concurrency=self.actors,
            num_gpus=self.num_gpus,
            num_cpus=0 if self.num_gpus else self.threads,
        )
        results: list = [None] * len(rows)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for idx, out, tokens in zip(batch["idx"], batch["out"], batch["tokens"]):
                kind, value = pickle.loads(out)
                results[int(idx)] = RowError(value) if kind == "error" else value
                self.tokens_scored += int(tokens)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"Ray returned no result for {len(missing)} rows")
        return results
