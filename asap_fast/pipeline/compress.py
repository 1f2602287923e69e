"""`asap compress`: stages 1a + 1b + 2 in one resumable run.

Per corpus batch: DirectStage (the anchor) -> CoarseStage (LLM compression, validated by
align_steps) -> FineStage (first-token surprisal pruning of ``coarse_think``). A row rejected by
any stage goes to the rejects file with that stage's name (``direct``, ``coarse``, ``fine``; rows
that cannot be read at all: ``compress``). ``--skip-coarse`` is the paper's "without coarse
pruning" ablation: no LLM is used, and stage 2 prunes the generation's original thinking.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asap_fast.pipeline.engine import RowError, run_corpus
from asap_fast.pipeline.records import Row, check_input
from asap_fast.stage2.fine import FineStage, add_stage2_options, load_scorer

__all__ = ["CompressStage", "add_compress"]


def _tag(result, stage: str):
    if isinstance(result, RowError) and result.stage is None:
        result.stage = stage
    return result


class CompressStage:
    """``process(rows)`` for run_corpus: direct -> coarse -> fine on each batch (direct/coarse None
    with --skip-coarse)."""

    def __init__(self, fine: FineStage, direct=None, coarse=None):
        if (direct is None) != (coarse is None):
            raise ValueError("give both stage-1 stages or neither")
        self.fine, self.direct, self.coarse = fine, direct, coarse

    def process(self, rows) -> list:
        results: list = [None] * len(rows)
        current = list(range(len(rows)))
        records = {i: rows[i].record for i in current}
        for stage in (self.direct, self.coarse):
            if stage is None:
                continue
            outs = stage.process([records[i] for i in current])
            kept = []
            for i, out in zip(current, outs):
                if isinstance(out, RowError):
                    results[i] = _tag(out, stage.name)
                else:
                    records[i] = out
                    kept.append(i)
            current = kept
        outs = self.fine.process([Row(rows[i].line, records[i], unit=rows[i].unit) for i in current]) if current else []
        for i, out in zip(current, outs):
            results[i] = _tag(out, "fine")
        return results


def add_compress(subparsers) -> None:
    from asap_fast.cli import PATH_HELP
    from asap_fast.stage1.llm import SamplingParams  # noqa: F401  (the stage-1 defaults below come from stage1)
    from asap_fast.core.matching import METRICS
    from asap_fast.stage1.prompts import PROMPT_CHOICES
    from asap_fast.pipeline.scale import add_shard_option
    from asap_fast.stage1.stages import COARSE_PARAMS, DIRECT_PARAMS, _positive_int

    p = subparsers.add_parser(
        "compress",
        help="stages 1a + 1b + 2 in one run: anchor, coarse LLM pruning, surprisal refining",
        description=(
            "Read IN (rows with 'prompt' and 'generation'); for each batch write the direct thought (1a), "
            "compress the thinking with the LLM anchored on it and validate the reply with align_steps (1b), "
            "then drop the least surprising steps of the coarse thinking until it fits the budget (2). Writes "
            "OUT with every input field plus the fields of `asap direct`, `asap coarse` and `asap fine`. A row "
            "rejected by any stage goes to the rejects file with that stage's name. --skip-coarse runs stage 2 "
            "alone on the original thinking (the paper's 'without coarse pruning' ablation; no LLM needed). "
            "Re-running with the same OUT resumes; LLM replies already received are replayed from "
            "OUT.llm-cache.jsonl."
        ),
    )
    p.add_argument("input", metavar="IN", help=PATH_HELP)
    p.add_argument("output", metavar="OUT", help=PATH_HELP)
    p.add_argument("--skip-coarse", action="store_true",
                   help="skip stage 1 (no LLM): prune the generation's original thinking with stage 2 only")
    g = p.add_argument_group("stage 1 LLM")
    g.add_argument("--llm", metavar="KIND:MODEL",
                   help="the LLM of stages 1a and 1b (required unless --skip-coarse): openai:MODEL, vllm:PATH or hf:PATH")
    g.add_argument("--api-base", metavar="URL", help="base URL of an OpenAI-compatible API (default: $OPENAI_BASE_URL)")
    g.add_argument("--api-key", metavar="KEY", help="API key (default: $OPENAI_API_KEY)")
    g.add_argument("--concurrency", type=_positive_int, default=16, metavar="N", help="requests in flight at most (default: 16)")
    g.add_argument("--max-retries", type=int, default=5, metavar="N", help="retries per request (default: 5)")
    g.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="seconds per request (default: 1800)")
    g.add_argument("--rate-limit", type=float, default=None, metavar="R", help="request starts per second at most")
    g.add_argument("--backoff", type=float, default=1.0, metavar="S", help="first retry delay in seconds (default: 1.0)")
    g.add_argument("--reject-failed", action="store_true",
                   help="reject a row whose requests outlast --max-retries instead of stopping the run")
    g.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for vllm.LLM / from_pretrained (vllm:, hf:); repeatable")
    g.add_argument("--gen-batch", type=_positive_int, default=None, metavar="N",
                   help="conversations per generate call (local backends)")
    g.add_argument("--direct-temperature", type=float, default=DIRECT_PARAMS.temperature, metavar="T",
                   help=f"stage 1a temperature (default: {DIRECT_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--coarse-temperature", type=float, default=COARSE_PARAMS.temperature, metavar="T",
                   help=f"stage 1b temperature (default: {COARSE_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default: 1)")
    g.add_argument("--max-tokens", type=_positive_int, default=DIRECT_PARAMS.max_tokens, metavar="N",
                   help=f"completion tokens per request at most (default: {DIRECT_PARAMS.max_tokens})")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed passed to the backend")
    g.add_argument("--prompt", choices=PROMPT_CHOICES, default="auto",
                   help="stage 1a prompt: code, math, or auto = each row's 'kind' (default: auto)")
    g.add_argument("--direct-template", metavar="FILE", help="custom stage 1a template ({question}, {answer_code}/{answer})")
    g.add_argument("--coarse-template", metavar="FILE", help="custom stage 1b template ({anchor}, {think})")
    g.add_argument("--threshold", type=float, default=0.6, metavar="F",
                   help="similarity a reply section needs with an original section (default: 0.6)")
    g.add_argument("--metric", choices=METRICS, default="difflib", help="section similarity (default: difflib)")
    g.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N",
                   help="stage 1b requests per row until a reply validates (default: 3)")
    g.add_argument("--snap-to-original", action="store_true",
                   help="keep each accepted section in the original section's exact wording")
    g.add_argument("--no-cache", action="store_true", help="do not keep OUT.llm-cache.jsonl")
    add_stage2_options(p)
    r = p.add_argument_group("run")
    r.add_argument("--batch", type=_positive_int, default=64, metavar="N",
                   help="rows per batch through all three stages (default: 64)")
    r.add_argument("--commit-seconds", type=float, default=2.0, metavar="S",
                   help="commit output at most this often (default: 2)")
    add_shard_option(r)
    r.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run_compress)


def run_compress(args) -> int:
    from asap_fast.cli import report
    from asap_fast.stage1.llm import LLMError, SamplingParams, make_backend, parse_engine_args
    from asap_fast.stage1.prompts import load_template
    from asap_fast.pipeline.scale import shard_plan
    from asap_fast.stage1.stages import CoarseStage, DirectStage, llm_cache_path
    from asap_fast.stage2.fine import fine_stage

    check_input(args.input)
    if not args.skip_coarse and not args.llm:
        raise ValueError("--llm is required (or --skip-coarse to run stage 2 alone)")
    if args.skip_coarse:
        args.think_field = "think"  # the ablation prunes the original thinking, whatever the row holds
    rows, meta = shard_plan(args.input, args.shard)
    backend = direct = coarse = None
    if not args.skip_coarse:
        if not 0.0 <= args.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
        direct_template = load_template(args.direct_template, "direct") if args.direct_template else None
        coarse_template = load_template(args.coarse_template, "coarse") if args.coarse_template else None
        try:
            backend = make_backend(args.llm, api_base=args.api_base, api_key=args.api_key, concurrency=args.concurrency,
                                   max_retries=args.max_retries, timeout=args.timeout, rate_limit=args.rate_limit,
                                   backoff=args.backoff, batch_size=args.gen_batch,
                                   engine_args=parse_engine_args(args.engine_arg))
        except LLMError as e:
            print(f"asap compress: error: {e}", file=sys.stderr)
            return 1
        common = dict(top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
        direct = DirectStage(backend, SamplingParams(temperature=args.direct_temperature, **common), direct_template,
                             args.reject_failed, prompt=args.prompt)
        coarse = CoarseStage(backend, SamplingParams(temperature=args.coarse_temperature, **common), coarse_template,
                             args.reject_failed, threshold=args.threshold, metric=args.metric,
                             max_attempts=args.max_attempts, snap=args.snap_to_original)
        if not args.no_cache:
            backend.attach_cache(llm_cache_path(Path(args.output)))
    try:
        fine = fine_stage(args, load_scorer(args, "compress"))
        stage = CompressStage(fine, direct, coarse)
        summary = run_corpus(args.input, args.output, stage="compress", process=stage.process, batch_size=args.batch,
                             commit_seconds=args.commit_seconds, quiet=args.quiet,
                             required=("prompt", "generation"), rows=rows, meta=meta)
    except LLMError as e:
        print(f"asap compress: error: {e}", file=sys.stderr)
        if not args.quiet:
            print("  rows finished before the error are kept; re-run the same command to resume", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
    report(summary, args)
    if not args.quiet:
        if backend is not None:
            print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
        if summary.seconds > 0:
            print(f"  {fine.tokens_scored / summary.seconds:,.0f} trace tokens/s scored", file=sys.stderr)
    return 0
