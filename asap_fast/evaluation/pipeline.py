"""The whole evaluation: load a benchmark, generate (or read generations), score, write results."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asap_fast.evaluation.benchmarks import Problem, get_benchmark
from asap_fast.evaluation.sandbox import GiB, SandboxLimits, isolation_report
from asap_fast.evaluation.score import Sample, score_samples, summarize

__all__ = ["EvalConfig", "read_generations", "run_eval", "write_generations"]


@dataclass
class EvalConfig:
    """Everything ``asap eval`` takes; see ``asap eval --help`` for each field."""

    benchmark: str
    data: str
    out: str
    model: str | None = None
    backend: str = "auto"
    generations: str | None = None
    max_new_tokens: int | None = None
    timeout: float = 3.0
    sample_timeout: float | None = None  # None: each benchmark's own rule (LiveCodeBench: LCB's)
    workers: int | None = None
    memory_gb: float = 4.0
    release: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    limit: int | None = None
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    trust_remote_code: bool = False
    tokenizer: str | None = None
    extract: bool = True
    save_generations: str | None = None
    tokenskip_ratio: float | None = None  # TokenSkip models: the ratio written after the question
    tokenskip_separator: str = "<|eot_id|>"
    # TokenSkip's evaluation.py scales a math benchmark's max_new_tokens by the ratio (not code's)
    tokenskip_scale_budget: bool = True
    subset: bool = False

    def validate(self) -> None:
        if (self.model is None) == (self.generations is None):
            raise ValueError("give exactly one of --model (generate, then score) or --generations (score only)")
        for name in ("timeout", "sample_timeout", "memory_gb"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.tokenskip_ratio is not None:
            if self.model is None:
                raise ValueError("--tokenskip-ratio shapes the generation prompt; it needs --model")
            if not 0 < self.tokenskip_ratio <= 1:
                raise ValueError(f"--tokenskip-ratio must be in (0, 1], got {self.tokenskip_ratio}")
        if self.subset and self.generations is None:
            raise ValueError("subset scores the problems of a generations file; it needs --generations")


def read_generations(path: str | Path) -> list[Sample]:
    """JSONL rows with task_id and completion (several rows per task allowed); optional
    num_tokens, latency_s, finish_reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generations file not found: {path}")
    samples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e})") from None
            if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
                raise ValueError(f"{path}:{number}: expected an object with task_id and completion")
            if not isinstance(row["completion"], str):
                raise ValueError(f"{path}:{number}: completion must be a string")
            tokens = row.get("num_tokens")
            samples.append(Sample(str(row["task_id"]), row["completion"],
                                  int(tokens) if tokens is not None else None,
                                  row.get("latency_s"), row.get("finish_reason")))
    return samples


