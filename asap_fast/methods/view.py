"""What a compressed row kept, piece by piece, whatever the method (for reports).

A row of ``asap fine`` / ``asap compress`` holds what its method kept: ``kept_steps`` (asap,
spirit), ``kept_spans`` (selective-context: runs of "\\n\\n".join(steps)) or ``kept_words``
(llmlingua2, tokenskip). :func:`kept_view` rebuilds the steps of the thinking the method compressed
(``coarse_think`` or the generation's, whichever reproduces ``pruned_think``) and returns, per step,
the pieces of text with whether each was kept.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from asap_fast.core.traces import TraceError, parse_trace, split_steps, step_source_texts

__all__ = ["KeptView", "kept_view", "method_of"]

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class KeptView:
    """``steps[i]``: (text, kept) pieces of step i; ``joiner``: how pieces of a step read together
    ("" for text spans and whole steps, " " for words)."""

    method: str
    kind: str  # "steps" | "spans" | "words"
    steps: list[list[tuple[str, bool]]]
    joiner: str
    tokens_before: int
    tokens_after: int

    @property
    def steps_kept(self) -> int:
        return sum(any(kept for _, kept in pieces) for pieces in self.steps)


def method_of(record: dict) -> str | None:
    """The row's method: its ``method`` field, or "asap" for a row of `asap fine` (stage-2 fields
    without one), None for a row no method wrote."""
    method = record.get("method")
    if isinstance(method, str):
        return method
    if record.get("kept_steps") is not None and record.get("step_surprisal") is not None:
        return "asap"
    return None


def _thinkings(record: dict) -> list[str]:
    out = []
    if isinstance(record.get("coarse_think"), str):
        out.append(record["coarse_think"].strip())
    if isinstance(record.get("generation"), str):
        try:
            out.append(parse_trace(record["generation"], require_code=False).think)
        except TraceError:
            pass
    return [t for t in out if t]


def _candidates(record: dict) -> list[list[str]]:
    return [steps for steps in (split_steps(t) for t in _thinkings(record)) if steps]


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kept_view(record: dict) -> KeptView | str:
    """The row's kept pieces, or a one-line reason why they cannot be rebuilt."""
    method = method_of(record)
    if method is None:
        return "no method fields (method, kept_steps / kept_spans / kept_words)"
    pruned = record.get("pruned_think")
    before, after = record.get("tokens_before"), record.get("tokens_after")
    if not isinstance(pruned, str) or not _int(before) or not _int(after):
        return "no pruned_think / tokens_before / tokens_after"
    candidates = _candidates(record)
    if not candidates:
        return "no generation or coarse_think to rebuild the steps from"
    kept_steps, spans, words = record.get("kept_steps"), record.get("kept_spans"), record.get("kept_words")
    if isinstance(kept_steps, list):
        if not all(_int(k) for k in kept_steps):
            return "kept_steps must be integers"
        # the kept set is the row's own kept_steps; the steps are those of the thinking it compressed,
        # the one whose kept steps read as pruned_think (stripped, as SPIRIT writes them, or as
        # written, as stage 2 writes them), else a thinking kept whole
        kept = set(kept_steps)
        for thinking in _thinkings(record):
            steps = split_steps(thinking)
            if not steps or not all(0 <= k < len(steps) for k in kept_steps):
                continue
            joins = (SEPARATOR.join(steps[k] for k in kept_steps),
                     SEPARATOR.join(step_source_texts(thinking)[k] for k in kept_steps))
            if pruned in joins or (len(kept) == len(steps) and pruned == thinking):
                return KeptView(method, "steps", [[(s, i in kept)] for i, s in enumerate(steps)], "", before, after)
        return "kept_steps do not rebuild pruned_think"
    if isinstance(spans, list):
        if not all(isinstance(s, list) and len(s) == 2 and _int(s[0]) and _int(s[1]) for s in spans):
            return "kept_spans must be [start, end] pairs"
        for thinking, steps in zip(_thinkings(record), candidates):
            text = SEPARATOR.join(steps)
            rebuilt = "".join(text[a:b] for a, b in spans).strip()
            if rebuilt == pruned or (rebuilt == text.strip() and pruned == thinking):  # kept whole
                return KeptView(method, "spans", _span_pieces(steps, spans), "", before, after)
        return "kept_spans do not rebuild pruned_think"
    if isinstance(words, list):
        for steps in candidates:
            if len(steps) == len(words):
                pieces = [[(str(w[0]), bool(w[1])) for w in step_words if isinstance(w, list) and len(w) == 2]
                          for step_words in words]
                return KeptView(method, "words", pieces, " ", before, after)
        return "kept_words do not match the thinking's steps"
    if "kept_words" in record or "kept_spans" in record:  # null: the thinking was left whole
        for thinking, steps in zip(_thinkings(record), candidates):
            if pruned in (SEPARATOR.join(steps), thinking):
                return KeptView(method, "steps", [[(s, True)] for s in steps], "", before, after)
    return "no kept_steps, kept_spans or kept_words"


def _span_pieces(steps: list[str], spans: list[list[int]]) -> list[list[tuple[str, bool]]]:
    """Each step cut at the kept spans' edges (offsets are in "\\n\\n".join(steps))."""
    spans = sorted(spans)
    span_starts = [s for s, _ in spans]
    edges = sorted({e for span in spans for e in span})
    out, start = [], 0
    for step in steps:
        end = start + len(step)
        cuts = [start] + edges[bisect.bisect_right(edges, start):bisect.bisect_left(edges, end)] + [end]
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            k = bisect.bisect_right(span_starts, a) - 1  # the last span starting at or before a
            pieces.append((step[a - start:b - start], k >= 0 and b <= spans[k][1]))
        out.append(pieces)
        start = end + len(SEPARATOR)
    return out
