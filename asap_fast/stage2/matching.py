"""Equal-budget calibration (``--match-ratio R``): per row, the value of a method's own knob that
makes it keep R of the thinking's tokens.

Methods differ in what their knob counts (ASAP and SPIRIT: a token budget on the steps' join;
Selective Context: a percentile of units; LLMLingua-2: a rate of cl100k tokens per chunk), so one
nominal ratio keeps different amounts of text. Matching searches the knob per row with the outcome
measured in the one shared count (``tokens_after`` / ``tokens_before``, the tokenizer of every
method), so the methods compare at equal kept fractions.

The search assumes the kept token count does not decrease as the knob grows (true of every method's
rule up to tokenization at joins): bisection finds the knob where the count crosses R *
tokens_before, and of the evaluated knobs the one whose count is nearest is chosen (ties: the
smaller knob). A method evaluates its rule, never a model, per probe: scores are computed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MATCH_TOLERANCE", "KnobMatch", "match_integer_knob", "match_real_knob", "match_step_budget"]

# the tolerance the comparison aims for (the issue's ±0.02); a row's knob may not allow it (a
# thinking of few units or steps), so it is reported, never enforced
MATCH_TOLERANCE = 0.02


@dataclass(frozen=True)
class KnobMatch:
    """The chosen ``knob``, the kept ``tokens`` there, and how many knob values were evaluated."""

    knob: float
    tokens: int
    probes: int


def _nearest(evaluated: dict, target: float) -> KnobMatch:
    knob = min(evaluated, key=lambda k: (abs(evaluated[k] - target), k))
    return KnobMatch(knob, evaluated[knob], len(evaluated))


def match_integer_knob(lo: int, hi: int, tokens_at: Callable[[int], int], target: float) -> KnobMatch:
    """The integer knob in [lo, hi] whose ``tokens_at(knob)`` is nearest ``target`` tokens
    (``tokens_at`` non-decreasing in the knob): about log2(hi - lo) evaluations."""
    if lo > hi:
        raise ValueError(f"empty knob range [{lo}, {hi}]")
    evaluated: dict[int, int] = {}

    def at(k: int) -> int:
        if k not in evaluated:
            evaluated[k] = int(tokens_at(k))
        return evaluated[k]

    if at(hi) <= target or at(lo) >= target:
        return _nearest(evaluated, target)
    # invariant: at(lo) < target <= at(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    return _nearest(evaluated, target)


def match_real_knob(lo: float, hi: float, tokens_at: Callable[[float], int], target: float,
                    *, iterations: int = 14) -> KnobMatch:
    """The knob in [lo, hi] (reals) whose ``tokens_at(knob)`` is nearest ``target`` tokens, by
    ``iterations`` bisection steps (``tokens_at`` non-decreasing in the knob)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"bad knob range [{lo}, {hi}]")
    evaluated: dict[float, int] = {}

    def at(k: float) -> int:
        if k not in evaluated:
            evaluated[k] = int(tokens_at(k))
        return evaluated[k]

    if at(hi) <= target or at(lo) >= target:
        return _nearest(evaluated, target)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
        if evaluated[mid] == target:
            break
    return _nearest(evaluated, target)


def match_step_budget(steps, scores, tokenizer, tokens_before: int, ratio: float,
                      written_tokens: Callable[[list[int]], int] | None = None) -> int:
    """The token budget of the global step rule (``prune_steps``: ascending ``scores`` removed until
    the steps' join fits) whose kept thinking is nearest ``ratio * tokens_before`` tokens.
    ``written_tokens(kept)``: the tokens of the text the method writes for ``kept`` (default: the
    join of the kept steps); a kept set that is every step counts ``tokens_before`` (written whole),
    an empty one 0. Budgets 1 .. tokens_before are searched."""
    from asap_fast.stage2.pruning import prune_steps

    n = len(steps)

    def tokens_at(budget: int) -> int:
        kept = prune_steps(steps, scores, tokenizer, max_tokens=budget)
        if len(kept) == n:
            return tokens_before
        if not kept:
            return 0
        if written_tokens is not None:
            return written_tokens(kept)
        return len(tokenizer.encode("\n\n".join(steps[k] for k in kept)))

    return int(match_integer_knob(1, max(tokens_before, 1), tokens_at, ratio * tokens_before).knob)
