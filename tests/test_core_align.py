"""align_steps makes the reference's stage-1 decisions, checked against a plain-Python scan."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asap_fast as af
from asap_fast.core.matching import align_steps_ref
from asap_fast.simulate import simulate_compression


def indel_ratio(a: str, b: str) -> float:
    return af.similarity(a, b, "indel")


# Sections drawn from a small pool so that matches, near-matches and misses all happen.
WORDS = ["so", "the", "answer", "wait", "is", "x", "=", "3", "but", "then", "check", "n"]
section = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)
document = st.lists(section, max_size=12).map(lambda parts: "\n\n".join(parts))


@given(document, document, st.sampled_from([0.0, 0.3, 0.6, 0.9, 1.0]))
@settings(max_examples=1500, deadline=None)
def test_align_equals_reference_scan(original, compressed, threshold):
    assert af.align_steps(original, compressed, threshold) == align_steps_ref(original, compressed, threshold)
    assert af.align_steps(original, compressed, threshold, "indel") == align_steps_ref(
        original, compressed, threshold, ratio=indel_ratio
    )


@given(document)
@settings(max_examples=200, deadline=None)
def test_subsequence_of_itself_is_accepted(original):
    sections = original.strip().split("\n\n")
    kept = "\n\n".join(sections[::2])
    assert af.align_steps(original, kept) is not None


def test_edge_cases():
    assert af.align_steps("", "") == [0]  # one empty section each, ratio("", "") == 1.0
    assert af.align_steps("a\n\nb", "") is None  # an empty section only matches an empty one
    assert af.align_steps("a\n\n\n\nb", "a\n\n\n\nb") == [0, 1, 2]
    assert af.align_steps("one\n\ntwo\n\nthree", "three\n\none") is None  # order matters
    assert af.align_steps("one\n\ntwo\n\nthree", "one\n\nthree") == [0, 2]


def simulated_pairs(traces, seed):
    rng = random.Random(seed)
    pairs = []
    for row in traces:
        try:
            think = af.parse_trace(row["generation"], require_code=False).think
        except af.TraceError:
            continue
        compressed = simulate_compression(
            think, rng, drop_word=rng.choice([0.0, 0.02, 0.1]), invent=rng.choice([0.0, 0.5])
        )
        pairs.append((think, compressed))
    return pairs


def test_real_traces_with_simulated_compressions(cot_traces):
    pairs = simulated_pairs(cot_traces, seed=0)
    expected = [align_steps_ref(o, c) for o, c in pairs]
    accepted = sum(e is not None for e in expected)
    assert 0.2 * len(pairs) < accepted < 0.8 * len(pairs)  # both decisions are exercised
    assert [af.align_steps(o, c) for o, c in pairs] == expected
    originals, compressed = zip(*pairs)
    assert af.align_steps_batch(originals, compressed, workers=2) == expected


def test_indel_metric_on_real_traces(cot_traces):
    pairs = simulated_pairs(cot_traces[::4], seed=1)
    for original, compressed in pairs:
        assert af.align_steps(original, compressed, 0.6, "indel") == align_steps_ref(
            original, compressed, 0.6, ratio=indel_ratio
        )


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"align_steps\(\): argument 'compressed' must be str, not NoneType"):
        af.align_steps("a", None)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        af.align_steps("a", "a", threshold=-0.1)
    with pytest.raises(ValueError, match="metric must be"):
        af.align_steps("a", "a", metric="jaro")
    with pytest.raises(ValueError, match="same length"):
        af.align_steps_batch(["a"], [])
    with pytest.raises(TypeError, match=r"argument 'originals\[0\]' must be str, not int"):
        af.align_steps_batch([1], ["a"])
