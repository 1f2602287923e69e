"""Math benchmarks of the paper's second version: GSM8K, MATH-500 and AIME, read from their
published files, answered by the last ``\\boxed{...}`` of a completion and judged equivalent to the
reference answer by Hugging Face's ``math-verify`` (the field's checker), with no sandbox.

==========  ==================================================================  ===========
benchmark   file (.jsonl, .jsonl.gz, .json list, or .parquet) and its fields      new tokens
==========  ==================================================================  ===========
gsm8k       openai/grade-school-math test.jsonl (or the Hugging Face openai/gsm8k  2048
            test parquet): ``question``, ``answer`` whose text after ``####`` is
            the reference (commas dropped); task ids ``gsm8k/<row>`` unless an
            ``id`` is given
math500     HuggingFaceH4/MATH-500 test.jsonl: ``problem``, ``answer``,           4096
            ``unique_id`` (the task id); rows of the original MATH format
            (``problem``, ``solution``) use the solution's last \\boxed{}
aime        any of the published AIME files: ``problem`` / ``question`` /          10240
            ``Problem`` and ``answer`` / ``Answer``; the task id from ``id`` /
            ``ID`` / ``url``, else ``aime/<row>`` (AI-MO/aimo-validation-aime,
            HuggingFaceH4/aime_2024, Maxwell-Jia/AIME_2024, opencompass/AIME2025)
==========  ==================================================================  ===========

The budgets are the paper's (GSM8K 2K, MATH-500 4K, AIME 10K new tokens, read as 2048 / 4096 /
10240). The prompt is DeepSeek-R1's recommended one for math: the problem, then "Please reason step
by step, and put your final answer within \\boxed{}." A sample passes when its answer (the last
balanced ``\\boxed{...}`` of the completion) and the reference, each parsed by
``math_verify.parse`` as LaTeX, are equal under ``math_verify.verify``. Pass@1, tokens and latency
are summarised as for code.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from asap_fast.evaluation.benchmarks import Benchmark, Problem, _unique, read_rows, register
from asap_fast.evaluation.score import SampleResult

__all__ = ["AIME", "GSM8K", "MATH500", "MATH_PROMPT", "MathBenchmark", "is_equivalent", "last_boxed"]

MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> str | None:
    """The content of the group opening at text[start] == "{", or None when it never closes.
    Escaped braces (\\{, \\}) are literal characters, not nesting."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces
    balanced; ``\\boxed 5`` (no braces) gives the next word. A final box cut off before its
    closing brace is skipped for the one before it. None when there is none."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    for match in reversed(list(_BOXED.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
            if content is not None:
                return content.strip()
            continue
        word = re.match(r"[^\s$]+", text[rest:])
        if word and rest > match.end():  # "\boxed 5": a space, then the answer
            return word.group(0)
    return None


