"""Benchmark asap_fast.ops against torch, side by side in one run: ``asap bench ops`` (the code is
asap_fast/bench/ops.py), its rows appended to benchmarks/results.csv unless --no-csv or --csv PATH.

    python benchmarks/bench_ops.py --quick
    python benchmarks/bench_ops.py --n 64 4096 16384 --d 896 3584 --v 151936 --dtype bfloat16
    python benchmarks/bench_ops.py --help
"""

import sys
from pathlib import Path

from asap_fast.cli import main

RESULTS_CSV = Path(__file__).resolve().with_name("results.csv")

if __name__ == "__main__":
    raise SystemExit(main(["bench", "ops", "--csv", str(RESULTS_CSV), *sys.argv[1:]]))
