"""``asap eval`` end to end: scoring given generations, generating with a tiny transformers model,
the results JSON, and results that do not depend on the number of workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asap_fast.evaluation import (
    EvalConfig,
    Sample,
    get_benchmark,
    run_eval,
    score_samples,
)
from asap_fast.cli import main as asap_main
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def asap(argv: list[str]) -> int:
    """``asap eval ...`` in-process, through the real entry point (errors become one line and a status)."""
    return asap_main(argv)


def answer(code: str) -> str:
    return f"<think>\nfine\n</think>\n```python\n{code}\n```"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_scores_generations(tmp_path, capsys):
    rows = [json.loads(line) for line in (FIXTURES / "humaneval.jsonl").read_text().splitlines()]
    gens = [
        {"task_id": r["task_id"], "completion": answer(r["prompt"] + r["canonical_solution"]),
         "num_tokens": 100 * (i + 1)}
        for i, r in enumerate(rows)
    ]
    gens.append({"task_id": "Fixture/0", "completion": answer("def add(a, b):\n    return 0"), "num_tokens": 50})
    gen_path = write_jsonl(tmp_path / "gens.jsonl", gens)
    out = tmp_path / "results.json"
    rc = asap(["eval", "--benchmark", "humaneval", "--data", str(FIXTURES / "humaneval.jsonl"),
               "--generations", str(gen_path), "--out", str(out), "--workers", "2"])
    assert rc == 0
    results = json.loads(out.read_text())
    # Fixture/0: 1 of 2 samples passed; Fixture/1 and /2: 1 of 1
    assert results["pass_at_1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert results["avg_tokens"] == pytest.approx((100 + 200 + 300 + 50) / 4)
    assert results["latency_s"] is None  # no generation in this run
    assert [(r["task_id"], r["sample_index"], r["passed"]) for r in results["results"]] == [
        ("Fixture/0", 0, True), ("Fixture/1", 0, True), ("Fixture/2", 0, True), ("Fixture/0", 1, False)]
    assert results["results"][3]["reason"] == "failed"
    assert results["config"]["benchmark"] == "humaneval" and results["config"]["timeout"] == 3.0
    assert results["config"]["max_new_tokens"] == 6144
    assert results["reasons"] == {"passed": 3, "failed": 1, "timeout": 0, "error": 0, "no code": 0}
    assert "sandbox" in results["environment"]
    assert "Pass@1 83.33" in capsys.readouterr().err


def test_eval_fences_and_partial_generations_score_as_the_reference(tmp_path, capsys):
    """Plain and ```Python fences count; an unclosed block does not (the raw output runs and
    fails); a problem without a generation counts as failed, so a partial file never scores 100%."""
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in (FIXTURES / "humaneval.jsonl").read_text().splitlines()}

    def solution(task):
        return rows[task]["prompt"] + rows[task]["canonical_solution"]

    gens = write_jsonl(tmp_path / "gens.jsonl", [
        {"task_id": "Fixture/0", "completion": "<think>\nok\n</think>\n```\n" + solution("Fixture/0") + "```"},
        {"task_id": "Fixture/1", "completion": "<think>\nok\n</think>\n```Python\n" + solution("Fixture/1") + "```"},
    ])
    data = ["--benchmark", "humaneval", "--data", str(FIXTURES / "humaneval.jsonl"), "--workers", "2"]
    out = tmp_path / "full.json"
    assert asap(["eval", *data, "--generations", str(gens), "--out", str(out)]) == 0
    full = json.loads(out.read_text())
    assert full["pass_at_1"] == pytest.approx(2 / 3)  # over all 3 problems: Fixture/2 has no generation
    assert full["missing_tasks"] == ["Fixture/2"] and full["n_problems"] == 3 and full["subset"] is None
    assert "1 problems without a generation counted as failed" in capsys.readouterr().err

    out = tmp_path / "subset.json"
    assert asap(["eval", *data, "--generations", str(gens), "--out", str(out), "--subset"]) == 0
    subset = json.loads(out.read_text())
    assert subset["pass_at_1"] == 1.0 and subset["n_problems"] == 2 and subset["missing_tasks"] == []
    assert subset["subset"] == {"selected_by": ["--subset (the problems with a generation)"], "n_problems": 2,
                                "benchmark_problems": 3, "task_ids": ["Fixture/0", "Fixture/1"]}
    assert "SUBSET: 2 of the benchmark's 3 problems" in capsys.readouterr().err

    out = tmp_path / "limit.json"
    assert asap(["eval", *data, "--generations", str(gens), "--out", str(out), "--limit", "1"]) == 0
    limited = json.loads(out.read_text())
    assert limited["pass_at_1"] == 1.0 and limited["subset"]["selected_by"] == ["--limit 1"]

    unclosed = write_jsonl(tmp_path / "unclosed.jsonl", [
        {"task_id": "Fixture/0", "completion": "<think>\nok\n</think>\n```python\n" + solution("Fixture/0")},
    ])
    out = tmp_path / "unclosed.json"
    assert asap(["eval", *data, "--generations", str(unclosed), "--out", str(out), "--subset"]) == 0
    [result] = json.loads(out.read_text())["results"]
    assert result["passed"] is False and result["reason"] == "no code"


