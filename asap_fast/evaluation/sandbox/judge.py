"""Verdicts decided outside the sandbox, on plain data the candidate cannot make pass by any trick
but computing the right answers.

Two shapes of test:

- **Input/output** (HumanEval+ / EvalPlus inputs, LiveCodeBench functional and stdin tests): one
  sandbox only computes the candidate's outputs and reports them in the plain format of
  ``worker``; ``OutputJudge`` (here, in the trusted parent) decodes each one without
  running any of the candidate's code and compares it with the expected output, which never
  enters the sandbox, under the benchmark's own rule. Each test's time is measured here too.
- **Assertion-style** (HumanEval ``check``, LeetCodeDataset ``check``): the benchmark's test code
  runs in a second sandbox and calls the candidate through a pipe with plain arguments and
  results (``sandbox.run_pair``); the verdict comes from that second sandbox, on a pipe the
  candidate never holds.
"""

from __future__ import annotations

import math
import signal as _signal
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from asap_fast.evaluation.sandbox.limits import SandboxJob, SandboxLimits, SandboxResult
from asap_fast.evaluation.sandbox.runner import run_job, run_pair
from asap_fast.evaluation.sandbox.worker import PlainError, decode

__all__ = [
    "CollectOutputs",
    "Outcome",
    "OutputJudge",
    "Trial",
    "compare_evalplus",
    "compare_lcb_call",
    "compare_lcb_stdio",
]


# ------------------------------------------------------------------------ comparison rules


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    try:
        import numpy as np
    except ImportError:
        return False
    return isinstance(x, np.ndarray) and x.dtype in (np.float64, np.float32)


def _poly(xs, x):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def compare_evalplus(out, exp, atol: float, entry_point: str, inp) -> bool:
    """EvalPlus's diff-testing rule (evalplus/eval/__init__.py, HumanEval branch), on decoded
    plain values: exact ``==``; else, with a tolerance (atol, or 1e-6 for float outputs when atol
    is 0), same type, same length, ``np.allclose``. find_zero (HumanEval/32): any root counts."""
    try:
        if entry_point == "find_zero":
            return abs(_poly(*inp, out)) <= atol
        try:
            exact = bool(out == exp)
        except Exception:  # noqa: BLE001 - e.g. an array's == has no single truth value
            exact = False
        if exact:
            return True
        if atol == 0 and _is_floats(exp):
            atol = 1e-6
        if atol == 0:
            return False
        import numpy as np

        if type(out) is not type(exp):
            return False
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    except Exception:  # noqa: BLE001 - an output the rule cannot even compare is wrong
        return False


def compare_lcb_call(out, exp) -> bool:
    """LiveCodeBench's call-based rule: a tuple result counts as a list, then ``==``."""
    if isinstance(out, tuple):
        out = list(out)
    try:
        return bool(out == exp)
    except Exception:  # noqa: BLE001
        return False


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def compare_lcb_stdio(output, expected: str) -> bool:
    """LiveCodeBench's stdin/stdout rule: same number of stripped lines; each line equal, or equal
    as whitespace-separated Decimals."""
    if not isinstance(output, str):
        return False
    got, want = _stripped_lines(output), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        try:
            if [Decimal(t) for t in a.split()] != [Decimal(t) for t in b.split()]:
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


def _short(value, limit: int = 120) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2:]


# --------------------------------------------------------------------------------- judges


def per_test_slack(limit: float) -> float:
    """Time allowed on top of a test's limit when it is measured from outside (the sandbox's own
    timer is the precise one; this one only has to stop a program that switched it off)."""
    return 1.0 + 0.5 * limit


class OutputJudge:
    """Watches an input/output run (``SandboxJob.watch``): each ``out`` event is decoded and
    compared, in order, with the expected output; the first wrong, missing or late one decides.
    Events that are not the next test's are ignored, so a program cannot buy time with them."""

    def __init__(self, expected: list, compare, per_test_s: float, *, text: bool = False):
        self.expected = expected
        self.compare = compare  # compare(output, expected, index) -> bool
        self.limit = per_test_s + per_test_slack(per_test_s)
        self.text = text
        self.next = 0
        self.last_t = 0.0
        self.ready = False
        self.verdict: tuple[str, str] | None = None

    def _decide(self, reason: str, detail: str) -> str:
        self.verdict = (reason, detail)
        return reason

    def due(self) -> float | None:
        return None if self.verdict else self.last_t + self.limit

    def feed(self, event: dict, t: float) -> str | None:
        if self.verdict:
            return self.verdict[0]
        ev = event.get("ev")
        if ev == "tick" or (ev in ("ready", "out") and t - self.last_t > self.limit):
            what = f"test {self.next}" if self.ready else "defining the solution"
            return self._decide("timeout", f"{what}: no answer within {self.limit:g} s (timed outside the sandbox)")
        if ev == "ready" and not self.ready:
            self.ready, self.last_t = True, t
            return None
        if ev == "fatal" and not self.ready:
            kind = event.get("kind") if event.get("kind") in ("timeout", "error") else "error"
            return self._decide(kind, str(event.get("detail", ""))[:500])
        if ev != "out" or not self.ready or event.get("i") != self.next:
            return None
        i = self.next
        if "out" not in event:
            kind = event.get("kind") if event.get("kind") in ("timeout", "error", "failed") else "error"
            return self._decide(kind, f"test {i}: {str(event.get('detail', ''))[:500]}")
        try:
            value = event["out"] if self.text else decode(event["out"])
        except (PlainError, ValueError, TypeError, KeyError, RecursionError, OverflowError) as e:
            return self._decide("failed", f"test {i}: output is not plain data ({str(e)[:200]})")
        if self.text and not isinstance(value, str):
            return self._decide("failed", f"test {i}: output is not text")
        if not self.compare(value, self.expected[i], i):
            return self._decide("failed", f"test {i}: wrong output {_short(value)} (expected {_short(self.expected[i])})")
        self.next, self.last_t = i + 1, t
        if self.next == len(self.expected):
            return self._decide("passed", "")
        return None

    def result(self, res: SandboxResult) -> tuple[str, str]:
        if self.verdict:
            return self.verdict
        return _ended_early(res, f"test {self.next}" if self.ready else "before the tests ran")


