"""pass@k, percentiles and code extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asap_fast.evaluation import extract_code, pass_at_k, pass_at_k_table, percentile


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_the_binomial_formula(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-9, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(2000, 1000) overflows a float; the product form does not
    value = pass_at_k(2000, 3, 1000)
    assert 0.0 < value <= 1.0
    assert value == pytest.approx(exact_pass_at_k(2000, 3, 1000))
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(4, 1, 1) == 0.25


def test_pass_at_k_validates():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(3, 1, 5)


def test_pass_at_k_table_reports_k_only_when_every_task_has_enough_samples():
    table = pass_at_k_table([(10, 3), (10, 0), (5, 5)], ks=(1, 5, 10))
    assert set(table) == {"pass@1", "pass@5"}
    assert table["pass@1"] == pytest.approx((0.3 + 0.0 + 1.0) / 3)
    assert pass_at_k_table([]) == {}


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 100):
        data = rng.random(size).tolist()
        for q in (0, 50, 95, 100):
            assert percentile(data, q) == pytest.approx(np.percentile(data, q))
    assert percentile([], 50) is None


@pytest.mark.parametrize(
    "generation, expected",
    [
        # the first block after </think>, not the drafts inside the thinking; as captured
        ("<think>\n```python\ndraft()\n```\n</think>\nok\n```python\nfinal()\n```\n```python\nlater()\n```", "final()\n"),
        # no </think> (ran out of tokens while thinking): the first block anywhere
        ("<think>\nhmm\n```python\ndraft()\n```\nand more", "draft()\n"),
        # two </think>: not two parts, so the first block anywhere
        ("<think>\n```python\ndraft()\n```\n</think>x</think>\n```python\nfinal()\n```", "draft()\n"),
        # </think> but no block after it: no code (the drafts in the thinking do not count)
        ("<think>\n```python\ndraft()\n```\n</think>\nno code here", None),
        # an unclosed block is no block
        ("</think>\n```python\nx = 1\ny = 2", None),
        # plain and capitalised fences count; indentation survives
        ("</think>\n```\nplain()\n```", "plain()\n"),
        ("</think>\n```Python\n    return 1\n```", "    return 1\n"),
        ("</think>\n```cpp\nint main(){}\n```", None),
        ("</think>\n```python\n```", ""),
        ("", None),
    ],
)
def test_extract_code(generation, expected):
    assert extract_code(generation) == expected


def test_extract_code_rejects_non_strings():
    with pytest.raises(TypeError):
        extract_code(None)


def test_summarize_is_over_every_problem():
    from asap_fast.evaluation.score import SampleResult, summarize

    results = [SampleResult("a", 0, True, "passed"), SampleResult("b", 0, False, "failed"),
               SampleResult("b", 1, True, "passed")]
    summary = summarize(results, task_ids=["a", "b", "c", "d"])
    assert summary["pass_at_1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert summary["missing_tasks"] == ["c", "d"] and summary["n_problems"] == 4
    assert summarize(results, n_problems=4)["pass_at_1"] == pytest.approx(1.5 / 4)
    assert summarize([], task_ids=["a"])["pass_at_1"] == 0.0  # nothing generated: 0, never "n/a" or 100%
    with pytest.raises(ValueError, match="outside task_ids"):
        summarize(results, task_ids=["a"])
