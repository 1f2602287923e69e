"""Benchmark the compression methods side by side on the bundled real traces, and SPIRIT's cached scoring
against its naive loop.

Part 1, methods: the same real traces (asap_fast/data, code and math, each cut to its leading
steps within --max-chars, prefix = prompt + "\\n<think>\\n") through each method's stage, as
`asap compress --method` runs it, one trace per call:
  asap               stage 2 (first-token surprisal, global rule) at --ratio
  spirit             step-level perplexity, KV-cached, global rule at --ratio
  selective-context  token units and sentence units at --ratio
  llmlingua2         the real llmlingua package at rate --ratio
  tokenskip          llmlingua2 at a ratio drawn per trace from 0.5 ... 1.0
The scorer is the bundled demo scorer (asap_fast.DEFAULT_SCORER, 4M parameters), which also counts
tokens for every method. LLMLingua-2's classifier is a tiny random XLM-R token classifier built
locally (no weights can be downloaded here): its times show llmlingua's own overhead, not
XLM-R-large's cost, and its keep decisions are random, so only the achieved fraction against the
rate means something. Reported: seconds per trace (p20/p50/p80 over traces), traces/s, and the
compression = total thinking tokens after / before.

Part 2, SPIRIT: per trace, spirit_scores with the KV cache (ours) vs the naive loop through the same
kernels (reuse_cache=False: K + 1 full forwards) vs the definition written plainly
(spirit_scores_ref: full [T, V] logits, fp64 log-softmax); ratios are per trace.

    python benchmarks/bench_methods.py                         # 12 traces, 6000 characters
    python benchmarks/bench_methods.py --traces 4 --max-chars 3000 --spirit-traces 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_rows, make_row, percentiles, print_table  # noqa: E402

from asap_fast.data import COT_TRACES as TRACES, read_cot_traces  # noqa: E402


def load_rows(path: Path, count: int, max_chars: int) -> list[dict]:
    """``count`` usable traces spread over the file (code and math alike), each cut to its leading
    steps within max_chars, as rows that `asap compress` reads."""
    from asap_fast.testing import trace_case

    records = read_cot_traces(path)
    records = [r for r in records if "</think>" in r["generation"] and isinstance(r.get("prompt"), str)]
    step = max(1, len(records) // count)
    rows = []
    for record in records[::step]:
        try:
            prefix, steps = trace_case(record, max_chars=max_chars, max_prompt_chars=1000)
        except ValueError:
            continue
        if len(steps) < 4:
            continue
        answer = record["generation"].split("</think>", 1)[1]
        rows.append({"id": record["id"], "kind": record["kind"], "prompt": prefix[: -len("\n<think>\n")],
                     "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>" + answer})
        if len(rows) == count:
            break
    return rows


def stages(args, tmp: Path) -> dict:
    from asap_fast.methods.common import Target
    from asap_fast.methods.llmlingua2 import LLMLingua2Compressor, LLMLingua2Config, LLMLingua2Stage, seed_tiktoken_cache
    from asap_fast.methods.selective_context import SelectiveContextConfig, SelectiveContextStage
    from asap_fast.methods.spirit import SpiritConfig, SpiritStage
    from asap_fast.methods.tokenskip import TokenSkipConfig, TokenSkipStage
    from asap_fast.stage2.fine import FineStage, PruneConfig, ScorerSpec
    from asap_fast.testing import tiny_token_classifier

    scorer = ScorerSpec(device="cpu").load(quiet=True)
    target = Target(ratio=args.ratio)
    out = {
        "asap": FineStage(scorer, PruneConfig(budget=None, ratio=args.ratio)),
        "spirit": SpiritStage(scorer, SpiritConfig(target=target)),
        "selective-context (token)": SelectiveContextStage(scorer, SelectiveContextConfig(target=target, unit="token")),
        "selective-context (sentence)": SelectiveContextStage(scorer, SelectiveContextConfig(target=target,
                                                                                             unit="sentence")),
    }
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tmp / "tiktoken"))
    seed_tiktoken_cache()
    texts = [r["generation"] for r in read_cot_traces()][::5]
    classifier = str(tiny_token_classifier(tmp / "tiny-xlm-roberta-large", texts=texts, hidden=64))
    compressor = LLMLingua2Compressor(classifier, device="cpu")
    lingua = LLMLingua2Config(model=classifier, target=target)
    out["llmlingua2"] = LLMLingua2Stage(compressor, scorer.tokenizer, lingua)
    out["tokenskip"] = TokenSkipStage(compressor, scorer.tokenizer, TokenSkipConfig(llmlingua=lingua))
    return out, scorer


def bench_methods(args, rows, tmp: Path, device) -> tuple[list[dict], object]:
    all_stages, scorer = stages(args, tmp)
    csv_rows, table = [], []
    shape = f"traces={len(rows)},max_chars={args.max_chars}"
    for name, stage in all_stages.items():
        stage.process(rows[:1])  # warm up (first forward, tokenizer caches)
        seconds, before, after, rejected = [], 0, 0, 0
        for row in rows:
            start = time.perf_counter()
            (out,) = stage.process([row])
            seconds.append(time.perf_counter() - start)
            if isinstance(out, dict):
                before += out["tokens_before"]
                after += out["tokens_after"]
            else:
                rejected += 1
        p = percentiles(seconds)
        ratio = after / before if before else float("nan")
        csv_rows.append(make_row("compress_method", name, shape, "float32", "time", "s/trace", p, device))
        csv_rows.append(make_row("compress_method", name, shape, "float32", "throughput", "traces/s",
                                 (len(rows) / sum(seconds),) * 3, device))
        csv_rows.append(make_row("compress_method", name, shape, "float32", "compression", "after/before",
                                 (ratio,) * 3, device))
        table.append([name, f"{p[1]:.3f}", f"{p[0]:.3f}-{p[2]:.3f}", f"{len(rows) / sum(seconds):.2f}",
                      f"{before:,}", f"{after:,}", f"{ratio:.3f}", str(rejected)])
        print(f"  {name}: done", file=sys.stderr)
    print_table(["method", "s/trace p50", "p20-p80", "traces/s", "tokens before", "tokens after", "compression",
                 "rejected"], table)
    return csv_rows, scorer


def bench_spirit(args, rows, scorer, device) -> list[dict]:
    from asap_fast.methods.common import prepare_row
    from asap_fast.methods.spirit import spirit_scores, spirit_scores_ref

    cases = [prepare_row(r) for r in rows[: args.spirit_traces]]
    providers = {
        "asap_fast (KV cache)": lambda c: spirit_scores(scorer, c.prefix, c.steps),
        "naive loop (same kernels)": lambda c: spirit_scores(scorer, c.prefix, c.steps, reuse_cache=False),
        "definition (full logits, fp64)": lambda c: spirit_scores_ref(scorer.model, scorer.tokenizer, c.prefix, c.steps),
    }
    times = {name: [] for name in providers}
    tokens = []
    for case in cases:
        tokens.append(len(scorer.tokenizer.encode(case.prefix + "\n\n".join(case.steps))))
        for name, fn in providers.items():
            start = time.perf_counter()
            fn(case)
            times[name].append(time.perf_counter() - start)
    shape = f"traces={len(cases)},tokens={min(tokens)}-{max(tokens)},steps={min(len(c.steps) for c in cases)}-" \
            f"{max(len(c.steps) for c in cases)}"
    ours = times["asap_fast (KV cache)"]
    csv_rows, table = [], []
    for name, values in times.items():
        p = percentiles(values)
        speedup = percentiles([v / o for v, o in zip(values, ours)])
        csv_rows.append(make_row("spirit_scores", name, shape, "float32", "time", "s/trace", p, device))
        csv_rows.append(make_row("spirit_scores", name, shape, "float32", "time_vs_cached", "x", speedup, device))
        table.append([name, f"{p[1]:.2f}", f"{p[0]:.2f}-{p[2]:.2f}", f"{speedup[1]:.2f}x"])
    print(f"SPIRIT scoring, {shape}")
    print_table(["provider", "s/trace p50", "p20-p80", "time / cached (p50)"], table)
    return csv_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=12, help="traces for the methods (default: 12)")
    parser.add_argument("--max-chars", type=int, default=6000, help="characters of thinking per trace (default: 6000)")
    parser.add_argument("--ratio", type=float, default=0.5, help="kept fraction for every method (default: 0.5)")
    parser.add_argument("--spirit-traces", type=int, default=4, help="traces for SPIRIT cached vs naive (default: 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = load_rows(TRACES, args.traces, args.max_chars)
    with tempfile.TemporaryDirectory() as tmp:
        csv_rows, scorer = bench_methods(args, rows, Path(tmp), device)
    csv_rows += bench_spirit(args, rows, scorer, device)
    if not args.no_csv:
        append_rows(csv_rows)


if __name__ == "__main__":
    main()
