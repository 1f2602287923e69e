"""asap-fast: fast, faithful ASAP chain-of-thought compression (arXiv 2508.05988)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from asap_fast.core.matching import (
    METRICS,
    align_steps,
    align_steps_batch,
    similarity,
    similarity_batch,
)
from asap_fast.core.traces import (
    Trace,
    TraceError,
    parse_trace,
    split_step_spans,
    split_steps,
    split_steps_batch,
)
from asap_fast.scorers import DEFAULT_SCORER
from asap_fast.stage1.llm import LLMError, Reply, SamplingParams, make_backend
from asap_fast.stage1.prompts import PromptTemplate, load_template
from asap_fast.stage1.stages import (
    CoarseStage,
    DirectStage,
    snap_to_original,
    strip_fences,
)

try:
    __version__ = version("asap-fast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"



# Names whose modules import torch (and maybe triton) load on first use, so that the C++ core and
# the text-only commands start in milliseconds: name -> submodule that defines it.
_LAZY = {
    "ops": None,
    "Compressor": "asap_fast.pipeline.compressor",
    "SurprisalScorer": "asap_fast.stage2.surprisal",
    "first_token_surprisal": "asap_fast.stage2.surprisal",
    "PruneResult": "asap_fast.stage2.pruning",
    "prune_steps": "asap_fast.stage2.pruning",
    "prune_steps_iterative": "asap_fast.stage2.surprisal",
    "prune_steps_result": "asap_fast.stage2.pruning",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        return importlib.import_module("asap_fast." + name)
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "Compressor",
    "DEFAULT_SCORER",
    "METRICS",
    "CoarseStage",
    "DirectStage",
    "LLMError",
    "PromptTemplate",
    "PruneResult",
    "Reply",
    "SamplingParams",
    "SurprisalScorer",
    "Trace",
    "TraceError",
    "__version__",
    "ops",
    "align_steps",
    "align_steps_batch",
    "first_token_surprisal",
    "load_template",
    "make_backend",
    "parse_trace",
    "prune_steps",
    "prune_steps_iterative",
    "prune_steps_result",
    "similarity",
    "similarity_batch",
    "snap_to_original",
    "split_step_spans",
    "split_steps",
    "split_steps_batch",
    "strip_fences",
]
