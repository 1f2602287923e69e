"""Math benchmarks: loaders for the published GSM8K / MATH-500 / AIME files, the last balanced
\\boxed{} as the answer, math-verify's equivalence, and `asap eval` on math end to end (the real
traces' own answers included)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("math_verify")

from asap_fast.cli import main  # noqa: E402
from asap_fast.evaluation import get_benchmark, is_equivalent, last_boxed  # noqa: E402
from asap_fast.evaluation.pipeline import EvalConfig, user_contents  # noqa: E402


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------- \boxed{}


@pytest.mark.parametrize("text,answer", [
    (r"so \boxed{4}.", "4"),
    (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal
    (r"\boxed{x^{2}+\sqrt{y_{1}}} and a cut-off \boxed{\frac{1}{", r"x^{2}+\sqrt{y_{1}}"),
    (r"The answer is $\boxed 5$.", "5"),
    (r"\fbox{7}", "7"),
    (r"\boxed{ 12 }", "12"),
    ("no box at all", None),
    (r"\boxedx{3}", None),
    (r"\boxed{never closed", None),
])
def test_last_boxed(text, answer):
    assert last_boxed(text) == answer


balanced = st.recursive(
    st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=8),
    lambda inner: st.builds(lambda a, b: a + "{" + b + "}", inner, inner), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(before=balanced, content=balanced, after=balanced)
def test_last_boxed_returns_any_balanced_content(before, content, after):
    text = before + r"\boxed{" + content + "}" + after.replace("boxed", "b")
    assert last_boxed(text) == content.strip()


@pytest.mark.parametrize("reference,answer,equal", [
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    ("3", "x=3", True),
    ("x=3", "3", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", True),
    ("1000", "1,000", True),
    (r"\sqrt{2}", r"2^{1/2}", True),
    ("72", "72.0", True),
    (r"\frac{1}{2}", "0.51", False),
    ("3", "4", False),
    ("3", "x=4", False),
])
def test_math_verify_decides_equivalent_forms(reference, answer, equal):
    assert is_equivalent(reference, answer) is equal


# ------------------------------------------------------------------------------------ loaders


def test_loaders_and_budgets(tmp_path):
    gsm = write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = <<48/2=24>>24.\n#### 1,072"},
        {"question": "Weng earns $12 an hour...", "answer": "#### 10"}])
    problems = get_benchmark("gsm8k").load(gsm)
    assert [p.task_id for p in problems] == ["gsm8k/0", "gsm8k/1"]
    assert problems[0].record["_answer"] == "1072"
    assert problems[0].prompt == ("Natalia sold 48 clips...\nPlease reason step by step, and put your final answer "
                                  "within \\boxed{}.")
    math500 = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Convert (0,3) to polar.", "solution": "...", "answer": r"\left( 3, \frac{\pi}{2} \right)",
         "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}])
    (problem,) = get_benchmark("math500").load(math500)
    assert problem.task_id == "test/precalculus/807.json" and problem.record["_answer"].startswith(r"\left( 3")
    original = write_jsonl(tmp_path / "math.jsonl", [{"problem": "2+2?", "solution": r"It is $\boxed{4}$.",
                                                      "level": "Level 1", "type": "Algebra"}])
    assert get_benchmark("math_500").load(original)[0].record["_answer"] == "4"
    for rows, task_id in [
        ([{"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "url": "u"}], "60"),  # AI-MO / H4
        ([{"ID": "2024-II-4", "Problem": "Find x.", "Solution": "...", "Answer": 33}], "2024-II-4"),  # Maxwell-Jia
        ([{"question": "Find x.", "answer": "70"}], "aime/0"),  # opencompass AIME2025
    ]:
        (problem,) = get_benchmark("aime24").load(write_jsonl(tmp_path / "aime.jsonl", rows))
        assert problem.task_id == task_id and problem.prompt.startswith("Find x.\nPlease reason")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "Q?", "answer": "x\n#### 5"}]), tmp_path / "gsm.parquet")
    assert get_benchmark("gsm").load(tmp_path / "gsm.parquet")[0].record["_answer"] == "5"
    assert [get_benchmark(n).max_new_tokens for n in ("gsm8k", "math500", "aime")] == [2048, 4096, 10240]
    with pytest.raises(ValueError, match="needs one of question"):
        get_benchmark("gsm8k").load(write_jsonl(tmp_path / "bad.jsonl", [{"problem": "no question field"}]))


# --------------------------------------------------------------------------------- asap eval


def test_eval_math_from_generations(tmp_path, capsys):
    data = write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Half of one?", "answer": "#### 0.5"},
        {"question": "x with 2x = 6?", "answer": "#### 3"},
        {"question": "Four?", "answer": "#### 4"}])
    gens = write_jsonl(tmp_path / "g.jsonl", [
        {"task_id": "gsm8k/0", "completion": "<think>\nhalf\n</think>\nIt is $\\boxed{\\frac{1}{2}}$.", "num_tokens": 10},
        {"task_id": "gsm8k/1", "completion": "<think>\n\\boxed{2}? no\n</think>\n\\boxed{x=3}", "num_tokens": 20},
        {"task_id": "gsm8k/2", "completion": "<think>\nthinking ran out", "num_tokens": 2048}])
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "gsm8k", "--data", str(data), "--generations", str(gens), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["reason"] for r in results["results"]] == ["passed", "passed", "no answer"]
    assert results["pass_at_1"] == pytest.approx(2 / 3)
    assert results["avg_tokens"] == pytest.approx((10 + 20 + 2048) / 3)
    assert results["reasons"]["no answer"] == 1 and results["config"]["max_new_tokens"] == 2048
    assert "gsm8k: Pass@1 66.67" in capsys.readouterr().err


def test_real_traces_answers(cot_traces, tmp_path):
    """The shared MATH traces as a MATH-500 file and their own generations: math-verify accepts the
    answers R1 boxed, and every verdict is math-verify's on the last \\boxed{}."""
    math_rows = [r for r in cot_traces if r["kind"] == "math" and r.get("answer") and "</think>" in r["generation"]]
    data = write_jsonl(tmp_path / "m.jsonl", [{"problem": r["prompt"], "answer": r["answer"], "unique_id": r["id"]}
                                              for r in math_rows])
    gens = write_jsonl(tmp_path / "g.jsonl", [{"task_id": r["id"], "completion": r["generation"]} for r in math_rows])
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "math500", "--data", str(data), "--generations", str(gens), "--out", str(out),
                 "--quiet"]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == len(math_rows) >= 90
    for row, result in zip(math_rows, results):
        boxed = last_boxed(row["generation"])
        assert result["passed"] == (boxed is not None and is_equivalent(row["answer"], boxed))
    # 76 of 110 on math-verify 0.9: the manncodes traces include wrong answers (2864 for 2865, ...)
    assert sum(r["passed"] for r in results) / len(results) > 0.6
    assert sum(r["reason"] == "no answer" for r in results) < 10  # a few end in prose, not \boxed{}


