"""Equal budgets (``--match-ratio``): every method's knob searched per row so the row keeps R of its
thinking tokens, on real traces with tiny models (scorer and LLMLingua-2 classifiers built locally,
no download); and one ``tokens_before`` per row for all five methods."""

from __future__ import annotations

import random

import numpy as np
import pytest

from asap_fast.methods.common import Target
from asap_fast.methods.selective_context import SelectiveContextConfig, SelectiveContextStage
from asap_fast.methods.spirit import SpiritConfig, SpiritStage
from asap_fast.stage2.fine import FineStage, PruneConfig
from asap_fast.stage2.matching import match_integer_knob, match_real_knob
from asap_fast.stage2.surprisal import SurprisalScorer
from asap_fast.testing import tiny_causal_lm, tiny_token_classifier, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATIO = 0.5


# ------------------------------------------------------------------------------ the search itself


@pytest.mark.parametrize("seed", range(40))
def test_knob_search_finds_the_nearest_count(seed):
    """Against brute force over every knob: a random non-decreasing count, a random target."""
    rng = random.Random(seed)
    hi = rng.randint(1, 300)
    counts = np.cumsum([rng.choice([0, 0, 1, 5, 17]) for _ in range(hi + 1)])
    target = rng.uniform(-5, counts[-1] + 5)
    got = match_integer_knob(0, hi, lambda k: int(counts[k]), target)
    best = min(abs(c - target) for c in counts)
    assert abs(got.tokens - target) == best and counts[int(got.knob)] == got.tokens
    assert got.probes <= 2 * (hi.bit_length() + 2)
    # a real knob on [0, 1]: the count of a step function; 30 halvings resolve every step of width 1/hi
    real = match_real_knob(0.0, 1.0, lambda x: int(counts[min(int(x * hi), hi)]), target, iterations=30)
    assert abs(real.tokens - target) == best


def test_knob_search_rejects_an_empty_range():
    with pytest.raises(ValueError, match="empty"):
        match_integer_knob(3, 2, lambda k: k, 1.0)


# ------------------------------------------------------------------------------ the five methods


@pytest.fixture(scope="module")
def records(cot_traces):
    """A few real rows of both kinds, short enough for SPIRIT's K + 1 passes on one core."""
    out = []
    for kind in ("math", "code"):
        out += [r for r in cot_traces if r["kind"] == kind and "</think>" in r["generation"]
                and 2500 < len(r["generation"]) < 6500][:2]
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(vocab_size=800)


@pytest.fixture(scope="module")
def scorer(tokenizer):
    model = tiny_causal_lm(len(tokenizer), hidden=32, layers=1, max_position_embeddings=16384, seed=3)
    return SurprisalScorer(model, tokenizer)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, cot_traces):
    llmlingua2 = pytest.importorskip("asap_fast.methods.llmlingua2")
    import os

    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("tiktoken"))
    llmlingua2.seed_tiktoken_cache()
    path = tiny_token_classifier(tmp_path_factory.mktemp("clf") / "tiny-xlm-roberta-large", "xlm-roberta-large",
                                 texts=[r["generation"] for r in cot_traces[::6]])
    return llmlingua2.LLMLingua2Compressor(str(path), device="cpu")


def stages(scorer, tokenizer, classifier, target: Target):
    """The five methods at ``target`` (asap: stage 2 on the original thinking)."""
    from asap_fast.methods.llmlingua2 import LLMLingua2Config, LLMLingua2Stage
    from asap_fast.methods.tokenskip import TokenSkipConfig, TokenSkipStage

    if target.budget is not None:
        prune = PruneConfig(budget=target.budget)
    else:
        prune = PruneConfig(budget=None, ratio=target.ratio, match=target.match)
    lingua = LLMLingua2Config(model=classifier.model, target=target)
    ratios = (target.ratio,) if target.ratio is not None else (0.5,)
    return {
        "asap": FineStage(scorer, prune),
        "spirit": SpiritStage(scorer, SpiritConfig(target=target)),
        "selective-context": SelectiveContextStage(scorer, SelectiveContextConfig(target=target)),
        "llmlingua2": LLMLingua2Stage(classifier, tokenizer, lingua),
        "tokenskip": TokenSkipStage(classifier, tokenizer, TokenSkipConfig(llmlingua=lingua, ratios=ratios,
                                                                           match=target.match)),
    }


@pytest.fixture(scope="module")
def matched(scorer, tokenizer, classifier, records):
    out = {}
    for name, stage in stages(scorer, tokenizer, classifier, Target(ratio=RATIO, match=True)).items():
        rows = list(stage.process(records))
        errors = [r for r in rows if isinstance(r, Exception)]
        assert not errors, (name, errors)
        out[name] = rows
    return out


