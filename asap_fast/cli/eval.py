"""``asap eval``."""

from __future__ import annotations

import sys

from asap_fast.cli.common import subparser


def add(subparsers) -> None:
    from asap_fast.evaluation.benchmarks import BENCHMARKS

    names = ", ".join(f"{b.name} ({'/'.join(b.aliases)})" for b in BENCHMARKS.values())
    p = subparser(
        subparsers, "eval",
        example="asap eval --benchmark humaneval_plus --data HumanEvalPlus.jsonl.gz --model runs/asap-qwen7b "
                "--out results/humaneval_plus.json",
        help="generate on a code or math benchmark, check the answers (code in a sandbox, math with "
             "math-verify), report Pass@1, tokens and latency",
        description=(
            "Evaluate a model the way the paper's code does: greedy generation with the benchmark's "
            "prompt (the chat template, then '<｜Assistant｜><think>\\n'), the first python block "
            "(```python, ```Python or ```, closed) after </think> as the answer (the raw output when there "
            "is none), executed with the benchmark's tests in a sandbox "
            "(own process, temporary directory, namespaces, resource limits, no network). "
            "Math benchmarks (gsm8k, math500, aime) take the last \\boxed{...} of the completion as the answer "
            "and compare it with the reference with math-verify. With "
            f"--model it generates and scores; with --generations it only scores. Benchmarks: {names}. "
            "Writes OUT (JSON: pass_at_1 over every problem of the benchmark, a problem without a "
            "generation counting as failed; pass_at_k, avg_tokens, latency_s, missing_tasks, subset, "
            "per-sample results in input order, config) and, when generating, the generations next to it."
        ),
    )
    io = p.add_argument_group("data")
    io.add_argument("--benchmark", required=True, help="benchmark name or alias")
    io.add_argument("--data", required=True, metavar="PATH",
                    help="the benchmark's published file (.jsonl/.jsonl.gz/.json; math: also .parquet); for "
                         "livecodebench also a directory of code_generation_lite test*.jsonl files")
    io.add_argument("--out", required=True, metavar="RESULTS.json", help="where to write the results")
    io.add_argument("--generations", metavar="PATH", default=None,
                    help="score these completions (JSONL of task_id, completion; several per task allowed; "
                         "optional num_tokens, latency_s) instead of generating")
    io.add_argument("--save-generations", metavar="PATH", default=None,
                    help="where --model writes its generations (default: OUT without .json + .generations.jsonl)")
    io.add_argument("--no-extract", dest="extract", action="store_false",
                    help="the completions are code already (do not look for a python block)")
    io.add_argument("--tokenizer", default=None, metavar="PATH",
                    help="with --generations: count tokens of completions that have no num_tokens")
    io.add_argument("--limit", type=int, default=None,
                    help="only the first N problems (the results record the run as a subset)")
    io.add_argument("--subset", action="store_true",
                    help="with --generations: score only the problems that have a generation, and record the "
                         "run as a subset with their task ids (default: Pass@1 over every problem of the "
                         "benchmark, a problem without a generation counting as failed, as in the reference)")
    io.add_argument("--release", default=None,
                    help="livecodebench release: release_vN, release_latest, vN or vA_vB (e.g. v1_v3, v4_v5); "
                         "by file for a directory, by contest-date window for a single file")
    io.add_argument("--start-date", default=None, help="livecodebench: contest_date >= YYYY-MM-DD")
    io.add_argument("--end-date", default=None, help="livecodebench: contest_date <= YYYY-MM-DD")

    gen = p.add_argument_group("generation")
    gen.add_argument("--model", default=None, metavar="PATH", help="model to generate with (local path)")
    gen.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto",
                     help="vllm (GPUs), hf (transformers; CPU and small models) or auto (default: vllm when "
                          "installed and a GPU is present, else hf)")
    gen.add_argument("--max-new-tokens", type=int, default=None,
                     help="generation budget (default: the paper's, 6144 for HumanEval(+), 2048 for GSM8K, 4096 for "
                          "MATH-500, 10240 otherwise)")
    gen.add_argument("--num-samples", type=int, default=1,
                     help="samples per problem, for pass@k; needs --temperature (default: 1)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the paper's (default: 0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    gen.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32 (default: auto)")
    gen.add_argument("--batch-size", type=int, default=8, help="hf: prompts per generate call (default: 8)")
    gen.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model (default: 1)")
    gen.add_argument("--max-model-len", type=int, default=None, help="vllm: context length to allocate")
    gen.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                     help="vllm: fraction of GPU memory (default: 0.9)")
    gen.add_argument("--trust-remote-code", action="store_true", help="let transformers/vLLM run the model's own code")
    gen.add_argument("--tokenskip-ratio", type=float, default=None, metavar="R",
                     help="a TokenSkip model (trained on `asap compress --method tokenskip` rows): write ratio R "
                          "after the question, as in training (e.g. 0.6; 1.0 = no compression)")
    gen.add_argument("--no-tokenskip-scale-budget", dest="tokenskip_scale_budget", action="store_false",
                     help="with --tokenskip-ratio on a math benchmark: keep max_new_tokens as is (default: scaled "
                          "by the ratio, as TokenSkip's evaluation.py does for math)")
    gen.add_argument("--tokenskip-separator", default="<|eot_id|>", metavar="S",
                     help="with --tokenskip-ratio: the separator around the ratio (default: <|eot_id|>, TokenSkip's)")

    ex = p.add_argument_group("execution")
    ex.add_argument("--timeout", type=float, default=3.0,
                    help="seconds per check program / call / stdin run (default: 3, the paper's)")
    ex.add_argument("--sample-timeout", type=float, default=None,
                    help="cap on one sample's whole run, seconds (default: each benchmark's rule: "
                         "livecodebench (timeout + 1) * tests + 5 as LCB's runner, humaneval_plus "
                         "timeout * (inputs + 1) + 1 up to 120)")
    ex.add_argument("--workers", type=int, default=0, help="samples executed in parallel; 0 = all cores (default: 0)")
    ex.add_argument("--memory-gb", type=float, default=4.0,
                    help="memory cap per sample, GiB: all its processes together where a cgroup can be made, "
                         "else per process (address space) (default: 4)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.evaluation.generate import BackendUnavailable
    from asap_fast.evaluation.pipeline import EvalConfig, run_eval

    cfg = EvalConfig(
        benchmark=args.benchmark, data=args.data, out=args.out, model=args.model, backend=args.backend,
        generations=args.generations, max_new_tokens=args.max_new_tokens, timeout=args.timeout,
        sample_timeout=args.sample_timeout, workers=args.workers or None, memory_gb=args.memory_gb,
        release=args.release, start_date=args.start_date, end_date=args.end_date, limit=args.limit,
        num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        batch_size=args.batch_size, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        trust_remote_code=args.trust_remote_code, tokenizer=args.tokenizer, extract=args.extract,
        save_generations=args.save_generations, tokenskip_ratio=args.tokenskip_ratio,
        tokenskip_separator=args.tokenskip_separator, subset=args.subset,
        tokenskip_scale_budget=args.tokenskip_scale_budget,
    )
    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"asap eval: {msg}", file=sys.stderr))
    try:
        results = run_eval(cfg, log=log)
    except BackendUnavailable as e:
        print(f"asap eval: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(format_summary(results), file=sys.stderr)
    return 0


def format_summary(results: dict) -> str:
    def fmt(value, pattern):
        return "n/a" if value is None else pattern.format(value)

    pass1 = results["pass_at_1"]
    line = (f"{results['benchmark']}: Pass@1 {fmt(None if pass1 is None else 100 * pass1, '{:.2f}')} | "
            f"avg tokens {fmt(results['avg_tokens'], '{:.0f}')} | "
            f"latency {fmt(results['latency_s'], '{:.2f}')} s/problem "
            f"| {results['n_samples']} samples of {results['n_tasks_scored']}/{results['n_problems']} problems")
    reasons = ", ".join(f"{k} {v}" for k, v in results["reasons"].items() if v)
    extra = {k: v for k, v in results["pass_at_k"].items() if k != "pass@1"}
    if extra:
        line += "\n  " + ", ".join(f"{k} {100 * v:.2f}" for k, v in extra.items())
    line += f"\n  outcomes: {reasons}"
    if results.get("missing_tasks"):
        line += f"\n  {len(results['missing_tasks'])} problems without a generation counted as failed"
    subset = results.get("subset")
    if subset:
        line += (f"\n  SUBSET: {subset['n_problems']} of the benchmark's {subset['benchmark_problems']} problems "
                 f"({', '.join(subset['selected_by'])}); not comparable with full-benchmark scores")
    return line
