"""Selective Context (Li, Dong, Guerin, Lin, "Compressing Context to Enhance Inference Efficiency of
Large Language Models", EMNLP 2023, arXiv 2310.06201): drop the lexical units that carry the least
self-information under a causal LM.

Definition implemented (exactly this; tests restate it with full fp64 log-softmax logits):

    text      = "\\n\\n".join(steps), scored in the context prefix + text (prefix = prompt +
                "\\n<think>\\n", tokenized once with offsets)
    I(t)      = -ln p(ids[t] | ids[:t]) for every token t of the thinking (the tokens whose
                character span ends after the prefix); +inf for a token at index 0
    units     = a partition of text into consecutive spans (see UNITS); a token belongs to the
                unit that holds its last character
    I(u)      = sum of I(t) over the tokens of unit u (NaN for a unit that no token ends in)
    threshold = np.percentile(finite I(u), 100 * (1 - keep))     linear interpolation, numpy's default
    removed   = units with I(u) < threshold (NaN and +inf units are kept)
    pruned    = the kept units' text concatenated, stripped

as the reference's ``self_info_mask`` does with ``np.nanpercentile`` at the reduction ratio
(1 - keep) and a strict ``<``. ``keep`` is the kept fraction of units by count (the method has no
token budget; a ``--budget`` becomes keep = budget / tokens before, and a thinking within it is
left whole). The per-token log-probs of every row come from ``linear_logsoftmax_gather`` without
materialising [T, V] logits.

Deliberate differences from the reference code: self-information is conditioned on the prompt (the
scorer's context, as in ASAP's stage 2) instead of a BOS token alone; sentence units come from a
plain rule instead of spaCy/NLTK, so token and sentence units need no NLP package.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from asap_fast.core.errors import RowError
from asap_fast.methods.common import (
    Target,
    check_ids,
    count_tokens,
    thinking_tokens,
    encode_with_ends,
    method_output,
    prepare_row,
    row_error,
    thinking_positions,
)

__all__ = [
    "UNITS",
    "SelectiveContextConfig",
    "SelectiveContextStage",
    "TokenInformation",
    "phrase_unit_ends",
    "select_units",
    "self_information",
    "self_information_ref",
    "sentence_unit_ends",
    "token_unit_ends",
    "unit_information",
]

METHOD = "selective-context"

# token:    each token of the scorer (tokens sharing an end offset, as byte pieces of one
#           character can, form one unit); a unit runs from the previous unit's end to its own
# sentence: a sentence ends after ".", "!" or "?" (and closing quotes or brackets) followed by
#           whitespace, or at a run of whitespace holding a newline; the whitespace belongs to it
# phrase:   spaCy's noun chunks, and every other spaCy token, each with the whitespace after it
#           (needs spaCy and a pipeline with a parser, e.g. en_core_web_sm)
UNITS = ("token", "sentence", "phrase")

_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|[ \t]*\n\s*")


@dataclass(frozen=True)
class TokenInformation:
    """The thinking's tokens: ``ends`` (N,) int64 end offsets in the thinking text (running
    maximum, clipped to >= 1), ``values`` (N,) float64 self-information in nats."""

    ends: np.ndarray
    values: np.ndarray


def _encode_thinking(tokenizer, prefix: str, text: str):
    ((ids, ends),) = encode_with_ends(tokenizer, [prefix + text])
    positions = thinking_positions(ends, len(prefix))
    return ids, ends, positions


def self_information(scorer, prefix: str, text: str) -> TokenInformation:
    """I(t) of every thinking token with a loaded SurprisalScorer: one forward pass, and the target
    log-probs of all its rows through ``linear_logsoftmax_gather`` (fp32)."""
    import torch

    scorer.check_length(prefix + text)
    ids, ends, positions = _encode_thinking(scorer.tokenizer, prefix, text)
    check_ids(scorer, ids)
    values = np.zeros(0)
    if positions.size:
        values = -scorer.log_probs(torch.from_numpy(ids[None]), torch.from_numpy(positions - 1),
                                   torch.from_numpy(ids[positions])).double().cpu().numpy()
    return _thinking_information(ends, positions, values, len(prefix))


def self_information_ref(model, tokenizer, prefix: str, text: str) -> TokenInformation:
    """The same from the model's full [T, V] logits, log-softmaxed in float64 (the test oracle)."""
    import torch

    ids, ends, positions = _encode_thinking(tokenizer, prefix, text)
    values = np.zeros(0)
    if positions.size:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids)[None].to(model.device)).logits[0]
        log_probs = torch.log_softmax(logits.double(), -1)
        rows = torch.from_numpy(positions - 1).to(log_probs.device)
        values = -log_probs[rows, torch.from_numpy(ids[positions]).to(log_probs.device)].cpu().numpy()
    return _thinking_information(ends, positions, values, len(prefix))