class CollectOutputs(OutputJudge):
    """Records every output (HumanEval+'s expected outputs from the canonical solution)."""

    def __init__(self, n: int, per_test_s: float):
        super().__init__([None] * n, self._keep, per_test_s)
        self.outputs: list = [None] * n

    def _keep(self, value, expected, i) -> bool:
        self.outputs[i] = value
        return True


MEMORY_CAP = "killed: the sample went over its memory cap (all its processes together)"


def _ended_early(res: SandboxResult, where: str) -> tuple[str, str]:
    if res.malformed:  # the sample's own output, refused by the protocol: a wrong answer, not a harness fault
        return "failed", f"malformed output to the harness ({res.malformed})"
    if res.overflow:
        return "error", f"the program flooded its channel to the harness ({res.overflow})"
    if res.memory_exceeded:
        return "error", MEMORY_CAP
    if res.timed_out:
        return "timeout", f"killed after the {res.wall_s:.1f} s limit of the whole sample"
    if res.stopped:
        return "error", res.stopped
    if not res.started:
        return "error", f"the sandbox did not start{_stderr_tail(res)}"
    if res.signal is not None:
        name = _signal.Signals(res.signal).name if res.signal in _signal.Signals._value2member_map_ else str(res.signal)
        return "error", f"{where}: killed by {name}{_stderr_tail(res)}"
    return "error", f"{where}: the program ended before the tests finished (exit status {res.exit_code}){_stderr_tail(res)}"


def _stderr_tail(res: SandboxResult) -> str:
    text = res.stderr.decode("utf-8", "replace").strip()
    return f": {text.splitlines()[-1][:300]}" if text else ""


# ------------------------------------------------------------------------------------ trials


@dataclass
class Outcome:
    """reason: passed / failed / timeout / error; exec_wall_s: the sample's time from the start of
    its (last started) sandbox; isolation: the layer and what it applied."""

    reason: str
    detail: str
    exec_wall_s: float
    isolation: dict = field(default_factory=dict)


@dataclass
class Trial:
    """How one sample is tested: ``job`` judged by ``judge`` (input/output tests), or ``job`` (the
    candidate, mode ``serve``) and ``tester`` (mode ``check``) as the two halves of an
    assertion-style check."""

    job: SandboxJob
    judge: OutputJudge | None = None
    tester: SandboxJob | None = None

    def run(self, limits: SandboxLimits | None = None) -> Outcome:
        if self.tester is None:
            self.job.watch = self.judge
            res = run_job(self.job, limits)
            reason, detail = self.judge.result(res)
            if res.memory_exceeded:  # over its memory cap: a failure, like a judge's MLE, and the real
                reason, detail = "error", MEMORY_CAP  # cause of whatever followed
            return Outcome(reason, detail, res.wall_s, res.isolation)
        cand, test = run_pair(self.job, self.tester, limits)
        verdict = next((e for e in test.events if e.get("ev") == "verdict"), None)
        isolation = dict(cand.isolation)
        if verdict is not None:
            status = verdict.get("status")
            detail = str(verdict.get("detail", ""))[:2000]
            if cand.memory_exceeded:
                return Outcome("error", MEMORY_CAP, test.wall_s, isolation)
            if status == "passed":
                return Outcome("passed", "", test.wall_s, isolation)
            if status == "failed":
                return Outcome("failed", detail, test.wall_s, isolation)
            if status == "harness":
                return Outcome("error", detail, test.wall_s, isolation)
            return Outcome("error", _candidate_detail(detail, cand), test.wall_s, isolation)
        if test.timed_out or cand.timed_out:
            return Outcome("timeout", f"killed after the {self.tester.wall_s:g} s limit", test.wall_s, isolation)
        reason, detail = _ended_early(cand if cand.memory_exceeded or cand.overflow or cand.malformed else test, "the check")
        return Outcome(reason, detail, test.wall_s, isolation)


def _candidate_detail(detail: str, cand: SandboxResult) -> str:
    if cand.memory_exceeded:
        return MEMORY_CAP
    if detail.startswith("the program ended"):
        return f"{detail}{_stderr_tail(cand)}"
    return detail
