"""SPIRIT (step-level perplexity): the KV-cached form equals the naive loop and an independent
restatement of the definition on real traces, and the stage prunes by stage 2's global rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asap_fast.methods.common import Target
from asap_fast.methods.spirit import SpiritConfig, SpiritStage, spirit_scores, spirit_scores_ref
from asap_fast.stage2.pruning import prune_steps_ref
from asap_fast.stage2.surprisal import SurprisalScorer
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizers():
    return {"qwen2": tiny_tokenizer(vocab_size=800), "bos": tiny_tokenizer(vocab_size=800, bos=True)}


def model_for(tokenizer, arch="qwen2", dtype=torch.float64):
    return tiny_causal_lm(len(tokenizer), arch, hidden=32, layers=2, max_position_embeddings=16384, seed=5, dtype=dtype)


@pytest.fixture(scope="module")
def cases(cot_traces):
    """(prefix, steps) of real traces: code and math, short enough for a tiny model on one core."""
    out = []
    for record in cot_traces[::37]:
        try:
            prefix, steps = trace_case(record, max_chars=2500, max_prompt_chars=400)
        except ValueError:
            continue
        if len(steps) >= 3:
            out.append((prefix, steps))
    assert len(out) >= 5
    return out


def plain_ppl(model, tokenizer, prefix: str, steps: list[str]) -> float:
    """The definition, restated independently: tokenize prefix + join, score every token whose
    character span ends after the prefix (and has a predecessor), exp of the mean NLL."""
    text = prefix + "\n\n".join(steps)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    end_so_far, nll, count = 0, 0.0, 0
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    for t, (_, end) in enumerate(enc["offset_mapping"]):
        end_so_far = max(end_so_far, end)
        if t >= 1 and end_so_far > len(prefix):
            nll -= log_probs[t - 1, ids[t]].item()
            count += 1
    return math.exp(nll / count) if count else math.inf


@pytest.mark.slow  # full [T, V] fp64 logits per variant
@pytest.mark.parametrize("tok_name", ["qwen2", "bos"])
def test_cached_equals_naive_loop_and_definition_in_float64(tok_name, tokenizers, cases):
    tokenizer = tokenizers[tok_name]
    model = model_for(tokenizer, "llama" if tok_name == "bos" else "qwen2")
    scorer = SurprisalScorer(model, tokenizer)
    for prefix, steps in cases:
        cached = spirit_scores(scorer, prefix, steps)
        naive = spirit_scores(scorer, prefix, steps, reuse_cache=False)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        np.testing.assert_allclose(cached.ppl_without, naive.ppl_without, rtol=1e-10)
        np.testing.assert_allclose(cached.ppl_without, ref.ppl_without, rtol=1e-10)
        assert cached.ppl_full == pytest.approx(ref.ppl_full, rel=1e-10)
        # two steps restated from scratch: the full text and the text without step 1
        assert ref.ppl_full == pytest.approx(plain_ppl(model, tokenizer, prefix, steps), rel=1e-10)
        assert ref.ppl_without[1] == pytest.approx(plain_ppl(model, tokenizer, prefix, steps[:1] + steps[2:]), rel=1e-10)
        assert cached.importance == pytest.approx([w - ref.ppl_full for w in ref.ppl_without], rel=1e-8, abs=1e-9)


def test_cached_equals_naive_in_float32(tokenizers, cases):
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer, dtype=torch.float32)
    scorer = SurprisalScorer(model, tokenizer)
    for prefix, steps in cases:
        cached = spirit_scores(scorer, prefix, steps)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        np.testing.assert_allclose(cached.ppl_without, ref.ppl_without, rtol=2e-5)


def test_model_without_croppable_cache_runs_the_naive_loop(tokenizers, cases):
    """Gemma 2 (sliding-window layers, soft-capped head) gets no reusable cache: same values."""
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer, "gemma2")
    scorer = SurprisalScorer(model, tokenizer)
    assert scorer.new_cache() is None
    prefix, steps = cases[0]
    np.testing.assert_allclose(spirit_scores(scorer, prefix, steps).ppl_without,
                               spirit_scores_ref(model, tokenizer, prefix, steps).ppl_without, rtol=1e-10)


class CountingScorer(SurprisalScorer):
    """Counts the token positions fed to the model (to see the cache's effect)."""

    fed = 0

    def log_probs(self, input_ids, rows, targets, *, cache=None):
        self.fed += int(input_ids.shape[-1])
        return super().log_probs(input_ids, rows, targets, cache=cache)


def test_cache_feeds_fewer_tokens(tokenizers, cases):
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer)
    prefix, steps = max(cases, key=lambda c: len(c[1]))
    cached, naive = CountingScorer(model, tokenizer), CountingScorer(model, tokenizer)
    spirit_scores(cached, prefix, steps)
    spirit_scores(naive, prefix, steps, reuse_cache=False)
    full = len(tokenizer(prefix + "\n\n".join(steps))["input_ids"])
    assert naive.fed > len(steps) * full * 0.9
    assert cached.fed < 0.75 * naive.fed, (cached.fed, naive.fed)


