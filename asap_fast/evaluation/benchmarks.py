"""Code benchmarks, loaded from local files in their published formats, and the programs that test
a completion the way each benchmark's reference harness does.

==================  =======================================================================
benchmark           file and how a completion is tested
==================  =======================================================================
humaneval           HumanEval.jsonl(.gz): task_id, prompt, test, entry_point. Program, as the
                    reference's: prompt + "\\n" + the extracted code + test +
                    ``check(entry_point)``; passed when it runs to its end.
humaneval_plus      HumanEvalPlus.jsonl(.gz) (EvalPlus): task_id, prompt, entry_point,
                    canonical_solution, base_input, plus_input, atol. The entry point is called
                    on every base and plus input; each output must equal the canonical
                    solution's (computed once per task, in the sandbox) under EvalPlus's rule
                    (exact, or np.allclose with atol; 1e-6 for float outputs when atol is 0;
                    find_zero checked by the polynomial's value). The program is prompt +
                    "\\n" + the extracted code, as the reference's.
leetcodedataset     LeetCodeDataset-*.jsonl(.gz): task_id, prompt (the imports prelude),
                    problem_description and starter_code (top level or under meta; the model
                    prompt is built from them as the reference's, not the dataset's query),
                    test, entry_point. Program: prompt + "\\n" + code + test +
                    ``check(entry_point)`` (the reference's).
livecodebench       code_generation_lite: a directory with test.jsonl, test2.jsonl, ... or one
                    .jsonl. public_test_cases / private_test_cases (JSON, or the release's
                    base64 + zlib + pickle encoding), metadata.func_name. Functional tests call
                    the method (of ``Solution()`` when the code defines it) with JSON arguments
                    and compare with ``==`` (tuples as lists); stdin tests run the program once
                    per test and compare stripped lines (or their Decimal tokens); both stop at
                    the first failing test and get LCB's import prelude, as the reference does.
==================  =======================================================================

Time limits: ``timeout`` (3 s in the paper) bounds each check program (humaneval,
leetcodedataset), each call (humaneval_plus, livecodebench functional) or each run on one input
(livecodebench stdin); a sample's whole run is capped at ``sample_timeout``.
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

from asap_fast.evaluation._sandbox_main import LCB_PRELUDE
from asap_fast.evaluation.sandbox import SandboxJob

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "HUMANEVAL_PROMPT",
    "LEETCODE_PROMPT",
    "LCB_RELEASE_WINDOWS",
    "Problem",
    "get_benchmark",
    "read_rows",
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

    def prepare(self, problems: list[Problem], *, run_jobs, timeout: float) -> dict:
        """Per-task data computed once before scoring (HumanEval+ ground truth); {} by default."""
        return {}

    def job(self, problem: Problem, code: str, *, timeout: float, sample_timeout: float,
            prepared: dict) -> SandboxJob | str:
        """The sandbox job that tests ``code``, or a one-line reason why it cannot be tested."""
        raise NotImplementedError


def _script_job(program: str, timeout: float) -> SandboxJob:
    return SandboxJob(
        config={"mode": "script", "program": "program.py", "run_name": "__candidate__"},
        files={"program.py": program},
        wall_s=timeout,
    )


def _calls_wall(timeout: float, n_calls: int, sample_timeout: float) -> float:
    return min(sample_timeout, timeout * (n_calls + 1) + 1.0)


def _humaneval_prompt(row: dict) -> str:
    # one pass, so braces in the dataset's prompt stay as they are
    before, after = HUMANEVAL_PROMPT.split("{prompt}")
    return before + row["prompt"] + after


def _with_prompt(row: dict, code: str) -> str:
    """The reference's program head: the dataset's prompt, a newline, the extracted code (so a
    completion that relies on the prompt's imports, or writes only the body, still runs)."""
    return row["prompt"] + "\n" + code


def _checked(program: str, row: dict) -> str:
    return program + "\n" + row["test"] + "\n" + f"check({row['entry_point']})\n"


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
        return _script_job(_checked(_with_prompt(row, code), row), timeout)


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

    def prepare(self, problems, *, run_jobs, timeout):
        """Expected outputs: the canonical solution (prompt + canonical_solution) run on every input,
        in the sandbox, with generous limits; kept as the pickle the harness wrote (never unpickled
        here)."""
        jobs = []
        for p in problems:
            row = p.record
            inputs = self._inputs(row)
            call_timeout = max(10.0, 4 * timeout)
            jobs.append(SandboxJob(
                config={"mode": "record", "program": "program.py", "entry": row["entry_point"],
                        "inputs": "inputs.json", "record_to": "expected.pkl",
                        "call_timeout_s": call_timeout},
                files={"program.py": row["prompt"] + row["canonical_solution"],
                       "inputs.json": json.dumps(inputs)},
                wall_s=min(600.0, call_timeout * (len(inputs) + 1)),
                collect=("expected.pkl",),
            ))
        prepared = {}
        for p, res in zip(problems, run_jobs(jobs), strict=True):
            status = (res.result or {}).get("status")
            if status == "passed" and "expected.pkl" in res.files and not res.timed_out:
                prepared[p.task_id] = res.files["expected.pkl"]
            else:
                detail = (res.result or {}).get("detail") or ("timed out" if res.timed_out else "no result")
                prepared[p.task_id] = f"the canonical solution failed on its own inputs: {detail}"
        return prepared

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        expected = prepared.get(problem.task_id)
        if not isinstance(expected, bytes):
            return expected or "no expected outputs (prepare() was not run)"
        row = problem.record
        inputs = self._inputs(row)
        return SandboxJob(
            config={"mode": "calls", "program": "program.py", "entry": row["entry_point"],
                    "inputs": "inputs.json", "expected": "expected.pkl", "expected_format": "pickle",
                    "compare": "evalplus", "atol": float(row.get("atol") or 0), "call_timeout_s": timeout},
            files={"program.py": _with_prompt(row, code), "inputs.json": json.dumps(inputs),
                   "expected.pkl": expected},
            wall_s=_calls_wall(timeout, len(inputs), sample_timeout),
        )


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
        return _script_job(_checked(_with_prompt(row, code), row), timeout)


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
        wall = _calls_wall(timeout, len(tests), sample_timeout)
        if row["_fn_name"]:
            return SandboxJob(
                config={"mode": "calls", "program": "program.py", "entry": row["_fn_name"],
                        "solution_class": "class Solution" in code, "run_name": "tmp_sol",
                        "inputs": "inputs.json", "input_format": "lcb", "expected": "expected.json",
                        "compare": "lcb", "call_timeout_s": timeout},
                files={"program.py": program, "inputs.json": json.dumps(inputs),
                       "expected.json": json.dumps(outputs)},
                wall_s=wall,
            )
        return SandboxJob(
            config={"mode": "stdio", "program": "program.py", "tests": "tests.json", "call_timeout_s": timeout},
            files={"program.py": program, "tests.json": json.dumps({"inputs": inputs, "outputs": outputs})},
            wall_s=wall,
        )


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


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_")
    for bench in BENCHMARKS.values():
        if key == bench.name or key in bench.aliases:
            return bench
    known = ", ".join(f"{b.name} ({', '.join(b.aliases)})" for b in BENCHMARKS.values())
    raise ValueError(f"unknown benchmark {name!r}; known: {known}")
