"""Benchmark ASAP stage 2 (first-token surprisal + global pruning) on one real trace, side by side.

Providers, on the same trace and model, in one fresh process per trace length:
  asap_fast   first_token_surprisal (one tokenization with offsets, backbone forward, K boundary
              rows through ops.linear_logsoftmax_gather) + prune_steps (estimate, then verify)
  reference   a plain restatement of the reference code: model(ids).logits over all T positions,
              log_softmax over the full [T, V], each step's first-token index from re-tokenizing
              prefix + the steps before it, then the naive prune (re-encode after every removal)
  backbone    model.model(input_ids=ids, use_cache=False): the backbone forward alone, the floor

Model: a CPU probe with the real Qwen vocabulary, by default a 2-layer Qwen2 with hidden 896
(Qwen2.5-0.5B's widths: 14 heads, 2 KV heads, MLP 4864, tied embeddings), vocab 151936, random
weights. Tokenizer: a byte-level BPE (Qwen2 pre-tokenizer) trained in-process on the traces of
../shared/data, so ids are < vocab and the characters per token are realistic (~3.5).
Trace: for each --tokens T, the real trace with the fewest tokens >= T, cut to its longest run
of leading steps that fits in T tokens (prefix = prompt + "\\n<think>\\n").

Time: wall seconds per call, torch.inference_mode, --threads torch threads. After the warmup,
--reps rounds each call every provider once, the order rotating, so that a change in machine
load (shared CI machines) hits all alike; ratios are per-round (paired) ratios, p20/p50/p80.
Memory: each provider's first call, measured as the peak RSS of the process during the call
minus its RSS just before (the kernel's high-water mark, reset through /proc/self/clear_refs),
with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_) so that freed large buffers leave the
RSS; it counts everything the call allocates (tensors, kernel scratch, tokenizer output), which
tensor-level trackers miss inside custom ops. Rows are appended to benchmarks/results.csv.

    python benchmarks/bench_stage2.py                    # T = 4096 and 16384
    python benchmarks/bench_stage2.py --tokens 2048 --reps 2 --providers asap_fast,backbone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

PROVIDERS = ("asap_fast", "reference", "backbone")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cot-traces.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384], help="trace lengths T in tokens")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated subset of {PROVIDERS}")
    p.add_argument("--reps", type=int, default=3, help="timed calls per provider")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning budget as a ratio of the thinking's tokens")
    p.add_argument("--vocab", type=int, default=151936, help="model vocabulary size")
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--untied", action="store_true", help="untied LM head (default: tied, like Qwen2.5-0.5B)")
    p.add_argument("--tokenizer-vocab", type=int, default=16384, help="vocab of the BPE trained on the traces")
    p.add_argument("--traces", type=Path, default=Path(os.environ.get("ASAP_TRACES", DATA)))
    p.add_argument("--max-ref-gib", type=float, default=8.0,
                   help="skip the reference when its two fp32 [T, V] tensors need more than this")
    p.add_argument("--csv", type=Path, default=_common.RESULTS_CSV)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Worker (one provider, one trace, fresh process)
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reference_stage2(model, tokenizer, prefix: str, steps: list[str], ratio: float):
    """The reference's stage 2, restated plainly (full logits, full log_softmax, prefix re-tokenization)."""
    import torch

    from asap_fast.stage2.pruning import prune_steps_ref

    text = prefix + "\n\n".join(steps)
    input_ids = torch.tensor([tokenizer.encode(text)])
    logits = model(input_ids=input_ids, use_cache=False).logits[0]  # [T, V]
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    surprisal, positions = [], []
    for i in range(len(steps)):
        before = prefix + "\n\n".join(steps[:i]) + ("\n\n" if i else "")
        index = len(tokenizer.encode(before))  # the step's first token, if BPE did not merge across
        positions.append(index)
        if index == 0 or index >= input_ids.shape[1]:
            surprisal.append(float("inf"))
        else:
            surprisal.append(-log_probs[index - 1, input_ids[0, index]].item())
    kept = prune_steps_ref(steps, surprisal, tokenizer, ratio=ratio)
    return kept, surprisal, positions


