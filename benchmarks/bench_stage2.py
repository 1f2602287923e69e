"""Benchmark ASAP stage 2 on real traces, side by side in one run: ours, the bare backbone, a
restatement of the reference and vLLM's prompt_logprobs: ``asap bench stage2`` (the code is
asap_fast/bench/stage2.py), its rows appended to benchmarks/results.csv unless --no-csv or --csv PATH.

    python benchmarks/bench_stage2.py                    # T = 4096 and 16384
    python benchmarks/bench_stage2.py --tokens 2048 --reps 2 --providers asap_fast,backbone
    python benchmarks/bench_stage2.py --help
"""

import sys
from pathlib import Path

from asap_fast.bench.stage2 import reference_stage2  # noqa: F401  (bench_corpus.py uses it)
from asap_fast.cli import main

RESULTS_CSV = Path(__file__).resolve().with_name("results.csv")

if __name__ == "__main__":
    raise SystemExit(main(["bench", "stage2", "--csv", str(RESULTS_CSV), *sys.argv[1:]]))
