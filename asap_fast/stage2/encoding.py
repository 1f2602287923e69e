"""Tokenizing a trace once and locating each step's first token (numpy only, no model)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SEPARATOR = "\n\n"


def step_char_starts(prefix: str, steps: Sequence[str]) -> np.ndarray:
    """(K,) int64 code-point offset of each step's first character in ``prefix + "\\n\\n".join(steps)``."""
    lengths = np.fromiter((len(s) for s in steps), dtype=np.int64, count=len(steps))
    starts = np.empty(len(steps), dtype=np.int64)
    if len(steps):
        starts[0] = len(prefix)
        np.cumsum(lengths[:-1] + len(SEPARATOR), out=starts[1:])
        starts[1:] += len(prefix)
    return starts


def first_token_positions(token_ends: np.ndarray, char_starts: np.ndarray) -> np.ndarray:
    """(K,) int64 index of the first token whose character span ends after each ``char_starts``.

    token_ends: (T,) end offset of every token (special tokens may carry 0, as HF reports them);
    a running maximum makes the ends sorted, so one binary search per step finds its token.
    """
    ends = np.maximum.accumulate(np.asarray(token_ends, dtype=np.int64)) if len(token_ends) else np.zeros(0, np.int64)
    positions = np.searchsorted(ends, np.asarray(char_starts, dtype=np.int64), side="right")
    assert (positions < len(ends)).all(), "a step starts after the last token ends"
    return positions.astype(np.int64)


@dataclass(frozen=True)
class EncodedTrace:
    """One trace tokenized once: ``input_ids`` (T,) int64 and ``positions`` (K,) int64, the index
    of each step's first token (0 when nothing precedes it, which scores as inf)."""

    input_ids: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _check_trace(prefix: object, steps: object) -> list[str]:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
    if isinstance(steps, str) or not isinstance(steps, Iterable):
        raise TypeError(f"steps must be a list of str, got {type(steps).__name__}")
    steps = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise TypeError(f"steps[{i}] must be str, got {type(step).__name__}")
        if not step:
            raise ValueError(f"steps[{i}] is empty; steps must be non-empty strings (split_steps never yields empty ones)")
    return steps


def _check_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"need a fast (Rust) tokenizer for character offsets, got {type(tokenizer).__name__}; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def _encode_many(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, token end offsets) per text, special tokens added as the tokenizer does by default."""
    if not texts:
        return []
    enc = tokenizer(texts, return_offsets_mapping=True, return_attention_mask=False)
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        ends = np.fromiter((o[1] for o in offsets), dtype=np.int64, count=len(offsets))
        out.append((np.asarray(ids, dtype=np.int64), ends))
    return out


def encode_trace(tokenizer, prefix: str, steps: Sequence[str]) -> EncodedTrace:
    """Tokenize ``prefix + "\\n\\n".join(steps)`` once and locate each step's first token."""
    _check_fast_tokenizer(tokenizer)
    steps = _check_trace(prefix, steps)
    ((ids, ends),) = _encode_many(tokenizer, [prefix + SEPARATOR.join(steps)])
    return EncodedTrace(ids, first_token_positions(ends, step_char_starts(prefix, steps)))
