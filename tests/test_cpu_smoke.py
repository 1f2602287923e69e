"""The CPU smoke recipes for stages 3 and 4 run as a newcomer runs them from the README:
``asap sft --config configs/sft/cpu-smoke.yaml`` on a file `asap fine` compressed, and ``asap eval`` on
examples/eval-mini.jsonl, scoring its generations file (a known Pass@1) and generating with the demo
scorer on the transformers backend."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import asap_fast

ROOT = Path(__file__).resolve().parents[1]
EVAL_MINI = ROOT / "examples" / "eval-mini.jsonl"
EVAL_MINI_GENERATIONS = ROOT / "examples" / "eval-mini.generations.jsonl"
SAMPLE_TRACES = ROOT / "examples" / "sample-traces.jsonl"


def asap(*argv, cwd=None) -> subprocess.CompletedProcess:
    # never in the checkout: `python -m` there would import the source tree (no compiled core)
    proc = subprocess.run([sys.executable, "-m", "asap_fast.cli", *map(str, argv)], cwd=cwd or tempfile.mkdtemp(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_eval_mini_is_humaneval_format_and_its_reference_solutions_pass(tmp_path):
    problems = read_jsonl(EVAL_MINI)
    assert 5 <= len(problems) <= 8
    assert len({p["task_id"] for p in problems}) == len(problems)
    for p in problems:
        assert {"task_id", "prompt", "test", "entry_point"} <= set(p)
    # every reference solution passes its own tests through the real sandbox: the tests can be passed
    gens = tmp_path / "reference.jsonl"
    gens.write_text("".join(json.dumps({"task_id": p["task_id"], "completion":
                                        f"```python\n{p['prompt']}{p['canonical_solution']}```"}) + "\n"
                            for p in problems))
    out = tmp_path / "reference.json"
    asap("eval", "--benchmark", "humaneval", "--data", EVAL_MINI, "--generations", gens, "--out", out, "--quiet")
    assert json.loads(out.read_text())["pass_at_1"] == 1.0


def test_eval_mini_generations_score_their_known_pass_at_1(tmp_path):
    out = tmp_path / "results.json"
    asap("eval", "--benchmark", "humaneval", "--data", EVAL_MINI, "--generations", EVAL_MINI_GENERATIONS,
         "--out", out, "--quiet")
    results = json.loads(out.read_text())
    # 3 of 6 right; 2 wrong answers and 1 infinite loop stopped by the 3 s limit
    assert results["pass_at_1"] == 0.5
    assert results["reasons"]["passed"] == 3 and results["reasons"]["failed"] == 2
    assert results["reasons"]["timeout"] == 1
    by_task = {r["task_id"]: r["passed"] for r in results["results"]}
    assert [by_task[f"AsapMini/{i}"] for i in range(6)] == [True, False, True, False, True, False]
    assert results["avg_tokens"] == pytest.approx((120 + 95 + 210 + 80 + 150 + 61) / 6)


@pytest.mark.slow  # a model generates / trains: the slow tier
def test_eval_mini_generates_with_the_demo_scorer_on_transformers(tmp_path):
    out = tmp_path / "gen.json"
    asap("eval", "--benchmark", "humaneval", "--data", EVAL_MINI, "--model", asap_fast.DEFAULT_SCORER,
         "--backend", "hf", "--dtype", "float32", "--max-new-tokens", "16", "--out", out, "--quiet")
    results = json.loads(out.read_text())
    assert results["n_samples"] == 6 and results["n_problems"] == 6
    assert results["avg_tokens"] is not None and 0 < results["avg_tokens"] <= 16
    assert results["latency_s"] is not None and results["latency_s"] > 0
    generations = read_jsonl(tmp_path / "gen.generations.jsonl")
    assert sorted(g["task_id"] for g in generations) == [f"AsapMini/{i}" for i in range(6)]


@pytest.mark.slow  # a model generates / trains: the slow tier
def test_sft_cpu_smoke_config_trains_the_demo_scorer(tmp_path):
    # the recipe as the README runs it, on the short half of the sample traces (to keep the test short)
    rows = [r for r in read_jsonl(SAMPLE_TRACES) if len(r["generation"]) < 4000][:6]
    assert len(rows) >= 4
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fine = tmp_path / "fine.jsonl"
    asap("fine", traces, fine, "--budget", "256", "--quiet")
    run_dir = tmp_path / "sft"
    asap("sft", "--config", ROOT / "configs" / "sft" / "cpu-smoke.yaml", f"dataset={fine}",
         f"output_dir={run_dir}", f"model_name_or_path={asap_fast.DEFAULT_SCORER}", "max_steps=2", "--quiet")
    summary = json.loads((run_dir / "sft_summary.json").read_text())
    assert summary["samples_used"] >= 1 and summary["global_steps"] == 2, summary
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir)  # loadable


def test_sft_cpu_smoke_config_resolves_to_fp32_cpu():
    from asap_fast.sft.train import load_config

    cfg = load_config(ROOT / "configs" / "sft" / "cpu-smoke.yaml")
    assert cfg["bf16"] is False and cfg["use_cpu"] is True and cfg.get("fp16") in (None, False)
    assert 1 <= cfg["max_steps"] <= 10
    # relative to the checkout root, where the README runs it: the bundled demo scorer's files
    recipe_model = ROOT / cfg["model_name_or_path"]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (recipe_model / name).read_bytes() == (Path(asap_fast.DEFAULT_SCORER) / name).read_bytes()
