"""The stage-1 LLM options of `asap direct`, `asap coarse` and `asap compress`, and the backend
they describe."""

from __future__ import annotations

import argparse

from asap_fast.cli.common import non_negative_int, positive_int, report_complete


def add_backend_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--llm", required=required, metavar="KIND:MODEL",
                   help="the LLM: openai:MODEL (any OpenAI-compatible chat-completions API, e.g. "
                   "openai:deepseek-chat), vllm:PATH (local vLLM, offline) or hf:PATH (transformers generate)")
    g = p.add_argument_group("API backends (openai:)")
    g.add_argument("--api-base", metavar="URL",
                   help="base URL of the API, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI's)")
    g.add_argument("--api-key", metavar="KEY",
                   help="API key (default: $OPENAI_API_KEY; 'EMPTY' when --api-base is given without one)")
    g.add_argument("--concurrency", type=positive_int, default=16, metavar="N",
                   help="requests in flight at most (default: 16)")
    g.add_argument("--max-retries", type=int, default=5, metavar="N",
                   help="retries per request after the first try, on 429/408/409/5xx, timeouts, connection "
                   "errors and empty replies; exponential backoff with jitter, Retry-After honoured (default: 5)")
    g.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                   help="seconds one request may take before it is retried; a 16k-token reply can take many "
                   "minutes (default: 1800; connecting may take 30 s at most)")
    g.add_argument("--rate-limit", type=float, default=None, metavar="R",
                   help="request starts per second at most over the whole run, retries included (default: no limit)")
    g.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="delay before the first retry in seconds, doubled per retry up to 60 s (default: 1.0)")
    g.add_argument("--reject-failed", action="store_true",
                   help="when 429/5xx/timeouts outlast --max-retries, reject that row and go on (default: stop "
                   "the run with an error; re-running resumes without paying again for replies received)")
    g = p.add_argument_group("local backends (vllm:, hf:)")
    g.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for vllm.LLM (vllm:) or from_pretrained (hf:), VALUE parsed as JSON "
                   "when it is JSON; repeatable, e.g. --engine-arg tensor_parallel_size=2 --engine-arg dtype=bfloat16")
    g.add_argument("--gen-batch", type=positive_int, default=None, metavar="N",
                   help="conversations per generate call (default: 8 for hf:, all waiting requests for vllm:)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not keep OUT's reply cache (*.llm-cache.jsonl), the log of every reply received that a "
                   "resumed or repeated run replays instead of paying for the same request again")


def add_validation_options(g, *, max_attempts_flag: str = "--max-attempts") -> None:
    from asap_fast.core.matching import METRICS
    from asap_fast.stage1.stages import DEFAULT_MAX_ATTEMPTS

    g.add_argument("--threshold", type=float, default=0.6, metavar="F",
                   help="similarity a reply section needs with an original section to match (default: 0.6)")
    g.add_argument("--metric", choices=METRICS, default="difflib",
                   help="difflib = exactly difflib.SequenceMatcher.ratio, the reference's; indel = normalized LCS, "
                   "faster but a different function (default: difflib)")
    g.add_argument(max_attempts_flag, dest="max_attempts", type=non_negative_int, default=DEFAULT_MAX_ATTEMPTS,
                   metavar="N", help=f"re-requests after the first request while a reply does not validate; empty "
                   f"replies count (default: {DEFAULT_MAX_ATTEMPTS}, the reference's default; its released script "
                   f"passes 0: one request per row)")
    g.add_argument("--snap-to-original", action="store_true",
                   help="write each accepted section as the original section it matched, so the training text "
                   "keeps the original wording exactly")


