"""The stage-1 alignment check on real traces: asap_fast vs difflib (the reference) and its peers
(``asap bench align``; benchmarks/bench_align.py).

Every engine runs the same reference scan (asap_fast.core.matching.align_steps_ref) over the same
simulated LLM compressions of the traces; only the similarity function differs. Reports time per
corpus pass, section pairs/s, the speed ratio to every peer and how many accept/reject decisions
each engine flips relative to difflib.
"""

from __future__ import annotations

import difflib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from asap_fast.bench.common import format_table, make_row, percentiles, time_fn
from asap_fast.core.matching import align_steps, align_steps_batch, align_steps_ref
from asap_fast.core.traces import TraceError, parse_trace
from asap_fast.data import COT_TRACES, iter_jsonl
from asap_fast.simulate import simulate_compression

__all__ = ["AlignConfig", "count_comparisons", "engines", "load_pairs", "run"]


@dataclass
class AlignConfig:
    traces: Path | None = None  # .jsonl or .jsonl.gz; None: the 294 traces bundled with the package
    limit: int | None = None  # only the first N usable traces
    repeats: int = 3  # timed passes per engine (the slow peers too)
    workers: int = 2  # threads for the batch engine
    seed: int = 0
    only: list[str] | None = None  # run only these engines (and asap_fast, the base of the ratios)

    def __post_init__(self):
        self.traces = COT_TRACES if self.traces is None else Path(self.traces)
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


def load_pairs(path: Path, limit: int | None, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for record in iter_jsonl(path):
        try:
            think = parse_trace(record["generation"], require_code=False).think
        except TraceError:
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
    """name -> function over all pairs."""
    out = {
        "difflib": lambda pairs: [align_steps_ref(o, c) for o, c in pairs],
        "asap_fast": lambda pairs: [align_steps(o, c) for o, c in pairs],
        f"asap_fast_batch_{workers}w": lambda pairs: align_steps_batch(*zip(*pairs), workers=workers),
        "asap_fast_indel": lambda pairs: [align_steps(o, c, metric="indel") for o, c in pairs],
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


def run(config: AlignConfig, *, log=print) -> list[dict]:
    """Time every engine over the corpus; prints the table through ``log``, returns tidy rows."""
    import torch

    if not config.traces.exists():
        raise FileNotFoundError(f"traces not found: {config.traces} ")
    pairs = load_pairs(config.traces, config.limit, config.seed)
    comparisons = count_comparisons(pairs)
    reference = [align_steps_ref(o, c) for o, c in pairs]
    accepted = sum(r is not None for r in reference)
    log(f"{len(pairs)} traces, {accepted} compressions accepted by difflib, {comparisons} section comparisons")

    cpu = torch.device("cpu")
    results = {}
    for name, engine in engines(config.workers).items():
        if config.only and name not in config.only and name != "asap_fast":
            continue
        decisions = engine(pairs)
        flips = sum((d is None) != (r is None) for d, r in zip(decisions, reference))
        same = sum(d == r for d, r in zip(decisions, reference))
        results[name] = (percentiles(time_fn(lambda: engine(pairs), cpu, reps=config.repeats)), flips, same)

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
    log(format_table(["engine", "p50 s", "pairs/s", "time / asap_fast", "flips", "identical"], table))
    log(f"\nflips: accept/reject decisions that differ from difflib's (of {len(pairs)}); identical: same "
        f"matched indices too.")
    return rows
