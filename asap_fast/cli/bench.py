"""``asap bench``: the package's measurements (asap_fast.bench), the same code as benchmarks/*.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asap_fast.cli.common import subparser


def _csv_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="append the tidy rows (op, provider, shape, dtype, metric, unit, p20/p50/p80, device, "
                        "versions, git sha, timestamp) to this CSV, its header written when the file is new")
    p.add_argument("--no-csv", dest="csv", action="store_const", const=None, help="append no rows (the default)")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add(subparsers) -> None:
    p = subparser(
        subparsers, "bench",
        help="measure the ops, stage 2 or the alignment check side by side with the alternatives",
        description=(
            "Run one measurement with every provider side by side in one run, print the table, and with "
            "--csv append tidy rows. `asap bench MEASUREMENT --help` lists its options."
        ),
        example="asap bench ops --quick\nasap bench stage2 --tokens 4096 --reps 3 --csv results.csv\n"
                "asap bench align --limit 50 --repeats 1",
    )
    measurements = p.add_subparsers(dest="measurement", metavar="MEASUREMENT", required=True)

    from asap_fast.bench import OPS_DTYPES, OPS_PROVIDERS, STAGE2_PROVIDERS

    o = subparser(
        measurements, "ops",
        help="linear_logsoftmax_gather / logsoftmax_gather vs torch eager and F.linear_cross_entropy",
        description=(
            "Time, TFLOP/s, GB/s and peak memory of the fused ops against torch eager and "
            "F.linear_cross_entropy (and our own torch path and tf32x3 option on CUDA), on random inputs."
        ),
        example="asap bench ops --quick\nasap bench ops --n 64 4096 16384 --d 896 3584 --v 151936 --dtype bfloat16\n"
                "asap bench ops --aot --arch sm_80,sm_90 --csv aot.csv",
    )
    o.add_argument("--ops", type=_comma_list, default=["linear", "logsoftmax"],
                   help="comma-separated: linear (linear_logsoftmax_gather), logsoftmax (logsoftmax_gather)")
    o.add_argument("--n", type=int, nargs="+", help="rows N (default: 64 4096 16384 on CUDA, 64 256 on CPU; "
                                                    "--quick: 64 4096 on CUDA, 16 64 on CPU)")
    o.add_argument("--d", type=int, nargs="+", help="hidden size D (default: 896 3584; --quick: 896)")
    o.add_argument("--v", type=int, nargs="+", default=[151936], help="vocab size V (default: 151936)")
    o.add_argument("--dtype", choices=OPS_DTYPES, help="default: bfloat16 on CUDA, float32 on CPU")
    o.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    o.add_argument("--providers", type=_comma_list,
                   help=f"comma-separated subset of {', '.join(OPS_PROVIDERS)} (default: all that apply; "
                        "on CPU torch_lce_chunked only when named, its CPU path is slow for small N)")
    o.add_argument("--reps", type=int, help="timed calls per provider (default: 20 on CUDA, 3 on CPU)")
    o.add_argument("--warmup", type=int, help="untimed calls first (default: 3 on CUDA, 1 on CPU)")
    o.add_argument("--max-materialized-gib", type=float, default=None,
                   help="skip providers that materialise [N, V] when that needs more than this "
                        "(default: a third of the device's memory)")
    o.add_argument("--quick", action="store_true", help="small grid, few reps (a smoke run)")
    o.add_argument("--aot", action="store_true",
                   help="instead of timing: compile every kernel configuration the ops can launch for --arch "
                        "(no GPU needed) and print registers, spills, stack, shared memory and tensor-core "
                        "instructions per configuration")
    o.add_argument("--arch", type=_comma_list, default=["sm_80", "sm_90", "sm_100"],
                   help="with --aot: comma-separated subset of sm_80,sm_90,sm_100 (default: all three)")
    o.add_argument("--spec", default=None, help="with --aot: only the configurations whose label contains this")
    _csv_options(o)
    o.set_defaults(func=run)

    s = subparser(
        measurements, "stage2",
        help="stage 2 on real traces: ours vs the backbone, the reference restatement and vLLM",
        description=(
            "Stage 2 (first-token surprisal + global pruning) on real traces with a CPU probe model "
            "(default: 2-layer Qwen2, hidden 896, vocab 151,936, random weights): asap_fast, a restatement "
            "of the reference (full logits), the bare backbone forward (the floor) and, when vLLM is "
            "installed, vLLM's prompt_logprobs over the same token ids (engine start not counted). Time "
            "(rotating paired rounds), peak RSS of each first call, tokens/s and traces/s; --batch adds "
            "throughput over a batch of traces."
        ),
        example="asap bench stage2 --tokens 4096 --reps 3\n"
                "asap bench stage2 --tokens 2048 --vocab 4096 --hidden 64 --heads 2 --kv-heads 1 --intermediate 256\n"
                "asap bench stage2 --tokens 4096 --batch 8 --batch-tokens 2048 --providers asap_fast,backbone,vllm",
    )
    s.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384], help="trace lengths T in tokens")
    s.add_argument("--providers", type=_comma_list, default=None,
                   help=f"comma-separated subset of {STAGE2_PROVIDERS} (default: all; vllm when installed)")
    s.add_argument("--reps", type=int, default=3, help="timed calls per provider (default: 3)")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: 1)")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    s.add_argument("--ratio", type=float, default=0.5, help="pruning budget as a ratio of the thinking's tokens")
    s.add_argument("--vocab", type=int, default=151936, help="model vocabulary size (default: 151936)")
    s.add_argument("--hidden", type=int, default=896)
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--heads", type=int, default=14)
    s.add_argument("--kv-heads", type=int, default=2)
    s.add_argument("--intermediate", type=int, default=4864)
    s.add_argument("--untied", action="store_true", help="untied LM head (default: tied, like Qwen2.5-0.5B)")
    s.add_argument("--tokenizer-vocab", type=int, default=16384, help="vocab of the BPE trained on the traces")
    s.add_argument("--traces", type=Path, default=None,
                   help="JSONL (or .jsonl.gz) of traces (default: the 294 real traces bundled with the package)")
    s.add_argument("--max-ref-gib", type=float, default=8.0,
                   help="skip the reference when its two fp32 [T, V] tensors need more than this")
    s.add_argument("--batch", type=int, default=0, help="traces in a throughput batch (default: 0, none)")
    s.add_argument("--batch-tokens", type=int, default=2048, help="tokens of each batch trace at most")
    _csv_options(s)
    s.set_defaults(func=run)

    a = subparser(
        measurements, "align",
        help="the stage-1 alignment check on real traces vs difflib, cydifflib and RapidFuzz",
        description=(
            "Every engine runs the reference's scan over the same simulated LLM compressions of the "
            "traces; only the similarity function differs. Time per corpus pass, section pairs/s, speed "
            "ratios and the accept/reject decisions each engine flips relative to difflib."
        ),
        example="asap bench align\nasap bench align --limit 50 --repeats 1",
    )
    a.add_argument("--traces", type=Path, default=None,
                   help="JSONL (or .jsonl.gz) with a generation field (default: the 294 real traces bundled with the package)")
    a.add_argument("--limit", type=int, default=None, help="use only the first N usable traces")
    a.add_argument("--repeats", type=int, default=3, help="timed passes per engine (the slow peers too)")
    a.add_argument("--workers", type=int, default=2, help="threads for the batch engine")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--only", nargs="*", default=None, help="run only these engines (names as printed)")
    _csv_options(a)
    a.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.bench.common import append_rows

    if args.measurement == "ops" and args.aot:
        from asap_fast.bench.ops import AotConfig, run_aot as measure

        config = AotConfig(archs=tuple(args.arch), only=args.spec)
    elif args.measurement == "ops":
        from asap_fast.bench.ops import OpsConfig, run as measure

        config = OpsConfig(ops=tuple(args.ops), n=args.n, d=args.d, v=args.v, dtype=args.dtype, device=args.device,
                           providers=args.providers, reps=args.reps, warmup=args.warmup,
                           max_materialized_gib=args.max_materialized_gib, quick=args.quick)
    elif args.measurement == "stage2":
        from asap_fast.bench.stage2 import Stage2Config, run as measure

        config = Stage2Config(tokens=args.tokens, providers=args.providers, reps=args.reps, warmup=args.warmup,
                              threads=args.threads, ratio=args.ratio, vocab=args.vocab, hidden=args.hidden,
                              layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                              intermediate=args.intermediate, tied=not args.untied,
                              tokenizer_vocab=args.tokenizer_vocab, traces=args.traces, max_ref_gib=args.max_ref_gib,
                              batch=args.batch, batch_tokens=args.batch_tokens)
    else:
        from asap_fast.bench.align import AlignConfig, run as measure

        config = AlignConfig(traces=args.traces, limit=args.limit, repeats=args.repeats, workers=args.workers,
                             seed=args.seed, only=args.only)
    rows = measure(config, log=lambda text: print(text, flush=True))
    if args.csv is not None:
        append_rows(rows, args.csv)
        print(f"{len(rows)} rows appended to {args.csv}", file=sys.stderr)
    return 0