def make_backend(args, output: str):
    """The backend the options name, with OUT's reply cache attached unless --no-cache."""
    from pathlib import Path

    from asap_fast.stage1.llm import make_backend as make
    from asap_fast.stage1.llm import parse_engine_args
    from asap_fast.stage1.stages import llm_cache_path

    backend = make(args.llm, api_base=args.api_base, api_key=args.api_key, concurrency=args.concurrency,
                   max_retries=args.max_retries, timeout=args.timeout, rate_limit=args.rate_limit,
                   backoff=args.backoff, batch_size=args.gen_batch, engine_args=parse_engine_args(args.engine_arg))
    if not args.no_cache:
        backend.attach_cache(llm_cache_path(Path(output)))
    return backend


def default_batch(args, backend) -> int:
    """Rows per corpus batch: their requests run together and are committed together."""
    if args.batch:
        return args.batch
    if backend.kind == "openai":
        return max(64, 4 * args.concurrency)
    if backend.kind == "hf":
        return 4 * (args.gen_batch or 8)
    return 1024


def backend_manifest(args) -> dict:
    """What about the LLM determines the output: which model, served how (not where or how fast)."""
    return {"llm": args.llm, "engine_args": sorted(args.engine_arg)}


def add_decoding_options(p: argparse.ArgumentParser, defaults, *, coarse: bool) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--temperature", type=float, default=defaults.temperature, metavar="T",
                   help=f"sampling temperature; 0 is greedy (default: {defaults.temperature:g}, the paper's"
                   + ("; the reference script passes 2.0)" if coarse else ")"))
    g.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P",
                   help=f"nucleus sampling mass (default: {defaults.top_p:g})")
    g.add_argument("--max-tokens", type=positive_int, default=defaults.max_tokens, metavar="N",
                   help=f"completion tokens per request at most (default: {defaults.max_tokens})")
    g.add_argument("--seed", type=int, default=None, metavar="N",
                   help="sampling seed passed to the backend (default: none)")


def sampling(args, temperature: float | None = None):
    from asap_fast.stage1.llm import SamplingParams

    return SamplingParams(temperature=args.temperature if temperature is None else temperature, top_p=args.top_p,
                          max_tokens=args.max_tokens, seed=args.seed)


def run_llm_stage(args, name: str, make_stage, required: tuple[str, ...], manifest: dict) -> int:
    """Run a stage-1 stage (``make_stage(backend)``) over the corpus. A mismatched resume is refused
    before the backend starts; an LLM that cannot serve ends the run with one line (rows finished
    before it are kept, and their replies are in the cache)."""
    import sys

    from asap_fast.cli.common import print_summary, run_options
    from asap_fast.pipeline.engine import check_resumable, run_corpus
    from asap_fast.stage1.llm import LLMError

    manifest = {**backend_manifest(args), **manifest}
    done = check_resumable(args.input, args.output, stage=name, manifest_options=manifest, overwrite=args.overwrite)
    if done is not None:  # no backend is started for a finished run
        report_complete(name, args.output, done)
        return 0
    backend = make_backend(args, args.output)
    stage = make_stage(backend)
    try:
        summary = run_corpus(args.input, args.output, stage=stage.name, process=stage.process,
                             options=run_options(args, default_batch(args, backend)),
                             manifest_options=manifest, required=required)
    except LLMError as e:
        print(f"asap {stage.name}: error: {e}", file=sys.stderr)
        if not args.quiet:
            print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
            print("  rows finished before the error are kept; re-run the same command to resume", file=sys.stderr)
        return 1
    finally:
        backend.close()
    print_summary(summary, args.quiet)
    if not args.quiet:
        attempts, failed = getattr(stage, "attempts", None), getattr(stage, "failed", 0)
        if attempts or failed:
            histogram = ", ".join(f"{n} after {k}" for k, n in sorted(attempts.items()))
            print(f"  rows accepted by attempts needed: {histogram or 'none'}; rows with no valid compression: "
                  f"{failed}", file=sys.stderr)
        print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
    return 0


def template_manifest(path: str | None) -> str | None:
    """A custom template by content (its bytes are what reach the LLM)."""
    if path is None:
        return None
    from pathlib import Path

    return Path(path).read_text(encoding="utf-8")
