"""Code benchmarks, loaded from local files in their published formats, and the programs that test
a completion the way each benchmark's reference harness does.

==================  =======================================================================
benchmark           file and how a completion is tested
==================  =======================================================================
humaneval           HumanEval.jsonl(.gz): task_id, prompt, test, entry_point. The candidate's
                    program is prompt + "\n" + the extracted code (the reference's); the test and
                    ``check(entry_point)`` run in a second sandbox that calls the candidate
                    with plain arguments and results (an assertion-style check).
humaneval_plus      HumanEvalPlus.jsonl(.gz) (EvalPlus): task_id, prompt, entry_point,
                    canonical_solution, base_input, plus_input, atol. The sandbox calls the
                    entry point on every base and plus input and reports the outputs; the
                    parent compares each with the canonical solution's (computed once per task,
                    in the sandbox) under EvalPlus's rule (exact, or np.allclose with atol;
                    1e-6 for float outputs when atol is 0; find_zero checked by the
                    polynomial's value).
leetcodedataset     LeetCodeDataset-*.jsonl(.gz): task_id, prompt (the imports prelude and
                    helpers), problem_description and starter_code (top level or under meta;
                    the model prompt is built from them as the reference's, not the dataset's
                    query), test, entry_point. Candidate: prompt + "\n" + code; the test's
                    ``check`` runs in a second sandbox as for humaneval (ListNode / TreeNode
                    travel as objects of the prompt's classes).
livecodebench       code_generation_lite: a directory with test.jsonl, test2.jsonl, ... or one
                    .jsonl. public_test_cases / private_test_cases (JSON, or the release's
                    base64 + zlib + pickle encoding), metadata.func_name. Functional tests call
                    the method (of ``Solution()`` when the code defines it) with JSON arguments;
                    the parent compares with ``==`` (tuples as lists); stdin tests run the
                    program once per test and the parent compares stripped lines (or their
                    Decimal tokens); both stop at the first failing test and get LCB's import
                    prelude, as the reference does.
==================  =======================================================================

Time limits: ``timeout`` (3 s in the paper) bounds each check program (humaneval,
leetcodedataset), each call (humaneval_plus, livecodebench functional) or each run on one input
(livecodebench stdin). A sample's whole run: humaneval_plus ``timeout * (n + 1) + 1`` s capped at
120 s; livecodebench LCB's own ``(timeout + 1) * n_tests + 5`` s; ``sample_timeout``, when given,
caps both.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.evaluation.sandbox import SandboxJob, SandboxLimits, run_jobs
from asap_fast.evaluation.sandbox.judge import (
    CollectOutputs,
    OutputJudge,
    Trial,
    compare_evalplus,
    compare_lcb_call,
    compare_lcb_stdio,
)
from asap_fast.evaluation.sandbox.worker import LCB_PRELUDE

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "HUMANEVAL_PROMPT",
    "LEETCODE_PROMPT",
    "LCB_RELEASE_WINDOWS",
    "Problem",
    "get_benchmark",
    "read_rows",
    "register",
]

# The reference's user messages. HumanEval(+): the dataset's prompt inserted unstripped.
HUMANEVAL_PROMPT = (
    "You will be given a competitive programming problem.\nPlease continue to complete the function. "
    "You are not allowed to modify the given code and do the completion only. Please return all "
    "completed function in a code block. Here is the given code to do completion:\n```python\n{prompt}\n```"
)
LEETCODE_PROMPT = (
    "You will be given a competitive programming problem.\n{problem_description}\n\nYou will use the "
    "following starter code to write the solution to the problem and enclose your code within "
    "delimiters.\n```python\n{starter_code}\n```"
)

# LiveCodeBench's DeepSeek-R1 question template (lcb_runner/prompts/code_generation.py), without
# the chat markers, which come from the model's chat template.
LCB_QUESTION = (
    "You will be given a question (problem specification) and will generate a correct Python program "
    "that matches the specification and passes all tests.\n\nQuestion: {question}\n\n"
)
LCB_WITH_STARTER = (
    "You will use the following starter code to write the solution to the problem and enclose your "
    "code within delimiters.\n```python\n{starter}\n```\n\n"
)
LCB_WITHOUT_STARTER = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
    "on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
    "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
    "```python\n# YOUR CODE HERE\n```\n\n"
)

# Contest-date windows of the code_generation_lite releases (inclusive), from the release notes:
# release_v1 May 2023 - Mar 2024, v2 to May 2024, v3 to Jul 2024, v4 to Sep 2024, v5 to Jan 2025,
# v6 to Apr 2025. Used when --data is one file; a directory of test*.jsonl selects by file, exactly.
LCB_RELEASE_WINDOWS: dict[int, tuple[str, str]] = {
    1: ("2023-05-01", "2024-03-31"),
    2: ("2024-04-01", "2024-05-31"),
    3: ("2024-06-01", "2024-07-31"),
    4: ("2024-08-01", "2024-09-30"),
    5: ("2024-10-01", "2025-01-31"),
    6: ("2025-02-01", "2025-04-30"),
}


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: ``prompt`` is the user message for the model; ``record`` the row as
    loaded (LiveCodeBench rows carry their decoded tests under ``_tests``)."""

    task_id: str
    prompt: str
    record: dict = field(repr=False)


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl, .jsonl.gz or .json (a list of objects) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".json", ".json.gz")):
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of objects")
            return rows
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: not JSON ({e})") from None
        return rows


