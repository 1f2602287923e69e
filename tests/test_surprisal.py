"""First-token surprisal against an independent fp64 brute force, on real traces and edge cases."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from asap_fast.stage2.surprisal import (
    HeadPlan,
    SurprisalScorer,
    encode_trace,
    first_token_positions,
    first_token_surprisal,
    lm_head_plan,
    step_char_starts,
)
from asap_fast.testing import DEFAULT_CORPUS, tiny_causal_lm, tiny_tokenizer, trace_case
from asap_fast.core.traces import TraceError

# A corpus on which BPE without a pre-tokenizer learns tokens spanning "\n\n" and whole steps.
MERGE_CORPUS = tuple(DEFAULT_CORPUS) + ("So x\n\nWait y\n\nSo x\n\nWait y.\n\nOk",) * 20


# --------------------------------------------------------------------------------------------
# The independent reference
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table, inverted (written out here, not imported)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def careful_positions(tokenizer, prefix: str, steps: list[str]) -> tuple[list[int], list[int]]:
    """(ids, first-token index per step) without character offsets: each token's byte length
    comes from its byte-level string, and the first token of a step is the first whose byte span
    ends after the step's first byte (so a token merged across a boundary is found, wherever it
    starts)."""
    text = prefix + "\n\n".join(steps)
    ids = tokenizer.encode(text)
    decoder, special = _byte_decoder(), set(tokenizer.all_special_ids)
    byte_ends, total = [], 0
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        total += 0 if token_id in special else len(token)
        assert token_id in special or all(ch in decoder for ch in token)
        byte_ends.append(total)
    assert total == len(text.encode("utf-8"))
    positions = []
    for start in step_char_starts(prefix, steps):
        start_byte = len(text[:start].encode("utf-8"))
        positions.append(next(k for k, end in enumerate(byte_ends) if end > start_byte))
    return ids, positions


def brute_force(model, tokenizer, prefix: str, steps: list[str], dtype=torch.float64) -> list[float]:
    """Full forward of the model (its own head, bias, soft-capping) in ``dtype``, log_softmax
    over the whole vocab in that dtype, positions from :func:`careful_positions`."""
    ids, positions = careful_positions(tokenizer, prefix, steps)
    m = copy.deepcopy(model).to(dtype) if dtype != next(model.parameters()).dtype else model
    with torch.no_grad():
        log_probs = torch.log_softmax(m(torch.tensor([ids])).logits[0].to(dtype), dim=-1)
    return [math.inf if p == 0 else -log_probs[p - 1, ids[p]].item() for p in positions]


def assert_close_to_reference(model, tokenizer, prefix, steps, ours):
    """STYLE's tolerance rule: our error vs fp64 at most 2x the error of the plain fp32 torch
    computation (full logits) plus a small atol; inf exactly where the reference has inf."""
    exact = np.array(brute_force(model, tokenizer, prefix, steps))
    plain = np.array(brute_force(model, tokenizer, prefix, steps, dtype=torch.float32))
    ours = np.array(ours)
    assert len(ours) == len(steps)
    finite = np.isfinite(exact)
    assert (np.isinf(ours) == ~finite).all(), (ours, exact)
    err_ours = np.abs(ours[finite] - exact[finite])
    err_torch = np.abs(plain[finite] - exact[finite])
    if finite.any():
        print(f"max/mean err ours {err_ours.max():.2e}/{err_ours.mean():.2e}, torch fp32 {err_torch.max():.2e}/{err_torch.mean():.2e}")
        assert err_ours.max() <= 2 * err_torch.max() + 2e-5


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def tokenizers():
    return {
        "plain": tiny_tokenizer(),
        "bos": tiny_tokenizer(bos=True),
        "bos_eos": tiny_tokenizer(bos=True, eos=True, pre_tokenizer="gpt2"),
        "merge": tiny_tokenizer(MERGE_CORPUS, pre_tokenizer="none", vocab_size=700),
    }


MODEL_KINDS = {
    "qwen2": {"arch": "qwen2"},
    "qwen2_tied": {"arch": "qwen2", "tie_word_embeddings": True},
    "llama": {"arch": "llama"},
    "llama_tied": {"arch": "llama", "tie_word_embeddings": True},
    "qwen2_head_bias": {"arch": "qwen2", "head_bias": True},
    "gemma2_softcap": {"arch": "gemma2"},
}


@functools.cache
def model_of(kind: str, vocab_size: int):
    return tiny_causal_lm(vocab_size, **MODEL_KINDS[kind], seed=len(kind))


@pytest.fixture(scope="module")
def real_cases(cot_traces):
    """Four real traces (code and math, with and without a prompt), cut to ~1.5k characters."""
    wanted = [("code", True), ("math", True), ("code", False), ("math", True)]
    cases, used = [], set()
    for kind, has_prompt in wanted:
        for record in cot_traces:
            if record["id"] in used or record["kind"] != kind or bool(record["prompt"]) != has_prompt:
                continue
            try:
                prefix, steps = trace_case(record, max_chars=1500, max_prompt_chars=300)
            except TraceError:
                continue
            if len(steps) < 5:
                continue
            cases.append((prefix, steps))
            used.add(record["id"])
            break
    assert len(cases) == 4
    return cases


# --------------------------------------------------------------------------------------------
# Against the brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("tok_name", ["plain", "bos"])
def test_real_traces_match_fp64_brute_force(kind, tok_name, tokenizers, real_cases):
    tokenizer = tokenizers[tok_name]
    model = model_of(kind, len(tokenizer))
    scorer = SurprisalScorer(model, tokenizer)
    assert scorer.plan.fused == (kind != "gemma2_softcap")
    for prefix, steps in real_cases[:2] if tok_name == "bos" else real_cases:
        assert_close_to_reference(model, tokenizer, prefix, steps, scorer.score(prefix, steps))


@pytest.mark.parametrize("tok_name", ["plain", "bos", "bos_eos", "merge"])
def test_positions_equal_careful_positions_on_real_traces(tok_name, tokenizers, cot_traces):
    tokenizer = tokenizers[tok_name]
    checked = 0
    for record in cot_traces[::12]:
        try:
            prefix, steps = trace_case(record, max_chars=4000)
        except TraceError:
            continue
        encoded = encode_trace(tokenizer, prefix, steps)
        ids, positions = careful_positions(tokenizer, prefix, steps)
        assert encoded.input_ids.tolist() == ids
        assert encoded.positions.tolist() == positions
        checked += 1
    assert checked >= 20


def test_step_at_position_zero_without_bos_is_inf(tokenizers):
    tokenizer = tokenizers["plain"]
    model = model_of("qwen2", len(tokenizer))
    steps = ["Okay, let me think.", "Wait, that is wrong.", "So the answer is 4."]
    scores = first_token_surprisal(model, tokenizer, "", steps)
    assert scores[0] == math.inf and all(math.isfinite(s) for s in scores[1:])
    assert_close_to_reference(model, tokenizer, "", steps, scores)


@pytest.mark.parametrize("tok_name", ["bos", "bos_eos"])
def test_step_at_position_zero_with_bos_is_scored(tok_name, tokenizers):
    tokenizer = tokenizers[tok_name]
    model = model_of("llama", len(tokenizer))
    steps = ["Okay, let me think.", "Wait, that is wrong.", "So the answer is 4."]
    scores = first_token_surprisal(model, tokenizer, "", steps)
    assert all(math.isfinite(s) for s in scores)
    assert_close_to_reference(model, tokenizer, "", steps, scores)


def test_bpe_merge_across_boundary_and_shared_first_token(tokenizers):
    tokenizer = tokenizers["merge"]
    model = model_of("qwen2", len(tokenizer))
    prefix, steps = "Q:", ["So x", "Wait y", "So x", "Wait", "Ok"]
    text = prefix + "\n\n".join(steps)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    encoded = encode_trace(tokenizer, prefix, steps)
    starts = step_char_starts(prefix, steps)
    # The case exists: some step's first token starts before the step (merged across "\n\n")...
    assert any(offsets[p][0] < s for p, s in zip(encoded.positions, starts))
    # ...and two steps share one first token: same index, hence the same surprisal.
    assert encoded.positions[0] == encoded.positions[1]
    scores = first_token_surprisal(model, tokenizer, prefix, steps)
    assert scores[0] == scores[1]
    assert encoded.positions.tolist() == careful_positions(tokenizer, prefix, steps)[1]
    assert_close_to_reference(model, tokenizer, prefix, steps, scores)
    # Sharing position 0: both inf.
    assert first_token_surprisal(model, tokenizer, "", ["x", "Wait y", "Ok"])[:2] == [math.inf, math.inf]


def test_non_ascii_steps(tokenizers):
    tokenizer = tokenizers["plain"]
    model = model_of("llama", len(tokenizer))
    prefix, steps = "Problème:\n<think>\n", ["🙂 café", "数学 is math", "“quoted” — dash", "é"]
    scores = first_token_surprisal(model, tokenizer, prefix, steps)
    assert encode_trace(tokenizer, prefix, steps).positions.tolist() == careful_positions(tokenizer, prefix, steps)[1]
    assert_close_to_reference(model, tokenizer, prefix, steps, scores)


def test_first_token_positions_handles_special_token_offsets():
    # BOS (0, 0) first, EOS (0, 0) last: the running maximum keeps the ends sorted.
    ends = np.array([0, 4, 7, 11, 13, 0])
    assert first_token_positions(ends, np.array([0, 4, 5, 11, 12])).tolist() == [1, 2, 2, 4, 4]


# --------------------------------------------------------------------------------------------
# The head: fused, bias, fallback
# --------------------------------------------------------------------------------------------


def test_lm_head_plan_decisions(tokenizers):
    vocab = len(tokenizers["plain"])
    assert lm_head_plan(model_of("qwen2", vocab)).fused
    assert lm_head_plan(model_of("llama_tied", vocab)).fused
    bias_plan = lm_head_plan(model_of("qwen2_head_bias", vocab))
    assert bias_plan.fused and bias_plan.bias is not None
    gemma = lm_head_plan(model_of("gemma2_softcap", vocab))
    assert not gemma.fused and "gemma2" in gemma.reason
    with pytest.raises(ValueError, match="head='fused' impossible"):
        SurprisalScorer(model_of("gemma2_softcap", vocab), tokenizers["plain"], head="fused")
    # An allowed architecture whose config soft-caps is caught by the config check.
    model = copy.deepcopy(model_of("qwen2", vocab))
    model.config.final_logit_softcapping = 30.0
    assert "soft-caps" in lm_head_plan(model).reason
    model = copy.deepcopy(model_of("qwen2", vocab))
    model.lm_head = torch.nn.Sequential(model.lm_head)
    assert "not torch.nn.Linear" in lm_head_plan(model).reason


@pytest.mark.parametrize("kind", ["qwen2", "llama_tied", "qwen2_head_bias"])
def test_fused_and_model_forward_paths_agree(kind, tokenizers, real_cases):
    tokenizer = tokenizers["bos"]
    model = model_of(kind, len(tokenizer))
    prefix, steps = real_cases[0]
    fused = SurprisalScorer(model, tokenizer, head="fused").score(prefix, steps)
    forward = SurprisalScorer(model, tokenizer, head="model").score(prefix, steps)
    np.testing.assert_allclose(fused, forward, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The scorer: batching, context limit, loading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["qwen2", "gemma2_softcap"])
def test_score_batch_equals_one_by_one(kind, tokenizers, real_cases):
    tokenizer = tokenizers["plain"]
    model = model_of(kind, len(tokenizer))
    traces = list(real_cases) + [("", real_cases[0][1][:3]), ("Short prompt\n<think>\n", ["Okay.", "Wait."])]
    lengths = [len(encode_trace(tokenizer, p, s)) for p, s in traces]
    # A budget that forces several batches, some with several traces of different lengths (padding).
    scorer = SurprisalScorer(model, tokenizer, max_batch_tokens=2 * max(lengths) + 1)
    batched = scorer.score_batch(traces)
    for (prefix, steps), got in zip(traces, batched):
        np.testing.assert_allclose(got, scorer.score(prefix, steps), rtol=1e-6, atol=1e-6)
    assert scorer.score_batch([]) == []


def test_over_long_trace_raises_one_line_error(tokenizers, real_cases):
    tokenizer = tokenizers["plain"]
    prefix, steps = real_cases[0]
    n_tokens = len(encode_trace(tokenizer, prefix, steps))
    short_context = tiny_causal_lm(len(tokenizer), max_position_embeddings=64)
    # refused by its character count before tokenizing when it cannot fit whatever its tokens, else
    # by its token count: one line either way
    too_long = rf"^trace has ({n_tokens} tokens|[\d,]+ characters), more than the model's context of 64"
    with pytest.raises(ValueError, match=too_long) as info:
        first_token_surprisal(short_context, tokenizer, prefix, steps)
    assert "\n" not in str(info.value)
    scorer = SurprisalScorer(model_of("qwen2", len(tokenizer)), tokenizer, max_length=100)
    with pytest.raises(ValueError, match=rf"trace has ({n_tokens} tokens|[\d,]+ characters), more than the model's context of 100"):
        scorer.score_batch([("", ["ok"]), (prefix, steps)])


def test_from_pretrained_round_trip(tmp_path, tokenizers, real_cases):
    tokenizer = tokenizers["bos"]
    model = model_of("llama", len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = SurprisalScorer.from_pretrained(str(tmp_path), device="cpu")
    assert loaded.device.type == "cpu" and next(loaded.model.parameters()).dtype == torch.float32
    prefix, steps = real_cases[1]
    np.testing.assert_allclose(loaded.score(prefix, steps), SurprisalScorer(model, tokenizer).score(prefix, steps), rtol=1e-6, atol=1e-6)


def test_input_validation(tokenizers):
    tokenizer = tokenizers["plain"]
    model = model_of("qwen2", len(tokenizer))
    with pytest.raises(ValueError, match=r"steps\[1\] is empty"):
        first_token_surprisal(model, tokenizer, "p", ["a", "", "b"])
    with pytest.raises(TypeError, match="prefix must be str"):
        first_token_surprisal(model, tokenizer, None, ["a"])
    with pytest.raises(TypeError, match="steps must be a list of str"):
        first_token_surprisal(model, tokenizer, "p", "a single string")

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(TypeError, match="fast"):
        first_token_surprisal(model, SlowTokenizer(), "p", ["a"])
    with pytest.raises(ValueError, match="head must be one of"):
        SurprisalScorer(model, tokenizer, head="lm")
    with pytest.raises(ValueError, match="impl must be one of"):
        SurprisalScorer(model, tokenizer, impl="cuda")
    assert first_token_surprisal(model, tokenizer, "prefix", []) == []
    assert isinstance(lm_head_plan(model), HeadPlan)


def test_builders_are_deterministic():
    a, b = tiny_tokenizer(bos=True), tiny_tokenizer(bos=True)
    assert a.get_vocab() == b.get_vocab() and a.encode("Wait, so") == b.encode("Wait, so")
    m1, m2 = tiny_causal_lm(300, "llama", seed=3), tiny_causal_lm(300, "llama", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert not torch.equal(tiny_causal_lm(300, "llama", seed=4).lm_head.weight, m1.lm_head.weight)


@pytest.mark.parametrize("kind", ["qwen2_head_bias", "gemma2_softcap"])
def test_float64_model_matches_brute_force_tightly(kind, tokenizers, real_cases):
    # float64 models bypass the fp32 ops (plain torch on the K rows), for exact comparisons.
    tokenizer = tokenizers["bos"]
    model = model_of(kind, len(tokenizer))
    prefix, steps = real_cases[2]
    scorer = SurprisalScorer(copy.deepcopy(model), tokenizer, dtype=torch.float64)
    np.testing.assert_allclose(scorer.score(prefix, steps), brute_force(model, tokenizer, prefix, steps), rtol=1e-10, atol=1e-10)
