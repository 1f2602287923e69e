"""``asap compress`` (stages 1a + 1b + 2 in one run)."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import asdict

from asap_fast.cli.common import (
    add_io,
    add_ray_options,
    add_run_options,
    add_shard_option,
    add_stage2_options,
    positive_int,
    print_summary,
    prune_config,
    ray_process,
    report_complete,
    run_options,
    scorer_spec,
    subparser,
)
from asap_fast.cli.llm_options import (
    add_backend_options,
    add_validation_options,
    backend_manifest,
    make_backend,
)


def add(subparsers) -> None:
    from asap_fast.stage1.prompts import PROMPT_CHOICES
    from asap_fast.stage1.stages import COARSE_PARAMS, DIRECT_PARAMS

    p = subparser(
        subparsers, "compress",
        help="stages 1a + 1b + 2 in one run (anchor, coarse LLM pruning, surprisal refining), or a baseline "
             "method (--method)",
        description=(
            "Read IN (rows with 'prompt' and 'generation'); for each batch write the direct thought (1a), "
            "compress the thinking with the LLM anchored on it and validate the reply with align_steps (1b), "
            "then drop the least surprising steps of the coarse thinking until it fits the budget (2). Writes "
            "OUT with every input field plus the fields of `asap direct`, `asap coarse` and `asap fine`. A row "
            "rejected by any stage goes to the rejects file with that stage's name. --skip-coarse runs stage 2 "
            "alone on the original thinking (the paper's 'without coarse pruning' ablation; no LLM needed). "
            "Re-running with the same OUT and options resumes; LLM replies already received are replayed from "
            "OUT's reply cache. --method spirit | selective-context | llmlingua2 | tokenskip runs one of the "
            "paper's baselines instead (no LLM), with the same output fields plus 'method'; `asap report A B ... "
            "OUT.html` compares the outputs of several methods."
        ),
        example=("asap compress traces.jsonl out/asap.jsonl --llm openai:deepseek-chat --api-base http://localhost:8000/v1\n"
                 "asap compress traces.jsonl out/spirit.jsonl --method spirit --ratio 0.5 "
                 "--model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    )
    add_io(p)
    p.add_argument("--skip-coarse", action="store_true",
                   help="skip stage 1 (no LLM): prune the generation's original thinking with stage 2 only")
    add_backend_options(p, required=False)
    g = p.add_argument_group("stage 1 decoding, prompts and validation")
    g.add_argument("--direct-temperature", type=float, default=DIRECT_PARAMS.temperature, metavar="T",
                   help=f"stage 1a temperature (default: {DIRECT_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--coarse-temperature", type=float, default=COARSE_PARAMS.temperature, metavar="T",
                   help=f"stage 1b temperature (default: {COARSE_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default: 1)")
    g.add_argument("--max-tokens", type=positive_int, default=DIRECT_PARAMS.max_tokens, metavar="N",
                   help=f"completion tokens per request at most (default: {DIRECT_PARAMS.max_tokens})")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed passed to the backend")
    g.add_argument("--prompt", choices=PROMPT_CHOICES, default="auto",
                   help="stage 1a prompt: code, math, or auto = each row's 'kind' (default: auto)")
    g.add_argument("--direct-template", metavar="FILE", help="custom stage 1a template ({question}, {answer_code}/{answer})")
    g.add_argument("--coarse-template", metavar="FILE", help="custom stage 1b template ({anchor}, {think})")
    add_validation_options(g)
    add_stage2_options(p)
    add_method_options(p)
    # --budget's default depends on the method (asap: 4096; the baselines: --ratio 0.5), so it is
    # resolved in run(); None here means "not given"
    p.set_defaults(budget=None)
    r = add_run_options(p, batch=64, batch_help="rows per batch through all three stages (default: 64)")
    add_shard_option(r)
    add_ray_options(r)  # stage 2 alone (--skip-coarse) and the baselines: stage 1 waits on an LLM, not a GPU
    p.set_defaults(func=run)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {text!r}") from None


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.split(",") if w)


def add_method_options(p) -> None:
    from asap_fast.methods import METHODS
    from asap_fast.methods.llmlingua2 import DEFAULT_MODEL, TOKEN_TO_WORD
    from asap_fast.methods.selective_context import UNITS
    from asap_fast.methods.tokenskip import RATIOS, SEPARATOR

    g = p.add_argument_group(
        "method (the paper's baselines: README 'Methods')",
        "--method other than asap runs no LLM: it compresses the thinking (coarse_think when the row has "
        "it, see --think-field) with one of the paper's baselines and writes the same fields plus 'method'. "
        "Without --budget or --ratio the baselines keep half of each thinking (--ratio 0.5, SPIRIT's "
        "setting in the paper); asap keeps its --budget 4096. Tokens are counted with --model's tokenizer "
        "for every method.")
    g.add_argument("--method", choices=METHODS, default="asap",
                   help="asap: stages 1a + 1b + 2 (default); spirit: drop the steps whose removal raises the "
                        "perplexity of the rest least; selective-context: drop the units of lowest "
                        "self-information; llmlingua2: drop the words an LLMLingua-2 classifier drops; "
                        "tokenskip: llmlingua2 at a ratio drawn per row, written into the SFT prompt")
    g.add_argument("--unit", choices=UNITS, default=None,
                   help="selective-context: lexical unit (default: token; phrase needs spaCy and --spacy-model)")
    g.add_argument("--spacy-model", default=None, metavar="NAME",
                   help="selective-context --unit phrase: the spaCy pipeline (default: en_core_web_sm)")
    g.add_argument("--lingua-model", default=None, metavar="PATH",
                   help=f"llmlingua2 / tokenskip: the LLMLingua-2 token classifier, a directory or hub id whose "
                        f"name contains xlm-roberta-large or bert-base-multilingual-cased (default: {DEFAULT_MODEL})")
    g.add_argument("--force-tokens", type=_word_list, default=None, metavar="W,W",
                   help="llmlingua2 / tokenskip: words always kept (TokenSkip's LLaMA-3 recipe: Step,:)")
    g.add_argument("--force-reserve-digit", action="store_true", default=None,
                   help="llmlingua2 / tokenskip: always keep words with a digit")
    g.add_argument("--drop-consecutive", action="store_true", default=None,
                   help="llmlingua2 / tokenskip: drop a force token repeated with nothing kept between")
    g.add_argument("--token-to-word", choices=TOKEN_TO_WORD, default=None,
                   help="llmlingua2 / tokenskip: a word's keep probability from its tokens' (default: mean)")
    g.add_argument("--tokenskip-ratios", type=_float_list, default=None, metavar="R,R",
                   help="tokenskip: the ratios drawn per row, 1.0 = the original thinking (default: "
                        + ",".join(f"{r:g}" for r in RATIOS) + ")")
    g.add_argument("--tokenskip-seed", type=int, default=None, metavar="N",
                   help="tokenskip: seed of the per-row draw (default: 42)")
    g.add_argument("--tokenskip-separator", default=None, metavar="S",
                   help=f"tokenskip: written around the ratio after the question (default: {SEPARATOR})")


# the options each baseline takes (besides the shared stage-2 ones)
_METHOD_OPTIONS = {
    "asap": (),
    "spirit": (),
    "selective-context": ("unit", "spacy_model"),
    "llmlingua2": ("lingua_model", "force_tokens", "force_reserve_digit", "drop_consecutive", "token_to_word"),
    "tokenskip": ("lingua_model", "force_tokens", "force_reserve_digit", "drop_consecutive", "token_to_word",
                  "tokenskip_ratios", "tokenskip_seed", "tokenskip_separator"),
}


def method_config(args):
    """The method's typed config from the options (None for asap), refusing options of another method."""
    given = [name for names in _METHOD_OPTIONS.values() for name in names
             if getattr(args, name) is not None and name not in _METHOD_OPTIONS[args.method]]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} does not apply to --method {args.method}")
    if args.method == "asap":
        return None
    if args.llm:
        raise ValueError(f"--llm runs stage 1, which only --method asap has; --method {args.method} needs no LLM")
    if args.mode != "global" or args.steps_per_round != 1:
        raise ValueError("--mode and --steps-per-round are options of --method asap")
    if args.method == "tokenskip" and (args.budget is not None or args.ratio is not None):
        raise ValueError("tokenskip draws its ratio per row from --tokenskip-ratios; --budget and --ratio do not apply")
    # one builder, with the defaults, for the CLI and asap_fast.Compressor
    from asap_fast.pipeline.compressor import method_config as build_method_config

    options = {name: getattr(args, name) for name in _METHOD_OPTIONS[args.method]}
    return build_method_config(args.method, budget=args.budget, ratio=args.ratio, think_field=args.think_field,
                               task=args.task, **options)


