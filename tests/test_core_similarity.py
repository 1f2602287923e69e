"""similarity(metric="difflib") is difflib's ratio, bit for bit; "indel" is 2*LCS/(la+lb)."""

import difflib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asap_fast as af
from asap_fast import _core

ALPHABETS = {
    "binary": "ab",
    "dna": "acgt",
    "prose": "etaoin shrdlu,.\n",
    "ascii": "".join(map(chr, range(32, 127))),
    # Latin-1, BMP, astral and a lone surrogate: every storage kind of a Python str.
    "wide": "a\u00e9\u00ff\u4e2d\u6587\U0001f600\U00010348\ud800 ",
}


def texts(alphabet: str, min_size=0, max_size=260):
    return st.text(alphabet=st.sampled_from(alphabet), min_size=min_size, max_size=max_size)


def difflib_ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def lcs_ref(a: str, b: str) -> int:
    row = [0] * (len(b) + 1)
    for ca in a:
        diag = 0
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], diag + 1 if ca == cb else max(row[j], row[j - 1])
    return row[-1]


@pytest.mark.parametrize("name", sorted(ALPHABETS))
@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_difflib_exact_random(name, data):
    alphabet = ALPHABETS[name]
    a = data.draw(texts(alphabet))
    # b lengths around 200 switch difflib's autojunk on and off.
    b = data.draw(texts(alphabet, min_size=data.draw(st.sampled_from([0, 150, 195])), max_size=260))
    expected = difflib.SequenceMatcher(None, a, b)
    assert af.similarity(a, b) == expected.ratio()
    assert _core.quick_ratio(a, b) == expected.quick_ratio()
    assert _core.real_quick_ratio(a, b) == expected.real_quick_ratio()


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=300), st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_difflib_exact_any_unicode(a, b):
    assert af.similarity(a, b) == difflib_ratio(a, b)
    assert af.similarity(b, a) == difflib_ratio(b, a)


def test_difflib_autojunk_boundary():
    rng = random.Random(7)
    for n in (199, 200, 201, 299, 300, 301, 1000):
        for _ in range(30):
            b = "".join(rng.choice("aab c") for _ in range(n))
            a = "".join(rng.choice("abcx ") for _ in range(rng.randint(0, 2 * n)))
            assert af.similarity(a, b) == difflib_ratio(a, b)
            assert af.similarity(b, a) == difflib_ratio(b, a)


def test_difflib_exact_on_real_steps(cot_traces):
    pairs = 0
    for row in cot_traces[::3]:
        steps = af.split_steps(row["generation"])
        for x, y in zip(steps, steps[1:]):
            assert af.similarity(x, y) == difflib_ratio(x, y)
            pairs += 1
    assert pairs > 3000


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_identical_strings_around_autojunk(data):
    # Below 200 characters a copy is one block (a shortcut in the core); from 200 on, with
    # difflib's popular elements in play, the core runs the full algorithm. Both must agree.
    alphabet = data.draw(st.sampled_from(["ab", "ab c", ALPHABETS["prose"], ALPHABETS["wide"]]))
    a = data.draw(texts(alphabet, min_size=0, max_size=260))
    assert af.similarity(a, a) == difflib_ratio(a, a)
    assert af.align_steps(a, a) == align_steps_ref_for_copy(a)


def align_steps_ref_for_copy(a):
    from asap_fast.core.matching import align_steps_ref

    return align_steps_ref(a, a)


def test_empty_and_identical():
    assert af.similarity("", "") == 1.0
    assert af.similarity("", "abc") == 0.0
    assert af.similarity("abc", "") == 0.0
    assert af.similarity("abc", "abc") == 1.0
    assert af.similarity("", "", "indel") == 1.0
    assert af.similarity("", "x", "indel") == 0.0


@pytest.mark.parametrize("name", sorted(ALPHABETS))
@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_indel_is_normalized_lcs(name, data):
    a = data.draw(texts(ALPHABETS[name], max_size=150))
    b = data.draw(texts(ALPHABETS[name], max_size=150))
    length = len(a) + len(b)
    expected = 2.0 * lcs_ref(a, b) / length if length else 1.0
    assert af.similarity(a, b, "indel") == expected


def test_indel_agrees_with_rapidfuzz_on_real_steps(cot_traces):
    from rapidfuzz.distance import Indel

    for row in cot_traces[::10]:
        steps = af.split_steps(row["generation"])
        for x, y in zip(steps, steps[1:]):
            assert af.similarity(x, y, "indel") == pytest.approx(Indel.normalized_similarity(x, y), abs=1e-12)


@given(texts(ALPHABETS["prose"]), texts(ALPHABETS["prose"], min_size=150), st.floats(0.0, 1.0))
@settings(max_examples=500, deadline=None)
def test_score_cutoff_is_exact(a, b, cutoff):
    for metric in af.METRICS:
        full = af.similarity(a, b, metric)
        assert af.similarity(a, b, metric, score_cutoff=cutoff) == (full if full >= cutoff else 0.0)


def test_batch_equals_single():
    rng = random.Random(3)
    a = ["".join(rng.choice("abc de") for _ in range(rng.randint(0, 400))) for _ in range(300)]
    b = ["".join(rng.choice("abc de") for _ in range(rng.randint(0, 400))) for _ in range(300)]
    for metric in af.METRICS:
        expected = np.array([af.similarity(x, y, metric) for x, y in zip(a, b)])
        for workers in (1, 2, 0, -1):
            got = af.similarity_batch(a, b, metric, workers=workers)
            assert got.dtype == np.float64 and np.array_equal(got, expected)
        cut = af.similarity_batch(a, b, metric, score_cutoff=0.5, workers=2)
        assert np.array_equal(cut, np.where(expected >= 0.5, expected, 0.0))
    assert af.similarity_batch([], []).shape == (0,)


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"similarity\(\): argument 'b' must be str, not int"):
        af.similarity("a", 1)
    with pytest.raises(TypeError, match=r"argument 'a' must be str, not bytes"):
        af.similarity(b"a", "b")
    with pytest.raises(ValueError, match="metric must be 'difflib' or 'indel', got 'levenshtein'"):
        af.similarity("a", "b", "levenshtein")
    with pytest.raises(ValueError, match=r"score_cutoff must be in \[0, 1\]"):
        af.similarity("a", "b", score_cutoff=1.5)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        af.similarity_batch(["a", "b"], ["a"])
    with pytest.raises(TypeError, match=r"argument 'b\[1\]' must be str, not NoneType"):
        af.similarity_batch(["a", "b"], ["a", None])
    with pytest.raises(TypeError, match="must be a sequence of str, not str"):
        af.similarity_batch("ab", "cd")
