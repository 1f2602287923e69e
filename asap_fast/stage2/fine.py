"""Stage 2 over a corpus: first-token surprisal refining (`asap fine`).

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
the reference writes it stripped), joined by "\\n\\n"; ``tokens_after`` counts the text written.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from asap_fast.pipeline.engine import RowError, run_corpus
from asap_fast.pipeline.records import Row
from asap_fast.core.traces import TraceError, parse_trace, split_steps, step_source_texts

PROMPT_SUFFIX = "\n<think>\n"  # the paper's raw-text context: prompt, then the opened think block
THINK_FIELDS = ("auto", "think", "coarse_think")


def prompt_text(prompt) -> str:
    """The question as raw text. Rows carry it as a str (open-r1/codeforces-cots) or, in some
    corpora, as chat messages; their contents are joined by newlines, in order."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
        return "\n".join(m["content"] for m in prompt)
    raise RowError(f"prompt must be str or a list of chat messages, not {type(prompt).__name__}")


def sft_messages(prompt, pruned_think: str, answer: str) -> list[dict]:
    """The SFT conversation of DESIGN.md: the user's prompt (kept as messages when it was given as
    messages), then the pruned thinking and the answer."""
    question = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return question + [{"role": "assistant", "content": "<think>\n" + pruned_think + "\n</think>\n" + answer}]


class FineStage:
    """Stage 2 for batches of rows with a loaded :class:`~asap_fast.surprisal.SurprisalScorer`.

    max_tokens / ratio: the budget (exactly one; the paper's is max_tokens=4096).
    mode:               "global" (the reference: one scoring pass) or "iterative" (re-score
                        after each removal; ``steps_per_round`` removals per re-score).
    think_field:        "auto" prunes ``coarse_think`` when a row has it, else the thinking of
                        its ``generation``; "think" / "coarse_think" force one.
    task:               "auto" (the row's ``kind``, code when absent), "code" or "math": code rows
                        need a python block after </think>.
    """

    def __init__(self, scorer, *, max_tokens: int | None = 4096, ratio: float | None = None,
                 mode: str = "global", steps_per_round: int = 1, think_field: str = "auto", task: str = "auto"):
        from asap_fast.stage2.pruning import MODES, check_budget

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if think_field not in THINK_FIELDS:
            raise ValueError(f"think_field must be one of {THINK_FIELDS}, got {think_field!r}")
        if ratio is not None:
            max_tokens = None
        check_budget(max_tokens, ratio)
        self.scorer, self.max_tokens, self.ratio = scorer, max_tokens, ratio
        self.mode, self.steps_per_round, self.think_field, self.task = mode, steps_per_round, think_field, task
        self.tokens_scored = 0

    def _prepare(self, record: dict) -> tuple[str, list[str], str, str]:
        """(prefix, steps, answer, thinking) of one row, or RowError."""
        prompt = prompt_text(record["prompt"])
        kind = record.get("kind", "code") if self.task == "auto" else self.task
        try:
            trace = parse_trace(record["generation"], require_code=kind == "code")
        except TraceError as e:
            raise RowError(str(e)) from None
        field = self.think_field
        if field == "auto":
            field = "coarse_think" if record.get("coarse_think") is not None else "think"
        think = trace.think if field == "think" else record.get("coarse_think")
        if not isinstance(think, str):
            raise RowError(f"coarse_think must be str, not {type(think).__name__}")
        think = think.strip()
        steps = split_steps(think)
        if not steps:
            raise RowError(f"no steps in {field}")
        return prompt + PROMPT_SUFFIX, steps, trace.answer, think

    def process(self, rows: Sequence[Row]) -> list:
        """Output record or RowError for each row, in order."""
        from asap_fast.stage2.pruning import prune_steps, thinking_budget

        results: list = [None] * len(rows)
        prepared = {}
        for i, row in enumerate(rows):
            try:
                prefix, steps, answer, thinking = self._prepare(row.record)
                self.scorer.encode(prefix, steps)  # the context-length check, per row
            except (RowError, ValueError) as e:
                results[i] = e if isinstance(e, RowError) else RowError(str(e))
                continue
            prepared[i] = (prefix, steps, answer, thinking)
        tokenizer = self.scorer.tokenizer
        budgets = {i: thinking_budget(tokenizer, prepared[i][3], max_tokens=self.max_tokens, ratio=self.ratio)
                   for i in prepared}
        # Global mode scores every row in one batch; iterative mode scores the rows that fit here
        # (for step_surprisal) and the others inside its own loop.
        batched = [i for i in prepared if self.mode == "global" or budgets[i][0] <= budgets[i][1]]
        scores = dict(zip(batched, self.scorer.score_batch([prepared[i][:2] for i in batched])))
        for i, (prefix, steps, answer, thinking) in prepared.items():
            record = rows[i].record
            tokens_before, budget = budgets[i]
            if tokens_before <= budget:  # the reference's early exit: the thinking as it is
                kept, surprisal, pruned, tokens_after = list(range(len(steps))), scores[i], thinking, tokens_before
            else:
                if self.mode == "global":
                    kept, surprisal = prune_steps(steps, scores[i], tokenizer, max_tokens=budget), scores[i]
                else:
                    outcome = self.scorer.prune(prefix, steps, max_tokens=budget, mode="iterative",
                                                steps_per_round=self.steps_per_round)
                    kept, surprisal = outcome.kept, outcome.surprisal
                originals = step_source_texts(thinking)
                pruned = "\n\n".join(originals[k] for k in kept)
                tokens_after = len(tokenizer.encode(pruned))
            self.tokens_scored += tokens_before
            results[i] = {
                **record,
                "pruned_think": pruned,
                # inf (a step with nothing before it) is not JSON: written as null
                "step_surprisal": [s if math.isfinite(s) else None for s in surprisal],
                "kept_steps": list(kept),
                "tokens_before": tokens_before,
                "tokens_after": tokens_after,
                "messages": sft_messages(record["prompt"], pruned, answer),
            }
        return results