def run_method(args, config) -> int:
    """A baseline (--method other than asap) over the corpus, on the run engine."""
    from asap_fast.core.fingerprint import model_identity
    from asap_fast.methods import load_stage
    from asap_fast.methods.llmlingua2 import LLMLingua2Config
    from asap_fast.methods.tokenskip import TokenSkipConfig
    from asap_fast.pipeline.engine import check_resumable, run_corpus
    from asap_fast.pipeline.shards import shard_plan

    spec = scorer_spec(args)
    if isinstance(config, (LLMLingua2Config, TokenSkipConfig)):
        counting = {"tokenizer": model_identity(spec.model_path())}  # only its tokenizer is used
    else:
        counting = {"scorer": spec.manifest()}
    manifest = {"method": args.method, **counting, args.method: config.manifest()}
    rows, meta = shard_plan(args.input, args.shard)
    done = check_resumable(args.input, args.output, stage="compress", manifest_options=manifest, shard=args.shard,
                           overwrite=args.overwrite)  # before the scorer loads
    if done is not None:
        report_complete("compress", args.output, done)
        return 0
    process, batch = ray_process(args, functools.partial(load_stage, config, spec, device=args.device,
                                                         quiet=args.quiet))
    summary = run_corpus(args.input, args.output, stage="compress", process=process,
                         options=run_options(args, batch), manifest_options=manifest,
                         required=("prompt", "generation"), rows=rows, shard=args.shard, meta=meta)
    print_summary(summary, args.quiet)
    return 0