def test_match_ratio_reaches_the_ratio_per_method(matched, tokenizer):
    table = {}
    for name, rows in matched.items():
        for row in rows:
            assert row["tokens_after"] == len(tokenizer.encode(row["pruned_think"]))
            assert row["achieved_ratio"] == row["tokens_after"] / row["tokens_before"]
            assert "match_knob" in row
        table[name] = float(np.mean([r["achieved_ratio"] for r in rows]))
    print("mean achieved ratio at --match-ratio 0.5:", table)
    for name, mean in table.items():
        assert abs(mean - RATIO) <= 0.02, (name, mean)


@pytest.mark.slow
def test_the_recorded_knob_reproduces_the_row(matched, scorer, tokenizer, classifier, records):
    """Each row's ``match_knob`` given back to the method as its plain knob writes the same thinking:
    the search chose among the method's own outputs."""
    from asap_fast.methods.llmlingua2 import LLMLingua2Config, LLMLingua2Stage

    for i, record in enumerate(records):
        knobs = {name: rows[i]["match_knob"] for name, rows in matched.items()}
        again = {
            "asap": FineStage(scorer, PruneConfig(budget=int(knobs["asap"]))),
            "spirit": SpiritStage(scorer, SpiritConfig(target=Target(budget=int(knobs["spirit"])))),
            "llmlingua2": LLMLingua2Stage(classifier, tokenizer, LLMLingua2Config(
                model=classifier.model, target=Target(ratio=knobs["llmlingua2"]))),
        }
        if knobs["selective-context"] > 0:
            again["selective-context"] = SelectiveContextStage(scorer, SelectiveContextConfig(
                target=Target(ratio=knobs["selective-context"])))
        for name, stage in again.items():
            (row,) = stage.process([record])
            assert row["pruned_think"] == matched[name][i]["pruned_think"], (name, record["id"])


def check_one_count(outputs, records, plain: bool):
    per_id: dict[str, list[int]] = {}
    for name, rows in outputs.items():
        assert len(rows) == len(records)
        for row in rows:
            if isinstance(row, Exception):  # a plain ratio can remove every step (a reject)
                assert plain and "removes every" in str(row), (name, row)
                continue
            per_id.setdefault(row["id"], []).append(row["tokens_before"])
    assert len(per_id) == len(records)
    # every row of every method when matched; a plain 0.5 rejects a thinking of a few long steps
    # in the step methods (asap, spirit), so at least the three others there
    assert {i: c for i, c in per_id.items() if len(set(c)) != 1 or len(c) < (3 if plain else 5)} == {}


def test_tokens_before_is_one_count_for_all_five_methods(records, matched):
    """Per id, the five methods' ``tokens_before`` are equal."""
    check_one_count(matched, records, plain=False)


@pytest.mark.slow
def test_tokens_before_is_one_count_at_a_plain_ratio(scorer, tokenizer, classifier, records):
    plain = {name: list(stage.process(records))
             for name, stage in stages(scorer, tokenizer, classifier, Target(ratio=RATIO)).items()}
    check_one_count(plain, records, plain=True)


def test_match_needs_a_ratio_and_global_mode():
    with pytest.raises(ValueError, match="ratio"):
        Target(budget=10, match=True)
    with pytest.raises(ValueError, match="global"):
        PruneConfig(budget=None, ratio=0.5, match=True, mode="iterative")
    assert "match" not in Target(ratio=0.5).manifest() and Target(ratio=0.5, match=True).manifest()["match"]


def test_the_shared_builder_takes_match_ratio():
    """asap_fast.Compressor and the CLI build configs with pipeline.compressor.method_config."""
    from asap_fast.pipeline.compressor import method_config

    assert method_config("asap", match_ratio=0.4) == PruneConfig(budget=None, ratio=0.4, match=True)
    assert method_config("spirit", match_ratio=0.4).target == Target(ratio=0.4, match=True)
    sc = method_config("selective-context", match_ratio=0.4, sc_aggregate="sum", sc_context="full")
    assert sc.target.match and sc.unit_aggregate == "sum" and sc.context == "full"
    ts = method_config("tokenskip", match_ratio=0.4)
    assert ts.ratios == (0.4,) and ts.match
    with pytest.raises(ValueError, match="not both"):
        method_config("spirit", ratio=0.5, match_ratio=0.4)
    with pytest.raises(ValueError, match="not both"):
        method_config("tokenskip", match_ratio=0.4, tokenskip_ratios=(0.5, 1.0))
