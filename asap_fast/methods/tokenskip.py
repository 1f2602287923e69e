"""TokenSkip (Xia et al., "TokenSkip: Controllable Chain-of-Thought Compression in LLMs", EMNLP
2025, arXiv 2502.12067): train a model on thinking compressed by LLMLingua-2 at a ratio that the
prompt states, so that at inference the prompt chooses how much it thinks.

Per row: a ratio r is drawn uniformly from the configured set (TokenSkip's: 0.5, 0.6, 0.7, 0.8,
0.9 and 1.0, where 1.0 is the original thinking), with a generator seeded by ``seed`` and the row's
id (its content when it has none), so a row draws the same ratio in every run, shard or resume.
The thinking is compressed by LLMLingua-2 (:mod:`asap_fast.methods.llmlingua2`) at rate r, and the
SFT prompt is TokenSkip's training input, the question followed by the ratio between separators:

    {question}<|eot_id|>{r}<|eot_id|>          (r as Python writes the float: 0.5, 1.0)

``asap sft`` trains on the ``messages`` as they are, and ``asap eval --tokenskip-ratio R`` builds
the same prompt at inference (:func:`tokenskip_prompt`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from asap_fast.core.errors import RowError
from asap_fast.methods.common import count_tokens, method_output, thinking_tokens, prepare_row, row_error
from asap_fast.methods.llmlingua2 import LLMLingua2Config, compress_row
from asap_fast.stage2.fine import prompt_messages, prompt_text

__all__ = ["RATIOS", "SEPARATOR", "TokenSkipConfig", "TokenSkipStage", "draw_ratio", "tokenskip_messages",
           "tokenskip_prompt"]

METHOD = "tokenskip"
RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SEPARATOR = "<|eot_id|>"


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"a TokenSkip ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def tokenskip_prompt(question: str, ratio: float, separator: str = SEPARATOR) -> str:
    """TokenSkip's input: the question, then the ratio between two separators; at ratio 1.0 the
    question alone (the authors' get_llamafactory_input.py and evaluation.py write the ratio only
    when it is below 1, so a model is never trained on, nor asked with, "...{sep}1.0{sep}")."""
    ratio = _check_ratio(ratio)
    if ratio >= 1.0:
        return question
    return f"{question}{separator}{ratio!r}{separator}"


def tokenskip_messages(prompt, ratio: float, pruned_think: str, answer: str, separator: str = SEPARATOR) -> list[dict]:
    """The SFT conversation: the ratio written after the question (after the last user message's
    content when the prompt is chat messages), then the compressed thinking and the answer."""
    question = [dict(m) for m in prompt_messages(prompt)]
    last = max((i for i, m in enumerate(question) if m.get("role") == "user"), default=len(question) - 1)
    question[last]["content"] = tokenskip_prompt(question[last]["content"], ratio, separator)
    return question + [{"role": "assistant", "content": "<think>\n" + pruned_think + "\n</think>\n" + answer}]


def draw_ratio(record: dict, ratios, seed: int) -> float:
    """The row's ratio: uniform over ``ratios``, from a generator seeded by ``seed`` and the row's
    id (else a hash of its prompt and generation), the same in every process."""
    key = record.get("id")
    if key is None:
        content = json.dumps([prompt_text(record["prompt"]), record["generation"]], ensure_ascii=True)
        key = hashlib.sha256(content.encode()).hexdigest()
    return random.Random(f"{seed}\0{key}").choice(list(ratios))


@dataclass(frozen=True)
class TokenSkipConfig:
    """TokenSkip's options: the LLMLingua-2 options (its target is unused: the drawn ratio is the
    rate), the ratio set, the seed of the draw and the separator of the prompt."""

    llmlingua: LLMLingua2Config = field(default_factory=LLMLingua2Config)
    ratios: tuple[float, ...] = RATIOS
    seed: int = 42
    separator: str = SEPARATOR

    def __post_init__(self):
        if not self.ratios:
            raise ValueError("give at least one TokenSkip ratio")
        for r in self.ratios:
            _check_ratio(r)
        if not self.separator:
            raise ValueError("the TokenSkip separator must not be empty")

    def manifest(self) -> dict:
        llmlingua = self.llmlingua.manifest()
        del llmlingua["target"]
        return {"llmlingua": llmlingua, "ratios": list(self.ratios), "seed": self.seed, "separator": self.separator}


class TokenSkipStage:
    """TokenSkip over corpus rows. Rows gain ``method``, ``tokenskip_ratio``, ``pruned_think``,
    ``kept_words`` (null at ratio 1.0), ``tokens_before``, ``tokens_after`` and ``messages`` whose
    user turn carries the ratio."""

    name = METHOD

    def __init__(self, compressor, tokenizer, config: TokenSkipConfig = TokenSkipConfig()):
        self.compressor, self.tokenizer, self.config = compressor, tokenizer, config

    def process(self, records: list[dict]) -> Iterator:
        """Each row's output or RowError, in order, yielded as it finishes (the run engine writes
        and commits it then)."""
        return (self._one(record) for record in records)

    def _one(self, record: dict):
        config, lingua = self.config, self.config.llmlingua
        try:
            row = prepare_row(record, think_field=lingua.think_field, task=lingua.task)
            ratio = draw_ratio(record, config.ratios, config.seed)
            tokens_before = thinking_tokens(self.tokenizer, row)
            pruned, words = compress_row(self.compressor, self.tokenizer, row.steps, ratio, lingua.compress_options(),
                                         row.whole)
        except (RowError, ValueError) as e:
            return row_error(e, METHOD)
        tokens_after = tokens_before if words is None else count_tokens(self.tokenizer, pruned)
        out = method_output(record, record["prompt"], METHOD, pruned, row.answer, tokens_before,
                            tokens_after, tokenskip_ratio=ratio, kept_words=words)
        out["messages"] = tokenskip_messages(record["prompt"], ratio, pruned, row.answer, config.separator)
        return out