def run(args) -> int:
    from asap_fast.cli.llm_options import template_manifest
    from asap_fast.pipeline.compress import CompressStage, make_skip_coarse_stage
    from asap_fast.pipeline.engine import check_resumable, run_corpus
    from asap_fast.pipeline.records import check_input
    from asap_fast.pipeline.shards import shard_plan
    from asap_fast.stage1.llm import LLMError, SamplingParams
    from asap_fast.stage1.prompts import load_template
    from asap_fast.stage1.stages import CoarseStage, DirectStage
    from asap_fast.stage2.fine import FineStage

    check_input(args.input)
    config = method_config(args)
    if config is not None:
        if args.skip_coarse:
            raise ValueError("--skip-coarse is an option of --method asap (the baselines never run stage 1)")
        return run_method(args, config)
    if args.budget is None and args.ratio is None:
        args.budget = 4096
    if not args.skip_coarse and not args.llm:
        raise ValueError("--llm is required (or --skip-coarse to run stage 2 alone)")
    if args.ray and not args.skip_coarse:
        raise ValueError("--ray runs stage 2 alone (--skip-coarse) or a baseline (--method); stage 1 is bound "
                         "by the LLM backend's throughput (raise --concurrency instead)")
    # the ablation prunes the original thinking, whatever the row holds
    config = prune_config(args, think_field="think" if args.skip_coarse else None)
    spec = scorer_spec(args)
    rows, meta = shard_plan(args.input, args.shard)
    manifest = {"method": "asap", "skip_coarse": args.skip_coarse}
    backend = direct = coarse = None
    if not args.skip_coarse:
        if not 0.0 <= args.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
        direct_template = load_template(args.direct_template, "direct") if args.direct_template else None
        coarse_template = load_template(args.coarse_template, "coarse") if args.coarse_template else None
        common = dict(top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
        direct_params = SamplingParams(temperature=args.direct_temperature, **common)
        coarse_params = SamplingParams(temperature=args.coarse_temperature, **common)
        manifest.update(backend_manifest(args), direct_sampling=asdict(direct_params),
                        coarse_sampling=asdict(coarse_params), prompt=args.prompt,
                        direct_template=template_manifest(args.direct_template),
                        coarse_template=template_manifest(args.coarse_template), threshold=args.threshold,
                        metric=args.metric, max_attempts=args.max_attempts, snap_to_original=args.snap_to_original)
    manifest.update(scorer=spec.manifest(), prune=config.manifest())
    done = check_resumable(args.input, args.output, stage="compress", manifest_options=manifest, shard=args.shard,
                           overwrite=args.overwrite)  # before the LLM and the scorer load
    if done is not None:
        report_complete("compress", args.output, done)
        return 0
    if not args.skip_coarse:
        backend = make_backend(args, args.output)
        direct = DirectStage(backend, direct_params, direct_template, args.reject_failed, prompt=args.prompt)
        coarse = CoarseStage(backend, coarse_params, coarse_template, args.reject_failed, threshold=args.threshold,
                             metric=args.metric, max_attempts=args.max_attempts, snap=args.snap_to_original)
    try:
        if args.skip_coarse:
            process, batch = ray_process(args, functools.partial(make_skip_coarse_stage, spec, config, args.quiet))
        else:
            fine = FineStage(spec.load(quiet=args.quiet, stage="compress"), config)
            process, batch = CompressStage(fine, direct, coarse, method="asap").process, args.batch
        summary = run_corpus(args.input, args.output, stage="compress", process=process,
                             options=run_options(args, batch), manifest_options=manifest,
                             required=("prompt", "generation"), rows=rows, shard=args.shard, meta=meta)
    except LLMError as e:
        print(f"asap compress: error: {e}", file=sys.stderr)
        if not args.quiet:
            print("  rows finished before the error are kept; re-run the same command to resume", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
    print_summary(summary, args.quiet)
    if not args.quiet and backend is not None:
        print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
    return 0