def write_generations(path: str | Path, samples: list[Sample]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")


def user_contents(cfg: EvalConfig, problems: list[Problem]) -> list[str]:
    """The user turn of each problem: the benchmark's prompt, followed by the ratio for a TokenSkip
    model (``tokenskip_ratio``: the format it was trained on, asap_fast.methods.tokenskip)."""
    if cfg.tokenskip_ratio is None:
        return [p.prompt for p in problems]
    from asap_fast.methods.tokenskip import tokenskip_prompt

    return [tokenskip_prompt(p.prompt, cfg.tokenskip_ratio, cfg.tokenskip_separator) for p in problems]


def tokenskip_max_new_tokens(cfg: EvalConfig, bench, max_new_tokens: int) -> int:
    """A TokenSkip model on a math benchmark generates at most int(max_new_tokens * ratio) tokens, as
    the authors' evaluation.py does for math (``tokenskip_scale_budget``, on by default)."""
    from asap_fast.evaluation.math import MathBenchmark

    if cfg.tokenskip_ratio is None or not cfg.tokenskip_scale_budget or not isinstance(bench, MathBenchmark):
        return max_new_tokens
    return max(1, int(max_new_tokens * cfg.tokenskip_ratio))


def _generate(cfg: EvalConfig, problems: list[Problem], max_new_tokens: int, log) -> tuple[list[Sample], float, dict]:
    from asap_fast.evaluation.generate import build_prompt, load_generator

    generator = load_generator(
        cfg.backend, cfg.model, tensor_parallel_size=cfg.tensor_parallel_size, dtype=cfg.dtype,
        max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed,
        batch_size=cfg.batch_size, trust_remote_code=cfg.trust_remote_code,
    )
    try:
        prompts = [build_prompt(generator.tokenizer, content) for content in user_contents(cfg, problems)]
        log(f"generating {len(prompts)} x {cfg.num_samples} with {generator.backend} (max {max_new_tokens} new tokens)")
        run = generator.generate(prompts, max_new_tokens=max_new_tokens, num_samples=cfg.num_samples,
                                 temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    finally:
        generator.close()
    samples = [
        Sample(p.task_id, g.text, g.num_tokens, g.latency_s, g.finish_reason)
        for p, gens in zip(problems, run.samples, strict=True)
        for g in gens
    ]
    info = {"backend": run.backend, **run.info}
    del generator
    return samples, run.wall_s, info


def _count_tokens(tokenizer_path: str, samples: list[Sample]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    for s in samples:
        if s.num_tokens is None:
            s.num_tokens = len(tok(s.completion, add_special_tokens=False)["input_ids"])


def run_eval(cfg: EvalConfig, *, log=None) -> dict:
    """Run the evaluation described by ``cfg``; writes the results JSON to ``cfg.out`` (and, when
    generating, the generations JSONL next to it) and returns the results.

    Pass@1 is over every problem of the benchmark file (after the LiveCodeBench release / date
    filters, which define the benchmark): a problem without a generation counts as failed and is
    listed in ``missing_tasks``. A run over part of it (``limit``, or ``subset``: only the
    problems the generations file covers) says so in ``subset`` (how the problems were selected,
    how many of the benchmark's, their task ids); ``subset`` is null for a whole benchmark.
    """
    log = log or (lambda msg: None)
    cfg.validate()
    bench = get_benchmark(cfg.benchmark)
    options = {"release": cfg.release, "start_date": cfg.start_date, "end_date": cfg.end_date}
    benchmark_problems = bench.load(cfg.data, **options)
    problems = benchmark_problems
    selected_by = []  # why the scored problems are fewer than the benchmark's, said in the results
    if cfg.limit is not None and cfg.limit < len(problems):
        problems = problems[: cfg.limit]
        selected_by.append(f"--limit {cfg.limit}")
    if not problems:
        raise ValueError(f"no {bench.name} problems in {cfg.data} (after filters)")
    max_new_tokens = tokenskip_max_new_tokens(cfg, bench, cfg.max_new_tokens or bench.max_new_tokens)
    generation_wall, gen_info = None, {}
    if cfg.model is not None:
        samples, generation_wall, gen_info = _generate(cfg, problems, max_new_tokens, log)
        gen_path = cfg.save_generations or str(Path(cfg.out).with_suffix("")) + ".generations.jsonl"
        write_generations(gen_path, samples)
        gen_info["generations_file"] = gen_path
        log(f"generated in {generation_wall:.1f} s; generations saved to {gen_path}")
    else:
        samples = read_generations(cfg.generations)
        if any(v is not None for v in (cfg.limit, cfg.release, cfg.start_date, cfg.end_date)):
            # a filtered benchmark scores only its own tasks' generations
            wanted = {p.task_id for p in problems}
            kept = [s for s in samples if s.task_id in wanted]
            if len(kept) < len(samples):
                log(f"skipping {len(samples) - len(kept)} generations of tasks outside the selection")
            samples = kept
        if cfg.subset:
            with_generation = {s.task_id for s in samples}
            covered = [p for p in problems if p.task_id in with_generation]
            if not covered:
                raise ValueError(f"--subset: no generation in {cfg.generations} is for a {bench.name} problem")
            if len(covered) < len(problems):
                problems = covered
                selected_by.append("--subset (the problems with a generation)")
        if cfg.tokenizer:
            _count_tokens(cfg.tokenizer, samples)
    limits = SandboxLimits(memory_bytes=int(cfg.memory_gb * GiB))
    log(f"scoring {len(samples)} samples of {len({s.task_id for s in samples})} tasks "
        f"({cfg.workers or os.cpu_count()} workers, {cfg.timeout:g} s timeout)")
    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log(f"executed {done}/{total}")

    start = time.perf_counter()
    # Each sample's result lands here as it is decided, so a crash later loses none of them.
    journal = Path(cfg.out).with_name(Path(cfg.out).name + ".samples.jsonl")
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text("", encoding="utf-8")
    if getattr(bench, "kind", "code") == "math":  # answers compared by math-verify, nothing executed
        results = bench.score(problems, samples, extract=cfg.extract, progress=progress)
    else:
        results = score_samples(bench, problems, samples, timeout=cfg.timeout, sample_timeout=cfg.sample_timeout,
                                workers=cfg.workers, limits=limits, extract=cfg.extract, progress=progress,
                                journal=journal)
    scoring_wall = time.perf_counter() - start
    # Pass@1 is over every selected problem; one without a generation counts as failed.
    summary = summarize(results, task_ids=[p.task_id for p in problems], generation_wall_s=generation_wall)
    if getattr(bench, "kind", "code") == "math":
        summary["reasons"] = bench.reason_counts(results)
    if summary["missing_tasks"]:
        log(f"{len(summary['missing_tasks'])} problems have no generation and count as failed")
    config = asdict(cfg)
    config.update(benchmark=bench.name, max_new_tokens=max_new_tokens)
    subset = None
    if selected_by:
        subset = {"selected_by": selected_by, "n_problems": len(problems),
                  "benchmark_problems": len(benchmark_problems), "task_ids": [p.task_id for p in problems]}
    payload = {
        "benchmark": bench.name,
        **summary,
        "benchmark_problems": len(benchmark_problems),
        "subset": subset,
        "scoring_wall_s": scoring_wall,
        "generation": gen_info,
        "config": config,
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "sandbox": isolation_report()},
        "results": [r.to_dict() for r in results],
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out)
    journal.unlink(missing_ok=True)  # everything in it is in OUT now
    return payload
