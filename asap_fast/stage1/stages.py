"""ASAP stage 1: direct-thought anchors (1a) and anchor-guided coarse pruning (1b), over a corpus.

    1a  direct_thought = LLM(direct prompt(question, known answer))            temperature 0.0
    1b  candidate      = strip_fences(LLM(coarse prompt(anchor, think)))        temperature 1.0
        coarse_alignment = align_steps(think, candidate, threshold, metric)     (C++; None = reject)
        one request, then up to max_attempts re-requests while the reply does not align; the
        first candidate that aligns is coarse_think

Each row is one coroutine; all rows of a corpus batch run at once on the backend's event loop, so
an API backend keeps up to ``concurrency`` requests in flight and a local backend batches the
requests that wait together. Rows that cannot be processed become RowErrors (rejects); a backend
that cannot serve at all stops the run with a one-line error, and re-running resumes (the corpus
runner skips committed rows, the reply cache beside OUT replays every reply already received).

Deliberate difference from the reference: fences are stripped only as a wrapper. A leading ``` line
(with an optional language tag) is removed, and a trailing ``` only when a leading one was, or when
the reply's fences are unbalanced; the reference strips a trailing ``` unconditionally, which cuts
the closing fence of a thinking that ends in a code block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.pipeline.engine import RowError, run_corpus
from asap_fast.stage1.llm import (
    Aborted,
    Backend,
    EmptyReplyError,
    LLMError,
    RequestError,
    SamplingParams,
    TransientError,
    make_backend,
    parse_engine_args,
)
from asap_fast.core.matching import METRICS, align_steps, similarity
from asap_fast.stage1.prompts import (
    PROMPT_CHOICES,
    PromptTemplate,
    coarse_template,
    direct_answer,
    direct_template,
    load_template,
    question_text,
    row_kind,
)
from asap_fast.pipeline.records import Row, check_input
from asap_fast.core.traces import TraceError, parse_trace

__all__ = [
    "COARSE_PARAMS",
    "DEFAULT_MAX_ATTEMPTS",
    "DIRECT_PARAMS",
    "CoarseStage",
    "DirectStage",
    "add_coarse",
    "add_direct",
    "explain_rejection",
    "llm_cache_path",
    "original_sections",
    "snap_to_original",
    "strip_fences",
]

# Re-requests after the first request of stage 1b (the reference's argparse default; its
# released script passes 0, one request per row).
DEFAULT_MAX_ATTEMPTS = 5

# The paper's decoding settings (the released coarse script passes temperature 2.0).
DIRECT_PARAMS = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16384)
COARSE_PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16384)

# Info strings a model puts on the fence it wraps a plain-text reply in; any other word after the
# opening ``` is taken as the reply's first word.
_OPENING_FENCE = re.compile(r"```(?:(?:text|txt|plain|plaintext|markdown|md)?[ \t]*(?:\n|$))?", re.IGNORECASE)


def strip_fences(reply: str) -> str:
    """The reply without the ``` fence wrapped around it, stripped (see the module docstring)."""
    text = reply.strip()
    opened = _OPENING_FENCE.match(text)
    if opened:
        text = text[opened.end() :]
    if text.rstrip().endswith("```") and (opened or text.count("```") % 2 == 1):
        text = text.rstrip()[:-3]
    return text.strip()


def original_sections(think: str) -> list[str]:
    """The sections ``align_steps`` matches against: ``re.split(r"\\n\\n", think.strip())``, each
    stripped, empties kept (the indices of ``coarse_alignment`` point into this list)."""
    return [section.strip() for section in re.split(r"\n\n", think.strip())]


def snap_to_original(think: str, alignment: Sequence[int]) -> str:
    """The matched original sections, joined by blank lines: the accepted compression in the
    original's exact wording."""
    sections = original_sections(think)
    return "\n\n".join(sections[i] for i in alignment)


def explain_rejection(original: str, compressed: str, threshold: float = 0.6, metric: str = "difflib") -> str:
    """Why ``align_steps(original, compressed)`` is None, in one line: the first compressed section
    that found no match among the original sections left, and its best score there."""
    originals = original_sections(original)
    sections = original_sections(compressed)
    next_original = 0
    for index, section in enumerate(sections):
        best = None
        while next_original < len(originals):
            score = similarity(originals[next_original], section, metric)
            next_original += 1
            if score >= threshold:
                break
            best = score if best is None else max(best, score)
        else:
            detail = (f"best {metric} ratio {best:.2f} < {threshold:g}" if best is not None
                      else "no original section was left")
            return f"section {index + 1} of {len(sections)} matched no original section ({detail})"
    return "rejected by align_steps"


def llm_cache_path(out: str | Path) -> Path:
    """The reply cache beside OUT: ``a.jsonl`` / ``a.jsonl.gz`` / ``a.parquet`` -> ``a.llm-cache.jsonl``;
    a datasets directory ``d`` -> ``d.llm-cache.jsonl`` (outside it, so a rewrite of the directory
    cannot take the cache with it)."""
    out = Path(out)
    name = out.name.rstrip("/")
    for suffix in (".jsonl.gz", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(name + ".llm-cache.jsonl")


# --------------------------------------------------------------------------------------------------
# Stages


@dataclass
class _Stage:
    backend: Backend
    params: SamplingParams
    template: PromptTemplate | None = None
    reject_failed: bool = False

    name = "?"

    async def arow(self, record: dict) -> dict:
        raise NotImplementedError

    async def _guarded(self, record: dict):
        try:
            return await self.arow(record)
        except RowError as e:
            return e
        except RequestError as e:
            return RowError(str(e))
        except TransientError as e:
            if self.reject_failed:
                return RowError(str(e))
            self.backend.abort(str(e))
            raise
        except Aborted:
            raise
        except LLMError as e:
            self.backend.abort(str(e))
            raise

    async def aprocess(self, records: Sequence[dict]) -> list:
        return await asyncio.gather(*(self._guarded(r) for r in records), return_exceptions=True)

    def process(self, rows: Sequence[Row | dict]) -> list[dict | RowError]:
        """One output record or RowError per row, in order (a ``run_corpus`` process function).

        Raises the first fatal LLMError (unreachable backend, retries exhausted without
        ``reject_failed``) once every row's in-flight request has ended, so replies already
        paid for are in the cache.
        """
        records = [row.record if isinstance(row, Row) else row for row in rows]
        results = self.backend.run(self.aprocess(records))
        fatal = [r for r in results if isinstance(r, BaseException) and not isinstance(r, RowError)]
        if fatal:
            raise next((e for e in fatal if not isinstance(e, Aborted)), fatal[0])
        return results


@dataclass
class DirectStage(_Stage):
    """Stage 1a: ``direct_thought`` from the question and the known answer.

    prompt: "auto" (each row's ``kind``, code when absent), "code" or "math" selects the paper's
    template; ``template`` overrides it for every row ({answer_code} and {answer} both stand for
    the row's answer: its code for code rows, its final answer for math rows).
    """

    params: SamplingParams = DIRECT_PARAMS
    prompt: str = "auto"

    name = "direct"

    def messages(self, record: dict) -> list[dict]:
        try:
            kind = row_kind(record, self.prompt)
            question = question_text(record)
            answer = direct_answer(record, kind)
        except (ValueError, TraceError) as e:
            raise RowError(str(e)) from None
        template = self.template or direct_template(kind)
        content = template.render(question=question, answer_code=answer, answer=answer)
        return [{"role": "user", "content": content}]

    async def arow(self, record: dict) -> dict:
        reply = await self.backend.acomplete(self.messages(record), self.params)
        thought = reply.text.strip()
        if not thought:
            raise RowError("empty reply")
        return {**record, "direct_thought": thought}


@dataclass
class CoarseStage(_Stage):
    """Stage 1b: the thinking compressed by the LLM, guided by the row's ``direct_thought``.

    A reply is accepted when ``align_steps(think, strip_fences(reply), threshold, metric)`` is not
    None. As the reference: one request, then the same prompt is re-requested while the reply does
    not validate and fewer than ``max_attempts`` re-requests were made (``max_attempts=0``: one
    request). An empty reply is a failed request too; the reference re-requests it without limit.
    ``snap`` replaces each accepted section by the original section it matched. Adds
    ``coarse_think``, ``coarse_alignment``, ``coarse_attempts`` (the requests made).
    """

    params: SamplingParams = COARSE_PARAMS
    threshold: float = 0.6
    metric: str = "difflib"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    snap: bool = False
    attempts: Counter = field(default_factory=Counter)  # accepted rows by attempts needed
    failed: int = 0  # rows with no valid compression

    name = "coarse"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 0:
            raise ValueError(f"max_attempts (re-requests after the first) must be an int >= 0, got {self.max_attempts!r}")

    def messages(self, record: dict) -> tuple[list[dict], str]:
        anchor = record.get("direct_thought")
        if anchor is None:
            raise RowError("no direct_thought (run `asap direct` on the corpus first)")
        if not isinstance(anchor, str) or not anchor.strip():
            raise RowError("empty direct_thought: nothing to anchor on")
        try:
            think = parse_trace(record["generation"], require_code=False).think
        except TraceError as e:
            raise RowError(str(e)) from None
        if not think:  # the reference would ask to compress nothing (README, fidelity ledger)
            raise RowError("empty thinking between <think> and </think>: nothing to compress")
        template = self.template or coarse_template()
        return [{"role": "user", "content": template.render(anchor=anchor.strip(), think=think)}], think

    async def arow(self, record: dict) -> dict:
        messages, think = self.messages(record)
        reason = "no reply"
        for attempt in range(1, self.max_attempts + 2):  # the first request, then the re-requests
            try:
                reply = await self.backend.acomplete(messages, self.params, attempt=attempt)
            except EmptyReplyError:
                reason = "empty reply"
                continue
            candidate = strip_fences(reply.text)
            if not candidate:
                reason = "empty reply"
                continue
            alignment = align_steps(think, candidate, self.threshold, self.metric)
            if alignment is not None:
                self.attempts[attempt] += 1
                coarse = snap_to_original(think, alignment) if self.snap else candidate
                return {**record, "coarse_think": coarse, "coarse_alignment": alignment, "coarse_attempts": attempt}
            reason = explain_rejection(think, candidate, self.threshold, self.metric)
        self.failed += 1
        requests = self.max_attempts + 1
        tries = f"{requests} requests" if requests > 1 else "1 request"
        raise RowError(f"no valid compression in {tries}: {reason}")


# --------------------------------------------------------------------------------------------------
# Command line


def _count_rows(path: Path, box: dict) -> None:
    """Input rows (for the ETA), counted in the background so that a huge input starts at once:
    lines of JSON Lines, the row count of a Parquet file's metadata; nothing for other formats."""
    import gzip

    try:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if path.name.endswith(".gz") else open
            count = 0
            with opener(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    count += chunk.count(b"\n")
            box["total"] = count
        elif path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            box["total"] = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ImportError, ValueError):
        pass


class _Progress:
    """Rows/s, ETA and LLM counters on stderr: a rewritten line on a terminal, else every 30 s."""

    def __init__(self, stage: str, input: Path, output: Path, backend: Backend, *, quiet: bool):
        self.stage, self.backend, self.quiet = stage, backend, quiet
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.rows = 0
        self.total: dict = {}
        progress_file = output.with_name(output.name + ".progress.json")
        try:
            self.resumed = json.loads(progress_file.read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError):
            self.resumed = 0
        if not quiet:
            threading.Thread(target=_count_rows, args=(input, self.total), daemon=True).start()

    def update(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if self.quiet or now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        print(("\r" if self.tty else "") + self.line(now), end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        rate = self.rows / max(now - self.start, 1e-9)
        done = self.resumed + self.rows
        parts = [f"{done:,}" + (f"/{self.total['total']:,}" if "total" in self.total else "") + " rows",
                 f"{rate:.2f} rows/s"]
        if "total" in self.total and rate > 0:
            parts.append("ETA " + _duration(max(0, self.total["total"] - done) / rate))
        s = self.backend.stats
        parts.append(f"{s.requests:,} requests, {sum(s.retries.values()):,} retried, {s.cached:,} cached, "
                     f"{s.prompt_tokens:,}+{s.completion_tokens:,} tokens")
        return f"asap {self.stage}: " + ", ".join(parts)

    def close(self) -> None:
        if self.tty and not self.quiet and self.last != self.start:
            print(file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, stage: str, defaults: SamplingParams) -> None:
    p.add_argument("input", metavar="IN", help="input corpus (.jsonl or .jsonl.gz)")
    p.add_argument("output", metavar="OUT", help="output corpus (.jsonl or .jsonl.gz); re-running with the same OUT resumes")
    p.add_argument("--llm", required=True, metavar="KIND:MODEL",
                   help="the LLM: openai:MODEL (any OpenAI-compatible chat-completions API, e.g. "
                   "openai:deepseek-chat), vllm:PATH (local vLLM, offline) or hf:PATH (transformers generate)")
    g = p.add_argument_group("API backends (openai:)")
    g.add_argument("--api-base", metavar="URL",
                   help="base URL of the API, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI's)")
    g.add_argument("--api-key", metavar="KEY",
                   help="API key (default: $OPENAI_API_KEY; 'EMPTY' when --api-base is given without one)")
    g.add_argument("--concurrency", type=_positive_int, default=16, metavar="N",
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
    g.add_argument("--gen-batch", type=_positive_int, default=None, metavar="N",
                   help="conversations per generate call (default: 8 for hf:, all waiting requests for vllm:)")
    g = p.add_argument_group("decoding")
    g.add_argument("--temperature", type=float, default=defaults.temperature, metavar="T",
                   help=f"sampling temperature; 0 is greedy (default: {defaults.temperature:g}, the paper's"
                   + ("; the reference script passes 2.0)" if stage == "coarse" else ")"))
    g.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P",
                   help=f"nucleus sampling mass (default: {defaults.top_p:g})")
    g.add_argument("--max-tokens", type=_positive_int, default=defaults.max_tokens, metavar="N",
                   help=f"completion tokens per request at most (default: {defaults.max_tokens})")
    g.add_argument("--seed", type=int, default=None, metavar="N",
                   help="sampling seed passed to the backend (default: none)")
    g = p.add_argument_group("prompt")
    if stage == "direct":
        g.add_argument("--prompt", choices=PROMPT_CHOICES, default="auto",
                       help="which of the paper's prompts: code, math, or auto = each row's 'kind' field, code when "
                       "absent (default: auto). Code rows anchor on the first ```python block after </think>; math "
                       "rows on the text after </think>, or the row's 'answer' field when nothing follows it")
        g.add_argument("--template", metavar="FILE",
                       help="custom prompt template for every row, with the placeholders {question} and {answer_code} "
                       "or {answer} (both stand for the row's answer)")
    else:
        g.add_argument("--template", metavar="FILE",
                       help="custom prompt template with the placeholders {anchor} (the row's direct_thought) and "
                       "{think} (the thinking to compress)")
    g = p.add_argument_group("run")
    g.add_argument("--batch", type=_positive_int, default=None, metavar="N",
                   help="rows per corpus batch: their requests run together and are committed together "
                   "(default: max(64, 4 x concurrency) for openai:, 4 x gen-batch for hf:, 1024 for vllm:)")
    g.add_argument("--commit-seconds", type=float, default=2.0, metavar="S",
                   help="finished rows are made durable at most this often, and at the end (default: 2.0)")
    g.add_argument("--no-cache", action="store_true",
                   help="do not keep OUT.llm-cache.jsonl, the log of every reply received that a resumed or "
                   "repeated run replays instead of paying for the same request again")
    g.add_argument("--quiet", action="store_true", help="print only errors")


