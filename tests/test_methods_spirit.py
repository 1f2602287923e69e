"""SPIRIT (step-level perplexity): the KV-cached form equals the naive loop and an independent
restatement of the definition on real traces, and the stage prunes by stage 2's global rule."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from asap_fast.methods.common import Target
from asap_fast.methods.spirit import (
    VARIANTS_PER_PASS_CUDA,
    SpiritConfig,
    SpiritStage,
    default_variants_per_pass,
    spirit_scores,
    spirit_scores_ref,
)
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
def test_cached_equals_naive_loop_batched_and_definition_in_float64(tok_name, tokenizers, cases):
    tokenizer = tokenizers[tok_name]
    model = model_for(tokenizer, "llama" if tok_name == "bos" else "qwen2")
    scorer = SurprisalScorer(model, tokenizer)
    for prefix, steps in cases:
        cached = spirit_scores(scorer, prefix, steps)
        naive = spirit_scores(scorer, prefix, steps, reuse_cache=False)
        batched = spirit_scores(scorer, prefix, steps, variants_per_pass=4)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        np.testing.assert_allclose(batched.ppl_without, cached.ppl_without, rtol=1e-10)
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


# -- batched variants (variants_per_pass) ---------------------------------------------------------

class ShapeScorer(SurprisalScorer):
    """Records the batch size of every forward (to see that groups really share a pass)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def log_probs(self, input_ids, rows, targets, *, cache=None):
        self.batches.append(int(input_ids.shape[0]))
        return super().log_probs(input_ids, rows, targets, cache=cache)


# Fragments whose joins re-tokenize at step boundaries: leading spaces, punctuation and digits
# merge with the "\n\n" separator or the previous step's last token in byte-level BPE.
FRAGMENTS = ["x", " ", "1", "23", ".", ",", "'s", "\n", " the", "ab", "é", "?!", "-", "    ", "\t", "=", "Let"]


def generated_cases(seed: int, count: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    cases = []
    for n in range(count):
        prefix = rng.choice(["", "Q\n<think>\n", "What is 2+2?\n<think>\n", " \n"])
        steps = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6)))
                 for _ in range(1 if n % 7 == 0 else rng.randint(2, 9))]
        cases.append((prefix, steps))
    return cases


def boundary_facts(tokenizer, prefix, steps) -> tuple[int, int]:
    """(variants whose removal changes a token that ends before the removed step's first character,
    variants that share every token with the full text: nothing fresh to run)."""
    full = tokenizer(prefix + "\n\n".join(steps), return_offsets_mapping=True)
    changed = unchanged = 0
    for i in range(len(steps)):
        ids = tokenizer(prefix + "\n\n".join(steps[:i] + steps[i + 1:]))["input_ids"]
        cut = len(prefix + "\n\n".join(steps[:i])) + (2 if i + 1 < len(steps) else 0)  # the separator
        kept = [t for t, (_, end) in enumerate(full["offset_mapping"]) if end <= cut]
        same = next((t for t, (a, b) in enumerate(zip(ids, full["input_ids"])) if a != b), min(len(ids), len(full["input_ids"])))
        changed += bool(kept) and same < len(kept)
        unchanged += ids == full["input_ids"][: len(ids)]
    return changed, unchanged


def test_batched_equals_loop_and_definition_on_real_traces_float64(tokenizers, cases):
    """Two real traces here; the slow test above runs every case for G = 4."""
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer)
    scorer = ShapeScorer(model, tokenizer)
    for prefix, steps in cases[:2]:
        loop = spirit_scores(scorer, prefix, steps, variants_per_pass=1)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        for group in (2, 5, 64):
            scorer.batches.clear()
            batched = spirit_scores(scorer, prefix, steps, variants_per_pass=group)
            # the groups really share a pass (the last variant may have nothing fresh to run)
            assert min(group, len(steps) - 1) <= max(scorer.batches) <= group
            np.testing.assert_allclose(batched.ppl_without, loop.ppl_without, rtol=1e-10)
            np.testing.assert_allclose(batched.ppl_without, ref.ppl_without, rtol=1e-10)
            assert batched.ppl_full == loop.ppl_full


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_equals_loop_in_float32(attn, tokenizers, cases):
    """Right padding needs no mask under either attention: only rounding separates the paths."""
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer, dtype=torch.float32)
    model.set_attn_implementation(attn)
    scorer = ShapeScorer(model, tokenizer)
    for prefix, steps in cases[:2] if attn == "sdpa" else cases[:1]:  # eager is slow on long batches
        loop = spirit_scores(scorer, prefix, steps, variants_per_pass=1)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        for group in (3, 8):
            batched = spirit_scores(scorer, prefix, steps, variants_per_pass=group)
            loop_error = np.max(np.abs(np.array(loop.ppl_without) / np.array(ref.ppl_without) - 1))
            batched_error = np.max(np.abs(np.array(batched.ppl_without) / np.array(ref.ppl_without) - 1))
            print(f"{attn} G={group}: loop vs fp64 {loop_error:.2e}, batched vs fp64 {batched_error:.2e}")
            np.testing.assert_allclose(batched.ppl_without, ref.ppl_without, rtol=2e-5)
            np.testing.assert_allclose(batched.ppl_without, loop.ppl_without, rtol=1e-5)
    assert max(scorer.batches) > 1


