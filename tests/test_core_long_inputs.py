"""Long and adversarial pairs: the order of the exact bounds never changes an answer (the speed
on these pairs is measured by `benchmarks/bench_align.py --adversarial`).

On long strings the core decides per pair whether the LCS bound runs before the match, after the
match has spent as much as the bound costs (the match pausing and resuming), or not at all; the
pairs here (reversed, shuffled, cyclic, edited, unrelated; alphabets from 3 to 300 symbols, so
that difflib's popular-element rule is on for some symbols and off for others) reach every one of
those paths, with thresholds placed right at each pair's ratio.
"""

import difflib
import math
import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

import asap_fast as af

# Letters and CJK only: no whitespace, so a string is one section that strip() leaves alone.
SYMBOLS = string.ascii_letters + string.digits + "".join(chr(0x4E00 + k) for k in range(300))
SHAPES = ["reverse", "shuffle", "blocks", "edit", "cycle_reverse", "unrelated", "copy"]


def make_pair(seed: int, shape: str, alphabet_size: int, n: int) -> tuple[str, str]:
    rng = random.Random(seed)
    alphabet = rng.sample(SYMBOLS, alphabet_size)
    if shape == "cycle_reverse":
        a = (("".join(alphabet)) * (n // alphabet_size + 1))[:n]
        return a, a[::-1]
    a = "".join(rng.choices(alphabet, k=n))
    if shape == "reverse":
        return a, a[::-1]
    if shape == "shuffle":
        chars = list(a)
        rng.shuffle(chars)
        return a, "".join(chars)
    if shape == "blocks":
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(1, 8))))
        pieces = [a[i:j] for i, j in zip([0, *cuts], [*cuts, n])]
        rng.shuffle(pieces)
        return a, "".join(pieces)
    if shape == "edit":
        rate = rng.choice([0.005, 0.03, 0.15])
        out = []
        for c in a:
            r = rng.random()
            if r < rate:
                continue  # deletion
            out.append(rng.choice(alphabet) if r < 2 * rate else c)
            if r > 1 - rate:
                out.append(rng.choice(alphabet))  # insertion
        return a, "".join(out)
    if shape == "copy":
        return a, a
    return a, "".join(rng.choices(alphabet, k=rng.randint(n // 2, 2 * n)))


def thresholds_around(ratio: float) -> list[float]:
    """Cutoffs that put the answer on both sides of the ratio, and right at it."""
    near = [ratio, math.nextafter(ratio, 0.0), math.nextafter(ratio, 1.0), ratio * 0.9, ratio * 1.1 + 1e-3]
    return sorted({min(1.0, max(0.0, t)) for t in [*near, 0.003, 0.05, 0.3, 0.6, 0.95, 1.0]})


pairs = st.builds(
    make_pair,
    seed=st.integers(0, 2**32),
    shape=st.sampled_from(SHAPES),
    alphabet_size=st.sampled_from([3, 10, 40, 100, 300]),
    n=st.integers(200, 1400),
)


@given(pairs)
@settings(max_examples=300, deadline=None)
def test_cutoff_and_alignment_exact_on_long_pairs(pair):
    a, b = pair
    matcher = difflib.SequenceMatcher(None, a, b)
    ratio = matcher.ratio()
    assert af.similarity(a, b) == ratio
    for t in thresholds_around(ratio):
        assert af.similarity(a, b, score_cutoff=t) == (ratio if ratio >= t else 0.0), t
        # One section each side: the scan matches it exactly when ratio(original, compressed) >= t.
        assert af.align_steps(a, b, threshold=t) == ([0] if ratio >= t else None), t


@given(pairs)
@settings(max_examples=200, deadline=None)
def test_indel_exact_on_long_pairs(pair):
    from rapidfuzz.distance import Indel

    a, b = pair
    lcs = (len(a) + len(b) - Indel.distance(a, b)) // 2
    expected = 2.0 * lcs / (len(a) + len(b))
    assert af.similarity(a, b, "indel") == expected
    for t in thresholds_around(expected):
        assert af.similarity(a, b, "indel", score_cutoff=t) == (expected if expected >= t else 0.0), t
        assert af.align_steps(a, b, t, "indel") == ([0] if expected >= t else None), t


def test_long_sections_in_a_scan():
    # Several long sections per side, some copied with edits, some unrelated, in one scan.
    rng = random.Random(11)
    for _ in range(12):
        originals, compressed = [], []
        for k in range(6):
            a, b = make_pair(rng.randrange(2**32), rng.choice(SHAPES), rng.choice([10, 40, 300]), rng.randint(200, 900))
            originals.append(a)
            if rng.random() < 0.7:
                compressed.append(b)
        original, kept = "\n\n".join(originals), "\n\n".join(compressed)
        from asap_fast.core.matching import align_steps_ref

        for t in (0.3, 0.6, 0.9):
            assert af.align_steps(original, kept, t) == align_steps_ref(original, kept, t)


# The worst cases of issue 17, checked for exactness here; their speed against difflib is measured
# side by side in `python benchmarks/bench_align.py --adversarial` (figures in benchmarks/README.md),
# never in a timed test.


def test_cutoff_on_long_random_strings_is_exact():
    # Was 100x slower than difflib: the LCS bound (n^2 / 64 steps) ran before a match that
    # autojunk makes O(n).
    rng = random.Random(0)
    a = "".join(rng.choices(string.ascii_lowercase, k=300_000))
    b = "".join(rng.choices(string.ascii_lowercase, k=300_000))
    m = difflib.SequenceMatcher(None, a, b)
    passes = m.real_quick_ratio() >= 0.5 and m.quick_ratio() >= 0.5 and m.ratio() >= 0.5
    assert af.similarity(a, b, score_cutoff=0.5) == (m.ratio() if passes else 0.0)


def test_align_one_long_section_is_exact():
    rng = random.Random(1)
    n = 200_000
    a = "".join(rng.choices(string.ascii_lowercase, k=n))
    b = "".join(c.upper() if rng.random() < 0.17 else c for c in rng.choices(string.ascii_lowercase, k=n))
    from asap_fast.core.matching import align_steps_ref

    assert af.align_steps(a, b) == align_steps_ref(a, b)


def test_one_wide_section_then_many_tiny_ones_is_exact():
    # The tables indexed by code point were sized by the widest section seen and cleared for each
    # later one: 10x slower than difflib here before.
    wide = "".join(chr(0x4E00 + k) for k in range(20_000)) + "".join(chr(0x20000 + k) for k in range(60_000))
    text = wide + "\n\n" + "\n\n".join("ab" for _ in range(10_000))
    from asap_fast.core.matching import align_steps_ref

    assert af.align_steps(text, text) == align_steps_ref(text, text)
