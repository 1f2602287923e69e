"""Code extraction from a model's generation, as the reference does it."""

from __future__ import annotations

from asap_fast.core.traces import THINK_CLOSE, first_python_block

__all__ = ["extract_code"]


def extract_code(generation: str) -> str | None:
    """The code a generation answers with, or None.

    The reference's rule (PAPER.md, Evaluation): the first ```python block after </think>; when the
    generation has no </think> (e.g. it ran out of tokens while thinking), the first ```python
    block anywhere. A block without a closing fence runs to the end of the text (as
    ``traces.first_python_block``). An empty block counts as no code.
    """
    if not isinstance(generation, str):
        raise TypeError(f"generation must be str, not {type(generation).__name__}")
    close_at = generation.find(THINK_CLOSE)
    text = generation[close_at + len(THINK_CLOSE):] if close_at >= 0 else generation
    code = first_python_block(text)
    return code if code else None