def _thinking_information(ends, positions, values, prefix_chars: int) -> TokenInformation:
    # a thinking token at index 0 (nothing precedes it) is not in `positions`: +inf, as surprisal
    first = int(np.searchsorted(ends, prefix_chars, side="right"))
    thinking = np.arange(first, len(ends))
    out = np.full(len(thinking), math.inf)
    out[len(thinking) - len(positions):] = values
    return TokenInformation(np.maximum(ends[thinking] - prefix_chars, 1), out)


# ------------------------------------------------------------------------------------------ units


def token_unit_ends(info: TokenInformation, text: str) -> np.ndarray:
    """Unit end offsets for token units (the last one is len(text))."""
    ends = np.unique(np.minimum(info.ends, len(text)))
    if not ends.size or ends[-1] != len(text):
        ends = np.append(ends, len(text))
    return ends


def sentence_unit_ends(text: str) -> np.ndarray:
    """Unit end offsets for sentence units (see UNITS)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)]
    return np.asarray(sorted(set(ends)) + [len(text)], dtype=np.int64)


def phrase_unit_ends(text: str, nlp) -> np.ndarray:
    """Unit end offsets for phrase units: ``nlp`` is a loaded spaCy pipeline (noun chunks need its
    parser), or any callable returning a spaCy Doc of ``text``."""
    doc = nlp(text)
    in_chunk = np.zeros(len(doc), dtype=bool)
    ends = []
    for chunk in doc.noun_chunks:
        in_chunk[chunk.start:chunk.end] = True
        ends.append(chunk.end_char + len(doc[chunk.end - 1].whitespace_))
    for token in doc:
        if not in_chunk[token.i]:
            ends.append(token.idx + len(token.text_with_ws))
    ends = sorted({e for e in ends if 0 < e < len(text)})
    return np.asarray(ends + [len(text)], dtype=np.int64)


def unit_information(info: TokenInformation, unit_ends: np.ndarray) -> np.ndarray:
    """(U,) float64 I(u): the sum of the self-information of the tokens whose last character lies
    in the unit, NaN for a unit no token ends in."""
    owner = np.searchsorted(unit_ends, info.ends - 1, side="right")
    owner = np.minimum(owner, len(unit_ends) - 1)
    n = len(unit_ends)
    counts = np.bincount(owner, minlength=n)
    finite = np.isfinite(info.values)
    sums = np.bincount(owner[finite], weights=info.values[finite], minlength=n)
    infinite = np.bincount(owner[~finite], minlength=n) > 0
    sums[infinite] = math.inf
    sums[counts == 0] = np.nan
    return sums


def select_units(values: np.ndarray, keep: float) -> np.ndarray:
    """(U,) bool: the kept units (see the module doc)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.ones(len(values), dtype=bool)
    threshold = np.percentile(finite, 100 * (1 - keep))
    with np.errstate(invalid="ignore"):
        return ~(values < threshold)