def add_direct(subparsers) -> None:
    p = subparsers.add_parser(
        "direct",
        help="stage 1a: write each row's direct thought (the anchor) with an LLM",
        description=(
            "Read IN (.jsonl/.jsonl.gz rows with 'prompt' and 'generation'), ask the LLM for a short "
            "step-by-step derivation of the row's known answer (the paper's 'direct thought': temperature 0, "
            "top_p 1, max_tokens 16384), and write OUT with every input field plus 'direct_thought'. Rows that "
            "cannot be processed go to OUT.rejects.jsonl with their id, stage and a one-line error. Re-running "
            "with the same OUT resumes after the last committed row; replies already received are replayed from "
            "OUT.llm-cache.jsonl, not requested again."
        ),
    )
    _add_common(p, "direct", DIRECT_PARAMS)
    p.set_defaults(func=run_direct)


def add_coarse(subparsers) -> None:
    p = subparsers.add_parser(
        "coarse",
        help="stage 1b: compress each row's thinking with an LLM, guided by its direct thought",
        description=(
            "Read IN (rows with 'generation' and the 'direct_thought' of `asap direct`), ask the LLM to compress "
            "the thinking using the direct thought as the anchor (the paper's prompt; temperature 1, top_p 1, "
            "max_tokens 16384), strip ``` fences from the reply and accept it only when its blank-line sections "
            "match, in order, original sections (align_steps: similarity >= --threshold). Rejected replies are "
            "re-requested up to --max-attempts times. Writes OUT with every input field plus 'coarse_think', "
            "'coarse_alignment' (the original section index of each kept section) and 'coarse_attempts'; rows "
            "without a valid compression go to OUT.rejects.jsonl with the reason. Resumes like `asap direct`."
        ),
    )
    _add_common(p, "coarse", COARSE_PARAMS)
    g = p.add_argument_group("validation")
    g.add_argument("--threshold", type=float, default=0.6, metavar="F",
                   help="similarity a reply section needs with an original section to match (default: 0.6)")
    g.add_argument("--metric", choices=METRICS, default="difflib",
                   help="difflib = exactly difflib.SequenceMatcher.ratio, the reference's; indel = normalized LCS, "
                   "faster but a different function (default: difflib)")
    g.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N",
                   help="requests per row until a reply validates; empty replies count (default: 3)")
    g.add_argument("--snap-to-original", action="store_true",
                   help="write each accepted section as the original section it matched, so the training text "
                   "keeps the original wording exactly")
    p.set_defaults(func=run_coarse)


