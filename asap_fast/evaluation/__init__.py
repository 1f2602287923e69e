"""Evaluation: generate with vLLM or transformers, execute the code in a sandbox, report Pass@1,
generated tokens and latency (the command ``asap eval``).

    from asap_fast.evaluation import Sample, get_benchmark, score_samples, summarize

    bench = get_benchmark("humaneval_plus")
    problems = bench.load("HumanEvalPlus-v0.1.10.jsonl.gz")          # local file, no download
    samples = [Sample(task_id, generation) for task_id, generation in my_generations]
    results = score_samples(bench, problems, samples, workers=8)     # one SampleResult per sample
    summarize(results, n_problems=len(problems))["pass_at_1"]

The same from the command line: ``asap eval --benchmark humaneval_plus --data ... --model ...``.
Math benchmarks (gsm8k, math500, aime: asap_fast.evaluation.math) compare \boxed{} answers with
math-verify instead of running code.
"""

from asap_fast.evaluation.benchmarks import (
    BENCHMARKS,
    Benchmark,
    Problem,
    get_benchmark,
    read_rows,
)
from asap_fast.evaluation.extract import extract_code
from asap_fast.evaluation.generate import (
    BackendUnavailable,
    Generation,
    GenerationRun,
    HFGenerator,
    VLLMGenerator,
    build_prompt,
    load_generator,
)
from asap_fast.evaluation.math import AIME, GSM8K, MATH500, is_equivalent, last_boxed  # registers them
from asap_fast.evaluation.metrics import pass_at_k, pass_at_k_table, percentile
from asap_fast.evaluation.pipeline import (
    EvalConfig,
    read_generations,
    run_eval,
    write_generations,
)
from asap_fast.evaluation.sandbox import (
    SandboxJob,
    SandboxLimits,
    SandboxResult,
    isolation_report,
    run_job,
    run_jobs,
    run_pair,
    run_program,
)
from asap_fast.evaluation.score import (
    REASONS,
    Sample,
    SampleResult,
    score_samples,
    summarize,
)

__all__ = [
    "AIME",
    "BENCHMARKS",
    "BackendUnavailable",
    "Benchmark",
    "EvalConfig",
    "GSM8K",
    "Generation",
    "GenerationRun",
    "HFGenerator",
    "MATH500",
    "Problem",
    "REASONS",
    "Sample",
    "SampleResult",
    "SandboxJob",
    "SandboxLimits",
    "SandboxResult",
    "VLLMGenerator",
    "build_prompt",
    "extract_code",
    "get_benchmark",
    "is_equivalent",
    "isolation_report",
    "last_boxed",
    "load_generator",
    "pass_at_k",
    "pass_at_k_table",
    "percentile",
    "read_generations",
    "read_rows",
    "run_eval",
    "run_job",
    "run_jobs",
    "run_pair",
    "run_program",
    "score_samples",
    "summarize",
    "write_generations",
]