def test_tokenskip_prompt_at_evaluation(tmp_path):
    data = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q?", "answer": "#### 1"}])
    problems = get_benchmark("gsm8k").load(data)
    cfg = EvalConfig(benchmark="gsm8k", data=str(data), out=str(tmp_path / "r.json"), model="m", tokenskip_ratio=0.6)
    assert user_contents(cfg, problems) == [problems[0].prompt + "<|eot_id|>0.6<|eot_id|>"]
    plain = EvalConfig(benchmark="gsm8k", data=str(data), out=str(tmp_path / "r.json"), model="m")
    assert user_contents(plain, problems) == [problems[0].prompt]
    with pytest.raises(ValueError, match="needs --model"):
        EvalConfig(benchmark="gsm8k", data=str(data), out="r.json", generations="g", tokenskip_ratio=0.6).validate()


def test_eval_generates_math_with_a_tokenskip_ratio(tmp_path):
    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

    model_dir = tmp_path / "tiny-model"
    tok = tiny_tokenizer()
    tiny_causal_lm(len(tok), seed=2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q?", "answer": "#### 1"}])
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "gsm8k", "--data", str(data), "--model", str(model_dir), "--backend", "hf",
                 "--max-new-tokens", "4", "--tokenskip-ratio", "0.7", "--out", str(out), "--quiet"]) == 0
    results = json.loads(out.read_text())
    assert results["config"]["tokenskip_ratio"] == 0.7 and results["results"][0]["reason"] == "no answer"
