"""SPIRIT's K + 1 perplexities: variants batched over the cached prefix vs today's loop vs the naive loop.

Providers, per trace, on the same model and the same real trace:
  loop        spirit_scores(variants_per_pass=1): one full pass with a KV cache, then one forward
              per variant over its own suffix, continuing the cropped batch-1 cache
  batched G   spirit_scores(variants_per_pass=G): G consecutive variants per forward, right-padded,
              over a batch-G copy of the cache cropped to the group's smallest start
  naive       spirit_scores(reuse_cache=False): K + 1 full forwards through the same kernels

Model: a CPU probe with Qwen2.5-0.5B's widths (hidden 896, 14 heads, 2 KV heads, MLP 4864, vocab
151936), random weights, ``--layers`` layers (2 by default: the real model has 24, so the backbone's
share of the time is smaller here than there and the LM head's larger; the head's work, one row per
scored token, is the same for every provider). Tokenizer: a byte-level BPE trained in-process on
the traces (as asap_fast.bench.stage2). Trace: for each ``--tokens`` T, the real trace with the
fewest tokens >= T, cut to its leading steps that fit (asap_fast.bench.stage2.pick_case).
``--demo-scorer``: the bundled demo scorer (asap_fast.DEFAULT_SCORER, 4M parameters, hidden 256,
4 layers, vocab 4,096) and its tokenizer instead: the smallest forwards, where fixed costs weigh most.

Reported: seconds per trace (p20/p50/p80 over rounds; each round calls every provider once, the
order rotating), the per-round ratio to the loop, the forwards and the tokens fed to the model
per trace (what batching trades: fewer forwards, more tokens), and the largest relative difference
of each provider's PPLs from the loop's (checked: at most --tolerance, and the kept steps at ratio
0.5 identical). Rows are appended to benchmarks/results.csv.

    python benchmarks/bench_spirit_batch.py                                # T = 512, 1024; G = 2, 4, 8
    python benchmarks/bench_spirit_batch.py --tokens 256 --groups 4 --reps 1 --no-csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_rows, device_name, make_row, percentiles, print_table

from asap_fast.bench.stage2 import pick_case
from asap_fast.data import COT_TRACES, read_cot_traces
from asap_fast.methods.spirit import spirit_scores
from asap_fast.stage2.pruning import prune_steps_result
from asap_fast.stage2.surprisal import SurprisalScorer


class CountingScorer(SurprisalScorer):
    """Counts forwards and the (padded) token positions fed to the model."""

    forwards = tokens = 0

    def log_probs(self, input_ids, rows, targets, *, cache=None):
        self.forwards += 1
        self.tokens += int(input_ids.numel())
        return super().log_probs(input_ids, rows, targets, cache=cache)


def versions() -> str:
    import transformers

    return (f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024], help="trace lengths (default: 512 1024)")
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8], help="variants per pass to try (default: 2 4 8)")
    parser.add_argument("--layers", type=int, default=2, help="probe layers (default: 2)")
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokenizer-vocab", type=int, default=16384)
    parser.add_argument("--demo-scorer", action="store_true", help="the bundled 4M-parameter demo scorer instead of the probe")
    parser.add_argument("--reps", type=int, default=2, help="timed rounds after one warmup round (default: 2)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (K + 1 full forwards)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative PPL difference from the loop")
    parser.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results.csv")
    args = parser.parse_args()
    if any(g < 1 for g in args.groups):
        parser.error("--groups must be positive")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

    records = read_cot_traces(COT_TRACES)
    if args.demo_scorer:
        from asap_fast.stage2.fine import ScorerSpec

        demo = ScorerSpec(device=args.device).load(quiet=True)
        model, tokenizer = demo.model, demo.tokenizer
    else:
        tokenizer = tiny_tokenizer([r["generation"] for r in records], vocab_size=args.tokenizer_vocab)
        model = tiny_causal_lm(args.vocab, "qwen2", hidden=args.hidden, layers=args.layers, heads=args.heads,
                               kv_heads=args.kv_heads, intermediate=args.intermediate, tie_word_embeddings=True,
                               max_position_embeddings=1 << 17, init_std=0.02).to(device)
    scorer = CountingScorer(model, tokenizer, max_length=1 << 20)
    print(f"{device_name(device)} | {versions()}")
    providers = {"loop (G=1)": {"variants_per_pass": 1}}
    providers.update({f"batched G={g}": {"variants_per_pass": g} for g in args.groups if g != 1})
    if not args.no_naive:
        providers["naive (no cache)"] = {"reuse_cache": False, "variants_per_pass": 1}
    csv_rows = []
    for target in args.tokens:
        prefix, steps, n_tokens, trace_id = pick_case(records, tokenizer, target, log=print)
        config = model.config
        shape = (f"T={n_tokens},K={len(steps)},D={config.hidden_size},L={config.num_hidden_layers},"
                 f"V={config.vocab_size},P={sum(p.numel() for p in model.parameters()) / 1e6:.0f}M,trace={trace_id}")
        times = {name: [] for name in providers}
        counts, results = {}, {}
        names = list(providers)
        for rnd in range(args.reps + 1):  # round 0 warms up
            order = names[rnd % len(names):] + names[: rnd % len(names)]
            for name in order:
                scorer.forwards = scorer.tokens = 0
                start = time.perf_counter()
                scores = spirit_scores(scorer, prefix, steps, **providers[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
                if rnd:
                    times[name].append(elapsed)
                counts[name], results[name] = (scorer.forwards, scorer.tokens), scores
        loop = results["loop (G=1)"]
        loop_kept = prune_steps_result(steps, loop.importance, tokenizer, ratio=0.5).kept
        table = []
        for name in names:
            p = percentiles(times[name])
            ratio = percentiles([t / l for t, l in zip(times[name], times["loop (G=1)"])])
            finite = np.isfinite(loop.ppl_without)
            difference = float(np.max(np.abs(np.array(results[name].ppl_without)[finite] / np.array(loop.ppl_without)[finite] - 1),
                                      initial=abs(results[name].ppl_full / loop.ppl_full - 1)))
            kept = prune_steps_result(steps, results[name].importance, tokenizer, ratio=0.5).kept
            if difference > args.tolerance or kept != loop_kept:
                raise SystemExit(f"{name} differs from the loop: relative PPL difference {difference:.2e}, "
                                 f"kept {kept} vs {loop_kept}")
            forwards, fed = counts[name]
            table.append([name, f"{p[1]:.3f}", f"{p[0]:.3f}-{p[2]:.3f}", f"{ratio[1]:.2f}x", str(forwards),
                          f"{fed:,}", f"{fed / n_tokens:.1f}", f"{difference:.1e}"])
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            csv_rows.append(make_row("spirit_scores", name, shape, dtype, "time", "s/trace", p, device))
            csv_rows.append(make_row("spirit_scores", name, shape, dtype, "time_vs_loop", "x", ratio, device))
            csv_rows.append(make_row("spirit_scores", name, shape, dtype, "tokens_fed", "tokens", (fed,) * 3, device))
        print(f"\nSPIRIT scores, {shape}")
        print_table(["provider", "s/trace p50", "p20-p80", "time / loop", "forwards", "tokens fed",
                     "fed / T", "max rel. PPL diff"], table)
    if not args.no_csv:
        append_rows(csv_rows)


if __name__ == "__main__":
    main()
