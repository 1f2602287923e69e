"""Selective Context's defaults follow the authors' code (liyucheng09/Selective_Context,
src/selective_context/__init__.py), restated here from its rules: whitespace runs collapsed to one
space, sentences split by its regex and stripped, each sentence scored alone after "<|endoftext|>",
a sentence's or phrase's self-information the mean of its tokens', units below np.nanpercentile of
the reduce ratio removed."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from asap_fast.methods.common import Target
from asap_fast.methods.selective_context import (
    SelectiveContextConfig,
    SelectiveContextStage,
    TokenInformation,
    collapse_whitespace,
    original_sentences,
    sentence_self_information,
    sentence_unit_ends,
    unit_information,
)
from asap_fast.stage2.surprisal import SurprisalScorer
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the original's rules, written out for the test
PATTERN = r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s"


def original_split(text: str) -> list[str]:
    context = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(PATTERN, context) if s.strip()]


def test_sentence_split_by_hand():
    text = "Let x = 2.  Then  y?\n\nYes! e.g. this works. Mr. Smith said so.\nDone"
    expected = ["Let x = 2.", "Then y?", "Yes! e.g. this works.", "Mr. Smith said so.", "Done"]
    assert original_split(text) == expected
    spans = original_sentences(text)
    assert [body for _, _, body in spans] == expected
    # each sentence's span in the text reads as the sentence once whitespace is collapsed
    assert [re.sub(r"\s+", " ", text[a:b]) for a, b, _ in spans] == expected
    ends = sentence_unit_ends(text, "original").tolist()
    starts = [0] + ends[:-1]
    assert [text[a:b] for a, b in zip(starts, ends)] == [
        "Let x = 2.  ", "Then  y?\n\n", "Yes! e.g. this works. ", "Mr. Smith said so.\n", "Done"]


@pytest.mark.parametrize("seed", range(30))
def test_sentence_split_fuzz(seed):
    """Random texts of words, stops and whitespace: the spans equal the original's split."""
    rng = np.random.default_rng(seed)
    pieces = ["a", "Mr.", "e.g.", "x.", "y?", "z!", "3.14", "Dr", " ", "  ", "\n", "\n\n", "\t", ".", "?"]
    text = "".join(rng.choice(pieces, size=int(rng.integers(1, 60))))
    assert [body for _, _, body in original_sentences(text)] == original_split(text)
    collapsed, where = collapse_whitespace(text)
    assert collapsed == re.sub(r"\s+", " ", text) and len(where) == len(collapsed)
    assert all(text[w] == c or (c == " " and text[w].isspace()) for w, c in zip(where, collapsed))


def test_mean_and_sum_by_hand():
    info = TokenInformation(np.array([2, 4, 7]), np.array([1.0, 3.0, 5.0]))
    ends = np.array([4, 7, 9])
    assert unit_information(info, ends, "sum")[:2].tolist() == [4.0, 5.0]
    assert unit_information(info, ends, "mean")[:2].tolist() == [2.0, 5.0]
    assert math.isnan(unit_information(info, ends, "mean")[2])  # no token ends in it
    with pytest.raises(ValueError, match="aggregate"):
        unit_information(info, ends, "max")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(vocab_size=800)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm(len(tokenizer), hidden=32, layers=2, max_position_embeddings=16384, seed=4,
                          dtype=torch.float64)


@pytest.fixture(scope="module")
def texts(cot_traces):
    out = []
    for record in cot_traces[::41]:
        try:
            _, steps = trace_case(record, max_chars=1500, max_prompt_chars=100)
        except ValueError:
            continue
        out.append("\n\n".join(steps))
    return out


def original_token_information(model, tokenizer, text: str) -> list[tuple[str, list[float]]]:
    """Per sentence of the original split: the sentence and its tokens' -ln p, each sentence run
    alone after <|endoftext|> with fp64 log-softmax of the full logits."""
    out = []
    for sent in original_split(text):
        ids = tokenizer("<|endoftext|>" + sent, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        lp = torch.log_softmax(logits.double(), -1)
        out.append((sent, [-lp[t - 1, ids[t]].item() for t in range(1, len(ids))]))
    return out


def test_sentence_context_equals_the_original_scoring(model, tokenizer, texts):
    scorer = SurprisalScorer(model, tokenizer)
    for text in texts[:4]:
        info = sentence_self_information(scorer, text, batch=3)
        expected = original_token_information(model, tokenizer, text)
        values = [v for _, vs in expected for v in vs]
        np.testing.assert_allclose(info.values, values, rtol=1e-9, atol=1e-9)
        # every sentence's tokens end inside its span of the text
        spans = original_sentences(text)
        at = 0
        for (a, b, _), (_, vs) in zip(spans, expected):
            assert ((info.ends[at:at + len(vs)] > a) & (info.ends[at:at + len(vs)] <= b)).all()
            at += len(vs)


@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_default_sentence_method_equals_the_original_rule(keep, model, tokenizer, texts):
    """Defaults (sentence units): the kept sentences are the original's: mean self-information per
    sentence, scored alone, threshold np.nanpercentile(values, 100 * (1 - keep)), strict <."""
    stage = SelectiveContextStage(SurprisalScorer(model, tokenizer),
                                  SelectiveContextConfig(target=Target(ratio=keep), unit="sentence"))
    assert stage.config.unit_aggregate == "mean" and stage.config.context == "sentence"
    for text in texts:
        scored = original_token_information(model, tokenizer, text)
        values = [np.mean(vs) if vs else np.nan for _, vs in scored]
        threshold = np.nanpercentile(values, 100 * (1 - keep))
        kept = [s for (s, _), v in zip(scored, values) if not v < threshold]
        record = {"prompt": "p", "generation": f"<think>\n{text}\n</think>\nok", "kind": "math"}
        (out,) = stage.process([record])
        assert not isinstance(out, Exception), out
        ours = [re.sub(r"\s+", " ", text[a:b]).strip() for a, b in out["kept_spans"]]
        assert " ".join(ours) == " ".join(kept)


def test_options_are_checked():
    with pytest.raises(ValueError, match="context"):
        SelectiveContextConfig(context="unit")
    with pytest.raises(ValueError, match="aggregate"):
        SelectiveContextConfig(aggregate="median")
    with pytest.raises(ValueError, match="split"):
        SelectiveContextConfig(split="spacy")
    assert SelectiveContextConfig(unit="token").unit_aggregate == "sum"
    assert SelectiveContextConfig(unit="phrase").unit_aggregate == "mean"
