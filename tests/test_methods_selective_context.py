"""Selective Context: self-information from linear_logsoftmax_gather equals fp64 log-softmax of the
full logits, and the whole method equals a plain restatement of its definition on real traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asap_fast.methods.common import Target
from asap_fast.methods.selective_context import (
    SelectiveContextConfig,
    SelectiveContextStage,
    phrase_unit_ends,
    self_information,
    self_information_ref,
    sentence_unit_ends,
)
from asap_fast.stage2.surprisal import SurprisalScorer
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(vocab_size=800)


@pytest.fixture(scope="module")
def cases(cot_traces):
    out = []
    for record in cot_traces[::23]:
        try:
            prefix, steps = trace_case(record, max_chars=3000, max_prompt_chars=400)
        except ValueError:
            continue
        out.append((prefix, "\n\n".join(steps)))
    assert len(out) >= 8
    return out


@pytest.mark.parametrize("arch,bos", [("qwen2", False), ("llama", True)])
def test_self_information_equals_fp64_log_softmax(arch, bos, cases):
    """The tolerance rule: our fp32 error against fp64 at most 2x that of torch's fp32 log-softmax of
    the full logits, plus a small atol."""
    tok = tiny_tokenizer(vocab_size=800, bos=bos)
    model = tiny_causal_lm(len(tok), arch, hidden=48, layers=2, max_position_embeddings=16384, seed=2)
    scorer = SurprisalScorer(model, tok)
    worst = 0.0
    for prefix, text in cases:
        ours = self_information(scorer, prefix, text)
        ref = self_information_ref(model, tok, prefix, text)
        np.testing.assert_array_equal(ours.ends, ref.ends)
        ids = torch.tensor([tok(prefix + text)["input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0]
        fp32 = -torch.log_softmax(logits.float(), -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]].double().numpy()
        fp32 = fp32[len(fp32) - len(ref.values):]
        ours_err = np.abs(ours.values - ref.values).max()
        torch_err = np.abs(fp32 - ref.values).max()
        print(f"max error: ours {ours_err:.2e}, torch fp32 {torch_err:.2e}")
        assert ours_err <= 2 * torch_err + 1e-5
        worst = max(worst, ours_err)
    assert worst < 1e-3


def plain_selective_context(model, tok, prefix: str, text: str, unit_ends: list[int], keep: float) -> str:
    """The definition restated with loops: self-information of each thinking token from fp64 logits,
    summed into the unit holding the token's last character, units below the (1 - keep) percentile
    of the unit values removed."""
    enc = tok(prefix + text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    sums = [0.0] * len(unit_ends)
    counts = [0] * len(unit_ends)
    end_so_far = 0
    for t, (_, end) in enumerate(enc["offset_mapping"]):
        end_so_far = max(end_so_far, end)
        if end_so_far <= len(prefix):
            continue
        last_char = end_so_far - len(prefix) - 1
        u = next(k for k, e in enumerate(unit_ends) if last_char < e)
        sums[u] += -log_probs[t - 1, ids[t]].item() if t >= 1 else math.inf
        counts[u] += 1
    values = [s if c else math.nan for s, c in zip(sums, counts)]
    finite = [v for v in values if math.isfinite(v)]
    threshold = np.percentile(finite, 100 * (1 - keep))
    starts = [0] + unit_ends[:-1]
    return "".join(text[a:b] for a, b, v in zip(starts, unit_ends, values) if not v < threshold).strip()


def token_units_plain(tok, prefix: str, text: str) -> list[int]:
    ends, end_so_far = [], 0
    for _, end in tok(prefix + text, return_offsets_mapping=True)["offset_mapping"]:
        end_so_far = max(end_so_far, end)
        if end_so_far > len(prefix) and (not ends or ends[-1] != end_so_far - len(prefix)):
            ends.append(end_so_far - len(prefix))
    return ends


@pytest.mark.parametrize("unit", ["token", "sentence"])
@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_stage_equals_plain_restatement(unit, keep, tokenizer, cases):
    model = tiny_causal_lm(len(tokenizer), hidden=32, layers=2, max_position_embeddings=16384, seed=4, dtype=torch.float64)
    stage = SelectiveContextStage(SurprisalScorer(model, tokenizer),
                                  SelectiveContextConfig(target=Target(ratio=keep), unit=unit))
    for prefix, text in cases:
        record = {"prompt": prefix[: -len("\n<think>\n")], "generation": f"<think>\n{text}\n</think>\nok", "kind": "math"}
        out = list(stage.process([record]))[0]
        assert not isinstance(out, Exception), out
        ends = token_units_plain(tokenizer, prefix, text) if unit == "token" else sentence_unit_ends(text).tolist()
        assert out["pruned_think"] == plain_selective_context(model, tokenizer, prefix, text, ends, keep)
        assert out["units_total"] == len(ends)
        assert "".join(text[a:b] for a, b in out["kept_spans"]).strip() == out["pruned_think"]
        assert all(a < b for a, b in out["kept_spans"])
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(out["kept_spans"], out["kept_spans"][1:]))
        assert out["tokens_after"] == len(tokenizer.encode(out["pruned_think"]))
        assert out["method"] == "selective-context"
        if unit == "token":  # every token is a unit of its own: about `keep` of them stay
            assert abs(out["units_kept"] / out["units_total"] - keep) < 0.02


def test_sentence_units():
    text = 'First one. Second "quoted!" Then 3.14 is pi\nA line\n\nNext step? yes'
    ends = sentence_unit_ends(text).tolist()
    starts = [0] + ends[:-1]
    assert [text[a:b] for a, b in zip(starts, ends)] == [
        "First one. ", 'Second "quoted!" ', "Then 3.14 is pi\n", "A line\n\n", "Next step? ", "yes"]


def test_phrase_units_from_spacy_noun_chunks():
    """Phrase units from a spaCy Doc with a given parse: noun chunks are single units, every other
    token is one, each with the whitespace after it."""
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    vocab = spacy.blank("en").vocab
    words = ["The", "golden", "ratio", "is", "irrational", "."]
    doc = Doc(vocab, words=words, spaces=[True, True, True, True, False, False],
              pos=["DET", "ADJ", "NOUN", "AUX", "ADJ", "PUNCT"], deps=["det", "amod", "nsubj", "ROOT", "acomp", "punct"],
              heads=[2, 2, 3, 3, 3, 3])
    text = doc.text
    ends = phrase_unit_ends(text, lambda t: doc).tolist()
    starts = [0] + ends[:-1]
    assert [text[a:b] for a, b in zip(starts, ends)] == ["The golden ratio ", "is ", "irrational", "."]


def test_budget_that_fits_keeps_the_thinking_and_missing_spacy_pipeline_is_one_line(tokenizer, cases):
    model = tiny_causal_lm(len(tokenizer), hidden=32, layers=1, max_position_embeddings=16384)
    stage = SelectiveContextStage(SurprisalScorer(model, tokenizer), SelectiveContextConfig(target=Target(budget=10**6)))
    prefix, text = cases[0]
    out = list(stage.process([{"prompt": "q", "generation": f"<think>\n{text}\n</think>\nok", "kind": "math"}]))[0]
    assert out["pruned_think"] == text and out["kept_spans"] == [[0, len(text)]]
    with pytest.raises(ValueError, match="spaCy"):
        SelectiveContextStage(SurprisalScorer(model, tokenizer),
                              SelectiveContextConfig(unit="phrase", spacy_model="no_such_pipeline_xx"))
    with pytest.raises(ValueError, match="unit"):
        SelectiveContextConfig(unit="word")
