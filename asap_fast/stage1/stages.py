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

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.core.errors import RowError
from asap_fast.core.matching import METRICS, align_steps, similarity
from asap_fast.core.traces import TraceError, parse_trace
from asap_fast.stage1.llm import (
    Aborted,
    Backend,
    EmptyReplyError,
    LLMError,
    RequestError,
    SamplingParams,
    TransientError,
)
from asap_fast.stage1.prompts import (
    PromptTemplate,
    coarse_template,
    direct_answer,
    direct_template,
    question_text,
    row_kind,
)

__all__ = [
    "COARSE_PARAMS",
    "DEFAULT_MAX_ATTEMPTS",
    "DIRECT_PARAMS",
    "CoarseStage",
    "DirectStage",
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

    def process(self, records: Sequence[dict]) -> list[dict | RowError]:
        """One output record or RowError per row, in order (a ``run_corpus`` process function).

        Raises the first fatal LLMError (unreachable backend, retries exhausted without
        ``reject_failed``) once every row's in-flight request has ended, so replies already
        paid for are in the cache.
        """
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
        if not think:  # the reference would ask to compress nothing (docs/fidelity.md)
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