def run_worker(spec_path: Path) -> None:
    import gc

    import torch
    from transformers import PreTrainedTokenizerFast

    from asap_fast.stage2.pruning import prune_steps
    from asap_fast.stage2.surprisal import encode_trace, first_token_surprisal
    from asap_fast.testing import tiny_causal_lm

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=spec["tokenizer_file"], pad_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                        model_max_length=1 << 30)
    m = spec["model"]
    model = tiny_causal_lm(m["vocab"], "qwen2", hidden=m["hidden"], layers=m["layers"], heads=m["heads"],
                           kv_heads=m["kv_heads"], intermediate=m["intermediate"],
                           tie_word_embeddings=m["tied"], max_position_embeddings=1 << 17, init_std=0.02)
    prefix, steps, ratio = spec["prefix"], spec["steps"], spec["ratio"]
    ids = torch.tensor([tokenizer.encode(prefix + "\n\n".join(steps))])
    outputs: dict = {p: {} for p in spec["providers"]}

    def backbone():
        model.model(input_ids=ids, use_cache=False)

    def asap_fast():
        scores = first_token_surprisal(model, tokenizer, prefix, steps)
        outputs["asap_fast"].update(surprisal=scores, kept=prune_steps(steps, scores, tokenizer, ratio=ratio))

    def reference():
        kept, scores, positions = reference_stage2(model, tokenizer, prefix, steps, ratio)
        outputs["reference"].update(surprisal=scores, kept=kept, positions=positions)

    calls = {"backbone": backbone, "asap_fast": asap_fast, "reference": reference}

    def run(provider: str) -> float:
        gc.collect()
        begin = time.perf_counter()
        with torch.inference_mode():
            calls[provider]()
        return time.perf_counter() - begin

    # Peak memory: each provider's first call, the RSS high-water mark reset just before it.
    for provider in spec["providers"]:
        gc.collect()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        rss_before = _proc_status_kib("VmRSS")
        run(provider)
        outputs[provider]["peak_rss_bytes"] = (_proc_status_kib("VmHWM") - rss_before) * 1024
        outputs[provider]["times"] = []
    for _ in range(spec["warmup"] - 1):
        for provider in spec["providers"]:
            run(provider)
    # Time: rounds of one call per provider, the order rotating, so that a change in machine load
    # hits every provider alike and per-round ratios compare calls made close together.
    for rep in range(spec["reps"]):
        order = spec["providers"][rep % len(spec["providers"]):] + spec["providers"][: rep % len(spec["providers"])]
        for provider in order:
            outputs[provider]["times"].append(run(provider))
    if "asap_fast" in outputs:
        outputs["asap_fast"]["positions"] = encode_trace(tokenizer, prefix, steps).positions.tolist()
    print("RESULT " + json.dumps(outputs))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def pick_case(records, tokenizer, target: int):
    """(prefix, steps, n_tokens) from the real trace with the fewest tokens >= target, cut to fit."""
    from asap_fast.core.traces import TraceError
    from asap_fast.testing import trace_case

    best = None
    for record in records:
        try:
            prefix, steps = trace_case(record)
        except TraceError:
            continue
        n = len(tokenizer.encode(prefix + "\n\n".join(steps)))
        if n >= target and (best is None or n < best[2]):
            best = (prefix, steps, n, record["id"])
    if best is None:
        raise SystemExit(f"no trace has {target} tokens or more")
    prefix, steps, _, trace_id = best
    lo, hi = 1, len(steps)  # the most leading steps that fit in target tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(prefix + "\n\n".join(steps[:mid]))) <= target:
            lo = mid
        else:
            hi = mid - 1
    steps = steps[:lo]
    return prefix, steps, len(tokenizer.encode(prefix + "\n\n".join(steps))), trace_id


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return
    import torch

    from asap_fast.testing import tiny_tokenizer

    providers = [p for p in args.providers.split(",") if p]
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        raise SystemExit(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
    records = [json.loads(line) for line in args.traces.open(encoding="utf-8")]
    texts = [r["generation"] for r in records]
    tokenizer = tiny_tokenizer(texts, vocab_size=args.tokenizer_vocab)
    assert len(tokenizer) <= args.vocab
    model_spec = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                      "kv_heads": args.kv_heads, "intermediate": args.intermediate, "tied": not args.untied}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576")
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_file = str(Path(tmp) / "tokenizer.json")
        tokenizer.backend_tokenizer.save(tokenizer_file)
        for target in args.tokens:
            prefix, steps, n_tokens, trace_id = pick_case(records, tokenizer, target)
            shape = (f"T={n_tokens},K={len(steps)},V={args.vocab},D={args.hidden},L={args.layers},"
                     f"tied={not args.untied},ratio={args.ratio},trace={trace_id}")
            print(f"\n== {shape}", flush=True)
            chosen = list(providers)
            ref_gib = 2 * n_tokens * args.vocab * 4 / 2**30
            if "reference" in chosen and ref_gib > args.max_ref_gib:
                print(f"reference skipped: its [T, V] logits and log_softmax need {ref_gib:.1f} GiB "
                      f"(> --max-ref-gib {args.max_ref_gib})", flush=True)
                chosen.remove("reference")
            spec = {"providers": chosen, "prefix": prefix, "steps": steps, "ratio": args.ratio, "threads": args.threads,
                        "warmup": max(args.warmup, 1), "reps": args.reps, "tokenizer_file": tokenizer_file, "model": model_spec}
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], env=env,
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            results = json.loads(lines[-1][len("RESULT "):])
            summarize(results, shape, n_tokens, device, rows, table)
    _common.print_table(["T", "K", "provider", "time p50 s", "p20-p80 s", "tokens/s", "peak RSS MiB",
                         "time/backbone", "mem/backbone", "speedup vs ref"], table)
    _common.append_rows(rows, args.csv)
    print(f"\n{len(rows)} rows appended to {args.csv}")


