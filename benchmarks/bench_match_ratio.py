"""Equal budgets: each method's mean achieved ratio (tokens_after / tokens_before, one token count)
at a plain --ratio R and at --match-ratio R, and the time per trace of each, on the bundled traces.

Same rows, scorer (the bundled demo scorer, which counts tokens for every method) and tiny random
LLMLingua-2 classifier as bench_methods.py (its keep decisions are random, so for llmlingua2 and
tokenskip only the achieved fraction and the search's cost mean something). Reported per method:
mean achieved ratio (mean over rows of the per-row ratio), its spread (min-max), rows within
+-0.02 of R, rejects, seconds per trace.

    python benchmarks/bench_match_ratio.py                  # 24 traces, 6000 characters, R = 0.5
    python benchmarks/bench_match_ratio.py --traces 6 --max-chars 3000 --spirit-traces 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import load_rows, stages  # noqa: E402
from _common import print_table  # noqa: E402

from asap_fast.data import COT_TRACES as TRACES  # noqa: E402


def matched_stages(plain: dict, ratio: float) -> dict:
    """The same stages with the target matched (same scorer and classifier objects)."""
    import dataclasses

    from asap_fast.methods.common import Target

    out = {}
    for name, stage in plain.items():
        config = stage.config
        if name == "asap":
            config = dataclasses.replace(config, match=True)
        elif name == "tokenskip":
            config = dataclasses.replace(config, ratios=(ratio,), match=True)
        else:
            config = dataclasses.replace(config, target=Target(ratio=ratio, match=True))
        clone = object.__new__(type(stage))
        clone.__dict__.update(stage.__dict__)
        clone.config = config
        out[name] = clone
    return out


def run(stage, rows) -> tuple[list[float], list[float], int]:
    ratios, seconds, rejected = [], [], 0
    for row in rows:
        start = time.perf_counter()
        (out,) = stage.process([row])
        seconds.append(time.perf_counter() - start)
        if isinstance(out, dict):
            ratios.append(out["tokens_after"] / out["tokens_before"])
        else:
            rejected += 1
    return ratios, seconds, rejected


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traces", type=int, default=24)
    p.add_argument("--spirit-traces", type=int, default=8, help="SPIRIT runs K + 1 passes: fewer traces")
    p.add_argument("--max-chars", type=int, default=6000)
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = load_rows(TRACES, args.traces, args.max_chars)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, _ = stages(args, Path(tmp))
        matched = matched_stages(plain, args.ratio)
        for name in plain:
            subset = rows[:args.spirit_traces] if name == "spirit" else rows
            for label, stage in (("--ratio", plain[name]), ("--match-ratio", matched[name])):
                ratios, seconds, rejected = run(stage, subset)
                within = sum(abs(r - args.ratio) <= 0.02 for r in ratios)
                table.append([name, f"{label} {args.ratio:g}", str(len(subset)), f"{np.mean(ratios):.4f}",
                              f"{min(ratios):.3f}-{max(ratios):.3f}", f"{within}/{len(ratios)}", str(rejected),
                              f"{np.median(seconds):.3f}"])
                print(f"  {name} {label}: done", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, CPU; demo scorer; tiny classifier")
    print_table(["method", "target", "traces", "mean achieved", "min-max", "within 0.02", "rejected",
                 "s/trace p50"], table)


if __name__ == "__main__":
    main()
