"""`asap compress`: stages 1a + 1b + 2 in one resumable run.

Per corpus batch: DirectStage (the anchor) -> CoarseStage (LLM compression, validated by
align_steps) -> FineStage (first-token surprisal pruning of ``coarse_think``). A row rejected by
any stage goes to the rejects file with that stage's name (``direct``, ``coarse``, ``fine``; rows
that cannot be read at all: ``compress``). ``--skip-coarse`` is the paper's "without coarse
pruning" ablation: no LLM is used, and stage 2 prunes the generation's original thinking.
"""

from __future__ import annotations

from asap_fast.core.errors import RowError
from asap_fast.stage2.fine import FineStage

__all__ = ["CompressStage", "make_skip_coarse_stage"]


def _tag(result, stage: str):
    if isinstance(result, RowError) and result.stage is None:
        result.stage = stage
    return result


class CompressStage:
    """``process(rows)`` for run_corpus: direct -> coarse -> fine on each batch (direct/coarse None
    with --skip-coarse)."""

    def __init__(self, fine: FineStage, direct=None, coarse=None, method: str | None = None):
        """``method``: when given, every output row gains ``method`` (what `asap compress --method`
        writes, so outputs of several methods can be compared)."""
        if (direct is None) != (coarse is None):
            raise ValueError("give both stage-1 stages or neither")
        self.fine, self.direct, self.coarse, self.method = fine, direct, coarse, method

    def process(self, rows: list[dict]) -> list:
        results: list = [None] * len(rows)
        current = list(range(len(rows)))
        records = dict(enumerate(rows))
        for stage in (self.direct, self.coarse):
            if stage is None:
                continue
            outs = stage.process([records[i] for i in current])
            kept = []
            for i, out in zip(current, outs):
                if isinstance(out, RowError):
                    results[i] = _tag(out, stage.name)
                else:
                    records[i] = out
                    kept.append(i)
            current = kept
        outs = self.fine.process([records[i] for i in current]) if current else []
        for i, out in zip(current, outs):
            if self.method is not None and not isinstance(out, RowError):
                out = {**out, "method": self.method}
            results[i] = _tag(out, "fine")
        return results


def make_skip_coarse_stage(scorer_spec, config, quiet: bool = False) -> CompressStage:
    """``asap compress --skip-coarse``'s stage with its scorer loaded (picklable by reference: what a
    Ray actor calls)."""
    return CompressStage(FineStage(scorer_spec.load(quiet=quiet, stage="compress"), config), method="asap")