def kept_spans(unit_ends: np.ndarray, kept: np.ndarray) -> list[list[int]]:
    """[[start, end], ...]: the kept units as maximal runs of character offsets in the thinking."""
    starts = np.concatenate([[0], unit_ends[:-1]])
    spans: list[list[int]] = []
    for start, end, keep in zip(starts.tolist(), unit_ends.tolist(), kept.tolist()):
        if not keep or start == end:
            continue
        if spans and spans[-1][1] == start:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return spans


# ----------------------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class SelectiveContextConfig:
    """Selective Context's options (each changes the output bytes). ``spacy_model``: the spaCy
    pipeline of phrase units."""

    target: Target = Target(ratio=0.5)
    unit: str = "token"
    spacy_model: str = "en_core_web_sm"
    think_field: str = "auto"
    task: str = "auto"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")

    def manifest(self) -> dict:
        out = {"target": self.target.manifest(), "unit": self.unit, "think_field": self.think_field,
               "task": self.task}
        if self.unit == "phrase":
            out["spacy_model"] = self.spacy_model
        return out


def load_spacy(name: str):
    """A spaCy pipeline for phrase units, or ValueError saying what to install."""
    try:
        import spacy
    except ImportError:
        raise ValueError("phrase units need spaCy: pip install spacy, then python -m spacy download "
                         f"{name}; token and sentence units need nothing") from None
    try:
        return spacy.load(name, exclude=["ner", "lemmatizer", "textcat"])
    except OSError:
        raise ValueError(f"phrase units need the spaCy pipeline {name!r}: python -m spacy download {name} "
                         "(or --spacy-model NAME)") from None


class SelectiveContextStage:
    """Selective Context over corpus rows with a loaded SurprisalScorer. Rows gain ``method``,
    ``pruned_think``, ``kept_spans`` (code-point [start, end) runs of "\\n\\n".join(steps) that were
    kept), ``units_kept`` / ``units_total``, ``tokens_before``, ``tokens_after``, ``messages``."""

    name = METHOD

    def __init__(self, scorer, config: SelectiveContextConfig = SelectiveContextConfig(), nlp=None):
        self.scorer, self.config = scorer, config
        self.nlp = nlp if nlp is not None or config.unit != "phrase" else load_spacy(config.spacy_model)

    def units(self, info: TokenInformation, text: str) -> np.ndarray:
        if self.config.unit == "token":
            return token_unit_ends(info, text)
        if self.config.unit == "sentence":
            return sentence_unit_ends(text)
        return phrase_unit_ends(text, self.nlp)

    def process(self, records: list[dict]) -> Iterator:
        """Each row's output or RowError, in order, yielded as it finishes (the run engine writes
        and commits it then)."""
        return (self._one(record) for record in records)

    def _one(self, record: dict):
        config = self.config
        try:
            row = prepare_row(record, think_field=config.think_field, task=config.task)
            text = row.thinking
            tokens_before = thinking_tokens(self.scorer.tokenizer, row)
            keep = config.target.keep_fraction(tokens_before)
            if keep is None:
                unit_ends = np.asarray([len(text)], dtype=np.int64)
                kept = np.ones(1, dtype=bool)
            else:
                info = self_information(self.scorer, row.prefix, text)
                unit_ends = self.units(info, text)
                kept = select_units(unit_information(info, unit_ends), keep)
            spans = kept_spans(unit_ends, kept)
            pruned = "".join(text[a:b] for a, b in spans).strip()
            if not pruned:
                raise RowError(f"the target removes every unit: {tokens_before} tokens")
        except (RowError, ValueError) as e:
            return row_error(e, METHOD)
        if bool(kept.all()):  # kept whole: the thinking as written, as stage 2 writes it
            pruned, tokens_after = row.whole, tokens_before
        else:
            tokens_after = count_tokens(self.scorer.tokenizer, pruned)
        return method_output(record, record["prompt"], METHOD, pruned, row.answer, tokens_before,
                             tokens_after, kept_spans=spans,
                             units_kept=int(kept.sum()), units_total=len(unit_ends))
