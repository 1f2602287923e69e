"""Exact, fast string similarity and the stage-1 step alignment check.

``metric="difflib"`` returns exactly ``difflib.SequenceMatcher(None, a, b).ratio()`` (autojunk
included), so stage-1 decisions match the reference's bit for bit. ``metric="indel"`` is the
normalized LCS similarity ``2 * LCS / (len(a) + len(b))`` (RapidFuzz's Indel), faster still but a
different function: it accepts and rejects different compressions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asap_fast.core.compiled import core as _core

METRICS = ("difflib", "indel")


def similarity(a: str, b: str, metric: str = "difflib", *, score_cutoff: float = 0.0) -> float:
    """Similarity of a and b in [0, 1]; 1.0 for two empty strings.

    With ``score_cutoff``, scores below it come back as 0.0, and difflib's exact upper bounds
    (real_quick_ratio, quick_ratio) skip the full match when they already fall short.
    """
    return _core.similarity(a, b, metric, score_cutoff)


def similarity_batch(
    a: Sequence[str],
    b: Sequence[str],
    metric: str = "difflib",
    *,
    score_cutoff: float = 0.0,
    workers: int = 1,
) -> np.ndarray:
    """``similarity(a[i], b[i])`` for every i as a float64 array; ``workers <= 0``: all cores."""
    return _core.similarity_batch(a, b, metric, score_cutoff, workers)


def align_steps(original: str, compressed: str, threshold: float = 0.6, metric: str = "difflib") -> list[int] | None:
    """The reference's stage-1 check of an LLM compression against the original thinking.

    Both texts are split with ``re.split(r"\\n\\n", s.strip())`` (empty sections kept) and each
    section is stripped. For each compressed section in order, original sections are consumed one
    at a time (matched or not) until ``similarity(original_section, compressed_section) >=
    threshold``. Returns the matched original index for each compressed section, or None when the
    original runs out first (the compression is rejected).
    """
    return _core.align_steps(original, compressed, threshold, metric)


def align_steps_batch(
    originals: Sequence[str],
    compressed: Sequence[str],
    threshold: float = 0.6,
    metric: str = "difflib",
    *,
    workers: int = 1,
) -> list[list[int] | None]:
    """``align_steps`` over pairs in C++ with the GIL released; ``workers <= 0``: all cores."""
    return _core.align_steps_batch(originals, compressed, threshold, metric, workers)


def align_steps_ref(original: str, compressed: str, threshold: float = 0.6, ratio=None) -> list[int] | None:
    """Plain-Python restatement of the reference's scan: the test oracle and benchmark baseline.

    ``ratio(a, b)`` defaults to ``difflib.SequenceMatcher(None, a, b).ratio()``; pass another
    function (cydifflib's, RapidFuzz's) to compare engines under the same scan.
    """
    import difflib
    import re

    if ratio is None:

        def ratio(a: str, b: str) -> float:
            return difflib.SequenceMatcher(None, a, b).ratio()

    originals = [s.strip() for s in re.split(r"\n\n", original.strip())]
    matched: list[int] = []
    next_original = 0
    for section in (s.strip() for s in re.split(r"\n\n", compressed.strip())):
        while next_original < len(originals):
            next_original += 1
            if ratio(originals[next_original - 1], section) >= threshold:
                matched.append(next_original - 1)
                break
        else:
            return None
    return matched
