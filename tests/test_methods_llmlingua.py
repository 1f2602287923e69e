"""LLMLingua-2 through the real llmlingua package (tiny token classifiers built from configs and
saved locally, no download), its step boundaries, and TokenSkip's ratio draw and training format."""

from __future__ import annotations

import json
import os
import unicodedata

import pytest

pytest.importorskip("llmlingua")

from asap_fast.methods.common import Target  # noqa: E402
from asap_fast.methods.llmlingua2 import (  # noqa: E402
    CL100K_URL,
    LLMLingua2Compressor,
    LLMLingua2Config,
    LLMLingua2Stage,
    seed_tiktoken_cache,
)
from asap_fast.methods.tokenskip import (  # noqa: E402
    TokenSkipConfig,
    TokenSkipStage,
    draw_ratio,
    tokenskip_messages,
    tokenskip_prompt,
)
from asap_fast.testing import tiny_token_classifier, tiny_tokenizer, trace_case  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    """tiktoken's cl100k_base in a cache of the test's own, from the locally installed copy."""
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("tiktoken"))
    seed_tiktoken_cache()
    yield os.environ["TIKTOKEN_CACHE_DIR"]
    if previous is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def traces(cot_traces):
    return [r for r in cot_traces if "</think>" in r["generation"]]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, traces, tiktoken_cache):
    texts = [r["generation"] for r in traces[::6]]
    root = tmp_path_factory.mktemp("classifiers")
    return {family: LLMLingua2Compressor(str(tiny_token_classifier(root / f"tiny-{family}", family, texts=texts)),
                                         device="cpu")
            for family in ("xlm-roberta-large", "bert-base-multilingual-cased")}


@pytest.fixture(scope="module")
def counter():
    return tiny_tokenizer(vocab_size=800)


def cases(traces, max_chars):
    out = []
    for record in traces[::29]:
        _, steps = trace_case(record, max_chars=max_chars)
        if len(steps) >= 3:
            out.append(steps)
    return out


def test_runs_through_the_real_package(classifiers):
    from llmlingua import PromptCompressor

    compressor = classifiers["xlm-roberta-large"]
    assert isinstance(compressor.compressor, PromptCompressor) and compressor.compressor.use_llmlingua2


@pytest.mark.parametrize("rate", [0.5, 0.7])
def test_one_step_is_exactly_compress_prompt(rate, classifiers, traces):
    """A thinking of one step is compressed exactly as llmlingua's compress_prompt does it."""
    compressor = classifiers["xlm-roberta-large"]
    for steps in cases(traces, 1500)[:4]:
        text = " ".join(steps)
        ours = compressor.compress_steps([text], rate)
        theirs = compressor.compressor.compress_prompt([text], rate=rate, use_context_level_filter=False,
                                                       return_word_label=True)
        assert ours.steps == [theirs["compressed_prompt"].strip()]
        labels = [item.rpartition(" ") for item in theirs["fn_labeled_original_prompt"].split("\t\t|\t\t")]
        assert ours.words == [[[w, int(lab)] for w, _, lab in labels if w]]


def _squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


@pytest.mark.parametrize("family", ["xlm-roberta-large", "bert-base-multilingual-cased"])
def test_steps_keep_their_boundaries_and_words(family, classifiers, traces):
    compressor = classifiers[family]
    for steps in cases(traces, 6000):
        out = compressor.compress_steps(steps, 0.5)
        assert len(out.steps) == len(out.words) == len(steps)
        for step, compressed, words in zip(steps, out.steps, out.words):
            assert "\n" not in compressed and "¶" not in compressed
            kept = "".join(w for w, keep in words if keep)
            if family == "xlm-roberta-large":
                # the words are the step's text (less the characters the classifier does not know,
                # which llmlingua leaves out), and the compressed step is its kept words
                tokenizer = compressor.compressor.tokenizer
                known = "".join(c for c in _squash(step)
                                if tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c)))
                assert "".join(w for w, _ in words) == known
                assert _squash(compressed) == _squash(kept)
            else:  # WordPiece marks unknown characters [UNK], which llmlingua leaves out
                assert set(_squash(kept)) <= set(_squash(step))
        # about half of the GPT tokens of the words are kept (llmlingua's rate, per chunk)
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
        total = sum(len(enc.encode(w)) for ws in out.words for w, _ in ws)
        kept = sum(len(enc.encode(w)) for ws in out.words for w, keep in ws if keep)
        assert 0.35 < kept / total < 0.65, kept / total


def row(steps, **extra):
    return {"prompt": "Solve it.", "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>\nThe answer.",
            "kind": "math", **extra}


