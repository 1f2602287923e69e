"""Loaders for each benchmark's published format, and exact pass@1 for known-correct and
known-wrong completions on the fixture problems (tests/fixtures/eval, written for these tests)."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import shutil
import zlib
from pathlib import Path

import pytest

from asap_fast.evaluation import get_benchmark
from asap_fast.evaluation.benchmarks import (
    HUMANEVAL_PROMPT,
    decode_lcb_tests,
    read_rows,
)
from asap_fast.evaluation.score import Sample, score_samples, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def answer(code: str) -> str:
    """A generation in the R1 shape: thinking, then the code in a ```python block."""
    draft = "```python\nprint('a draft inside the thinking')\n```"
    return f"<think>\nLet me think.\n\n{draft}\n</think>\n\nHere it is:\n```python\n{code}\n```\n"


def pass_at_1(bench, problems, samples, **kw) -> tuple[float, list]:
    results = score_samples(bench, problems, samples, workers=2, **kw)
    return summarize(results, n_problems=len(problems))["pass_at_1"], results


# ------------------------------------------------------------------------------------- HumanEval


# The reference's user messages, restated from its facts (not from our constants).
REFERENCE_HUMANEVAL = (
    "You will be given a competitive programming problem.\nPlease continue to complete the function. You are "
    "not allowed to modify the given code and do the completion only. Please return all completed function in "
    "a code block. Here is the given code to do completion:\n```python\n{prompt}\n```"
)
REFERENCE_LEETCODE = (
    "You will be given a competitive programming problem.\n{problem_description}\n\nYou will use the following "
    "starter code to write the solution to the problem and enclose your code within delimiters.\n```python\n"
    "{starter_code}\n```"
)


@pytest.mark.parametrize("name, file", [("humaneval", "humaneval.jsonl"), ("humaneval_plus", "humanevalplus.jsonl")])
def test_humaneval_prompts_are_the_references_bytes(name, file):
    bench = get_benchmark(name)
    problems = bench.load(FIXTURES / file)
    for p in problems:
        # the dataset's prompt unstripped: its trailing newline stays before the closing fence
        assert p.prompt == REFERENCE_HUMANEVAL.format(prompt=p.record["prompt"])
        assert p.record["prompt"].endswith("\n") and p.prompt.endswith(p.record["prompt"] + "\n```")
    assert HUMANEVAL_PROMPT == REFERENCE_HUMANEVAL
    assert bench.max_new_tokens == 6144


def test_humaneval_loader_and_prompt():
    bench = get_benchmark("humaneval")
    problems = bench.load(FIXTURES / "humaneval.jsonl")
    assert [p.task_id for p in problems] == ["Fixture/0", "Fixture/1", "Fixture/2"]
    assert problems[0].prompt.startswith("You will be given a competitive programming problem.\nPlease continue")


def test_humaneval_loader_reads_gzip(tmp_path):
    gz = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((FIXTURES / "humaneval.jsonl").read_text())
    assert len(get_benchmark("humaneval").load(gz)) == 3


