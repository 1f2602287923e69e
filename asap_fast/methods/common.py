"""What every compression method shares: reading a row into (prefix, steps, answer), the target
(a token budget or a kept fraction), token counting, and the output record.

Every method writes the fields of ``asap fine`` (``pruned_think``, ``tokens_before``,
``tokens_after``, ``messages``) plus ``method`` and what it kept: ``kept_steps`` (step methods),
``kept_spans`` (Selective Context) or ``kept_words`` (LLMLingua-2, TokenSkip). Token counts are
``len(tokenizer.encode(text))`` with one tokenizer for every method (the scorer's): ``tokens_before``
is :func:`thinking_tokens`, the count stage 2 (``asap fine``) and the reference use, of the stripped
thinking as written (not of ``"\\n\\n".join(steps)``, which drops blank-line runs and indentation), so
a row's ``tokens_before`` is the same for every method; ``achieved_ratio`` = tokens_after / tokens_before.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np

from asap_fast.core.errors import RowError
from asap_fast.core.traces import TraceError, parse_trace, split_steps
from asap_fast.stage2.fine import PROMPT_SUFFIX, TASKS, THINK_FIELDS, prompt_text, sft_messages

__all__ = ["PreparedRow", "Target", "check_ids", "count_tokens", "encode_with_ends", "thinking_tokens", "method_output", "prepare_row"]

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class PreparedRow:
    """One row ready for a method: ``prefix`` = prompt + "\\n<think>\\n" (the scorer's context, as in
    stage 2), ``steps`` = split_steps(thinking), ``answer`` = everything after </think>."""

    prefix: str
    steps: list[str]
    answer: str
    source: str = ""  # the stripped thinking as written: what tokens_before counts, and what a row kept whole writes

    @property
    def whole(self) -> str:
        """The thinking written when a method keeps all of it (byte for byte, as stage 2 writes it)."""
        return self.source or self.thinking

    @property
    def thinking(self) -> str:
        return SEPARATOR.join(self.steps)


def prepare_row(record: dict, *, think_field: str = "auto", task: str = "auto") -> PreparedRow:
    """The thinking a method compresses (``coarse_think`` when the row has it and think_field is
    auto, as stage 2 does), or RowError with a one-line reason."""
    if think_field not in THINK_FIELDS:
        raise ValueError(f"think field must be one of {THINK_FIELDS}, got {think_field!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    prompt = prompt_text(record["prompt"])
    kind = record.get("kind", "code") if task == "auto" else task
    try:
        trace = parse_trace(record["generation"], require_code=kind == "code")
    except TraceError as e:
        raise RowError(str(e)) from None
    field = think_field
    if field == "auto":
        field = "coarse_think" if record.get("coarse_think") is not None else "think"
    think = trace.think if field == "think" else record.get("coarse_think")
    if not isinstance(think, str):
        raise RowError(f"coarse_think must be str, not {type(think).__name__}")
    think = think.strip()
    steps = split_steps(think)
    if not steps:
        raise RowError(f"no steps in {field}")
    return PreparedRow(prompt + PROMPT_SUFFIX, steps, trace.answer, think)


@dataclass(frozen=True)
class Target:
    """How much of each thinking a method keeps: a token ``budget`` (a thinking that already fits
    is left whole) or a kept fraction ``ratio`` in (0, 1]; exactly one."""

    budget: int | None = None
    ratio: float | None = None

    def __post_init__(self):
        if (self.budget is None) == (self.ratio is None):
            raise ValueError(f"give exactly one of budget and ratio (got budget={self.budget!r}, ratio={self.ratio!r})")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, numbers.Integral)
                                        or self.budget < 1):
            raise ValueError(f"budget must be a whole number of tokens >= 1, got {self.budget!r}")
        if self.ratio is not None and (isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real)
                                       or not 0 < self.ratio <= 1):
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio!r}")

    def keep_fraction(self, tokens_before: int) -> float | None:
        """The fraction to keep for a thinking of ``tokens_before`` tokens; None: keep it whole.
        A budget becomes the fraction budget / tokens_before (token-level methods have no exact
        budget rule: they keep a fraction)."""
        if self.ratio is not None:
            return float(self.ratio)
        if tokens_before <= self.budget:
            return None
        return self.budget / tokens_before

    def manifest(self) -> dict:
        return asdict(self)


def count_tokens(tokenizer, text: str) -> int:
    """``len(tokenizer.encode(text))``: what stage 2 compares with its budget."""
    return len(tokenizer.encode(text))


def thinking_tokens(tokenizer, row: PreparedRow) -> int:
    """``tokens_before`` of every method: ``len(tokenizer.encode(thinking))`` of the stripped thinking,
    special tokens included, the count of stage 2 (stage2.pruning.thinking_budget) and the reference."""
    from asap_fast.stage2.pruning import thinking_budget

    return thinking_budget(tokenizer, row.whole, ratio=1.0)[0]


def encode_with_ends(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids (T,) int64, token end offsets (T,) int64, running maximum) per text: one fast-tokenizer
    call with offsets, special tokens added as the tokenizer does by default. The running maximum
    makes the ends sorted (special tokens report 0)."""
    if not texts:
        return []
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"need a fast (Rust) tokenizer for character offsets, got {type(tokenizer).__name__}")
    enc = tokenizer(texts, return_offsets_mapping=True, return_attention_mask=False)
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        ends = np.fromiter((o[1] for o in offsets), dtype=np.int64, count=len(offsets))
        if len(ends):
            np.maximum.accumulate(ends, out=ends)
        out.append((np.asarray(ids, dtype=np.int64), ends))
    return out


def check_ids(scorer, ids: np.ndarray) -> None:
    """ValueError when a tokenized text does not fit the scorer's context or has ids its embedding
    lacks (the checks of SurprisalScorer.encode, for texts it did not encode)."""
    if scorer.max_length is not None and len(ids) > scorer.max_length:
        raise ValueError(f"trace has {len(ids)} tokens, more than the model's context of {scorer.max_length}")
    if len(ids) and int(ids.max()) >= scorer.vocab_rows:
        raise ValueError(f"the tokenizer gave token id {int(ids.max())}, but the model's embedding has "
                         f"{scorer.vocab_rows} rows: tokenizer and model do not match")


def thinking_positions(ends: np.ndarray, prefix_chars: int) -> np.ndarray:
    """(N,) int64 indices of the thinking's tokens that have a predecessor: every token whose
    character span ends after the prefix (the one holding the thinking's first character
    included), except index 0. ``ends``: sorted end offsets (see encode_with_ends)."""
    first = int(np.searchsorted(ends, prefix_chars, side="right"))
    return np.arange(max(first, 1), len(ends), dtype=np.int64)


def method_output(record: dict, prompt, method: str, pruned: str, answer: str, tokens_before: int,
                  tokens_after: int, **fields) -> dict:
    """The output record: every input field, the method's own fields, then the shared ones."""
    return {
        **record,
        "method": method,
        "pruned_think": pruned,
        **fields,
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
        "achieved_ratio": tokens_after / tokens_before if tokens_before else 1.0,
        "messages": sft_messages(prompt, pruned, answer),
    }


def row_error(error: Exception, method: str) -> RowError:
    """A RowError naming the method as the rejecting stage."""
    message = " ".join(str(error).split()) or type(error).__name__
    return RowError(message, stage=method)
