"""Scoring completions: extract the code, test it in the sandbox (in parallel), summarize."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from asap_fast.evaluation.benchmarks import Benchmark, Problem, get_benchmark
from asap_fast.evaluation.extract import extract_code
from asap_fast.evaluation.metrics import mean_or_none, pass_at_k_table, percentile
from asap_fast.evaluation.sandbox import SandboxLimits, run_jobs

__all__ = ["REASONS", "Sample", "SampleResult", "score_samples", "summarize"]

REASONS = ("passed", "failed", "timeout", "error", "no code")


@dataclass
class Sample:
    """One completion of one task. ``completion`` is the model's whole generation (the code is
    extracted from it) unless scoring is told the completions are code already."""

    task_id: str
    completion: str
    num_tokens: int | None = None
    latency_s: float | None = None
    finish_reason: str | None = None


@dataclass
class SampleResult:
    """The verdict on one sample. reason: passed / failed (a test failed) / timeout / error (the
    program raised, crashed, was killed or exited before the tests finished) / no code."""

    task_id: str
    sample_index: int
    passed: bool
    reason: str
    detail: str = ""
    num_tokens: int | None = None
    latency_s: float | None = None
    finish_reason: str | None = None
    exec_wall_s: float | None = None
    sandbox: str | None = None  # the isolation layer that ran it (bwrap / namespaces / none)

    def to_dict(self) -> dict:
        return asdict(self)


def score_samples(
    benchmark: str | Benchmark,
    problems: list[Problem],
    samples: list[Sample],
    *,
    timeout: float = 3.0,
    sample_timeout: float | None = None,
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    extract: bool = True,
    progress=None,
    journal: str | os.PathLike | None = None,
) -> list[SampleResult]:
    """Test every sample; results in the order of ``samples`` (also with many workers).

    timeout: per check program / call / stdin run (see benchmarks); sample_timeout: a cap on one
    sample's whole run (default: each benchmark's own rule). extract=False: completions are code
    already. ``progress(done, total)`` is called as samples finish. ``journal``: a JSONL file
    that gets each sample's result the moment it is decided (appended, flushed), so that nothing
    decided is lost whatever happens to the run afterwards.
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if timeout <= 0 or (sample_timeout is not None and sample_timeout <= 0):
        raise ValueError(f"timeout and sample_timeout must be > 0, got {timeout}, {sample_timeout}")
    by_id = {p.task_id: p for p in problems}
    unknown = sorted({s.task_id for s in samples} - set(by_id))
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5])
        raise ValueError(f"{len(unknown)} sample task_id(s) not in the benchmark data: {shown}"
                         f"{' ...' if len(unknown) > 5 else ''}")

    needed = [by_id[t] for t in dict.fromkeys(s.task_id for s in samples)]
    prepared = bench.prepare(needed, timeout=timeout, limits=limits, workers=workers)

    lock = threading.Lock()
    journal_file = open(journal, "a", encoding="utf-8") if journal is not None else None

    def record(result: SampleResult) -> None:
        if journal_file is not None:
            with lock:
                journal_file.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
                journal_file.flush()

    results: list[SampleResult] = []
    trials, trial_slots, raw_text = [], [], []
    seen = Counter()
    try:
        for sample in samples:
            index = seen[sample.task_id]
            seen[sample.task_id] += 1
            result = SampleResult(sample.task_id, index, False, "error", num_tokens=sample.num_tokens,
                                  latency_s=sample.latency_s, finish_reason=sample.finish_reason)
            results.append(result)
            code = extract_code(sample.completion) if extract else sample.completion
            raw = code is None  # the reference executes the raw output when it has no python block
            if raw:
                code = sample.completion or ""
            trial = bench.job(by_id[sample.task_id], code, timeout=timeout, sample_timeout=sample_timeout,
                              prepared=prepared)
            if isinstance(trial, str):
                result.reason, result.detail = "error", trial
                record(result)
                continue
            trials.append(trial)
            trial_slots.append(result)
            raw_text.append(raw)
        done = 0

        def finished(i: int, outcome) -> None:
            nonlocal done
            result = trial_slots[i]
            if isinstance(outcome, Exception):  # the harness itself failed on this sample only
                result.reason, result.detail = "error", f"sandbox failure: {type(outcome).__name__}: {outcome}"[:500]
            else:
                result.reason, result.detail = outcome.reason, outcome.detail
                result.exec_wall_s = round(outcome.exec_wall_s, 4)
                result.sandbox = outcome.isolation.get("layer")
            result.passed = result.reason == "passed"
            if raw_text[i] and not result.passed:  # say why, not only how the raw text failed
                detail = f" ({result.reason}: {result.detail})" if result.detail else f" ({result.reason})"
                result.reason, result.detail = "no code", "no python block; the raw output was executed" + detail
            record(result)
            done += 1
            if progress:
                progress(done, len(trials))

        run_jobs(trials, lambda t: t.run(limits), workers=workers, on_done=finished)
    finally:
        if journal_file is not None:
            journal_file.close()
    return results


def summarize(
    results: list[SampleResult],
    *,
    n_problems: int | None = None,
    task_ids: Sequence[str] | None = None,
    generation_wall_s: float | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict:
    """The headline numbers over every problem of the benchmark (``task_ids``, or ``n_problems``
    of them): pass@1 (mean over problems of the fraction of samples that passed, a fraction in
    [0, 1]; a problem without any sample counts as failed, as in the reference, and is listed in
    ``missing_tasks`` when ``task_ids`` is given), pass@k for k <= the smallest samples-per-task of
    the scored problems, average generated tokens, latency (the paper's: wall time of the batched
    generation / number of problems) and per-request latency percentiles where the backend gave
    per-request times."""
    per_task = defaultdict(lambda: [0, 0])
    for r in results:
        per_task[r.task_id][0] += 1
        per_task[r.task_id][1] += int(r.passed)
    if task_ids is not None:
        task_ids = list(task_ids)
        if n_problems is not None and n_problems != len(task_ids):
            raise ValueError(f"n_problems={n_problems} but {len(task_ids)} task_ids")
        outside = sorted(set(per_task) - set(task_ids))
        if outside:
            raise ValueError(f"results for {len(outside)} task(s) outside task_ids, e.g. {outside[0]!r}")
        n_problems = len(task_ids)
        missing = [t for t in task_ids if t not in per_task]
    else:
        if n_problems is None:
            raise TypeError("summarize() needs n_problems or task_ids")
        if len(per_task) > n_problems:
            raise ValueError(f"results for {len(per_task)} tasks but n_problems={n_problems}")
        missing = None
    counts = [tuple(v) for v in per_task.values()]
    # mean over every problem: the scored ones' pass@k summed, the unscored ones adding 0
    table = {k: v * len(counts) / n_problems for k, v in pass_at_k_table(counts, ks).items()}
    if not counts and n_problems:
        table = {"pass@1": 0.0}
    latencies = [r.latency_s for r in results if r.latency_s is not None]
    return {
        "pass_at_1": table.get("pass@1"),
        "pass_at_k": table,
        "avg_tokens": mean_or_none(r.num_tokens for r in results),
        "latency_s": generation_wall_s / n_problems if generation_wall_s is not None and n_problems else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "generation_wall_s": generation_wall_s,
        "n_problems": n_problems,
        "n_tasks_scored": len(per_task),
        "n_samples": len(results),
        "reasons": {reason: sum(r.reason == reason for r in results) for reason in REASONS},
        **({"missing_tasks": missing} if missing is not None else {}),
    }
