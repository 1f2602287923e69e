"""Evaluation sandbox: time per sample by layer and benchmark shape against a bare subprocess, and
the forging attacks of issue 16 tried on every benchmark (how many the sandbox contained).

Time per sample: a correct completion of a fixture problem, scored with ``score_samples`` over a
pool of W workers; per sample = wall time / samples. Shapes: ``humaneval`` (assertion-style: two
sandboxes, the candidate and the test), ``humaneval_plus`` (input/output: one sandbox, outputs
compared outside). Providers: ``bwrap`` and ``namespaces`` (the fallback layer), each with its
per-sample cgroup where the machine allows; ``bare_subprocess`` runs the same HumanEval check
program with ``subprocess.run([python, program])`` and no isolation at all (the obvious
alternative; what the sandbox costs is the ratio).

Attacks: the seven ways to forge a pass from ``tests/test_eval_sandbox_attacks.py`` (loaded from
that file, so the benchmark and the tests try the same code) against each benchmark's fixture
problem with a wrong solution; contained = the sample did not pass.

    python benchmarks/bench_sandbox.py
    python benchmarks/bench_sandbox.py --samples 32 --workers 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import append_rows, make_row, percentiles, print_table  # noqa: E402

from asap_fast.evaluation import Sample, SandboxLimits, get_benchmark, isolation_report, score_samples  # noqa: E402
from asap_fast.evaluation.sandbox import _bwrap_works  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "eval"


def correct_samples(bench_name: str, n: int) -> list[Sample]:
    name = "humaneval.jsonl" if bench_name == "humaneval" else "humanevalplus.jsonl"
    rows = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]
    return [Sample(rows[i % len(rows)]["task_id"], rows[i % len(rows)]["prompt"] + rows[i % len(rows)]["canonical_solution"])
            for i in range(n)]


def bare_programs(n: int) -> list[str]:
    rows = [json.loads(line) for line in (FIXTURES / "humaneval.jsonl").read_text().splitlines()]
    return [f"{r['prompt']}{r['canonical_solution']}\n\n{r['test']}\n\ncheck({r['entry_point']})\n"
            for r in (rows[i % len(rows)] for i in range(n))]


def run_bare(texts: list[str], workers: int, timeout: float) -> None:
    def one(text: str) -> bool:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "program.py")
            with open(path, "w") as f:
                f.write(text)
            try:
                return subprocess.run([sys.executable, path], cwd=d, capture_output=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL).returncode == 0
            except subprocess.TimeoutExpired:
                return False

    with ThreadPoolExecutor(max_workers=workers) as pool:
        assert all(pool.map(one, texts))


def load_attacks():
    spec = importlib.util.spec_from_file_location("attacks", ROOT / "tests" / "test_eval_sandbox_attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attack_table(timeout: float, workers: int) -> tuple[list[list[str]], int, int]:
    mod = load_attacks()
    table, tried, contained = [], 0, 0
    for bench_name in mod.DATA:
        codes = [mod.ALWAYS_EQUAL[bench_name] if a == "always_equal" else p + "\n" + mod.WRONG[bench_name]
                 for a, p in mod.FORGE.items()]
        results = mod._score(bench_name, codes, workers=workers, timeout=timeout)
        for attack, r in zip(mod.FORGE, results, strict=True):
            tried += 1
            contained += not r.passed
            table.append([bench_name, attack, "contained" if not r.passed else "PASSED", r.reason, r.detail[:60]])
    return table, tried, contained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="samples per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts (default: 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--no-attacks", action="store_true", help="skip the attack table")
    parser.add_argument("--no-csv", action="store_true", help="print only, do not append to results.csv")
    args = parser.parse_args()
    report = isolation_report()
    print("sandbox:", {k: report.get(k) for k in ("layer", "cgroup", "uid")}, "| bwrap:", _bwrap_works() or "runs")
    layers = ["bwrap", "namespaces"] if _bwrap_works() is None else ["namespaces"]
    device = torch.device("cpu")
    rows, table = [], []
    for workers in args.workers:
        bare = []
        texts = bare_programs(args.samples)
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_bare(texts, workers, args.timeout)
            bare.append((time.perf_counter() - start) / args.samples * 1000)
        bare_ms = percentiles(bare)
        rows.append(make_row("sandbox", "bare_subprocess", f"humaneval,workers={workers}", "-", "time_per_sample",
                             "ms", bare_ms, device))
        table.append(["bare_subprocess", "humaneval (one program)", str(workers), f"{bare_ms[1]:.0f}", "1.00"])
        for layer in layers:
            limits = SandboxLimits(layer=layer)
            for bench_name in ("humaneval", "humaneval_plus"):
                bench = get_benchmark(bench_name)
                problems = bench.load(FIXTURES / ("humaneval.jsonl" if bench_name == "humaneval" else "humanevalplus.jsonl"))
                samples = correct_samples(bench_name, args.samples)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    results = score_samples(bench, problems, samples, extract=False, workers=workers,
                                            timeout=args.timeout, limits=limits)
                    times.append((time.perf_counter() - start) / args.samples * 1000)
                    assert all(r.passed for r in results), [r.detail for r in results if not r.passed]
                stats = percentiles(times)
                rows.append(make_row("sandbox", layer, f"{bench_name},workers={workers}", "-", "time_per_sample",
                                     "ms", stats, device))
                table.append([layer, bench_name, str(workers), f"{stats[1]:.0f}", f"{stats[1] / bare_ms[1]:.2f}"])
    print_table(["provider", "shape", "workers", "ms/sample p50", "vs bare"], table)
    if not args.no_attacks:
        attacks, tried, contained = attack_table(5.0, max(args.workers))
        print_table(["benchmark", "attack", "outcome", "reason", "detail"], attacks)
        print(f"forging attacks: {contained}/{tried} contained")
        rows.append(make_row("sandbox", "asap_fast", "forging_attacks", "-", "contained", "count",
                             (contained, contained, contained), device))
    if not args.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    main()
