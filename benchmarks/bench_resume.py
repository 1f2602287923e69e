"""What the resume check costs: re-hashing the input prefix a resumed run skips.

A resumed run skips the rows it committed by reading their lines (no JSON parsing); since the
prefix check, those lines are also hashed (BLAKE2b) and compared with the digest the last commit
recorded. Measured here on a generated JSON Lines file of --gib GiB (rows of --row-kib KiB, like
long traces), side by side in one run: skipping every row with the check (what a resume does now),
the same skip without hashing (what it did before), and hashing the bytes alone with hashlib.

    python benchmarks/bench_resume.py              # 1 GiB
    python benchmarks/bench_resume.py --gib 0.1 --csv /dev/null
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_CSV, append_rows, make_row  # noqa: E402

from asap_fast.pipeline import records  # noqa: E402


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return sorted(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--row-kib", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--csv", type=Path, default=RESULTS_CSV)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        row = json.dumps({"id": "x", "generation": "y" * (args.row_kib * 1024)}).encode() + b"\n"
        rows = int(args.gib * 2**30 / len(row))
        with path.open("wb") as f:
            for _ in range(rows):
                f.write(row)
        size = path.stat().st_size

        def resume_check():  # skip every row, hashing: the digest a commit records is rebuilt
            assert next(records.read_rows(path, rows - 1), None) is not None

        def skip_only():  # the same read, lines counted as before the check existed
            k = 0
            for _, line in records._lines(path):
                k += bool(line.strip())
            assert k == rows

        def hash_only():
            h = hashlib.blake2b(digest_size=16)
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)

        results = {name: timed(fn, args.reps) for name, fn in
                   [("skip+hash (now)", resume_check), ("skip (before)", skip_only), ("hashlib alone", hash_only)]}
    device = torch.device("cpu")
    shape = f"bytes={size},rows={rows}"
    print(f"{size / 2**30:.2f} GiB, {rows:,} rows of {args.row_kib} KiB; {os.cpu_count()} CPUs")
    out_rows = []
    base = results["skip (before)"][len(results["skip (before)"]) // 2]
    for name, samples in results.items():
        p50 = samples[len(samples) // 2]
        print(f"{name:>18}: {p50:7.3f} s  {size / 2**30 / p50:6.2f} GiB/s  x{p50 / base:.2f} of the skip before")
        out_rows.append(make_row("resume_prefix", name, shape, "bytes", "time", "s",
                                 (samples[0], p50, samples[-1]), device))
    append_rows(out_rows, args.csv)


if __name__ == "__main__":
    main()
