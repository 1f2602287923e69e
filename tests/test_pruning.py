"""Stage-2 pruning: the fast global rule equals the plain reference; iterative equals naive iterative."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asap_fast.stage2.pruning import (
    PruneResult,
    prune_scored,
    prune_steps,
    prune_steps_ref,
)
from asap_fast.stage2.surprisal import SurprisalScorer, prune_steps_iterative, prune_steps_iterative_ref
from asap_fast.testing import DEFAULT_CORPUS, tiny_causal_lm, tiny_tokenizer, trace_case
from asap_fast.core.traces import TraceError

MERGE_CORPUS = tuple(DEFAULT_CORPUS) + ("So x\n\nWait y\n\nSo x\n\nWait y.\n\nOk",) * 20


@functools.cache
def tokenizer_of(name: str):
    return {
        "qwen2": lambda: tiny_tokenizer(),
        "gpt2_bos": lambda: tiny_tokenizer(pre_tokenizer="gpt2", bos=True),
        "none_bos_eos": lambda: tiny_tokenizer(MERGE_CORPUS, pre_tokenizer="none", bos=True, eos=True, vocab_size=700),
    }[name]()


TOKENIZERS = ["qwen2", "gpt2_bos", "none_bos_eos"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



class CountingTokenizer:
    """Counts ``encode`` calls (what the reference does once per removal)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.encodes = tokenizer, 0

    def encode(self, text, **kwargs):
        self.encodes += 1
        return self.tokenizer.encode(text, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def real_steps(cot_traces, every: int, max_chars: int | None = None) -> list[list[str]]:
    out = []
    for record in cot_traces[::every]:
        try:
            out.append(trace_case(record, max_chars=max_chars)[1])
        except TraceError:
            continue
    return out


# --------------------------------------------------------------------------------------------
# Global mode
# --------------------------------------------------------------------------------------------

# Short steps from characters that stress BPE at the joins: letters, spaces, newlines,
# punctuation that Qwen2's regex glues to "\n\n", digits, non-ASCII.
step_text = st.text(alphabet=st.sampled_from(list("abxyzW So.,!?:\n 12🙂é数")), min_size=0, max_size=12)
surprisal_value = st.one_of(st.sampled_from([0.0, 1.0, 1.0, 2.5, math.inf]), st.floats(0, 20, allow_nan=False))


@st.composite
def pruning_inputs(draw):
    steps = draw(st.lists(step_text, min_size=0, max_size=14))
    surprisal = draw(st.lists(surprisal_value, min_size=len(steps), max_size=len(steps)))
    name = draw(st.sampled_from(TOKENIZERS))
    if draw(st.booleans()):
        budget = {"max_tokens": draw(st.integers(0, 60))}
    else:
        budget = {"ratio": draw(st.floats(0, 1.2, allow_nan=False))}
    return steps, surprisal, name, budget


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pruning_inputs())
def test_prune_steps_equals_reference_on_generated_inputs(case):
    steps, surprisal, name, budget = case
    tokenizer = tokenizer_of(name)
    assert prune_steps(steps, surprisal, tokenizer, **budget) == prune_steps_ref(steps, surprisal, tokenizer, **budget)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_prune_steps_equals_reference_on_real_traces(name, cot_traces):
    tokenizer = tokenizer_of(name)
    rng = np.random.default_rng(7)
    compared, encodes = 0, []
    for steps in real_steps(cot_traces, every=18, max_chars=6000):
        # Ties on half the traces (few distinct values), distinct values on the others.
        surprisal = rng.integers(0, 4, len(steps)).astype(float) if compared % 2 else rng.exponential(2.0, len(steps))
        full = len(tokenizer.encode("\n\n".join(steps)))
        for budget in ({"ratio": 0.3}, {"ratio": 0.8}, {"max_tokens": full // 2}, {"max_tokens": full}):
            counting = CountingTokenizer(tokenizer)
            kept = prune_steps(steps, surprisal, counting, **budget)
            assert kept == prune_steps_ref(steps, surprisal, tokenizer, **budget)
            encodes.append(counting.encodes)
        compared += 1
    assert compared >= 12
    # The point of the fast path: a couple of encodes of the join, not one per removed step.
    print(f"encodes per call: mean {np.mean(encodes):.2f}, max {max(encodes)}")
    assert max(encodes) <= 6


def test_prune_steps_rules():
    tokenizer = tokenizer_of("qwen2")
    steps = ["Okay, first.", "Wait, second.", "So third.", "Then fourth."]
    full = len(tokenizer.encode("\n\n".join(steps)))
    assert prune_steps(steps, [1, 2, 3, 4], tokenizer, max_tokens=full) == [0, 1, 2, 3]
    # Ties go lower index first: step 1 (tied with 2) is dropped before step 2.
    kept = prune_steps(steps, [5.0, 1.0, 1.0, 5.0], tokenizer, max_tokens=full - 1)
    assert kept == [0, 2, 3]
    assert prune_steps(steps, [math.inf, 0, 0, 0], tokenizer, max_tokens=len(tokenizer.encode(steps[0]))) == [0]
    assert prune_steps(steps, [1, 2, 3, 4], tokenizer, max_tokens=0) == []
    assert prune_steps([], [], tokenizer, ratio=0.5) == []
    # Accepts numpy arrays (and any sequence of numbers).
    assert prune_steps(steps, np.array([1.0, 2.0, 3.0, 4.0]), tokenizer, ratio=0.5) == prune_steps_ref(
        steps, [1.0, 2.0, 3.0, 4.0], tokenizer, ratio=0.5
    )


def test_prune_steps_input_validation():
    tokenizer = tokenizer_of("qwen2")
    steps = ["a", "b"]
    with pytest.raises(ValueError, match="surprisal has 1 values for 2 steps"):
        prune_steps(steps, [1.0], tokenizer, max_tokens=1)
    with pytest.raises(ValueError, match=r"surprisal\[1\] is NaN"):
        prune_steps(steps, [1.0, float("nan")], tokenizer, max_tokens=1)
    with pytest.raises(ValueError, match="exactly one of max_tokens and ratio"):
        prune_steps(steps, [1.0, 2.0], tokenizer)
    with pytest.raises(ValueError, match="exactly one of max_tokens and ratio"):
        prune_steps(steps, [1.0, 2.0], tokenizer, max_tokens=1, ratio=0.5)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 0"):
        prune_steps(steps, [1.0, 2.0], tokenizer, max_tokens=-1)
    with pytest.raises(ValueError, match="ratio must be a finite number >= 0"):
        prune_steps(steps, [1.0, 2.0], tokenizer, ratio=-0.1)
    with pytest.raises(ValueError, match="ratio must be a finite number >= 0"):
        prune_steps(steps, [1.0, 2.0], tokenizer, ratio=float("nan"))
    with pytest.raises(TypeError, match=r"steps\[1\] must be str"):
        prune_steps(["a", 2], [1.0, 2.0], tokenizer, max_tokens=1)
    with pytest.raises(TypeError, match="steps must be a list of str"):
        prune_steps("ab", [1.0, 2.0], tokenizer, max_tokens=1)


# --------------------------------------------------------------------------------------------
# Iterative mode
# --------------------------------------------------------------------------------------------


@functools.cache
def model_of(arch: str, vocab_size: int):
    return tiny_causal_lm(vocab_size, arch, seed=11)


@pytest.fixture(scope="module")
def iterative_cases(cot_traces):
    cases = []
    for record in cot_traces[3::20]:
        try:
            prefix, steps = trace_case(record, max_chars=1200, max_prompt_chars=200)
        except TraceError:
            continue
        if len(steps) >= 6:
            cases.append((prefix, steps))
    assert len(cases) >= 3
    return cases[:3]


class CountingScorer(SurprisalScorer):
    """Counts the tokens fed to the model, to show the KV cache is used."""

    fed_tokens = 0

    def log_probs(self, input_ids, rows, targets, *, cache=None):
        self.fed_tokens += input_ids.numel()
        return super().log_probs(input_ids, rows, targets, cache=cache)


@pytest.mark.parametrize(
    "arch, tok_name",
    [("qwen2", "qwen2"), ("llama", "gpt2_bos"), ("qwen2", "none_bos_eos"), ("gemma2", "qwen2")],
)
def test_iterative_equals_naive_iterative(arch, tok_name, iterative_cases):
    tokenizer = tokenizer_of(tok_name)
    model = model_of(arch, len(tokenizer))
    for prefix, steps in iterative_cases:
        naive_scorer = CountingScorer(model, tokenizer)
        naive = prune_steps_iterative_ref(naive_scorer, None, prefix, steps, ratio=0.6)
        fast_scorer = CountingScorer(model, tokenizer)
        fast = prune_steps_iterative(fast_scorer, None, prefix, steps, ratio=0.6)
        assert fast == naive
        assert len(naive) < len(steps)
        if arch != "gemma2":  # gemma2's sliding-window layers: no reusable cache, full rescoring
            assert fast_scorer.fed_tokens < 0.8 * naive_scorer.fed_tokens
    # The plain-model entry point (a fresh scorer inside) and reuse_cache=False agree too.
    prefix, steps = iterative_cases[0]
    expected = prune_steps_iterative_ref(model, tokenizer, prefix, steps, ratio=0.6)
    assert prune_steps_iterative(model, tokenizer, prefix, steps, ratio=0.6) == expected
    assert prune_steps_iterative(model, tokenizer, prefix, steps, ratio=0.6, reuse_cache=False) == expected


@pytest.mark.parametrize("steps_per_round", [3])
def test_iterative_several_steps_per_round_equals_naive(steps_per_round, iterative_cases):
    tokenizer = tokenizer_of("qwen2")
    scorer = SurprisalScorer(model_of("qwen2", len(tokenizer)), tokenizer)
    for prefix, steps in iterative_cases:
        naive = prune_steps_iterative_ref(scorer, None, prefix, steps, ratio=0.5, steps_per_round=steps_per_round)
        assert prune_steps_iterative(scorer, None, prefix, steps, ratio=0.5, steps_per_round=steps_per_round) == naive


def test_iterative_with_all_steps_per_round_is_global_mode(iterative_cases):
    tokenizer = tokenizer_of("gpt2_bos")
    scorer = SurprisalScorer(model_of("llama", len(tokenizer)), tokenizer)
    for prefix, steps in iterative_cases:
        global_kept = prune_steps(steps, scorer.score(prefix, steps), tokenizer, ratio=0.5)
        assert prune_steps_iterative(scorer, None, prefix, steps, ratio=0.5, steps_per_round=len(steps)) == global_kept


def test_scorer_prune_result(iterative_cases):
    tokenizer = tokenizer_of("qwen2")
    scorer = SurprisalScorer(model_of("qwen2", len(tokenizer)), tokenizer)
    prefix, steps = iterative_cases[1]
    scores = scorer.score(prefix, steps)
    for mode in ("global", "iterative"):
        result = scorer.prune(prefix, steps, ratio=0.5, mode=mode)
        assert isinstance(result, PruneResult)
        assert result.surprisal == scores
        assert result.tokens_before == len(tokenizer.encode("\n\n".join(steps)))
        assert result.tokens_after == len(tokenizer.encode("\n\n".join(steps[i] for i in result.kept)))
        assert result.tokens_after <= int(0.5 * result.tokens_before) < result.tokens_before
    assert scorer.prune(prefix, steps, ratio=0.5).kept == prune_steps(steps, scores, tokenizer, ratio=0.5)
    everything = prune_scored(scorer, prefix, steps, max_tokens=10**6, mode="iterative")
    assert everything.kept == list(range(len(steps))) and everything.surprisal == scores
    with pytest.raises(ValueError, match="mode must be one of"):
        scorer.prune(prefix, steps, ratio=0.5, mode="local")
    with pytest.raises(ValueError, match="steps_per_round must be an int >= 1"):
        prune_steps_iterative(scorer, None, prefix, steps, ratio=0.5, steps_per_round=0)
    with pytest.raises(TypeError, match="tokenizer is required"):
        prune_steps_iterative(scorer.model, None, prefix, steps, ratio=0.5)


def test_prune_steps_with_a_plain_encode_tokenizer():
    class WordTokenizer:  # no offsets, no special tokens, encode(text) only
        def encode(self, text):
            return text.replace("\n", " \n ").split(" ")

    tokenizer = WordTokenizer()
    steps = ["Okay so we add", "Wait no", "So the sum is 4", "Check: 2 + 2 = 4", "Done"]
    for budget in range(25):
        surprisal = [3.0, 0.5, 2.0, 0.5, 1.0]
        assert prune_steps(steps, surprisal, tokenizer, max_tokens=budget) == prune_steps_ref(
            steps, surprisal, tokenizer, max_tokens=budget
        )