def add_stage2_options(p) -> None:
    """The scorer and pruning options shared by `asap fine` and `asap compress`."""
    g = p.add_argument_group("stage 2 (surprisal refining)")
    g.add_argument("--model", metavar="PATH",
                   help="causal LM that scores first tokens (local directory or hub id; the paper uses "
                        "DeepSeek-R1-Distill-Qwen-7B). Default: the small demo scorer bundled with the "
                        "package, when present")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, default=4096, metavar="N",
                        help="token budget of the pruned thinking (default: 4096, the paper's)")
    budget.add_argument("--ratio", type=float, metavar="R",
                        help="budget as a fraction of each trace's own tokens, int(R * tokens)")
    g.add_argument("--mode", choices=("global", "iterative"), default="global",
                   help="global: score once and drop the least surprising steps (the reference); "
                        "iterative: re-score the steps after each removal (default: global)")
    g.add_argument("--steps-per-round", type=int, default=1, metavar="K",
                   help="iterative mode: steps removed per re-scoring (1 = exact definition; more is "
                        "faster and approximate) (default: 1)")
    g.add_argument("--think-field", choices=THINK_FIELDS, default="auto",
                   help="what to prune: auto = coarse_think when a row has it, else the generation's "
                        "thinking (default: auto)")
    g.add_argument("--task", choices=("auto", "code", "math"), default="auto",
                   help="code rows need a ```python block after </think>; auto reads each row's 'kind' "
                        "(default: auto)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--batch-tokens", type=int, default=32768, metavar="N",
                   help="padded tokens per forward pass; several traces share a pass (default: 32768)")
    g.add_argument("--max-length", type=int, metavar="N",
                   help="longest trace in tokens; longer ones are rejected (default: the model's context)")