def is_equivalent(reference: str, answer: str) -> bool:
    """math-verify's decision: both parsed as LaTeX math (``$...$``), then ``verify``."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ImportError("math benchmarks need math-verify: pip install 'asap-fast[math]'") from None
    gold = parse(f"${reference}$")
    if not gold:
        return False
    return bool(verify(gold, parse(f"${answer}$")))


def _read(path) -> list[dict]:
    path = Path(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"benchmark data not found: {path}")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading .parquet benchmark files needs pyarrow: pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    return read_rows(path)


def _first(row: dict, names: tuple[str, ...]):
    return next((row[n] for n in names if row.get(n) is not None), None)


class MathBenchmark(Benchmark):
    """A math benchmark: problems with a reference answer (``record["_answer"]``), scored in
    process by :meth:`score` instead of a sandbox."""

    kind = "math"
    reasons = ("passed", "failed", "no answer")
    id_fields: tuple[str, ...] = ("id",)
    problem_fields: tuple[str, ...] = ("problem",)
    answer_fields: tuple[str, ...] = ("answer",)

    def reference(self, row: dict) -> str | None:
        answer = _first(row, self.answer_fields)
        return None if answer is None else str(answer).strip()

    def load(self, path, **options) -> list[Problem]:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ValueError(f"{self.name} takes no loader options, got {', '.join(given)}")
        problems = []
        for i, row in enumerate(_read(path)):
            if not isinstance(row, dict):
                raise ValueError(f"{path} row {i}: expected an object, got {type(row).__name__}")
            problem = _first(row, self.problem_fields)
            answer = self.reference(row)
            if problem is None or answer is None:
                raise ValueError(f"{path} row {i}: needs one of {'/'.join(self.problem_fields)} and an answer "
                                 f"({'/'.join(self.answer_fields)}); has {', '.join(sorted(row))}")
            task_id = _first(row, self.id_fields)
            record = dict(row, _answer=answer)
            problems.append(Problem(str(task_id) if task_id is not None else f"{self.name}/{i}",
                                    MATH_PROMPT.format(problem=str(problem).strip()), record))
        return _unique(problems, str(path))

    def reason_counts(self, results) -> dict:
        """Samples per outcome (the math outcomes, in place of the code ones)."""
        return {reason: sum(r.reason == reason for r in results) for reason in self.reasons}

    def job(self, problem, code, *, timeout, sample_timeout, prepared):
        return "math benchmarks are scored by comparing answers, not by running code"

    def score(self, problems: list[Problem], samples, *, extract: bool = True, progress=None) -> list[SampleResult]:
        """One SampleResult per sample, in order: ``passed`` when the answer is equivalent to the
        reference, ``failed`` when it is not, ``no answer`` when the completion has no \\boxed{}.
        extract=False: the completions are answers already."""
        by_id = {p.task_id: p for p in problems}
        unknown = sorted({s.task_id for s in samples} - set(by_id))
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:5])
            raise ValueError(f"{len(unknown)} sample task_id(s) not in the benchmark data: {shown}"
                             f"{' ...' if len(unknown) > 5 else ''}")
        results, seen = [], Counter()
        for done, sample in enumerate(samples, 1):
            index = seen[sample.task_id]
            seen[sample.task_id] += 1
            result = SampleResult(sample.task_id, index, False, "failed", num_tokens=sample.num_tokens,
                                  latency_s=sample.latency_s, finish_reason=sample.finish_reason)
            answer = last_boxed(sample.completion) if extract else (sample.completion or "").strip() or None
            reference = by_id[sample.task_id].record["_answer"]
            if answer is None:
                result.reason, result.detail = "no answer", "no \\boxed{} answer in the completion"
            elif is_equivalent(reference, answer):
                result.passed, result.reason = True, "passed"
            else:
                result.detail = f"answer {answer[:200]!r}, reference {reference[:200]!r}"
            results.append(result)
            if progress:
                progress(done, len(samples))
        return results


class GSM8K(MathBenchmark):
    name = "gsm8k"
    aliases = ("gsm",)
    max_new_tokens = 2048
    problem_fields = ("question",)

    def reference(self, row):
        answer = row.get("answer")
        if answer is None:
            return None
        return str(answer).split("####")[-1].strip().replace(",", "")


class MATH500(MathBenchmark):
    name = "math500"
    aliases = ("math_500",)
    max_new_tokens = 4096
    id_fields = ("unique_id", "id")

    def reference(self, row):
        answer = super().reference(row)
        if answer is None and isinstance(row.get("solution"), str):
            return last_boxed(row["solution"])
        return answer


class AIME(MathBenchmark):
    name = "aime"
    aliases = ("aime24", "aime25", "aime2024", "aime2025")
    max_new_tokens = 10240
    id_fields = ("id", "ID", "problem_idx", "url")
    problem_fields = ("problem", "question", "Problem", "Question")
    answer_fields = ("answer", "Answer")


for _bench in (GSM8K(), MATH500(), AIME()):
    register(_bench)
