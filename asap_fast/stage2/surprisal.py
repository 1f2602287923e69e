"""First-token surprisal of reasoning steps (ASAP stage 2), from one forward pass.

    text = prefix + "\\n\\n".join(steps)        # tokenized ONCE, with character offsets
    first token of step i = the first token whose character span ends after the step's first character
    surprisal[i] = -ln p(ids[p_i] | ids[:p_i])    # nats; inf when p_i == 0 (nothing precedes it)

Only the K step-boundary hidden rows (positions p_i - 1) leave the backbone; their target
log-probabilities come from :func:`asap_fast.ops.linear_logsoftmax_gather` against the LM head's
weight, in fp32, so the [T, V] logits of the reference are never built. Models whose head is not a
plain ``nn.Linear`` applied to the backbone's output (final-logit soft-capping as in Gemma 2, logit
scaling, unknown architectures) are detected by :func:`lm_head_plan` and scored through the
model's own forward with ``logits_to_keep`` set to those rows: still K rows of logits, never T.

Deliberate differences from the reference code (see DESIGN.md):

* Step boundaries come from the offsets of that one tokenization, not from re-tokenizing each
  prefix: the reference's index can be off by one or more when BPE merges across a boundary, and
  its "+1" assumes a BOS token. Here a tokenizer with or without BOS gives the right token.
* When BPE merges a whole step, the "\\n\\n" after it and the next step's first character into one
  token, both steps have the same first token (same index) and so the same surprisal. Steps are
  never shifted to a later token to make them distinct: the model predicts that token once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from asap_fast.stage2.encoding import (  # noqa: F401  (re-exported: the scorer's public helpers)
    SEPARATOR,
    EncodedTrace,
    _check_fast_tokenizer,
    _check_trace,
    _encode_many,
    encode_trace,
    first_token_positions,
    step_char_starts,
)
from asap_fast.stage2.pruning import (
    _budget,
    _count,
    _prune_iterative,
    check_budget,
    prune_scored,
)

__all__ = [
    "EncodedTrace",
    "prune_steps_iterative",
    "prune_steps_iterative_ref",
    "HeadPlan",
    "SurprisalScorer",
    "encode_trace",
    "first_token_positions",
    "first_token_surprisal",
    "lm_head_plan",
    "step_char_starts",
]

# dtypes the fused ops take; other float dtypes (float64) are scored with plain torch on K rows.
OP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Architectures whose causal-LM forward is exactly ``lm_head(backbone(...).last_hidden_state)``
# (checked against their modeling code), so the head can be fused with the log-softmax gather.
# Anything else goes through the model's own forward: correct, if a little slower.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "gemma",
        "olmo",
        "olmo2",
        "starcoder2",
        "deepseek_v2",
        "deepseek_v3",
        "gpt2",
        "gpt_neox",
    }
)
# Config fields that, when set, transform the logits after the head (soft-capping: any value;
# scales: any value other than 1). Checked even for the architectures above, in case a config
# carries one.
SOFTCAP_CONFIG_FIELDS = ("final_logit_softcapping", "logit_softcapping", "output_softcapping")
SCALE_CONFIG_FIELDS = ("logit_scale", "logits_scaling", "lm_head_multiplier", "output_multiplier_scale")


# --------------------------------------------------------------------------------------------
# Step boundaries
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The LM head
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadPlan:
    """How the target log-probs are computed: ``fused`` (backbone rows + linear_logsoftmax_gather
    against ``weight``/``bias``) or through the model's forward; ``reason`` says why."""

    fused: bool
    reason: str
    backbone: torch.nn.Module | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def _text_config(model):
    config = model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def lm_head_plan(model) -> HeadPlan:
    """Decide, explicitly, whether ``model``'s logits are a plain linear head over its backbone.

    Fused when: the architecture is one whose forward is ``lm_head(last_hidden_state)``
    (PLAIN_HEAD_MODEL_TYPES), no config field transforms the logits (soft-capping, logit scales),
    the output embeddings are exactly ``torch.nn.Linear`` (a bias is fine: the op takes it), and a
    backbone module distinct from the model exists. Otherwise not fused, with the reason.
    """
    config = _text_config(model)
    model_type = getattr(config, "model_type", None) or getattr(model.config, "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return HeadPlan(False, f"model_type {model_type!r} is not known to apply its LM head plainly")
    for field in SOFTCAP_CONFIG_FIELDS:
        if getattr(config, field, None) is not None:
            return HeadPlan(False, f"config.{field}={getattr(config, field)!r} soft-caps the logits")
    for field in SCALE_CONFIG_FIELDS:
        value = getattr(config, field, None)
        if value is not None and value != 1:
            return HeadPlan(False, f"config.{field}={value!r} scales the logits")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return HeadPlan(False, "the model has no output embeddings")
    if type(head) is not torch.nn.Linear:
        return HeadPlan(False, f"the LM head is {type(head).__name__}, not torch.nn.Linear")
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        return HeadPlan(False, "no backbone module distinct from the model")
    return HeadPlan(True, "plain linear head", backbone, head.weight, head.bias)


def _forward_parameter(module: torch.nn.Module, *names: str) -> str | None:
    params = inspect.signature(module.forward).parameters
    return next((n for n in names if n in params), None)


# --------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------


class SurprisalScorer:
    """Keeps a causal LM and its tokenizer loaded and scores many traces.

    model:            a Hugging Face causal LM (Qwen2, Llama, ... any with a forward that takes
                      ``input_ids``). Put in eval mode.
    tokenizer:        its fast tokenizer (offsets are needed); special tokens are added as the
                      tokenizer does by default, so BOS / no-BOS both work.
    device, dtype:    move / cast the model first (default: leave it where and as it is). On CPU
                      use float32; on CUDA bf16/fp16 models work, the gather accumulates in fp32.
    max_batch_tokens: budget of (padded) tokens per forward pass in :meth:`score_batch`; a single
                      trace longer than it still runs, alone.
    max_length:       the longest trace accepted, in tokens (default: the model's
                      ``max_position_embeddings``); longer traces raise ValueError.
    head:             "auto" (fused when :func:`lm_head_plan` allows), "fused" (raise if it does
                      not), "model" (always through the model's forward with ``logits_to_keep``).
    impl:             kernel choice passed to the ops ("auto" | "triton" | "torch").

    Scores are identical (up to float rounding of differently shaped matmuls) whether traces are
    scored one by one or batched.
    """

    HEADS = ("auto", "fused", "model")

    def __init__(
        self,
        model,
        tokenizer,
        *,
        device=None,
        dtype=None,
        max_batch_tokens: int = 32768,
        max_length: int | None = None,
        head: str = "auto",
        impl: str = "auto",
    ):
        from asap_fast.ops import IMPLS

        _check_fast_tokenizer(tokenizer)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive int, got {max_batch_tokens!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.impl = impl
        config = _text_config(model)
        context = getattr(config, "max_position_embeddings", None)
        self.max_length = max_length if max_length is not None else context
        self._length_source = "max_length" if max_length is not None else "config.max_position_embeddings"
        plan = lm_head_plan(model) if head != "model" else HeadPlan(False, "head='model' requested")
        if head == "fused" and not plan.fused:
            raise ValueError(f"head='fused' impossible: {plan.reason}")
        self.plan = plan
        forward_module = plan.backbone if plan.fused else model
        self._cache_kwarg = _forward_parameter(forward_module, "cache", "past_key_values")
        self._keeps_logits = plan.fused or _forward_parameter(model, "logits_to_keep") is not None
        self.vocab_rows = model.get_input_embeddings().num_embeddings
        # Right padding is never attended under causal attention, so any id the embedding has
        # serves; a tokenizer whose <pad> was added without resizing the model gets id 0 instead.
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None and 0 <= pad < self.vocab_rows else 0
        # No token is longer (in characters) than the longest vocabulary entry, so a text of more
        # than max_length * that many characters cannot fit: refused before it is tokenized.
        self.max_token_chars = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        tokenizer_path: str | None = None,
        device=None,
        dtype=None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        **scorer_kwargs,
    ) -> SurprisalScorer:
        """Load model and fast tokenizer from a local directory or hub id.

        device defaults to "cuda" when available, else "cpu"; dtype to bfloat16 on CUDA, float32 on
        CPU. ``scorer_kwargs`` go to the constructor (max_batch_tokens, max_length, head, impl).
        """
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path, use_fast=True, trust_remote_code=trust_remote_code)
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        model_kwargs = {dtype_kwarg: dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs).to(device)
        return cls(model, tokenizer, **scorer_kwargs)

    # -- encoding ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prefix: str, steps: Sequence[str]) -> EncodedTrace:
        """Tokenize one trace once (see :func:`encode_trace`) and check it fits the context."""
        return self.encode_batch([(prefix, steps)])[0]

    def encode_batch(self, traces: Iterable[tuple[str, Sequence[str]]]) -> list[EncodedTrace]:
        checked = []
        for item in traces:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"each trace must be a (prefix, steps) pair, got {type(item).__name__}")
            checked.append((item[0], _check_trace(item[0], item[1])))
        texts = [prefix + SEPARATOR.join(steps) for prefix, steps in checked]
        for text in texts:
            self.check_length(text)
        encoded = []
        for (prefix, steps), (ids, ends) in zip(checked, _encode_many(self.tokenizer, texts)):
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"trace has {len(ids)} tokens, more than the model's context of {self.max_length} "
                    f"({self._length_source}); shorten the prefix or steps"
                )
            if len(ids) and int(ids.max()) >= self.vocab_rows:
                raise ValueError(
                    f"the tokenizer gave token id {int(ids.max())}, but the model's embedding has "
                    f"{self.vocab_rows} rows (tokenizer vocabulary {len(self.tokenizer)}): tokenizer and "
                    f"model do not match"
                )
            encoded.append(EncodedTrace(ids, first_token_positions(ends, step_char_starts(prefix, steps))))
        return encoded

    def check_length(self, text: str) -> None:
        """ValueError, without tokenizing, when ``text`` has too many characters to fit the context
        whatever its tokenization (a 50 MB row is refused in microseconds, not after an OOM)."""
        if self.max_length is not None and len(text) > self.max_length * self.max_token_chars:
            raise ValueError(
                f"trace has {len(text):,} characters, more than the model's context of {self.max_length} "
                f"tokens can hold ({self._length_source}; at most {self.max_token_chars} characters a token)"
            )

    # -- scoring ----------------------------------------------------------------------------

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        """First-token surprisal (nats) of each step of one trace; inf where nothing precedes it."""
        return self.score_encoded(self.encode(prefix, steps))

    def score_batch(self, traces: Iterable[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """:meth:`score` for many (prefix, steps) pairs, several traces per forward pass.

        Traces are sorted by length and grouped so that (traces in batch) x (longest in batch)
        stays within ``max_batch_tokens``; batches are right-padded. Right padding needs no
        attention mask under causal attention: a real token attends only to earlier positions,
        which are all real, so each trace sees exactly what it sees alone.
        """
        encoded = self.encode_batch(traces)
        results: list[list[float] | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        batch: list[int] = []
        for i in order:
            longest = len(encoded[batch[0]]) if batch else len(encoded[i])
            fits = (len(batch) + 1) * longest <= self.max_batch_tokens and self._keeps_batches
            if batch and not fits:
                self._score_into(encoded, batch, results)
                batch = []
            batch.append(i)
        if batch:
            self._score_into(encoded, batch, results)
        return results  # type: ignore[return-value]

    @property
    def _keeps_batches(self) -> bool:
        # The model-forward path takes one set of logits_to_keep rows for every batch row, so it
        # scores one trace per pass instead of building B x (union of rows) logits.
        return self.plan.fused

    def score_encoded(self, trace: EncodedTrace) -> list[float]:
        results: list[list[float] | None] = [None]
        self._score_into([trace], [0], results)
        return results[0]  # type: ignore[return-value]

    def _score_into(self, encoded: list[EncodedTrace], batch: list[int], results: list) -> None:
        longest = max(len(encoded[i]) for i in batch)
        input_ids = np.full((len(batch), max(longest, 1)), self.pad_token_id, dtype=np.int64)
        flat_rows, targets, unique_per_trace = [], [], []
        for b, i in enumerate(batch):
            trace = encoded[i]
            input_ids[b, : len(trace)] = trace.input_ids
            scored = np.unique(trace.positions[trace.positions > 0])
            unique_per_trace.append(scored)
            flat_rows.append(b * input_ids.shape[1] + scored - 1)
            targets.append(trace.input_ids[scored])
        rows = np.concatenate(flat_rows) if flat_rows else np.zeros(0, np.int64)
        if rows.size:
            log_probs = self.log_probs(
                torch.from_numpy(input_ids), torch.from_numpy(rows), torch.from_numpy(np.concatenate(targets))
            ).double().cpu().numpy()
        else:
            log_probs = np.zeros(0)
        offset = 0
        for i, scored in zip(batch, unique_per_trace):
            trace = encoded[i]
            values = -log_probs[offset : offset + len(scored)]
            offset += len(scored)
            surprisal = np.full(len(trace.positions), math.inf)
            has_context = trace.positions > 0
            surprisal[has_context] = values[np.searchsorted(scored, trace.positions[has_context])]
            results[i] = surprisal.tolist()

    def log_probs(self, input_ids: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, *, cache=None) -> torch.Tensor:
        """fp32 (M,) log p(targets[m] | hidden row rows[m]) from one forward pass (float64 for
        float64 models).

        input_ids: (B, L) int64; rows: (M,) int64 flat indices into the (B * L) positions of
        input_ids whose next-token distribution is wanted; targets: (M,) int64. With ``cache`` (a
        transformers Cache holding the KV of the tokens before input_ids, with batch size B) the
        forward continues from it and the cache is extended in place. Rows of different lengths
        are right-padded: causal attention keeps real tokens from seeing the padding.
        """
        from asap_fast.ops import linear_logsoftmax_gather, logsoftmax_gather

        device = self.device
        input_ids = input_ids.to(device)
        rows = rows.to(device)
        targets = targets.to(device)
        kwargs = {"use_cache": cache is not None}
        if self._cache_kwarg is not None:
            kwargs[self._cache_kwarg] = cache
        elif cache is not None:
            raise RuntimeError("this model's forward takes no KV cache")
        with torch.inference_mode():
            if self.plan.fused:
                out = self.plan.backbone(input_ids=input_ids, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, L, D)
                del out
                boundary = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (M, D)
                del hidden
                weight = self.plan.weight
                if boundary.dtype != weight.dtype:
                    boundary = boundary.to(weight.dtype)
                if weight.dtype not in OP_DTYPES:  # float64 models: K rows of logits, plainly
                    logits = torch.nn.functional.linear(boundary, weight, self.plan.bias)
                    return torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
                return linear_logsoftmax_gather(boundary, weight, targets, self.plan.bias, impl=self.impl)
            if input_ids.shape[0] != 1:
                raise RuntimeError("the model-forward path scores one trace per pass")
            if self._keeps_logits:
                logits = self.model(input_ids=input_ids, logits_to_keep=rows, **kwargs).logits[0]  # (M, V)
            else:  # old or custom forward without logits_to_keep: full logits, then the rows
                logits = self.model(input_ids=input_ids, **kwargs).logits[0].index_select(0, rows)
            if logits.dtype not in OP_DTYPES:
                return torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
            return logsoftmax_gather(logits, targets, impl=self.impl)

    # -- caches (iterative pruning) ---------------------------------------------------------

    def new_cache(self):
        """An empty KV cache that can be cropped and continued, or None if this model has none."""
        if self._cache_kwarg is None:
            return None
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers < 4.56
            return None
        layers = getattr(cache, "layers", None)
        # Sliding-window and linear-attention layers drop or fold old tokens, so cropping them
        # back to a prefix is not exact; only plain full-attention layers are reused.
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        return cache

    # -- pruning ----------------------------------------------------------------------------

    def prune(
        self,
        prefix: str,
        steps: Sequence[str],
        *,
        max_tokens: int | None = None,
        ratio: float | None = None,
        mode: str = "global",
        steps_per_round: int = 1,
    ):
        """Stage 2 for one trace: score, then prune to the budget. Returns a PruneResult.

        mode "global": the reference's rule on one scoring pass (:func:`asap_fast.prune_steps`).
        mode "iterative": re-score after each removal (:func:`asap_fast.stage2.surprisal.prune_steps_iterative`).
        """
        return prune_scored(self, prefix, steps, max_tokens=max_tokens, ratio=ratio, mode=mode,
                            steps_per_round=steps_per_round)


def first_token_surprisal(model, tokenizer, prefix: str, steps: Sequence[str], **opts) -> list[float]:
    """Surprisal (nats) of the first token of each step given everything before it.

    text = prefix + "\\n\\n".join(steps), tokenized once with offsets (special tokens added as the
    tokenizer does by default); the first token of step i is the first token whose character span
    ends after the step's first character; surprisal = -ln p(that token | all tokens before it);
    float("inf") where nothing precedes it. ``opts`` go to :class:`SurprisalScorer` (head, impl,
    max_length, device, dtype). For many traces keep a SurprisalScorer instead.
    """
    return SurprisalScorer(model, tokenizer, **opts).score(prefix, steps)


# --------------------------------------------------------------------------------------------
# Iterative pruning from a model and tokenizer (the rules themselves are in asap_fast.stage2.pruning)
# --------------------------------------------------------------------------------------------


def _as_scorer(model, tokenizer, scorer_opts) -> SurprisalScorer:
    if isinstance(model, SurprisalScorer):
        if scorer_opts:
            raise TypeError(f"scorer options {sorted(scorer_opts)} given with a ready SurprisalScorer")
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("tokenizer differs from the scorer's; pass tokenizer=None with a SurprisalScorer")
        return model
    if tokenizer is None:
        raise TypeError("tokenizer is required unless model is a SurprisalScorer")
    return SurprisalScorer(model, tokenizer, **scorer_opts)


def prune_steps_iterative_ref(
    model, tokenizer, prefix: str, steps, *, max_tokens=None, ratio=None, steps_per_round: int = 1, **scorer_opts
) -> list[int]:
    """Iterative pruning by its definition: every round re-scores all kept steps from scratch
    (:func:`first_token_surprisal` on prefix + the kept join) and removes the ``steps_per_round``
    least surprising (ties: lower original index first), checking the budget after each removal.
    The oracle for :func:`prune_steps_iterative`."""
    check_budget(max_tokens, ratio)
    steps = _check_trace(prefix, steps)
    if isinstance(model, SurprisalScorer):
        tokenizer = tokenizer or model.tokenizer
    kept = list(range(len(steps)))
    budget = _budget(_count(tokenizer, steps, kept), max_tokens, ratio)
    if _count(tokenizer, steps, kept) <= budget:
        return kept
    while kept:
        if isinstance(model, SurprisalScorer):
            scores = model.score(prefix, [steps[i] for i in kept])
        else:
            scores = first_token_surprisal(model, tokenizer, prefix, [steps[i] for i in kept], **scorer_opts)
        order = sorted(range(len(kept)), key=lambda j: (scores[j], kept[j]))
        removed: set[int] = set()
        for j in order[:steps_per_round]:
            removed.add(kept[j])
            rest = [i for i in kept if i not in removed]
            if _count(tokenizer, steps, rest) <= budget:
                return rest
        kept = rest
    return []


def prune_steps_iterative(
    model,
    tokenizer,
    prefix: str,
    steps,
    *,
    max_tokens=None,
    ratio=None,
    steps_per_round: int = 1,
    reuse_cache: bool = True,
    **scorer_opts,
) -> list[int]:
    """Iterative pruning: after each removal, re-score the steps after it in their new context.

    model: a causal LM (with ``tokenizer``) or a :class:`SurprisalScorer` (tokenizer None or the
    scorer's). The budget is the global mode's (``max_tokens`` or ``ratio`` of the join of all
    steps, counted with ``tokenizer.encode``). Each round scores the kept steps in
    prefix + "\\n\\n".join(kept) and removes the ``steps_per_round`` least surprising (ties: lower
    original index first), checking the budget after each removal; rounds go on until it fits.

    steps_per_round=1 is the exact iterative rule (same kept set as
    :func:`prune_steps_iterative_ref`); larger values are an approximation that trades fidelity
    for fewer forward passes (steps_per_round >= len(steps) is the global mode).

    Cost: a step's score depends only on the tokens before its first token, so after a removal
    only steps whose first token lies past the first token id that changed are re-scored, and
    the forward continues from the KV cache of the unchanged token prefix (token ids compared
    one by one, so a re-tokenized boundary is never reused wrongly). ``reuse_cache=False``
    recomputes the whole forward each round (for models whose cache cannot be cropped, e.g.
    sliding-window layers, this happens anyway).
    """
    scorer = _as_scorer(model, tokenizer, scorer_opts)
    return _prune_iterative(scorer, prefix, steps, max_tokens, ratio, steps_per_round, reuse_cache, False).kept
