"""SPIRIT, step-level perplexity pruning (Cui et al., "Stepwise Perplexity-Guided Refinement for
Efficient Chain-of-Thought Reasoning in Large Language Models", arXiv 2502.13260), in the "global"
form the ASAP paper uses as its baseline: importance computed once on the whole trace, steps removed
in ascending importance until the budget (ratio 0.5 in the paper) is met.

Definition implemented (exactly this; tests restate it with a plain loop):

    text(S)   = prefix + "\\n\\n".join(steps in S)     prefix = prompt + "\\n<think>\\n", tokenized once
    covered   = the tokens of the thinking: every token whose character span ends after the prefix
                (the token holding the thinking's first character included), except a token at
                index 0 (nothing precedes it)
    PPL(S)    = exp( mean over covered tokens t of  -ln p(ids[t] | ids[:t]) )
    importance[i] = PPL(all steps but i) - PPL(all steps)

so the perplexity covers the reasoning that remains, conditioned on the prompt; removing a step
whose absence makes the rest less predictable is costly. A removal that leaves no covered token
has importance +inf (never preferred). Pruning is stage 2's global rule on these scores
(:func:`asap_fast.stage2.pruning.prune_steps_result`: ascending importance, ties by lower index,
until ``len(tokenizer.encode(join(kept)))`` fits; a budget already met keeps everything).

Cost: the definition needs K + 1 forward passes of a T-token text. Removing step i leaves the
tokens before it unchanged (token ids compared one by one, so a boundary that tokenizes differently
is never reused wrongly), so after one full pass with a KV cache, each variant only runs its
suffix from the cached prefix, and the log-probs of the unchanged tokens are taken from the full
pass. Variants are visited from the last step to the first, so each one crops the cache to a
shorter prefix that still holds the full text's keys and values. ``reuse_cache=False`` runs the
naive loop (one full forward per variant) through the same kernels; :func:`spirit_scores_ref` is
the definition written plainly with full fp64 log-softmax logits.

Batched variants (``variants_per_pass`` G > 1, fused-head models with a croppable cache): G
consecutive variants share one forward. The cache is cropped to the group's smallest start, copied
to batch G, and the G suffixes run right-padded from there; causal attention never lets a real
token see the padding to its right, so no mask is needed. Each variant then recomputes the tokens
between the group's start and its own (at most G - 1 steps), which is the price of sharing the
pass. Scores equal the loop's up to float rounding of differently shaped matmuls; where batching
pays is argued and measured in docs/methods.md and benchmarks/bench_spirit_batch.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from asap_fast.core.errors import RowError
from asap_fast.stage2.matching import match_step_budget
from asap_fast.methods.common import (
    SEPARATOR,
    Target,
    check_ids,
    count_tokens,
    thinking_tokens,
    encode_with_ends,
    method_output,
    prepare_row,
    row_error,
    thinking_positions,
)

__all__ = ["SpiritConfig", "SpiritStage", "StepPerplexity", "default_variants_per_pass", "spirit_scores",
           "spirit_scores_ref"]

METHOD = "spirit"
VARIANTS_PER_CALL = 8
# Variants per forward when the caller does not say (see default_variants_per_pass).
VARIANTS_PER_PASS_CUDA = 4
# Above this many parameters a GPU forward of a typical suffix is compute-bound: batching saves
# launches and weight reads worth fewer tokens than the group recomputes (docs/methods.md).
BATCHED_MAX_PARAMETERS = 2 * 10**9


@dataclass(frozen=True)
class StepPerplexity:
    """``ppl_full``: PPL of the whole thinking; ``ppl_without[i]``: PPL of the thinking without step
    i (inf where nothing is left to score)."""

    ppl_full: float
    ppl_without: list[float]

    @property
    def importance(self) -> list[float]:
        return [w - self.ppl_full if math.isfinite(w) else math.inf for w in self.ppl_without]


def _variants(prefix: str, steps: Sequence[str]) -> list[str]:
    """The full text, then the text without step i for every i."""
    steps = list(steps)
    return [prefix + SEPARATOR.join(steps)] + [prefix + SEPARATOR.join(steps[:i] + steps[i + 1:])
                                               for i in range(len(steps))]


def _ppl(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / count) if count else math.inf


def _common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if differ.size else m


def _check_steps(prefix, steps) -> list[str]:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
    if isinstance(steps, str) or not isinstance(steps, Sequence):
        raise TypeError(f"steps must be a list of str, got {type(steps).__name__}")
    steps = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, str) or not step:
            raise ValueError(f"steps[{i}] must be a non-empty str")
    if not steps:
        raise ValueError("no steps to score")
    return steps


def default_variants_per_pass(device, parameters: int) -> int:
    """SPIRIT variants per forward pass when none is given, for a model of ``parameters`` on
    ``device``: 1 (the plain loop) on CPU, where every forward is compute-bound and the tokens a
    group recomputes buy nothing (measured in benchmarks/bench_spirit_batch.py), and on a GPU for
    models over BATCHED_MAX_PARAMETERS, whose forwards are compute-bound above ~130 tokens (7B on
    an H200); VARIANTS_PER_PASS_CUDA for smaller models on a GPU, whose forwards of up to ~1,000
    tokens are bound by kernel launches and weight reads that a group shares. 4 rather than more:
    each member recomputes up to G - 1 steps (about (G - 1) / K more tokens in all). Argued, not
    yet measured on a GPU."""
    import torch

    if torch.device(device).type != "cuda" or parameters > BATCHED_MAX_PARAMETERS:
        return 1
    return VARIANTS_PER_PASS_CUDA


def _check_variants_per_pass(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"variants_per_pass must be a positive int or None, got {value!r}")


def _group_cache(scorer, cache, size: int):
    """A new DynamicCache holding ``cache``'s keys and values repeated ``size`` times on the batch
    axis: the group's forward extends this copy, so the batch-1 cache keeps the full text's prefix
    for the groups after it."""
    from transformers import DynamicCache

    group = DynamicCache(config=scorer.model.config)
    assert len(group.layers) == len(cache.layers)
    for source, target in zip(cache.layers, group.layers):
        assert source.keys.shape[0] == 1
        target.update(source.keys.expand(size, -1, -1, -1), source.values.expand(size, -1, -1, -1))
    return group


def spirit_scores(scorer, prefix: str, steps: Sequence[str], *, reuse_cache: bool = True,
                  variants_per_pass: int | None = None) -> StepPerplexity:
    """PPL of the whole thinking and of the thinking without each step (see the module doc), with
    a loaded :class:`~asap_fast.stage2.surprisal.SurprisalScorer`. Per-token log-probs of every
    covered row come from its fused ``linear_logsoftmax_gather`` path.

    ``variants_per_pass``: variants sharing one forward over the cached prefix (None: see
    :func:`default_variants_per_pass`; 1: one forward per variant). Groups run only with
    ``reuse_cache`` and a fused head (the model-forward path scores one sequence per pass); the
    loop runs otherwise."""
    import torch

    _check_variants_per_pass(variants_per_pass)
    steps = _check_steps(prefix, steps)
    texts = _variants(prefix, steps)
    scorer.check_length(texts[0])
    ((full_ids, full_ends),) = encode_with_ends(scorer.tokenizer, texts[:1])
    check_ids(scorer, full_ids)
    chars = len(prefix)

    def log_probs(ids: np.ndarray, positions: np.ndarray, start: int = 0, cache=None) -> np.ndarray:
        # log p(ids[p] | ids[:p]) for p in positions, from the forward of ids[start:] (continuing
        # ``cache``, which holds the first ``start`` tokens, when given)
        if not positions.size:
            return np.zeros(0)
        values = scorer.log_probs(torch.from_numpy(ids[start:][None]), torch.from_numpy(positions - 1 - start),
                                  torch.from_numpy(ids[positions]), cache=cache)
        return values.double().cpu().numpy()

    cache = scorer.new_cache() if reuse_cache else None
    covered = thinking_positions(full_ends, chars)
    full_lp = np.full(len(full_ids), np.nan)
    full_lp[covered] = log_probs(full_ids, covered, cache=cache)
    ppl_full = _ppl(-float(full_lp[covered].sum()), len(covered))
    # cumulative log-prob of the covered tokens before index p (uncovered ones add 0)
    before = np.concatenate([[0.0], np.cumsum(np.nan_to_num(full_lp, nan=0.0))])
    valid = len(full_ids) if cache is not None else 0  # cache rows that still hold the full text's KV

    group_size = variants_per_pass
    if group_size is None:
        group_size = default_variants_per_pass(scorer.device, sum(p.numel() for p in scorer.model.parameters()))
    if cache is None or not scorer.plan.fused:
        group_size = 1
    # Memory: a group holds G copies of up to T tokens of KV (the loop holds one) and G x T rows of
    # activations, so G x T stays within the scorer's budget of padded tokens per pass, the bound
    # score_batch already keeps (Qwen2.5-7B: 56 KiB of bf16 KV a token, 1.8 GiB at 32768 tokens).
    group_size = max(1, min(group_size, scorer.max_batch_tokens // len(full_ids)))

    def crop_to(start: int) -> None:
        cached = cache.get_seq_length()
        if start < cached:
            cache.crop(start - cached)  # negative: drop that many tokens (all versions)

    ppl_without = [math.inf] * len(steps)
    totals: dict[int, float] = {}
    group: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # (step, ids, fresh, own start)

    def run_group() -> None:
        # every member continues the cache: one batch-1 forward alone, a batch-G copy for several
        nonlocal valid
        start = min(valid, *(own for *_, own in group))
        crop_to(start)
        if len(group) == 1:
            i, ids, fresh, _ = group[0]
            totals[i] += log_probs(ids, fresh, start, cache).sum()
        else:
            width = max(len(ids) for _, ids, _, _ in group) - start
            batch = np.full((len(group), width), scorer.pad_token_id, dtype=np.int64)
            for r, (_, ids, _, _) in enumerate(group):
                batch[r, : len(ids) - start] = ids[start:]
            rows = np.concatenate([r * width + fresh - 1 - start for r, (_, _, fresh, _) in enumerate(group)])
            targets = np.concatenate([ids[fresh] for _, ids, fresh, _ in group])
            values = scorer.log_probs(torch.from_numpy(batch), torch.from_numpy(rows), torch.from_numpy(targets),
                                      cache=_group_cache(scorer, cache, len(group))).double().cpu().numpy()
            for (i, _, fresh, _), part in zip(group, np.split(values, np.cumsum([len(m[2]) for m in group])[:-1])):
                totals[i] += part.sum()
        valid = start
        group.clear()

    encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[int, int] = {}
    for i in reversed(range(len(steps))):  # later steps first: each crop keeps a shorter prefix
        if i not in encoded:
            # a few variants per tokenizer call: its threads help, and K x T token lists never
            # sit in memory at once (a 16k-token trace of 300 steps would need gigabytes)
            batch = list(range(max(0, i - VARIANTS_PER_CALL + 1), i + 1))
            encoded = dict(zip(batch, encode_with_ends(scorer.tokenizer, [texts[k + 1] for k in batch])))
        ids, ends = encoded.pop(i)
        check_ids(scorer, ids)
        positions = thinking_positions(ends, chars)
        if not positions.size:
            continue
        counts[i] = len(positions)
        same = _common_prefix_length(ids, full_ids)  # tokens before `same` are the full text's
        reused = positions[positions < same]
        fresh = positions[positions >= same]
        # covered positions below `same` are a contiguous run from the first covered one
        totals[i] = before[same] - before[reused[0]] if reused.size else 0.0
        if not fresh.size:
            continue
        # the cache may hold only tokens equal to this variant's, and the row before the first
        # fresh token must be an output of the forward, not a cached row
        own = min(same, int(fresh[0]) - 1)
        if cache is not None and min(own, valid) >= 1:
            group.append((i, ids, fresh, own))
            if len(group) == group_size:
                run_group()
        else:
            totals[i] += log_probs(ids, fresh).sum()
    if group:
        run_group()
    for i, total in totals.items():
        ppl_without[i] = _ppl(-float(total), counts[i])
    return StepPerplexity(ppl_full, ppl_without)


def spirit_scores_ref(model, tokenizer, prefix: str, steps: Sequence[str]) -> StepPerplexity:
    """The definition written plainly: every variant tokenized and run through the whole model, its
    [T, V] logits log-softmaxed in float64, the covered tokens' NLL averaged. The test oracle and
    the benchmark's naive baseline."""
    import torch

    steps = _check_steps(prefix, steps)
    values = []
    for text in _variants(prefix, steps):
        ((ids, ends),) = encode_with_ends(tokenizer, [text])
        positions = thinking_positions(ends, len(prefix))
        if not positions.size:
            values.append(math.inf)
            continue
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids)[None].to(model.device)).logits[0]
        log_probs = torch.log_softmax(logits.double(), -1)
        target = torch.from_numpy(ids[positions]).to(log_probs.device)
        nll = -log_probs[torch.from_numpy(positions - 1).to(log_probs.device), target].sum().item()
        values.append(_ppl(nll, len(positions)))
    return StepPerplexity(values[0], values[1:])