def record_of(prefix: str, steps: list[str], **extra) -> dict:
    return {"prompt": prefix[: -len("\n<think>\n")], "generation": "<think>\n" + "\n\n".join(steps)
            + "\n</think>\n\nThe answer is 4.", "kind": "math", **extra}


def test_stage_prunes_by_the_global_rule_at_half(tokenizers, cases):
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer)
    stage = SpiritStage(SurprisalScorer(model, tokenizer))
    for prefix, steps in cases:
        out = list(stage.process([record_of(prefix, steps, id="x")]))[0]
        assert not isinstance(out, Exception), out
        importance = spirit_scores_ref(model, tokenizer, prefix, steps).importance
        assert out["kept_steps"] == prune_steps_ref(steps, importance, tokenizer, ratio=0.5)
        # the removed steps are the least important ones (a prefix of the ascending order)
        order = sorted(range(len(steps)), key=lambda i: (importance[i], i))
        removed = sorted(set(range(len(steps))) - set(out["kept_steps"]))
        assert sorted(order[: len(removed)]) == removed
        assert out["method"] == "spirit" and out["id"] == "x"
        assert out["pruned_think"] == "\n\n".join(steps[k] for k in out["kept_steps"])
        assert out["tokens_before"] == len(tokenizer.encode("\n\n".join(steps)))
        assert out["tokens_after"] == len(tokenizer.encode(out["pruned_think"])) <= int(0.5 * out["tokens_before"])
        assert out["step_importance"] == pytest.approx(importance, rel=1e-8, abs=1e-9)
        assert out["messages"][-1]["content"] == "<think>\n" + out["pruned_think"] + "\n</think>\nThe answer is 4."


def test_stage_budget_that_fits_scores_nothing_and_bad_rows_are_rejects(tokenizers, cases):
    tokenizer = tokenizers["qwen2"]
    stage = SpiritStage(CountingScorer(model_for(tokenizer), tokenizer), SpiritConfig(target=Target(budget=10**6)))
    prefix, steps = cases[0]
    out, bad = list(stage.process([record_of(prefix, steps), {"prompt": "p", "generation": "<think>\ncut"}]))
    assert out["kept_steps"] == list(range(len(steps))) and out["step_importance"] is None
    assert out["tokens_after"] == out["tokens_before"] and stage.scorer.fed == 0
    assert bad.stage == "spirit" and "</think>" in str(bad)


def test_single_step_removal_leaves_nothing_to_score(tokenizers):
    tokenizer = tokenizers["qwen2"]
    scorer = SurprisalScorer(model_for(tokenizer), tokenizer)
    scores = spirit_scores(scorer, "Q\n<think>\n", ["Only one step here."])
    assert scores.ppl_without == [math.inf] and scores.importance == [math.inf]
    assert math.isfinite(scores.ppl_full)