def load_scorer(args, stage: str):
    """The SurprisalScorer the options name, saying on stderr when the bundled one is used. The
    pruning options are checked first, so a bad one fails before a model is loaded."""
    import torch

    from asap_fast.stage2.pruning import check_budget
    from asap_fast.stage2.surprisal import SurprisalScorer

    check_budget(None if args.ratio is not None else args.budget, args.ratio)
    if args.steps_per_round < 1:
        raise ValueError(f"--steps-per-round must be >= 1, got {args.steps_per_round}")

    model = args.model
    if model is None:
        try:
            from asap_fast.scorers import DEFAULT_SCORER
        except ImportError:
            DEFAULT_SCORER = None
        if DEFAULT_SCORER is None:
            raise ValueError("no --model given and no bundled demo scorer in this installation")
        model = DEFAULT_SCORER
        if not args.quiet:
            print(f"asap {stage}: no --model given, using the bundled demo scorer {model}", file=sys.stderr)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return SurprisalScorer.from_pretrained(model, device=args.device, dtype=dtype,
                                               max_batch_tokens=args.batch_tokens, max_length=args.max_length)
    except OSError as e:  # not a model directory, or a hub id that cannot be fetched
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the model {model}: {first_line}") from None


def fine_stage(args, scorer) -> FineStage:
    return FineStage(scorer, max_tokens=args.budget, ratio=args.ratio, mode=args.mode,
                     steps_per_round=args.steps_per_round, think_field=args.think_field, task=args.task)


def add_fine(subparsers) -> None:
    from asap_fast.cli import PATH_HELP

    p = subparsers.add_parser(
        "fine",
        help="stage 2: drop the least surprising steps until each thinking fits the budget",
        description=(
            "Read IN (rows with 'prompt' and 'generation', and 'coarse_think' after `asap coarse`), "
            "score the first token of every step with a causal LM in one pass over prompt + "
            "'\\n<think>\\n' + the steps, and drop steps in ascending surprisal until the thinking "
            "fits the budget. Writes OUT with every input field plus pruned_think, step_surprisal "
            "(nats; null where nothing precedes a step), kept_steps, tokens_before, tokens_after and "
            "messages (the SFT conversation). Bad rows go to the rejects file with a reason; "
            "re-running with the same OUT resumes after the last committed row."
        ),
    )
    p.add_argument("input", metavar="IN", help=PATH_HELP)
    p.add_argument("output", metavar="OUT", help=PATH_HELP)
    add_stage2_options(p)
    p.add_argument("--batch", type=int, default=64, metavar="N", help="rows per scoring batch (default: 64)")
    p.add_argument("--commit-seconds", type=float, default=2.0, metavar="S",
                   help="commit output at most this often (default: 2)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    from asap_fast.pipeline.scale import add_scale_options

    add_scale_options(p)
    p.set_defaults(func=run_fine)


def _make_fine(args) -> FineStage:
    """A FineStage with its scorer loaded (in a Ray actor: picklable by reference)."""
    return fine_stage(args, load_scorer(args, "fine"))


def run_fine(args) -> int:
    from asap_fast.cli import report
    from asap_fast.pipeline.records import check_input
    from asap_fast.pipeline.scale import RayProcessor, count_rows, shard_plan

    check_input(args.input)
    rows, meta = shard_plan(args.input, getattr(args, "shard", None))
    batch = args.batch
    if getattr(args, "ray", False):
        if args.ray_chunk < 1:
            raise ValueError(f"--ray-chunk must be >= 1, got {args.ray_chunk}")
        stage = RayProcessor(_make_fine, args, actors=args.ray_actors, batch=args.batch, device=args.device)
        process, batch = stage, args.ray_chunk
    else:
        stage = _make_fine(args)
        process = stage.process
    # One cheap pass to count rows gives the progress line its ETA (the model dominates anyway).
    total = meta["input_rows"] if meta else (None if args.quiet else count_rows(args.input))
    summary = run_corpus(args.input, args.output, stage="fine", process=process, batch_size=batch,
                         commit_seconds=args.commit_seconds, quiet=args.quiet, required=("prompt", "generation"),
                         rows=rows, meta=meta, total_rows=total,
                         counters=lambda: {"trace tokens": stage.tokens_scored})
    report(summary, args)
    if not args.quiet and summary.seconds > 0:
        print(f"  {stage.tokens_scored / summary.seconds:,.0f} trace tokens/s scored", file=sys.stderr)
    return 0
