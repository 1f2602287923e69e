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


def load_pairs(path: Path, limit: int | None, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                think = af.parse_trace(json.loads(line)["generation"], require_code=False).think
            except af.TraceError:
                continue
            if not think:  # nothing for stage 1 to compress (stage 1b rejects it)
                continue
            # A mix like real LLM output: some compressions keep paragraphs verbatim, some edit
            # words, some invent a paragraph (which the check must reject).
            compressed = simulate_compression(
                think, rng, drop_word=rng.choice([0.0, 0.02, 0.1]), invent=rng.choice([0.0, 0.5])
            )
            pairs.append((think, compressed))
    return pairs[:limit]


def count_comparisons(pairs) -> int:
    calls = 0

    def counting_ratio(a: str, b: str) -> float:
        nonlocal calls
        calls += 1
        return difflib.SequenceMatcher(None, a, b).ratio()

    for original, compressed in pairs:
        align_steps_ref(original, compressed, ratio=counting_ratio)
    return calls


def engines(workers: int):
    """name -> (function over all pairs, is it difflib-exact by construction)."""
    out = {
        "difflib": lambda pairs: [align_steps_ref(o, c) for o, c in pairs],
        "asap_fast": lambda pairs: [af.align_steps(o, c) for o, c in pairs],
        f"asap_fast_batch_{workers}w": lambda pairs: af.align_steps_batch(*zip(*pairs), workers=workers),
        "asap_fast_indel": lambda pairs: [af.align_steps(o, c, metric="indel") for o, c in pairs],
    }
    try:
        import cydifflib

        def cy_ratio(a, b):
            return cydifflib.SequenceMatcher(None, a, b).ratio()

        out["cydifflib"] = lambda pairs: [align_steps_ref(o, c, ratio=cy_ratio) for o, c in pairs]
    except ImportError:
        print("cydifflib not installed: skipped", file=sys.stderr)
    try:
        from rapidfuzz.distance import Indel

        out["rapidfuzz"] = lambda pairs: [
            align_steps_ref(o, c, ratio=Indel.normalized_similarity) for o, c in pairs
        ]
    except ImportError:
        print("rapidfuzz not installed: skipped", file=sys.stderr)
    return out


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

    pairs = load_pairs(args.traces, args.limit, args.seed)
    comparisons = count_comparisons(pairs)
    reference = [align_steps_ref(o, c) for o, c in pairs]
    accepted = sum(r is not None for r in reference)
    print(f"{len(pairs)} traces, {accepted} compressions accepted by difflib, {comparisons} section comparisons")

    cpu = torch.device("cpu")
    results = {}
    for name, run in engines(args.workers).items():
        if args.only and name not in args.only and name != "asap_fast":
            continue
        decisions = run(pairs)
        flips = sum((d is None) != (r is None) for d, r in zip(decisions, reference))
        same = sum(d == r for d, r in zip(decisions, reference))
        results[name] = (percentiles(time_fn(lambda: run(pairs), cpu, reps=args.repeats)), flips, same)

    base = results["asap_fast"][0][1]
    shape = f"traces={len(pairs)};comparisons={comparisons}"
    rows, table = [], []
    for name, (times, flips, same) in results.items():
        p50 = times[1]
        pairs_per_s = tuple(comparisons / t for t in times)
        rows += [
            make_row("align_steps", name, shape, "str", "time", "s", times, cpu),
            make_row("align_steps", name, shape, "str", "throughput", "section_pairs/s", pairs_per_s, cpu),
            make_row("align_steps", name, shape, "str", "decision_flips_vs_difflib", "traces", (flips,) * 3, cpu),
        ]
        table.append([name, f"{p50:.4f}", f"{comparisons / p50:,.0f}", f"{p50 / base:.1f}", str(flips), str(same)])
    print_table(["engine", "p50 s", "pairs/s", "time / asap_fast", "flips", "identical"], table)
    append_rows(rows, args.csv)
    print(f"\nflips: accept/reject decisions that differ from difflib's (of {len(pairs)}); identical: same "
          f"matched indices too. Rows appended to {args.csv}")


if __name__ == "__main__":
    main()