def test_eval_livecodebench_release_and_no_extract(tmp_path):
    gens = [
        {"task_id": "3000", "completion": "class Solution:\n    def sumOf(self, nums):\n        return sum(nums)"},
        {"task_id": "3100", "completion": "class Solution:\n    def twoSmallest(self, nums):\n        return nums[:2]"},
        {"task_id": "abc380_c", "completion": "print(input()[::-1])"},
        {"task_id": "abc300_a", "completion": "print(1)"},  # outside v4_v5: skipped
    ]
    out = tmp_path / "lcb.json"
    rc = asap(["eval", "--benchmark", "lcb", "--data", str(FIXTURES / "livecodebench"), "--release", "v4_v5",
               "--generations", str(write_jsonl(tmp_path / "g.jsonl", gens)), "--no-extract", "--out", str(out),
               "--quiet"])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results["n_problems"] == 3 and results["n_samples"] == 3
    assert [r["passed"] for r in results["results"]] == [True, False, True]
    assert results["pass_at_1"] == pytest.approx(2 / 3)


def test_eval_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one of --model"):
        run_eval(EvalConfig(benchmark="humaneval", data=str(FIXTURES / "humaneval.jsonl"),
                            out=str(tmp_path / "o.json")))


def test_eval_vllm_missing_exits_with_a_clear_error(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    rc = asap(["eval", "--benchmark", "humaneval", "--data", str(FIXTURES / "humaneval.jsonl"),
               "--model", str(tmp_path), "--backend", "vllm", "--out", str(tmp_path / "o.json")])
    assert rc == 2
    assert "needs vLLM" in capsys.readouterr().err


def test_eval_generates_with_a_tiny_transformers_model(tmp_path):
    model_dir = tmp_path / "tiny-model"
    tok = tiny_tokenizer()
    tiny_causal_lm(len(tok), seed=2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "he.json"
    rc = asap(["eval", "--benchmark", "humaneval", "--data", str(FIXTURES / "humaneval.jsonl"), "--model",
               str(model_dir), "--backend", "hf", "--max-new-tokens", "5", "--batch-size", "2", "--out", str(out),
               "--quiet"])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results["n_problems"] == 3 and len(results["results"]) == 3
    assert all(r["reason"] == "no code" and not r["passed"] for r in results["results"])  # random weights
    assert results["pass_at_1"] == 0.0
    assert all(1 <= r["num_tokens"] <= 5 for r in results["results"])
    assert 1 <= results["avg_tokens"] <= 5
    assert results["generation_wall_s"] > 0
    assert results["latency_s"] == pytest.approx(results["generation_wall_s"] / 3)
    assert results["latency_p50_s"] > 0 and results["latency_p95_s"] >= results["latency_p50_s"]
    assert results["generation"]["backend"] == "hf"
    saved = [json.loads(line) for line in Path(results["generation"]["generations_file"]).read_text().splitlines()]
    assert [s["task_id"] for s in saved] == ["Fixture/0", "Fixture/1", "Fixture/2"]
    assert [s["num_tokens"] for s in saved] == [r["num_tokens"] for r in results["results"]]
    # the saved generations can be scored again on their own
    rc = asap(["eval", "--benchmark", "humaneval", "--data", str(FIXTURES / "humaneval.jsonl"), "--generations",
               results["generation"]["generations_file"], "--out", str(tmp_path / "again.json"), "--quiet"])
    again = json.loads((tmp_path / "again.json").read_text())
    assert rc == 0 and again["avg_tokens"] == results["avg_tokens"] and again["pass_at_1"] == 0.0


def test_results_do_not_depend_on_the_number_of_workers():
    bench = get_benchmark("humaneval_plus")
    problems = bench.load(FIXTURES / "humanevalplus.jsonl")
    samples = []
    for p in problems:
        right = answer(p.record["prompt"] + p.record["canonical_solution"])
        samples += [Sample(p.task_id, right), Sample(p.task_id, "no code at all")]
    samples += [
        Sample("Fixture/0", answer("def add(a, b):\n    return a - b")),
        Sample("Fixture/1", answer("def running_max(numbers):\n    raise RuntimeError('boom')")),
        Sample("Fixture/2", answer("import os\nos._exit(0)")),
        Sample("Fixture/3", answer("def mean(numbers):\n    while True:\n        pass")),
    ]
    verdicts = {}
    for workers in (1, 4):
        results = score_samples(bench, problems, samples, workers=workers, timeout=0.5)
        verdicts[workers] = [(r.task_id, r.sample_index, r.passed, r.reason) for r in results]
    assert verdicts[1] == verdicts[4]
    assert [v[3] for v in verdicts[1][-4:]] == ["failed", "error", "error", "timeout"]
    assert sum(v[2] for v in verdicts[1]) == 5