@pytest.mark.parametrize("tok_name", ["qwen2", "bos"])
def test_batched_equals_loop_and_definition_on_generated_edges(tok_name, tokenizers):
    """Re-tokenized boundaries, variants with nothing fresh, single steps, an empty prefix (step
    0's group reaches token 0 and runs alone from scratch), groups larger than K."""
    tokenizer = tokenizers[tok_name]
    model = model_for(tokenizer, "llama" if tok_name == "bos" else "qwen2")
    scorer = SurprisalScorer(model, tokenizer)
    changed = unchanged = singles = 0
    for prefix, steps in generated_cases(seed=11 if tok_name == "qwen2" else 12, count=24):
        facts = boundary_facts(tokenizer, prefix, steps)
        changed, unchanged, singles = changed + facts[0], unchanged + facts[1], singles + (len(steps) == 1)
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        loop = spirit_scores(scorer, prefix, steps, variants_per_pass=1)
        for group in (2, 3, len(steps) + 4):
            batched = spirit_scores(scorer, prefix, steps, variants_per_pass=group)
            np.testing.assert_allclose(batched.ppl_without, loop.ppl_without, rtol=1e-10)
            np.testing.assert_allclose(batched.ppl_without, ref.ppl_without, rtol=1e-10)
            assert batched.ppl_full == pytest.approx(ref.ppl_full, rel=1e-10)
    # the generator reached the cases it is for
    assert changed >= 3 and unchanged >= 3 and singles >= 2, (changed, unchanged, singles)


def test_batching_falls_back_to_the_loop_where_it_cannot_run(tokenizers, cases):
    """The model-forward head scores one sequence per pass, the naive loop has no cache to share:
    both run batch-1 forwards and give the same values."""
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer)
    prefix, steps = cases[0]
    ref = spirit_scores_ref(model, tokenizer, prefix, steps)
    for scorer, opts in [(ShapeScorer(model, tokenizer, head="model"), {}),
                         (ShapeScorer(model, tokenizer), {"reuse_cache": False})]:
        scores = spirit_scores(scorer, prefix, steps, variants_per_pass=8, **opts)
        assert set(scorer.batches) == {1}
        np.testing.assert_allclose(scores.ppl_without, ref.ppl_without, rtol=1e-10)


def test_group_size_is_capped_by_the_token_budget(tokenizers, cases):
    tokenizer = tokenizers["qwen2"]
    prefix, steps = max(cases, key=lambda c: len(c[1]))
    full = len(tokenizer(prefix + "\n\n".join(steps))["input_ids"])
    scorer = ShapeScorer(model_for(tokenizer), tokenizer, max_batch_tokens=3 * full + 1)
    spirit_scores(scorer, prefix, steps, variants_per_pass=64)
    assert max(scorer.batches) == 3


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4"])
def test_variants_per_pass_must_be_a_positive_int(value, tokenizers):
    tokenizer = tokenizers["qwen2"]
    scorer = SurprisalScorer(model_for(tokenizer), tokenizer)
    with pytest.raises(ValueError, match="variants_per_pass must be a positive int"):
        spirit_scores(scorer, "Q\n<think>\n", ["a", "b"], variants_per_pass=value)
    with pytest.raises(ValueError, match="variants_per_pass must be a positive int"):
        SpiritStage(scorer, variants_per_pass=value)


def test_default_is_the_loop_on_cpu_and_for_large_models_groups_for_small_ones_on_cuda():
    assert default_variants_per_pass("cpu", 5 * 10**8) == 1
    assert default_variants_per_pass(torch.device("cuda", 0), 5 * 10**8) == VARIANTS_PER_PASS_CUDA > 1
    assert default_variants_per_pass("cuda", 7 * 10**9) == 1


def test_stage_output_is_the_same_for_every_group_size(tokenizers, cases):
    """float64: the rows' bytes are identical for every G. float32: the same steps are kept and
    the same text written; the PPLs differ only by rounding (about 1e-9 relative), which the
    importance (a difference of two PPLs near the vocabulary size) shows as up to 1e-6 absolute."""
    tokenizer = tokenizers["qwen2"]
    records = [record_of(prefix, steps, id=str(n)) for n, (prefix, steps) in enumerate(cases[:2])]
    for dtype, groups, rows in [(torch.float64, (1, 3, 64), records), (torch.float32, (1, 3), records[:1])]:
        scorer = SurprisalScorer(model_for(tokenizer, dtype=dtype), tokenizer)
        outputs = {group: [json.dumps(row, sort_keys=True) for row in
                           SpiritStage(scorer, variants_per_pass=group).process(rows)] for group in groups}
        for group in groups[1:]:
            if dtype == torch.float64:
                assert outputs[group] == outputs[1]
            for mine, loop in zip(outputs[group], outputs[1]):
                mine, loop = json.loads(mine), json.loads(loop)
                assert {k: v for k, v in mine.items() if k != "step_importance"} == \
                       {k: v for k, v in loop.items() if k != "step_importance"}
                assert mine["step_importance"] == pytest.approx(loop["step_importance"], rel=1e-6, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_equals_loop_on_cuda(dtype, tokenizers, cases):
    """The GPU path (Triton head kernel, CUDA attention, the default G for a small model): batched
    equals the loop up to the dtype's rounding, both near the fp64 definition on CPU."""
    tokenizer = tokenizers["qwen2"]
    model = model_for(tokenizer)
    scorer = ShapeScorer(model_for(tokenizer, dtype=dtype).to("cuda"), tokenizer)
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    for prefix, steps in cases[:3]:
        ref = spirit_scores_ref(model, tokenizer, prefix, steps)
        loop = spirit_scores(scorer, prefix, steps, variants_per_pass=1)
        scorer.batches.clear()
        batched = spirit_scores(scorer, prefix, steps)  # the default on CUDA for a tiny model
        assert 1 < max(scorer.batches) <= VARIANTS_PER_PASS_CUDA
        np.testing.assert_allclose(batched.ppl_without, loop.ppl_without, rtol=tolerance)
        np.testing.assert_allclose(batched.ppl_without, ref.ppl_without, rtol=tolerance)