def _require(row: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [k for k in fields if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (has: {', '.join(sorted(row))})")


def _unique(problems: list[Problem], where: str) -> list[Problem]:
    seen = set()
    for p in problems:
        if p.task_id in seen:
            raise ValueError(f"{where}: duplicate task_id {p.task_id!r}")
        seen.add(p.task_id)
    return problems


class Benchmark:
    """A benchmark: how to load its problems and how to test a completion's code."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    max_new_tokens: int = 10240  # the paper's budgets: 6K for HumanEval(+), 10K otherwise

    def load(self, path: str | Path, **options) -> list[Problem]:
        raise NotImplementedError

    def prepare(self, problems: list[Problem], *, timeout: float, limits: SandboxLimits | None = None,
                workers: int | None = None) -> dict:
        """Per-task data computed once before scoring (HumanEval+ expected outputs); {} by default."""
        return {}

    def job(self, problem: Problem, code: str, *, timeout: float, sample_timeout: float | None,
            prepared: dict) -> Trial | str:
        """How ``code`` is tested (a Trial), or a one-line reason why it cannot be tested."""
        raise NotImplementedError


def assertion_trial(program: str, entry: str, prompt: str, test: str, timeout: float) -> Trial:
    """The candidate (``program``, serving calls to ``entry``) and the benchmark's ``test`` with
    ``check`` (run after ``prompt``, for its helpers) in two sandboxes; ``timeout`` bounds the
    whole check, as the reference's does."""
    candidate = SandboxJob(config={"mode": "serve", "program": program, "entry": entry,
                                   "run_name": "__candidate__"}, wall_s=timeout)
    tester = SandboxJob(config={"mode": "check", "prompt": prompt, "test": test}, wall_s=timeout)
    return Trial(candidate, tester=tester)


HUMANEVAL_PLUS_SAMPLE_CAP_S = 120.0


def _calls_wall(timeout: float, n_calls: int, sample_timeout: float | None) -> float:
    wall = min(HUMANEVAL_PLUS_SAMPLE_CAP_S, timeout * (n_calls + 1) + 1.0)
    return wall if sample_timeout is None else min(sample_timeout, wall)


def lcb_sample_wall(timeout: float, n_tests: int, sample_timeout: float | None = None) -> float:
    """LiveCodeBench's runner: each test gets ``timeout``, the whole sample (timeout + 1) * n + 5."""
    wall = (timeout + 1.0) * n_tests + 5.0
    return wall if sample_timeout is None else min(sample_timeout, wall)


def _humaneval_prompt(row: dict) -> str:
    # one pass, so braces in the dataset's prompt stay as they are
    before, after = HUMANEVAL_PROMPT.split("{prompt}")
    return before + row["prompt"] + after


class HumanEval(Benchmark):
    name = "humaneval"
    aliases = ("he",)
    max_new_tokens = 6144

    def load(self, path, **options) -> list[Problem]:
        _no_options(self.name, options)
        problems = []
        for i, row in enumerate(read_rows(path)):
            _require(row, ("task_id", "prompt", "test", "entry_point"), f"{path} row {i}")
            problems.append(Problem(str(row["task_id"]), _humaneval_prompt(row), row))
        return _unique(problems, str(path))

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        row = problem.record
        return assertion_trial(row["prompt"] + "\n" + code, row["entry_point"], row["prompt"], row["test"], timeout)


class HumanEvalPlus(Benchmark):
    name = "humaneval_plus"
    aliases = ("humaneval+", "he+", "humanevalplus")
    max_new_tokens = 6144

    def load(self, path, **options) -> list[Problem]:
        _no_options(self.name, options)
        problems = []
        for i, row in enumerate(read_rows(path)):
            _require(row, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input"),
                     f"{path} row {i}")
            problems.append(Problem(str(row["task_id"]), _humaneval_prompt(row), row))
        return _unique(problems, str(path))

    @staticmethod
    def _inputs(row) -> list:
        return list(row["base_input"]) + list(row["plus_input"])

    def prepare(self, problems, *, timeout, limits=None, workers=None):
        """Expected outputs: the canonical solution (prompt + canonical_solution) run on every
        input, in the sandbox, with generous limits; decoded here from the plain format."""
        trials = []
        for p in problems:
            row = p.record
            inputs = self._inputs(row)
            call_timeout = max(10.0, 4 * timeout)
            job = SandboxJob(
                config={"mode": "calls", "program": row["prompt"] + row["canonical_solution"],
                        "entry": row["entry_point"], "inputs": inputs, "call_timeout_s": call_timeout},
                wall_s=min(600.0, call_timeout * (len(inputs) + 1)),
            )
            trials.append(Trial(job, judge=CollectOutputs(len(inputs), call_timeout)))
        outcomes = run_jobs(trials, lambda t: t.run(limits), workers=workers)
        prepared = {}
        for p, trial, outcome in zip(problems, trials, outcomes, strict=True):
            if not isinstance(outcome, Exception) and outcome.reason == "passed":
                prepared[p.task_id] = trial.judge.outputs
            else:
                detail = outcome if isinstance(outcome, Exception) else f"{outcome.reason}: {outcome.detail}"
                prepared[p.task_id] = f"the canonical solution failed on its own inputs: {detail}"
        return prepared

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        expected = prepared.get(problem.task_id)
        if not isinstance(expected, list):
            return expected or "no expected outputs (prepare() was not run)"
        row = problem.record
        inputs = self._inputs(row)
        atol = float(row.get("atol") or 0)
        entry = row["entry_point"]
        job = SandboxJob(
            config={"mode": "calls", "program": row["prompt"] + "\n" + code, "entry": entry, "inputs": inputs,
                    "call_timeout_s": timeout},
            wall_s=_calls_wall(timeout, len(inputs), sample_timeout),
        )
        judge = OutputJudge(expected, lambda out, exp, i: compare_evalplus(out, exp, atol, entry, inputs[i]), timeout)
        return Trial(job, judge=judge)


class LeetCodeDataset(Benchmark):
    name = "leetcodedataset"
    aliases = ("lcd", "leetcode")
    max_new_tokens = 10240

    def load(self, path, **options) -> list[Problem]:
        _no_options(self.name, options)
        problems = []
        for i, row in enumerate(read_rows(path)):
            _require(row, ("task_id", "prompt", "test", "entry_point"), f"{path} row {i}")
            meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
            fields = {}
            for name in ("problem_description", "starter_code"):
                value = row[name] if name in row else meta.get(name)
                if not isinstance(value, str):
                    raise ValueError(f"{path} row {i}: no {name!r} (top level or under 'meta') to build the "
                                     "reference's prompt from")
                fields[name] = value
            before, middle, after = _split3(LEETCODE_PROMPT, "{problem_description}", "{starter_code}")
            prompt = before + fields["problem_description"] + middle + fields["starter_code"] + after
            problems.append(Problem(str(row["task_id"]), prompt, row))
        return _unique(problems, str(path))

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        row = problem.record
        return assertion_trial(row["prompt"] + "\n" + code, row["entry_point"], row["prompt"], row["test"], timeout)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """The release's private tests are a pickled str: refuse anything that needs a global."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test data")


def decode_lcb_tests(raw) -> list[dict]:
    """public_test_cases / private_test_cases: a list, its JSON, or (private tests of the published
    release) base64(zlib(pickle(JSON string)))."""
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str):
        raise ValueError(f"test cases must be a JSON string or a list, got {type(raw).__name__}")
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        blob = zlib.decompress(base64.b64decode(raw.encode("utf-8")))
        text = _NoGlobalsUnpickler(io.BytesIO(blob)).load()
        return json.loads(text) if isinstance(text, (str, bytes)) else text
    except Exception as e:
        raise ValueError(f"test cases are neither JSON nor base64+zlib+pickle: {e}") from None


def _parse_release(release: str) -> list[int]:
    """release_vN -> 1..N, release_latest -> all, vN -> [N], vA_vB -> A..B."""
    text = release.strip().lower()
    if text in ("release_latest", "latest", "all"):
        return sorted(LCB_RELEASE_WINDOWS)
    try:
        if text.startswith("release_v"):
            return list(range(1, int(text[len("release_v"):]) + 1))
        if text.startswith("v") and "_v" in text:
            lo, hi = text[1:].split("_v")
            versions = list(range(int(lo), int(hi) + 1))
            if not versions:
                raise ValueError
            return versions
        if text.startswith("v"):
            return [int(text[1:])]
    except ValueError:
        pass
    raise ValueError(f"unknown LiveCodeBench release {release!r}: expected release_vN, release_latest, vN or vA_vB")


class LiveCodeBench(Benchmark):
    name = "livecodebench"
    aliases = ("lcb",)
    max_new_tokens = 10240

    def load(self, path, *, release: str | None = None, start_date: str | None = None,
             end_date: str | None = None, **options) -> list[Problem]:
        _no_options(self.name, options)
        path = Path(path)
        versions = _parse_release(release) if release else None
        if path.is_dir():
            files = sorted(path.glob("test*.jsonl")) + sorted(path.glob("test*.jsonl.gz"))
            if versions is not None:
                names = {("test" if v == 1 else f"test{v}") for v in versions}
                files = [f for f in files if f.name.split(".")[0] in names]
            if not files:
                raise FileNotFoundError(f"no LiveCodeBench test*.jsonl files in {path} for release {release!r}")
            rows = [row for f in files for row in read_rows(f)]
            windows = None
        else:
            rows = read_rows(path)
            windows = [LCB_RELEASE_WINDOWS[v] for v in versions if v in LCB_RELEASE_WINDOWS] if versions else None
            if versions and not windows:
                raise ValueError(f"no contest-date window known for release {release!r}")
        problems = []
        for i, row in enumerate(rows):
            _require(row, ("question_id", "question_content", "public_test_cases"), f"{path} row {i}")
            date = str(row.get("contest_date") or "")[:10]
            if windows is not None and not any(lo <= date <= hi for lo, hi in windows):
                continue
            if start_date and date < start_date[:10]:
                continue
            if end_date and date > end_date[:10]:
                continue
            tests = decode_lcb_tests(row["public_test_cases"]) + decode_lcb_tests(row.get("private_test_cases") or "[]")
            metadata = row.get("metadata") or "{}"
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
            starter = row.get("starter_code") or ""
            prompt = LCB_QUESTION.format(question=row["question_content"])
            prompt += LCB_WITH_STARTER.format(starter=starter) if starter else LCB_WITHOUT_STARTER
            record = dict(row)
            record["_tests"] = tests
            record["_fn_name"] = metadata.get("func_name")
            problems.append(Problem(str(row["question_id"]), prompt, record))
        return _unique(problems, str(path))

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        row = problem.record
        tests = row["_tests"]
        if not tests:
            return "the problem has no test cases"
        inputs = [t["input"] for t in tests]
        outputs = [t["output"] for t in tests]
        program = LCB_PRELUDE + "\n" + code
        wall = lcb_sample_wall(timeout, len(tests), sample_timeout)
        if row["_fn_name"]:
            try:
                expected = [json.loads(o) for o in outputs]
            except ValueError as e:
                return f"the problem's expected outputs are not JSON: {e}"
            job = SandboxJob(
                config={"mode": "calls", "program": program, "entry": row["_fn_name"],
                        "solution_class": "class Solution" in code, "run_name": "tmp_sol",
                        "inputs": inputs, "input_format": "lcb", "call_timeout_s": timeout},
                wall_s=wall,
            )
            return Trial(job, judge=OutputJudge(expected, lambda out, exp, i: compare_lcb_call(out, exp), timeout))
        job = SandboxJob(
            config={"mode": "stdio", "program": program, "inputs": inputs, "call_timeout_s": timeout},
            wall_s=wall,
        )
        return Trial(job, judge=OutputJudge(outputs, lambda out, exp, i: compare_lcb_stdio(out, exp), timeout,
                                            text=True))


def _split3(template: str, first: str, second: str) -> tuple[str, str, str]:
    before, rest = template.split(first)
    middle, after = rest.split(second)
    return before, middle, after


def _no_options(name: str, options: dict) -> None:
    given = [k for k, v in options.items() if v is not None]
    if given:
        raise ValueError(f"{name} takes no loader options, got {', '.join(given)} "
                         "(release and dates are for livecodebench)")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (HumanEval(), HumanEvalPlus(), LeetCodeDataset(), LiveCodeBench())
}


def register(bench: Benchmark) -> None:
    """Add a benchmark defined in another module (the math ones: asap_fast.evaluation.math)."""
    BENCHMARKS[bench.name] = bench


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_")
    for bench in BENCHMARKS.values():
        if key == bench.name or key in bench.aliases:
            return bench
    known = ", ".join(f"{b.name} ({', '.join(b.aliases)})" for b in BENCHMARKS.values())
    raise ValueError(f"unknown benchmark {name!r}; known: {known}")
