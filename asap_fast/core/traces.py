"""Reasoning traces: parsing a generation into think / answer / code, and splitting into steps."""

from __future__ import annotations

from dataclasses import dataclass

import asap_fast._core as _core

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PYTHON_FENCE = "```python"
FENCE = "```"


class TraceError(ValueError):
    """A generation that is not a usable reasoning trace; the message is one line naming why."""


@dataclass(frozen=True)
class Trace:
    """One parsed generation.

    think:  the text between <think> and </think>, stripped.
    answer: everything after </think>, stripped (explanation and code block as written).
    code:   the body of the first ```python block after </think>, or None when there is none
            (only possible with ``require_code=False``).
    """

    think: str
    answer: str
    code: str | None


def parse_trace(generation: str, *, require_code: bool = True) -> Trace:
    """Split a model generation ``"<think>\\n...\\n</think>\\n\\n...```python\\n<code>\\n```"``.

    The reference's validity rule (open-r1/codeforces-cots): the generation has <think>, a later
    </think>, and, for code traces, a ```python block after </think>; the answer code is the first
    such block. An empty thinking has nothing to compress and is an error too. Raises TraceError
    with a one-line reason otherwise. Math traces pass
    ``require_code=False``.
    """
    if not isinstance(generation, str):
        raise TraceError(f"generation must be str, not {type(generation).__name__}")
    open_at = generation.find(THINK_OPEN)
    close_at = generation.find(THINK_CLOSE)
    if open_at < 0:
        raise TraceError("no <think> tag in generation")
    if close_at < 0:
        raise TraceError("no </think> tag in generation (truncated trace?)")
    if close_at < open_at:
        raise TraceError("</think> comes before <think>")
    think = generation[open_at + len(THINK_OPEN) : close_at].strip()
    if not think:
        raise TraceError("empty thinking between <think> and </think>")
    answer = generation[close_at + len(THINK_CLOSE) :].strip()
    code = first_python_block(answer)
    if code is None and require_code:
        raise TraceError("no ```python block after </think>")
    return Trace(think=think, answer=answer, code=code)


def first_python_block(text: str) -> str | None:
    """Body of the first ```python fenced block in text (to the next ``` or the end), stripped."""
    start = text.find(PYTHON_FENCE)
    if start < 0:
        return None
    body_start = start + len(PYTHON_FENCE)
    end = text.find(FENCE, body_start)
    return text[body_start : end if end >= 0 else len(text)].strip()


def split_steps(text: str) -> list[str]:
    """``[p.strip() for p in text.strip().split("\\n\\n") if p.strip()]`` (the paper's steps)."""
    return _core.split_steps(text)


def split_step_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each step of ``split_steps(text)``: ``text[start:end]`` is the step."""
    return _core.split_step_spans(text)


def split_steps_batch(texts: list[str], *, workers: int = 1) -> list[list[str]]:
    """``split_steps`` over many texts in C++ with the GIL released; ``workers <= 0``: all cores."""
    return _core.split_steps_batch(texts, workers)
