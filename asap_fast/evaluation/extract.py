"""Code extraction from a model's generation, as the reference does it."""

from __future__ import annotations

from asap_fast.core.traces import THINK_CLOSE, first_python_block

__all__ = ["extract_code"]


def extract_code(generation: str) -> str | None:
    """The code a generation answers with, or None when it has no python block.

    The reference's rule: when the generation splits into exactly two parts at </think>, the first
    python block (``asap_fast.core.traces.PYTHON_BLOCK``: ```python, ```Python or a plain ```
    fence, closed) after </think>; otherwise (no </think>, or several) the first block anywhere.
    The block is returned as captured (indentation and final newline kept; an empty block is "").
    On None the scorer executes the raw generation, as the reference does (it fails).
    """
    if not isinstance(generation, str):
        raise TypeError(f"generation must be str, not {type(generation).__name__}")
    parts = generation.split(THINK_CLOSE)
    return first_python_block(parts[1] if len(parts) == 2 else generation)