def summarize(results: dict, shape: str, n_tokens: int, device, rows: list, table: list) -> None:
    k = shape.split("K=")[1].split(",")[0]

    def paired(numerator: str, denominator: str):  # per-round ratios: calls made close together
        if numerator not in results or denominator not in results:
            return None
        return _common.percentiles([a / b for a, b in zip(results[numerator]["times"], results[denominator]["times"])])

    for provider, result in results.items():
        t = _common.percentiles(result["times"])
        peak = result["peak_rss_bytes"]

        def row(metric, unit, values, provider=provider):
            rows.append(_common.make_row("stage2", provider, shape, "float32", metric, unit, values, device))

        row("time", "s", t)
        row("throughput", "tokens/s", tuple(n_tokens / x for x in reversed(t)))
        row("peak_rss", "MiB", (peak / 2**20,) * 3)
        vs_backbone = paired(provider, "backbone") if provider != "backbone" else None
        speedup = paired("reference", provider) if provider != "reference" else None
        base_peak = results.get("backbone", {}).get("peak_rss_bytes")
        mem_ratio = peak / base_peak if base_peak else float("nan")
        if vs_backbone:
            row("time_vs_backbone", "x", vs_backbone)
            row("peak_rss_vs_backbone", "x", (mem_ratio,) * 3)
        if speedup:
            row("speedup_vs_reference", "x", speedup)
        print(f"{provider}: p50 {t[1]:.3f} s, peak RSS +{peak / 2**20:.0f} MiB", flush=True)
        table.append([str(n_tokens), k, provider, f"{t[1]:.3f}", f"{t[0]:.3f}-{t[2]:.3f}", f"{n_tokens / t[1]:.0f}",
                      f"{peak / 2**20:.0f}", f"{vs_backbone[1]:.3f}" if vs_backbone else "-",
                      f"{mem_ratio:.3f}" if vs_backbone else "-", f"{speedup[1]:.2f}" if speedup else "-"])
    if "asap_fast" in results and "reference" in results:
        ours, theirs = results["asap_fast"], results["reference"]
        moved = sum(a != b for a, b in zip(ours["positions"], theirs["positions"]))
        same = [abs(a - b) for a, b, pa, pb in zip(ours["surprisal"], theirs["surprisal"], ours["positions"],
                                                   theirs["positions"]) if pa == pb and a != float("inf")]
        print(f"steps whose first-token index differs from the reference's re-tokenization: {moved}; "
              f"max |surprisal difference| where it agrees: {max(same, default=0.0):.2e}; "
              f"same kept set: {ours['kept'] == theirs['kept']}")


if __name__ == "__main__":
    main()