def test_humaneval_loader_names_missing_fields(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f(): pass"}) + "\n")
    with pytest.raises(ValueError, match="missing field.*entry_point"):
        get_benchmark("humaneval").load(bad)


def test_humaneval_exact_pass_at_1():
    bench = get_benchmark("humaneval")
    problems = bench.load(FIXTURES / "humaneval.jsonl")
    correct = [Sample(p.task_id, answer(p.record["prompt"] + p.record["canonical_solution"])) for p in problems]
    score, results = pass_at_1(bench, problems, correct)
    assert score == 1.0, [r.detail for r in results]
    wrong = [
        Sample("Fixture/0", answer("def add(a, b):\n    return a * b")),                   # wrong answer
        Sample("Fixture/1", answer("def running_max(numbers):\n    return numbers")),     # wrong answer
        Sample("Fixture/2", "<think>\nno idea\n</think>\nI cannot solve it."),              # no code
    ]
    score, results = pass_at_1(bench, problems, wrong)
    assert score == 0.0
    assert [r.reason for r in results] == ["failed", "failed", "no code"]
    assert "the raw output was executed" in results[2].detail
    mixed = correct[:2] + wrong[2:]
    assert pass_at_1(bench, problems, mixed)[0] == pytest.approx(2 / 3)


def test_humaneval_program_is_prompt_then_code():
    """The reference executes prompt + "\n" + code: code that relies on the prompt's imports runs
    (and here fails on its merits), code that breaks at definition is an error."""
    bench = get_benchmark("humaneval")
    problems = bench.load(FIXTURES / "humaneval.jsonl")
    code = "def running_max(numbers: List[int]) -> List[int]:\n    return numbers"
    [result] = score_samples(bench, problems, [Sample("Fixture/1", answer(code))], workers=1)
    assert result.reason == "failed" and "AssertionError" in result.detail
    broken = "def running_max(numbers: Lisst[int]) -> List[int]:\n    return numbers"
    [result] = score_samples(bench, problems, [Sample("Fixture/1", answer(broken))], workers=1)
    assert result.reason == "error" and "NameError" in result.detail
@pytest.mark.parametrize("name, file", [("humaneval", "humaneval.jsonl"), ("humaneval_plus", "humanevalplus.jsonl")])
def test_humaneval_program_starts_with_the_prompt(name, file):
    """The reference runs prompt + "\\n" + the extracted code: code that relies on the prompt's
    imports passes, and so does a body-only completion whose indentation the block keeps."""
    bench = get_benchmark(name)
    problems = bench.load(FIXTURES / file)
    solution = "    result, best = [], None\n    for x in numbers:\n        best = x if best is None else max(best, x)\n" \
               "        result.append(best)\n    return result"
    samples = [
        Sample("Fixture/1", answer("def running_max(numbers: List[int]) -> List[int]:\n" + solution)),
        Sample("Fixture/1", "<think>\nok\n</think>\n```Python\n" + solution + "\n```"),  # the body only
    ]
    results = score_samples(bench, problems, samples, workers=1)
    assert [r.reason for r in results] == ["passed", "passed"], [r.detail for r in results]


# ------------------------------------------------------------------------------------ HumanEval+


def test_humaneval_plus_exact_pass_at_1():
    bench = get_benchmark("humaneval+")
    problems = bench.load(FIXTURES / "humanevalplus.jsonl")
    assert len(problems) == 5
    correct = [Sample(p.task_id, answer(p.record["prompt"] + p.record["canonical_solution"])) for p in problems]
    score, results = pass_at_1(bench, problems, correct)
    assert score == 1.0, [r.detail for r in results]
    wrong = [
        # passes every base input, fails a plus input (the point of HumanEval+)
        Sample("Fixture/0", answer("def add(a, b):\n    return a + b if abs(a) < 1000 else 0")),
        Sample("Fixture/1", answer("def running_max(numbers):\n    return sorted(numbers)")),
        Sample("Fixture/2", answer("def is_palindrome(text):\n    return len(text) < 4")),
        Sample("Fixture/3", answer("def mean(numbers):\n    return round(sum(numbers) / len(numbers), 2)")),
        Sample("Fixture/4", answer("def find_zero(xs):\n    return 0.0")),
    ]
    score, results = pass_at_1(bench, problems, wrong)
    assert score == 0.0
    assert all(r.reason == "failed" for r in results), [r.detail for r in results]
    assert "wrong output 0" in results[0].detail


def test_humaneval_plus_float_tolerance_and_special_oracle():
    bench = get_benchmark("humaneval_plus")
    problems = bench.load(FIXTURES / "humanevalplus.jsonl")
    samples = [
        # within EvalPlus's 1e-6 float tolerance (atol 0 -> 1e-6 for float outputs)
        Sample("Fixture/3", answer("def mean(numbers):\n    return sum(numbers) / len(numbers) + 1e-9")),
        # a different root than the canonical solution's: find_zero is checked by |poly(x)| <= atol
        Sample("Fixture/4", answer("def find_zero(xs):\n"
                                   "    return {(1, 2): -0.5, (-6, 11, -6, 1): 3.0, (-8, 0, 0, 1): 2.0}[tuple(xs)]")),
        # returns an int where a float is expected: exact equality still holds (EvalPlus compares ==)
        Sample("Fixture/0", answer("def add(a, b):\n    return int(a) + int(b)")),
    ]
    results = score_samples(bench, problems, samples, workers=2)
    assert [r.reason for r in results] == ["passed", "passed", "passed"], [r.detail for r in results]


def test_humaneval_plus_per_call_timeout():
    bench = get_benchmark("humaneval_plus")
    problems = bench.load(FIXTURES / "humanevalplus.jsonl")
    code = "def add(a, b):\n    while a > 100:\n        pass\n    return a + b"
    [result] = score_samples(bench, problems, [Sample("Fixture/0", answer(code))], workers=1, timeout=0.5)
    assert result.reason == "timeout" and "test 3" in result.detail


# ------------------------------------------------------------------------------- LeetCodeDataset


def test_leetcodedataset_prompt_is_the_references_bytes():
    bench = get_benchmark("leetcodedataset")
    problems = bench.load(FIXTURES / "leetcodedataset.jsonl")
    assert [p.task_id for p in problems] == ["two-sum", "add-digits"]
    top, meta = problems[0].record, problems[1].record["meta"]
    assert problems[0].prompt == REFERENCE_LEETCODE.format(problem_description=top["problem_description"],
                                                           starter_code=top["starter_code"])
    assert problems[1].prompt == REFERENCE_LEETCODE.format(problem_description=meta["problem_description"],
                                                           starter_code=meta["starter_code"])
    assert problems[0].prompt != top["query"]  # the reference does not use the dataset's query
    assert bench.max_new_tokens == 10240


def test_leetcodedataset_needs_the_prompt_fields(tmp_path):
    row = json.loads((FIXTURES / "leetcodedataset.jsonl").read_text().splitlines()[0])
    del row["starter_code"]
    bad = tmp_path / "lcd.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="no 'starter_code'"):
        get_benchmark("leetcodedataset").load(bad)


def test_leetcodedataset_exact_pass_at_1():
    bench = get_benchmark("lcd")
    problems = bench.load(FIXTURES / "leetcodedataset.jsonl")
    correct = [Sample(p.task_id, answer(p.record["completion"])) for p in problems]
    assert pass_at_1(bench, problems, correct)[0] == 1.0
    wrong = [
        Sample("two-sum", answer("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]")),
        Sample("add-digits", answer("class Solution:\n    def addDigits(self, num):\n        return num % 9")),
    ]
    score, results = pass_at_1(bench, problems, wrong)
    assert score == 0.0 and [r.reason for r in results] == ["failed", "failed"]
    # the prompt's imports prelude comes first: List and inf are available without importing
    code = ("class Solution:\n    def addDigits(self, num: int) -> int:\n        best: List[int] = [inf]\n"
            "        return 0 if num == 0 else 1 + (num - 1) % 9")
    assert score_samples(bench, problems, [Sample("add-digits", answer(code))], workers=1)[0].passed


# --------------------------------------------------------------------------------- LiveCodeBench

LCB_SOLUTIONS = {
    "abc300_a": "a, b = map(int, input().split())\nprint(a + b)",
    "abc301_b": "n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.10f}')",
    "3000": "class Solution:\n    def sumOf(self, nums: List[int]) -> int:\n        return sum(nums)",
    "3100": "class Solution:\n    def twoSmallest(self, nums: List[int]) -> List[int]:\n"
            "        return tuple(sorted(nums)[:2])",
    "abc380_c": "import sys\n\ndef main():\n    s = sys.stdin.readline().strip()\n    print(s[::-1])\n"
                "    sys.exit(0)\n\nif __name__ == '__main__':\n    main()",
}
LCB_WRONG = {
    "abc300_a": "a, b = map(int, input().split())\nprint(a - b)",
    # prints 1.3333333333333333 where 1.3333333333 is expected: LCB compares Decimals exactly
    "abc301_b": "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) / n)",
    "3000": "class Solution:\n    def sumOf(self, nums):\n        return max(nums)",
    "3100": "class Solution:\n    def twoSmallest(self, nums):\n        return sorted(set(nums))[:2]",
    "abc380_c": "print(input())",
}


def test_livecodebench_release_filters_by_file_and_by_date():
    bench = get_benchmark("livecodebench")
    directory, single = FIXTURES / "livecodebench", FIXTURES / "livecodebench_all.jsonl"
    expect = {
        None: ["abc300_a", "abc301_b", "3000", "3100", "abc380_c"],
        "release_latest": ["abc300_a", "abc301_b", "3000", "3100", "abc380_c"],
        "v1": ["abc300_a", "abc301_b"],
        "v1_v3": ["abc300_a", "abc301_b"],
        "v4_v5": ["3000", "3100", "abc380_c"],
        "release_v4": ["abc300_a", "abc301_b", "3000"],
        "v5": ["3100", "abc380_c"],
    }
    for release, ids in expect.items():
        assert [p.task_id for p in bench.load(directory, release=release)] == ids, release
        assert [p.task_id for p in bench.load(single, release=release)] == ids, release
    assert [p.task_id for p in bench.load(single, start_date="2024-09-01", end_date="2024-12-31")] == ["3100"]
    with pytest.raises(ValueError, match="unknown LiveCodeBench release"):
        bench.load(directory, release="v9x")


def test_livecodebench_private_tests_compressed_or_json():
    bench = get_benchmark("livecodebench")
    problems = {p.task_id: p for p in bench.load(FIXTURES / "livecodebench")}
    assert len(problems["abc300_a"].record["_tests"]) == 3  # 1 public + 2 compressed private
    assert len(problems["abc301_b"].record["_tests"]) == 2  # private given as plain JSON
    assert problems["3000"].record["_fn_name"] == "sumOf"
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    blob = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_lcb_tests(blob) == tests
    assert decode_lcb_tests(json.dumps(tests)) == tests


def test_livecodebench_refuses_pickles_that_need_globals():
    evil = base64.b64encode(zlib.compress(pickle.dumps(shutil.rmtree))).decode()
    with pytest.raises(ValueError, match="neither JSON nor"):
        decode_lcb_tests(evil)


def test_livecodebench_prompt_follows_the_r1_template():
    bench = get_benchmark("lcb")
    problems = {p.task_id: p for p in bench.load(FIXTURES / "livecodebench")}
    stdin_prompt, call_prompt = problems["abc300_a"].prompt, problems["3000"].prompt
    assert stdin_prompt.startswith("You will be given a question (problem specification)")
    assert "Question: Read A and B and print A+B." in stdin_prompt
    assert "Read the inputs from stdin" in stdin_prompt and "# YOUR CODE HERE" in stdin_prompt
    assert "```python\nclass Solution:\n    def sumOf" in call_prompt


def test_livecodebench_exact_pass_at_1():
    bench = get_benchmark("livecodebench")
    problems = bench.load(FIXTURES / "livecodebench")
    correct = [Sample(t, answer(c)) for t, c in LCB_SOLUTIONS.items()]
    score, results = pass_at_1(bench, problems, correct)
    assert score == 1.0, [r.detail for r in results]
    score, results = pass_at_1(bench, problems, [Sample(t, answer(c)) for t, c in LCB_WRONG.items()])
    assert score == 0.0
    assert [r.reason for r in results] == ["failed"] * 5, [r.detail for r in results]
    assert "test 1" in results[1].detail  # the public test passes, the private one does not


def test_livecodebench_runtime_error_and_timeout():
    bench = get_benchmark("livecodebench")
    problems = bench.load(FIXTURES / "livecodebench")
    samples = [
        Sample("abc300_a", answer("a, b = input().split()\nprint(int(a) + int(b) + undefined_name)")),
        Sample("abc300_a", answer("import time\ntime.sleep(10)")),
        Sample("3000", answer("class Solution:\n    def sumOf(self, nums):\n        while True:\n            pass")),
    ]
    results = score_samples(bench, problems, samples, workers=2, timeout=0.5)
    assert [r.reason for r in results] == ["error", "timeout", "timeout"], [r.detail for r in results]
    assert "NameError" in results[0].detail


# ------------------------------------------------------------------------------------- general


def test_several_samples_per_task_give_unbiased_pass_at_k():
    bench = get_benchmark("humaneval")
    problems = bench.load(FIXTURES / "humaneval.jsonl")
    good = answer(problems[0].record["prompt"] + problems[0].record["canonical_solution"])
    bad = answer("def add(a, b):\n    return 0")
    samples = [Sample("Fixture/0", c) for c in [good, bad, bad, good, bad]]  # n=5, c=2
    results = score_samples(bench, problems, samples, workers=2)
    assert [r.sample_index for r in results] == [0, 1, 2, 3, 4]
    summary = summarize(results, n_problems=1)
    assert summary["pass_at_1"] == pytest.approx(0.4)
    assert summary["pass_at_k"]["pass@5"] == pytest.approx(1.0)
    assert "pass@10" not in summary["pass_at_k"]


def test_unknown_task_ids_are_an_error():
    bench = get_benchmark("humaneval")
    problems = bench.load(FIXTURES / "humaneval.jsonl")
    with pytest.raises(ValueError, match="not in the benchmark data"):
        score_samples(bench, problems, [Sample("HumanEval/999", "x")])


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="humaneval_plus"):
        get_benchmark("mbpp")


def test_read_rows_reports_bad_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        read_rows(path)
    with pytest.raises(FileNotFoundError):
        read_rows(tmp_path / "missing.jsonl")