def run_direct(args) -> int:
    return _run_stage(args, "direct")


def run_coarse(args) -> int:
    return _run_stage(args, "coarse")


def _run_stage(args, stage_name: str) -> int:
    input_path = check_input(args.input)  # before anything is created or loaded
    output = Path(args.output)
    template = load_template(args.template, stage_name) if args.template else None
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
    if stage_name == "coarse" and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    engine_args = parse_engine_args(args.engine_arg)
    try:
        backend = make_backend(args.llm, api_base=args.api_base, api_key=args.api_key, concurrency=args.concurrency,
                               max_retries=args.max_retries, timeout=args.timeout, rate_limit=args.rate_limit,
                               backoff=args.backoff, batch_size=args.gen_batch, engine_args=engine_args)
    except LLMError as e:
        print(f"asap {stage_name}: error: {e}", file=sys.stderr)
        return 1
    if stage_name == "direct":
        stage = DirectStage(backend, params, template, args.reject_failed, prompt=args.prompt)
        required = ("prompt", "generation")
    else:
        stage = CoarseStage(backend, params, template, args.reject_failed, threshold=args.threshold,
                            metric=args.metric, max_attempts=args.max_attempts, snap=args.snap_to_original)
        required = ("generation",)
    if args.batch:
        batch = args.batch
    elif backend.kind == "openai":
        batch = max(64, 4 * args.concurrency)
    elif backend.kind == "hf":
        batch = 4 * (args.gen_batch or 8)
    else:
        batch = 1024
    if not args.no_cache:
        backend.attach_cache(llm_cache_path(output))
    progress = _Progress(stage_name, input_path, output, backend, quiet=args.quiet)

    def process(rows):
        results = stage.process(rows)
        progress.update(len(rows))
        return results

    try:
        summary = run_corpus(input_path, output, stage=stage_name, process=process, batch_size=batch,
                             commit_seconds=args.commit_seconds, quiet=True, required=required)
    except LLMError as e:
        progress.close()
        print(f"asap {stage_name}: error: {e}", file=sys.stderr)
        if not args.quiet:
            print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
            print("  rows finished before the error are kept; re-run the same command to resume", file=sys.stderr)
        return 1
    finally:
        backend.close()
    progress.close()
    if not args.quiet:
        print(summary.line(), file=sys.stderr)
        for reason, count in summary.reasons.most_common():
            print(f"  rejected {count}: {reason}", file=sys.stderr)
        if isinstance(stage, CoarseStage) and (stage.attempts or stage.failed):
            histogram = ", ".join(f"{n} after {k}" for k, n in sorted(stage.attempts.items()))
            print(f"  rows accepted by attempts needed: {histogram or 'none'}; rows with no valid compression: "
                  f"{stage.failed}", file=sys.stderr)
        print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
    return 0
