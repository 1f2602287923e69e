"""Stage 2 over corpus rows: first-token surprisal refining (the work of `asap fine`).

For each row: the thinking (``coarse_think`` from stage 1b when the row has it, else the
generation's own) is split into steps, every step's first token is scored in one pass over
``prompt + "\\n<think>\\n" + "\\n\\n".join(steps)``, and the least surprising steps are dropped until
the thinking fits the budget. Rows gain ``pruned_think``, ``step_surprisal``, ``kept_steps``,
``tokens_before``, ``tokens_after`` and ``messages`` (ready for SFT).

As the reference: ``tokens_before`` is ``len(tokenizer.encode(thinking))`` of the whole stripped
thinking (special tokens included), a ratio budget is ``int(ratio * tokens_before)``, and a
thinking within the budget is written unchanged, byte for byte. Otherwise the budget test runs on
the stripped steps (:func:`~asap_fast.stage2.pruning.prune_steps`), duplicates removed by index,
and each kept step is written as its original paragraph (:func:`~asap_fast.core.traces.step_source_texts`;
the reference writes it stripped), joined by "\n\n"; ``tokens_after`` counts the text written. A
row whose budget would remove every step is a reject (the reference writes an empty thinking).

Each trace is scored in a forward pass of its own, so a row's scores (and so the output bytes) do
not depend on which rows share its batch: shards, Ray, ``--batch`` and resume all write one run's
bytes. A trace of thousands of tokens fills a pass on its own; benchmarks/bench_stage2.py measures
what packing short traces together would save.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from asap_fast.core.chat import unwrap_rendered_chat
from asap_fast.core.errors import RowError
from asap_fast.core.traces import TraceError, parse_trace, split_steps, step_source_texts

PROMPT_SUFFIX = "\n<think>\n"  # the paper's raw-text context: prompt, then the opened think block
THINK_FIELDS = ("auto", "think", "coarse_think")
TASKS = ("auto", "code", "math")
MODES = ("global", "iterative")
DTYPES = ("float32", "bfloat16", "float16")


def prompt_messages(prompt) -> list[dict]:
    """The question as chat messages. Rows carry it as a str (open-r1/codeforces-cots) or, in some
    corpora, as chat messages (kept as they are). A str that already holds a rendered chat template
    (``<｜User｜>...<｜Assistant｜>``, ChatML, Llama 3) becomes the conversation it rendered, so that
    neither the SFT text nor the scoring prefix carries the template's tags (fidelity ledger)."""
    if isinstance(prompt, str):
        rendered = unwrap_rendered_chat(prompt)
        return rendered.messages if rendered else [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
        return list(prompt)
    raise RowError(f"prompt must be str or a list of chat messages, not {type(prompt).__name__}")


def prompt_text(prompt) -> str:
    """The question as raw text (stage 2's scoring prefix): the contents of :func:`prompt_messages`
    joined by newlines, in order; a plain str is returned as it is."""
    return "\n".join(m["content"] for m in prompt_messages(prompt))


def sft_messages(prompt, pruned_think: str, answer: str) -> list[dict]:
    """The SFT conversation of DESIGN.md: the user's prompt (:func:`prompt_messages`), then the
    pruned thinking and the answer."""
    return prompt_messages(prompt) + [{"role": "assistant", "content": "<think>\n" + pruned_think + "\n</think>\n" + answer}]


@dataclass(frozen=True)
class PruneConfig:
    """What stage 2 does to each row (every field changes the output bytes).

    budget / ratio:  the token budget of the pruned thinking (exactly one; the paper's is
                     budget=4096); a ratio is of each thinking's own tokens, in (0, 1].
    mode:            "global" (the reference: one scoring pass) or "iterative" (re-score after
                     each removal; ``steps_per_round`` removals per re-score).
    think_field:     "auto" prunes ``coarse_think`` when a row has it, else the thinking of its
                     ``generation``; "think" / "coarse_think" force one.
    task:            "auto" (the row's ``kind``, code when absent), "code" or "math": code rows
                     need a python block after </think>.
    """

    budget: int | None = 4096
    ratio: float | None = None
    mode: str = "global"
    steps_per_round: int = 1
    think_field: str = "auto"
    task: str = "auto"

    def __post_init__(self):
        if (self.budget is None) == (self.ratio is None):
            raise ValueError(f"give exactly one of budget and ratio (got budget={self.budget!r}, ratio={self.ratio!r})")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, numbers.Integral)
                                        or self.budget < 1):
            raise ValueError(f"budget must be a whole number of tokens >= 1, got {self.budget!r} "
                             f"(a budget of 0 would remove every step)")
        if self.ratio is not None and (isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real)
                                       or not 0 < self.ratio <= 1):
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps per round must be >= 1, got {self.steps_per_round}")
        if self.think_field not in THINK_FIELDS:
            raise ValueError(f"think field must be one of {THINK_FIELDS}, got {self.think_field!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    def manifest(self) -> dict:
        options = asdict(self)
        if self.mode == "global":
            del options["steps_per_round"]  # unused, so it cannot change the bytes
        return options


@dataclass(frozen=True)
class ScorerSpec:
    """Which scorer to load and how. ``model`` None is the bundled demo scorer.

    ``dtype`` and ``max_length`` change scores / which rows fit, so they are in the manifest with
    the model's identity; ``device`` and ``batch_tokens`` (packing in score_batch) are not."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None
    batch_tokens: int = 32768

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max length must be >= 1, got {self.max_length}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch tokens must be >= 1, got {self.batch_tokens}")

    def model_path(self) -> str:
        if self.model is not None:
            return self.model
        from asap_fast.scorers import DEFAULT_SCORER

        if DEFAULT_SCORER is None:
            raise ValueError("no --model given and no bundled demo scorer in this installation")
        return str(DEFAULT_SCORER)

    def manifest(self) -> dict:
        import torch

        from asap_fast.core.fingerprint import model_identity

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        options = {"model": model_identity(self.model_path()), "dtype": dtype, "max_length": self.max_length}
        if device == "cpu":
            # CPU kernels split their sums by thread count: scores can differ in the last bits
            # between counts (1 and 2 threads agree on the demo scorer, 3 do not), so the count
            # is part of what decides the bytes (docs/corpus.md, "Same bytes").
            options["cpu_threads"] = torch.get_num_threads()
        return options

    def load(self, *, quiet: bool = False, stage: str = "fine"):
        """The SurprisalScorer, saying on stderr when the bundled one is used."""
        import torch

        from asap_fast.stage2.surprisal import SurprisalScorer

        path = self.model_path()
        if self.model is None and not quiet:
            print(f"asap {stage}: no --model given, using the bundled demo scorer {path}", file=sys.stderr)
        if quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        try:
            return SurprisalScorer.from_pretrained(
                path, device=self.device, dtype=getattr(torch, self.dtype) if self.dtype else None,
                max_batch_tokens=self.batch_tokens, max_length=self.max_length)
        except OSError as e:  # not a model directory, or a hub id that cannot be fetched
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load the model {path}: {first_line}") from None


class FineStage:
    """Stage 2 for batches of records with a loaded :class:`~asap_fast.stage2.surprisal.SurprisalScorer`.

    A row whose budget would remove every step is a reject (never an empty thinking in SFT data;
    the reference writes the empty thinking: see docs/fidelity.md).
    """

    name = "fine"

    def __init__(self, scorer, config: PruneConfig = PruneConfig()):
        self.scorer, self.config = scorer, config
        self.tokens_scored = 0

    def _prepare(self, record: dict) -> tuple[str, list[str], str, str]:
        """(prefix, steps, answer, thinking) of one row, or RowError."""
        config = self.config
        prompt = prompt_text(record["prompt"])
        kind = record.get("kind", "code") if config.task == "auto" else config.task
        try:
            trace = parse_trace(record["generation"], require_code=kind == "code")
        except TraceError as e:
            raise RowError(str(e)) from None
        field = config.think_field
        if field == "auto":
            field = "coarse_think" if record.get("coarse_think") is not None else "think"
        think = trace.think if field == "think" else record.get("coarse_think")
        if not isinstance(think, str):
            raise RowError(f"coarse_think must be str, not {type(think).__name__}")
        think = think.strip()
        prefix = prompt + PROMPT_SUFFIX
        self.scorer.check_length(prefix + think)  # before a huge row is tokenized in full
        steps = split_steps(think)
        if not steps:
            raise RowError(f"no steps in {field}")
        return prefix, steps, trace.answer, think

    def process(self, records: Sequence[dict]) -> Iterator:
        """Output record or RowError for each record, in order, yielded as each finishes."""
        return (self._process_one(record) for record in records)

    def _process_one(self, record: dict):
        from asap_fast.stage2.pruning import prune_steps, thinking_budget

        config = self.config
        try:
            prefix, steps, answer, thinking = self._prepare(record)
            encoded = self.scorer.encode(prefix, steps)
        except RowError as e:
            return e
        except ValueError as e:  # over-long trace, token ids the model does not have
            return RowError(str(e))
        tokenizer = self.scorer.tokenizer
        tokens_before, budget = thinking_budget(tokenizer, thinking, max_tokens=config.budget, ratio=config.ratio)
        self.tokens_scored += tokens_before
        if tokens_before <= budget:  # the reference's early exit: the thinking as it is
            surprisal = self.scorer.score_encoded(encoded)
            kept, pruned, tokens_after = list(range(len(steps))), thinking, tokens_before
        else:
            if config.mode == "global":
                surprisal = self.scorer.score_encoded(encoded)
                kept = prune_steps(steps, surprisal, tokenizer, max_tokens=budget)
            else:
                outcome = self.scorer.prune(prefix, steps, max_tokens=budget, mode="iterative",
                                            steps_per_round=config.steps_per_round)
                kept, surprisal = outcome.kept, outcome.surprisal
            if not kept:
                label = f"budget {config.budget}" if config.ratio is None else f"ratio {config.ratio:g}"
                return RowError(f"the budget removes every step: {label}, {tokens_before} tokens in {len(steps)} steps")
            originals = step_source_texts(thinking)
            pruned = "\n\n".join(originals[k] for k in kept)
            tokens_after = len(tokenizer.encode(pruned))
        return {
            **record,
            "pruned_think": pruned,
            # inf (a step with nothing before it) is not JSON: written as null
            "step_surprisal": [s if math.isfinite(s) else None for s in surprisal],
            "kept_steps": list(kept),
            "tokens_before": tokens_before,
            "tokens_after": tokens_after,
            "messages": sft_messages(record["prompt"], pruned, answer),
        }


def make_fine_stage(scorer_spec: ScorerSpec, config: PruneConfig, quiet: bool = False) -> FineStage:
    """A FineStage with its scorer loaded (picklable by reference: what a Ray actor calls)."""
    return FineStage(scorer_spec.load(quiet=quiet), config)
