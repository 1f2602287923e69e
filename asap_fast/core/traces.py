"""Reasoning traces: parsing a generation into think / answer / code, and splitting into steps."""

from __future__ import annotations

import re
from dataclasses import dataclass

from asap_fast.core.compiled import core as _core

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# The reference's python block rule, the one rule for a trace's validity, stage 1a's answer code
# and evaluation: three backticks, optionally "python" in any letter case, a newline, then the
# shortest text up to the next three backticks. A plain ``` fence counts, an unclosed block does not.
PYTHON_BLOCK = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL | re.IGNORECASE)


class TraceError(ValueError):
    """A generation that is not a usable reasoning trace; the message is one line naming why."""


@dataclass(frozen=True)
class Trace:
    """One parsed generation.

    think:  the text between the first <think> and the first </think>, stripped (may be empty).
    answer: everything after the first </think>, stripped (explanation and code block as written).
    code:   the first python block (:data:`PYTHON_BLOCK`) in the text after </think> (up to a
            second </think> when there is one), as captured: not stripped, its final newline
            included; None when there is none (only possible with ``require_code=False``).
    """

    think: str
    answer: str
    code: str | None


def parse_trace(generation: str, *, require_code: bool = True) -> Trace:
    """Split a model generation ``"<think>\\n...\\n</think>\\n\\n...```python\\n<code>\\n```"``.

    The reference's validity rule: the generation has <think> and </think>, and, for code traces,
    a python block (:data:`PYTHON_BLOCK`) in the text after the first </think> (the part between
    the first and a second </think> when there are two). Raises TraceError with a one-line reason
    otherwise, and when </think> comes before <think> (the thinking is then undefined). An empty
    thinking is valid here, as in the reference; the stages that compress it reject it. Math
    traces pass ``require_code=False``.
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
    after = generation[close_at + len(THINK_CLOSE) :]
    second_close = after.find(THINK_CLOSE)
    code = first_python_block(after if second_close < 0 else after[:second_close])
    if code is None and require_code:
        raise TraceError("no ```python block after </think> (```python, ```Python or a plain ```, closed)")
    return Trace(think=think, answer=after.strip(), code=code)


def first_python_block(text: str) -> str | None:
    """The first python block of text (:data:`PYTHON_BLOCK`) as captured, or None."""
    match = PYTHON_BLOCK.search(text)
    return match.group(1) if match else None


def split_steps(text: str) -> list[str]:
    """``[p.strip() for p in text.strip().split("\\n\\n") if p.strip()]`` (the paper's steps)."""
    return _core.split_steps(text)


def split_step_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each step of ``split_steps(text)``: ``text[start:end]`` is the step."""
    return _core.split_step_spans(text)


def step_source_texts(text: str) -> list[str]:
    """Each step of ``split_steps(text)`` as written in text: its paragraph (between "\\n\\n"
    separators) with only the blank lines around it removed, so the indentation of its first line
    and the whitespace inside it survive.

    Stage 2 writes kept steps this way: the reference writes them stripped, which flattens the
    first line of an indented code step (see docs/fidelity.md).
    """
    texts = []
    for start, end in _core.split_step_spans(text):
        # text[paragraph start:start] and text[end:paragraph end] are whitespace only, so the line
        # around the step's first / last character never reaches past its paragraph.
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", end)
        texts.append(text[line_start : len(text) if line_end < 0 else line_end])
    return texts


def split_steps_batch(texts: list[str], *, workers: int = 1) -> list[list[str]]:
    """``split_steps`` over many texts in C++ with the GIL released; ``workers <= 0``: all cores."""
    return _core.split_steps_batch(texts, workers)
