"""Stage-2 pruning: drop the least surprising steps until the thinking fits a token budget.

Global mode (the reference's rule, :func:`prune_steps`): with the budget B (``max_tokens``, or
``int(ratio * len(tokenizer.encode("\\n\\n".join(steps))))``), keep everything if the join already
fits; otherwise remove steps in ascending surprisal (ties: lower index first) until
``len(tokenizer.encode("\\n\\n".join(kept)))`` <= B. :func:`prune_steps_ref` is that loop written
plainly (the test oracle and benchmark baseline); it re-encodes the whole join after every removal.

Iterative mode (:func:`prune_steps_iterative`, which the reference names but does not implement):
after each removal the remaining steps are re-scored in their new context and the next least
surprising one goes. :func:`prune_steps_iterative_ref` re-scores from scratch every round; the
fast version re-scores only the steps whose context changed, continuing from the KV cache of the
unchanged token prefix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asap_fast.stage2.encoding import SEPARATOR, _check_trace, step_char_starts

if TYPE_CHECKING:  # the scorer is passed in; pruning never builds one (asap_fast.stage2.surprisal does)
    from asap_fast.stage2.surprisal import SurprisalScorer

__all__ = [
    "MODES",
    "PruneResult",
    "prune_scored",
    "prune_steps",
    "prune_steps_ref",
    "prune_steps_result",
    "check_budget",
    "thinking_budget",
]

MODES = ("global", "iterative")


@dataclass(frozen=True)
class PruneResult:
    """kept: indices of the kept steps, ascending. surprisal: first-token surprisal of every step
    in the unpruned context (nats). tokens_before / tokens_after: ``len(tokenizer.encode(...))`` of
    the join of all steps / of the kept steps (what the budget is compared with)."""

    kept: list[int]
    surprisal: list[float]
    tokens_before: int
    tokens_after: int


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_budget(max_tokens, ratio) -> None:
    if (max_tokens is None) == (ratio is None):
        raise ValueError(f"pass exactly one of max_tokens and ratio (got max_tokens={max_tokens!r}, ratio={ratio!r})")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
    elif isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")


def _budget(tokens_before: int, max_tokens, ratio) -> int:
    return int(max_tokens) if ratio is None else int(ratio * tokens_before)


def thinking_budget(tokenizer, thinking: str, *, max_tokens=None, ratio=None) -> tuple[int, int]:
    """(tokens, budget) of a whole thinking, as the reference counts them in a corpus run:
    tokens = ``len(tokenizer.encode(thinking))`` on the raw (stripped) thinking, the tokenizer's
    default special tokens included; budget = max_tokens, or ``int(ratio * tokens)``. A thinking
    with tokens <= budget is kept unchanged; otherwise :func:`prune_steps` runs with
    ``max_tokens=budget`` on its steps."""
    check_budget(max_tokens, ratio)
    tokens = len(tokenizer.encode(thinking))
    return tokens, _budget(tokens, max_tokens, ratio)


def _check_steps(steps) -> list[str]:
    if isinstance(steps, str) or not isinstance(steps, Sequence):
        raise TypeError(f"steps must be a list of str, got {type(steps).__name__}")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise TypeError(f"steps[{i}] must be str, got {type(step).__name__}")
    return list(steps)


def _check_surprisal(surprisal, n_steps: int) -> np.ndarray:
    try:
        values = np.asarray([float(x) for x in surprisal], dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("surprisal must be a sequence of numbers (one per step)") from None
    if values.shape[0] != n_steps:
        raise ValueError(f"surprisal has {values.shape[0]} values for {n_steps} steps; need one per step")
    nan_at = np.flatnonzero(np.isnan(values))
    if nan_at.size:
        raise ValueError(f"surprisal[{nan_at[0]}] is NaN ({nan_at.size} NaN values); scores must be numbers or inf")
    return values


def _count(tokenizer, steps: Sequence[str], kept) -> int:
    """What the reference measures: ``len(tokenizer.encode("\\n\\n".join(kept steps)))``."""
    return len(tokenizer.encode(SEPARATOR.join(steps[i] for i in kept)))


# --------------------------------------------------------------------------------------------
# Global mode
# --------------------------------------------------------------------------------------------


def prune_steps_ref(steps, surprisal, tokenizer, *, max_tokens=None, ratio=None) -> list[int]:
    """The reference's global rule, written plainly: re-encodes the join after every removal.

    O(steps x tokens) tokenizer work; the oracle for :func:`prune_steps`.
    """
    check_budget(max_tokens, ratio)
    steps = _check_steps(steps)
    values = _check_surprisal(surprisal, len(steps))
    tokens_before = len(tokenizer.encode(SEPARATOR.join(steps)))
    budget = _budget(tokens_before, max_tokens, ratio)
    kept = list(range(len(steps)))
    if tokens_before <= budget:
        return kept
    for i in sorted(range(len(steps)), key=lambda i: (values[i], i)):
        kept.remove(i)
        if len(tokenizer.encode(SEPARATOR.join(steps[j] for j in kept))) <= budget:
            break
    return kept


def prune_steps(steps, surprisal, tokenizer, *, max_tokens=None, ratio=None) -> list[int]:
    """Indices of the steps kept by the reference's global rule (ascending); see the module doc.

    steps: the steps (str); surprisal: one number per step (inf allowed, NaN not); tokenizer: any
    object with ``encode(text) -> list`` (HF tokenizers: special tokens counted, as in the
    reference's ``tokenizer.encode(...)``). Exactly one of max_tokens (int >= 0) and ratio (>= 0).

    Same kept set as :func:`prune_steps_ref`, without re-encoding after every removal: the join is
    encoded once (with offsets, for fast tokenizers) to count the tokens each step contributes;
    cumulative sums along the removal order estimate where the budget is met; the exact count
    ``len(tokenizer.encode(join))`` is then evaluated only near that point: from the first
    removal whose estimate is within ``margin`` tokens of the budget, upward until one fits. The
    margin starts at 4 and grows to twice the largest estimate error seen, so removals skipped as
    "certainly over budget" are those whose estimate exceeds the budget by more than twice any
    error observed. BPE only changes counts at re-joined "\\n\\n" junctions, by a token or two, so
    in practice a handful of encodes of the kept text replace the reference's one per removal.
    """
    return _prune_global(steps, surprisal, tokenizer, max_tokens, ratio)[0]


def prune_steps_result(steps, surprisal, tokenizer, *, max_tokens=None, ratio=None) -> PruneResult:
    """:func:`prune_steps` with the token counts it computes on the way (a :class:`PruneResult`)."""
    kept, before, after = _prune_global(steps, surprisal, tokenizer, max_tokens, ratio)
    return PruneResult(kept, [float(x) for x in surprisal], before, after)


def _step_token_weights(tokenizer, steps: list[str]) -> np.ndarray:
    """(n,) tokens each step contributes to the encoded join (its text and the "\\n\\n" after it)."""
    n = len(steps)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(SEPARATOR.join(steps), return_offsets_mapping=True, return_special_tokens_mask=True,
                        return_attention_mask=False)
        starts = np.fromiter((o[0] for o in enc["offset_mapping"]), dtype=np.int64, count=len(enc["offset_mapping"]))
        ordinary = np.asarray(enc["special_tokens_mask"], dtype=bool) == 0
        owner = np.searchsorted(step_char_starts("", steps), starts[ordinary], side="right") - 1
        return np.bincount(np.clip(owner, 0, max(n - 1, 0)), minlength=n).astype(np.int64)
    pieces = [s + SEPARATOR for s in steps[:-1]] + steps[-1:]
    try:
        counts = [len(tokenizer.encode(p, add_special_tokens=False)) for p in pieces]
    except TypeError:  # a plain ``encode(text)``: its specials, if any, only blur the estimate
        counts = [len(tokenizer.encode(p)) for p in pieces]
    return np.asarray(counts, dtype=np.int64)


def _prune_global(steps, surprisal, tokenizer, max_tokens, ratio) -> tuple[list[int], int, int]:
    """(kept, tokens_before, tokens_after) of the global rule."""
    check_budget(max_tokens, ratio)
    steps = _check_steps(steps)
    values = _check_surprisal(surprisal, len(steps))
    n = len(steps)
    tokens_before = _count(tokenizer, steps, range(n))
    budget = _budget(tokens_before, max_tokens, ratio)
    if tokens_before <= budget or n == 0:
        return list(range(n)), tokens_before, tokens_before
    order = np.argsort(values, kind="stable")  # ascending surprisal, ties: lower index first
    # estimate[k - 1]: tokens left after removing order[:k]
    estimate = tokens_before - np.cumsum(_step_token_weights(tokenizer, steps)[order])
    removed_at = np.empty(n, dtype=np.int64)
    removed_at[order] = np.arange(1, n + 1)  # step i is removed by the removal number removed_at[i]
    exact: dict[int, int] = {}

    def exact_after(k: int) -> int:
        if k not in exact:
            exact[k] = _count(tokenizer, steps, np.flatnonzero(removed_at > k))
        return exact[k]

    def first_candidate(margin: int) -> int:  # the first k (1-based) whose estimate may fit
        return min(int(np.searchsorted(-estimate, -(budget + margin), side="left")) + 1, n)

    margin = 4
    k = lowest = first_candidate(margin)
    while True:
        tokens = exact_after(k)
        error = abs(int(estimate[k - 1]) - tokens)
        if 2 * error > margin:
            margin = 2 * error
            widened = first_candidate(margin)
            if widened < lowest:
                k = lowest = widened
                continue
        if tokens <= budget or k == n:
            return np.flatnonzero(removed_at > k).tolist(), tokens_before, tokens
        k += 1


# --------------------------------------------------------------------------------------------
# Iterative mode
# --------------------------------------------------------------------------------------------


def _common_prefix_length(a: np.ndarray, b: np.ndarray | None) -> int:
    if b is None:
        return 0
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if differ.size else m


def _prune_iterative(
    scorer: SurprisalScorer, prefix, steps, max_tokens, ratio, steps_per_round, reuse_cache, want_scores
) -> PruneResult:
    import torch

    check_budget(max_tokens, ratio)
    steps = _check_trace(prefix, steps)
    if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, numbers.Integral) or steps_per_round < 1:
        raise ValueError(f"steps_per_round must be an int >= 1, got {steps_per_round!r}")
    tokenizer = scorer.tokenizer
    kept = list(range(len(steps)))
    tokens_before = _count(tokenizer, steps, kept)
    budget = _budget(tokens_before, max_tokens, ratio)
    if tokens_before <= budget:
        scores = scorer.score(prefix, steps) if want_scores else []
        return PruneResult(kept, scores, tokens_before, tokens_before)

    first_scores: list[float] | None = None
    cache, cached_ids = None, None  # cached_ids: the token ids whose KV the cache holds
    scored_ids, log_prob_at = None, {}  # log-probs by token index, valid for scored_ids
    while True:
        trace = scorer.encode(prefix, [steps[i] for i in kept])
        ids, positions = trace.input_ids, trace.positions
        # The log-prob of token p depends on ids[: p + 1] only.
        unchanged = _common_prefix_length(ids, scored_ids)
        log_prob_at = {p: v for p, v in log_prob_at.items() if p < unchanged}
        needed = np.asarray(sorted({int(p) for p in positions if p > 0} - log_prob_at.keys()), dtype=np.int64)
        if needed.size:
            start = 0
            if reuse_cache and cache is not None:
                # Continue from the KV of the unchanged token prefix, but at most from the row
                # before the first needed token: its hidden state is an output, not in the cache.
                start = min(_common_prefix_length(ids, cached_ids), int(needed[0]) - 1)
                cached = cache.get_seq_length()
                if start < cached:
                    if start == 0:
                        cache = None
                    else:
                        cache.crop(start - cached)  # negative: drop that many tokens (all versions)
            if reuse_cache and cache is None:
                start, cache = 0, scorer.new_cache()
            values = scorer.log_probs(
                torch.from_numpy(ids[start:][None]),
                torch.from_numpy(needed - 1 - start),
                torch.from_numpy(ids[needed]),
                cache=cache,
            )
            log_prob_at.update(zip(needed.tolist(), values.double().tolist()))
            cached_ids = ids if cache is not None else None
        scored_ids = ids
        scores = [-log_prob_at[int(p)] if p > 0 else math.inf for p in positions]
        if first_scores is None:
            first_scores = scores
        order = sorted(range(len(kept)), key=lambda j: (scores[j], kept[j]))
        removed: set[int] = set()
        for j in order[:steps_per_round]:
            removed.add(kept[j])
            rest = [i for i in kept if i not in removed]
            tokens = _count(tokenizer, steps, rest)
            if tokens <= budget or not rest:
                return PruneResult(rest, first_scores if want_scores else [], tokens_before, tokens)
        kept = rest


def prune_scored(
    scorer: SurprisalScorer,
    prefix: str,
    steps,
    *,
    max_tokens=None,
    ratio=None,
    mode: str = "global",
    steps_per_round: int = 1,
    reuse_cache: bool = True,
) -> PruneResult:
    """Stage 2 for one trace with a loaded scorer: first-token surprisal, then pruning in
    ``mode`` ("global": :func:`prune_steps` on one scoring pass; "iterative": as
    :func:`prune_steps_iterative`). ``surprisal`` in the result is always the global scores."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "iterative":
        return _prune_iterative(scorer, prefix, steps, max_tokens, ratio, steps_per_round, reuse_cache, True)
    check_budget(max_tokens, ratio)
    scores = scorer.score(prefix, steps)
    kept, before, after = _prune_global(steps, scores, scorer.tokenizer, max_tokens, ratio)
    return PruneResult(kept, scores, before, after)