@dataclass(frozen=True)
class SpiritConfig:
    """SPIRIT's options (each changes the output bytes). ``target``: the paper's baseline keeps half
    of each thinking's tokens (ratio 0.5)."""

    target: Target = Target(ratio=0.5)
    think_field: str = "auto"
    task: str = "auto"

    def manifest(self) -> dict:
        return {"target": self.target.manifest(), "think_field": self.think_field, "task": self.task}


class SpiritStage:
    """SPIRIT over corpus rows with a loaded SurprisalScorer. Rows gain ``method``, ``pruned_think``,
    ``step_importance`` (PPL rise per step; null where it is +inf, or for every step when the
    thinking already fits the budget and nothing was scored), ``kept_steps``, ``tokens_before``,
    ``tokens_after`` and ``messages``."""

    name = METHOD

    def __init__(self, scorer, config: SpiritConfig = SpiritConfig(), *, reuse_cache: bool = True,
                 variants_per_pass: int | None = None):
        # variants_per_pass is a speed knob, not part of the config: scores equal the loop's up to
        # float rounding (see spirit_scores)
        _check_variants_per_pass(variants_per_pass)
        self.scorer, self.config, self.reuse_cache = scorer, config, reuse_cache
        self.variants_per_pass = variants_per_pass

    def process(self, records: list[dict]) -> Iterator:
        """Each row's output or RowError, in order, yielded as it finishes (the run engine writes
        and commits it then)."""
        return (self._one(record) for record in records)

    def _one(self, record: dict):
        from asap_fast.stage2.pruning import prune_steps_result

        config = self.config
        extra = {}
        try:
            row = prepare_row(record, think_field=config.think_field, task=config.task)
            tokenizer = self.scorer.tokenizer
            tokens_before = thinking_tokens(tokenizer, row)
            target = config.target
            if target.budget is not None and tokens_before <= target.budget:
                kept, importance, tokens_after = list(range(len(row.steps))), None, tokens_before
            else:
                scores = spirit_scores(self.scorer, row.prefix, row.steps, reuse_cache=self.reuse_cache,
                                       variants_per_pass=self.variants_per_pass)
                importance = scores.importance
                # the budget from the one count of the thinking (as stage 2: int(ratio * tokens_before))
                budget = target.budget if target.ratio is None else int(target.ratio * tokens_before)
                if target.match:  # the budget whose kept tokens are nearest ratio * tokens_before
                    budget = match_step_budget(row.steps, importance, tokenizer, tokens_before,
                                               target.matched_ratio)
                    extra["match_knob"] = budget
                result = prune_steps_result(row.steps, importance, tokenizer, max_tokens=budget)
                kept, tokens_after = result.kept, result.tokens_after
                if not kept:
                    raise ValueError(f"the budget removes every step: {tokens_before} tokens in {len(row.steps)} steps")
        except (RowError, ValueError) as e:  # bad rows, over-long traces, id mismatches: one reject each
            return row_error(e, METHOD)
        if len(kept) == len(row.steps):  # kept whole: the thinking as written, as stage 2 writes it
            pruned, tokens_after = row.whole, tokens_before
        else:
            pruned = SEPARATOR.join(row.steps[k] for k in kept)
        return method_output(
            record, record["prompt"], METHOD, pruned, row.answer, tokens_before, tokens_after,
            step_importance=None if importance is None else [v if math.isfinite(v) else None for v in importance],
            kept_steps=list(kept), **extra,
        )
