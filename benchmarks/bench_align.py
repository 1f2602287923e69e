"""Stage-1 alignment check on real traces: asap_fast vs difflib (the reference) and its peers.

Every engine runs the same reference scan (asap_fast.matching.align_steps_ref) over the same
simulated LLM compressions of ../shared/data/cot-traces.jsonl; only the similarity function
differs. Reports time per corpus pass, section pairs/s, the speed ratio to every peer and how many
accept/reject decisions each engine flips relative to difflib.

    python benchmarks/bench_align.py                 # all traces, 3 repeats
    python benchmarks/bench_align.py --limit 50 --repeats 1
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import append_rows, make_row, percentiles, print_table, time_fn  # noqa: E402

import asap_fast as af  # noqa: E402
from asap_fast.core.matching import align_steps_ref  # noqa: E402
from asap_fast.simulate import simulate_compression  # noqa: E402

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cot-traces.jsonl"


# The measurement lives in the package (asap_fast/bench/align.py, also `asap bench align`).
from asap_fast.bench.align import AlignConfig, count_comparisons, engines, load_pairs  # noqa: E402,F401
from asap_fast.bench.align import run as measure_traces  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="JSONL with a generation field")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N usable traces")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per engine (the slow peers too)")
    parser.add_argument("--workers", type=int, default=2, help="threads for the batch engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("results.csv"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these engines (names as printed)")
    args = parser.parse_args(argv)

    rows = measure_traces(AlignConfig(traces=args.traces, limit=args.limit, repeats=args.repeats,
                                      workers=args.workers, seed=args.seed, only=args.only))
    append_rows(rows, args.csv)
    print(f"Rows appended to {args.csv}")


if __name__ == "__main__":
    main()