def test_stage_output(classifiers, traces, counter):
    stage = LLMLingua2Stage(classifiers["xlm-roberta-large"], counter, LLMLingua2Config(
        model=classifiers["xlm-roberta-large"].model, target=Target(ratio=0.5)))
    for steps in cases(traces, 4000):
        out = list(stage.process([row(steps, id="a")]))[0]
        assert not isinstance(out, Exception), out
        direct = classifiers["xlm-roberta-large"].compress_steps(steps, 0.5)
        assert out["pruned_think"] == "\n\n".join(s for s in direct.steps if s)
        assert out["kept_words"] == direct.words
        assert out["method"] == "llmlingua2" and out["id"] == "a"
        assert out["tokens_before"] == len(counter.encode("\n\n".join(steps)))
        assert out["tokens_after"] == len(counter.encode(out["pruned_think"])) < out["tokens_before"]
        assert out["messages"][1]["content"].startswith("<think>\n" + out["pruned_think"] + "\n</think>\n")
    whole = LLMLingua2Stage(classifiers["xlm-roberta-large"], counter, LLMLingua2Config(
        model=classifiers["xlm-roberta-large"].model, target=Target(budget=10**6)))
    steps = cases(traces, 2000)[0]
    out = list(whole.process([row(steps)]))[0]
    assert out["pruned_think"] == "\n\n".join(steps) and out["kept_words"] is None


def test_model_family_and_tiktoken_cache(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="xlm-roberta-large"):
        LLMLingua2Config(model=str(tmp_path / "my-classifier"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    seed_tiktoken_cache()
    import hashlib

    import tiktoken
    import tiktoken.registry

    assert (tmp_path / "cache" / hashlib.sha1(CL100K_URL.encode()).hexdigest()).is_file()
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # load afresh, from the seeded cache
    assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


# ----------------------------------------------------------------------------------- TokenSkip


def test_ratio_draw_is_per_row_deterministic_and_uniform():
    ratios = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    rows = [{"id": f"r{i}", "prompt": "p", "generation": "g"} for i in range(3000)]
    draws = [draw_ratio(r, ratios, 42) for r in rows]
    assert draws == [draw_ratio(r, ratios, 42) for r in rows]
    assert draws != [draw_ratio(r, ratios, 7) for r in rows]
    counts = {r: draws.count(r) for r in ratios}
    assert all(400 < c < 600 for c in counts.values()), counts
    no_id = {"prompt": "p", "generation": "<think>\nx\n</think>"}
    assert draw_ratio(no_id, ratios, 42) == draw_ratio(dict(no_id), ratios, 42)


def test_training_format():
    assert tokenskip_prompt("What is 2+2?", 0.5) == "What is 2+2?<|eot_id|>0.5<|eot_id|>"
    assert tokenskip_prompt("Q", 1, "|") == "Q"  # the authors write no ratio at 1.0
    assert tokenskip_prompt("Q", 0.9, "|") == "Q|0.9|"
    messages = tokenskip_messages("Q", 0.7, "a\n\nb", "Answer.")
    assert messages == [{"role": "user", "content": "Q<|eot_id|>0.7<|eot_id|>"},
                        {"role": "assistant", "content": "<think>\na\n\nb\n</think>\nAnswer."}]
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert tokenskip_messages(chat, 0.9, "t", "A")[1]["content"] == "Q<|eot_id|>0.9<|eot_id|>"
    with pytest.raises(ValueError, match="ratio"):
        tokenskip_prompt("Q", 1.5)


def test_tokenskip_stage_compresses_at_the_drawn_ratio(classifiers, traces, counter):
    compressor = classifiers["xlm-roberta-large"]
    config = TokenSkipConfig(llmlingua=LLMLingua2Config(model=compressor.model), ratios=(0.5, 0.8, 1.0), seed=3)
    stage = TokenSkipStage(compressor, counter, config)
    rows = [row(steps, id=f"t{i}") for i, steps in enumerate(cases(traces, 3000))]
    outs = list(stage.process(rows))
    for r, out in zip(rows, outs):
        assert not isinstance(out, Exception), out
        ratio = draw_ratio(r, config.ratios, 3)
        assert out["tokenskip_ratio"] == ratio and out["method"] == "tokenskip"
        steps = trace_case(r)[1]
        if ratio == 1.0:
            assert out["pruned_think"] == "\n\n".join(steps) and out["kept_words"] is None
        else:
            direct = compressor.compress_steps(steps, ratio)
            assert out["pruned_think"] == "\n\n".join(s for s in direct.steps if s)
        # TokenSkip's own format: the ratio after the question only below 1.0
        expected = "Solve it." if ratio >= 1.0 else f"Solve it.<|eot_id|>{ratio!r}<|eot_id|>"
        assert out["messages"][0] == {"role": "user", "content": expected}
    assert len({o["tokenskip_ratio"] for o in outs}) > 1


def test_tokenskip_rows_train_with_the_ratio_in_the_prompt(classifiers, traces, counter):
    """`asap sft` data: the prompt the model learns from ends with the ratio and the think tag."""
    from asap_fast.sft.data import ensure_chat_template, split_prompt_completion

    compressor = classifiers["xlm-roberta-large"]
    stage = TokenSkipStage(compressor, counter, TokenSkipConfig(llmlingua=LLMLingua2Config(model=compressor.model),
                                                                ratios=(0.6,)))
    out = list(stage.process([row(cases(traces, 2000)[0], id="s")]))[0]
    tokenizer = tiny_tokenizer(vocab_size=800)
    ensure_chat_template(tokenizer, "r1")
    prompt, completion = split_prompt_completion(out["messages"], tokenizer)
    assert "Solve it.<|eot_id|>0.6<|eot_id|>" in prompt and prompt.endswith("<think>\n")
    assert completion.startswith(out["pruned_think"])
    json.dumps(out)  # every field is JSON
