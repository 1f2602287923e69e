"""LLM backends: the openai client against a real loopback HTTP server, the reply cache, the hf
backend on a tiny model, and backend names."""

import json
import socket
import time

import pytest
from llm_server import ChatServer, Scripted, user_content

openai = pytest.importorskip("openai")

from asap_fast.stage1.llm import (
    Aborted,
    BackendUnavailable,
    EmptyReplyError,
    HFBackend,
    OpenAIBackend,
    Reply,
    ReplyCache,
    RequestError,
    SamplingParams,
    TransientError,
    make_backend,
    parse_backend_spec,
    parse_engine_args,
    r1_prompt,
)

PARAMS = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64)


def convs(n, tag="q"):
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def backend_for(server, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return OpenAIBackend("test-model", api_base=server.url, api_key="k", **kw)


def test_normal_replies_in_order_with_usage_summed(server):
    server.script = lambda body, call: Scripted(text="re: " + user_content(body), usage=(10, 3))
    with backend_for(server) as backend:
        replies = backend.generate(convs(5), PARAMS)
    assert [r.text for r in replies] == [f"re: q {i}" for i in range(5)]
    assert all(r.prompt_tokens == 10 and r.completion_tokens == 3 and r.finish_reason == "stop" for r in replies)
    assert backend.stats.requests == 5 and backend.stats.replies == 5
    assert (backend.stats.prompt_tokens, backend.stats.completion_tokens) == (50, 15)
    body = server.requests[0]["body"]
    assert body["model"] == "test-model"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.0, 1.0, 64)
    assert "seed" not in body


def test_missing_usage_is_counted_not_invented(server):
    server.script = lambda body, call: Scripted(text="x", usage=None)
    with backend_for(server) as backend:
        (reply,) = backend.generate(convs(1), SamplingParams(seed=7))
    assert reply.prompt_tokens is None and reply.completion_tokens is None
    assert backend.stats.usage_missing == 1 and backend.stats.prompt_tokens == 0
    assert server.requests[0]["body"]["seed"] == 7


def test_429_waits_for_retry_after(server):
    server.script = lambda body, call: Scripted(status=429, headers={"Retry-After": "1"}) if call == 0 else Scripted("ok")
    with backend_for(server, backoff=0.001) as backend:
        start = time.monotonic()
        (reply,) = backend.generate(convs(1), PARAMS)
        elapsed = time.monotonic() - start
    assert reply.text == "ok"
    assert len(server.requests) == 2 and backend.stats.retries == {"429": 1}
    gap = server.requests[1]["start"] - server.requests[0]["end"]
    assert gap >= 0.95, f"retried {gap:.3f}s after a 429 with Retry-After: 1"
    assert elapsed < 3.0


def test_500_is_retried_with_backoff_then_succeeds(server):
    server.script = lambda body, call: Scripted(status=500) if call < 2 else Scripted("fine")
    with backend_for(server, backoff=0.05, max_retries=3) as backend:
        (reply,) = backend.generate(convs(1), PARAMS)
    assert reply.text == "fine"
    assert [r["status"] for r in server.requests] == [500, 500, 200]
    assert backend.stats.retries == {"500": 2} and backend.stats.requests == 3
    gaps = [server.requests[i + 1]["start"] - server.requests[i]["end"] for i in range(2)]
    # backoff * 2**k * U(0.5, 1): at least 0.025 s then 0.05 s
    assert gaps[0] >= 0.02 and gaps[1] >= 0.045, gaps


def test_persistent_500_stops_after_max_retries(server):
    server.script = lambda body, call: Scripted(status=503)
    with backend_for(server, max_retries=2) as backend:
        with pytest.raises(TransientError, match=r"^HTTP 503: scripted 503 \(3 tries; see --max-retries, --timeout\)$") as info:
            backend.generate(convs(1), PARAMS)
    assert "\n" not in str(info.value)
    assert len(server.requests) == 3


def test_timeout_is_retried(server):
    server.script = lambda body, call: Scripted("late", delay=1.5) if call == 0 else Scripted("on time")
    with backend_for(server, timeout=0.3) as backend:
        (reply,) = backend.generate(convs(1), PARAMS)
    assert reply.text == "on time"
    assert backend.stats.retries == {"timeout": 1} and len(server.requests) == 2


def test_empty_replies_are_failed_tries_never_an_endless_loop(server):
    server.script = lambda body, call: Scripted(text="" if call < 1 or "never" in user_content(body) else "finally")
    with backend_for(server, max_retries=3) as backend:
        (reply,) = backend.generate(convs(1), PARAMS)
        assert reply.text == "finally" and backend.stats.retries == {"empty reply": 1}
        with pytest.raises(EmptyReplyError, match="empty reply .*4 tries"):
            backend.generate([[{"role": "user", "content": "never"}]], PARAMS)
    assert sum("never" in user_content(r["body"]) for r in server.requests) == 4


def test_4xx_is_not_retried(server):
    server.script = lambda body, call: Scripted(status=400)
    with backend_for(server) as backend, pytest.raises(RequestError, match="HTTP 400"):
        backend.generate(convs(1), PARAMS)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [401, 404])
def test_auth_and_unknown_model_are_fatal_at_once(server, status):
    server.script = lambda body, call: Scripted(status=status)
    with backend_for(server) as backend, pytest.raises(BackendUnavailable, match=f"HTTP {status}"):
        backend.generate(convs(1), PARAMS)
    assert len(server.requests) == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_backend_unavailable():
    backend = OpenAIBackend("m", api_base=f"http://127.0.0.1:{free_port()}/v1", api_key="k", max_retries=1, backoff=0.01)
    with backend, pytest.raises(BackendUnavailable, match="cannot reach http://127.0.0.1") as info:
        backend.generate(convs(1), PARAMS)
    assert "\n" not in str(info.value)
    assert backend.stats.requests == 2 and backend.stats.retries == {"connection error": 1}


def test_concurrency_is_bounded(server):
    server.script = lambda body, call: Scripted("ok", delay=0.15)
    with backend_for(server, concurrency=4) as backend:
        replies = backend.generate(convs(16), PARAMS)
    assert len(replies) == 16
    assert server.max_in_flight == 4


def test_rate_limit_spaces_request_starts(server):
    with backend_for(server, concurrency=8, rate_limit=20.0) as backend:
        backend.generate(convs(10), PARAMS)
    starts = sorted(r["start"] for r in server.requests)
    assert starts[-1] - starts[0] >= 0.9 * 9 / 20, starts[-1] - starts[0]
    # evenly spaced, no burst: at most 4 starts (+1 for network jitter) in any 0.2 s
    assert max(sum(s <= t < s + 0.2 for t in starts) for s in starts) <= 5


def test_abort_refuses_new_requests(server):
    with backend_for(server) as backend:
        backend.abort("test")
        with pytest.raises(Aborted):
            backend.generate(convs(1), PARAMS)
    assert server.requests == []


def test_no_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        OpenAIBackend("m")
    assert OpenAIBackend("m", api_base="http://127.0.0.1:1/v1").api_key == "EMPTY"


# ---------------------------------------------------------------------------------------------- cache


def test_cache_replays_and_keys_on_attempt(server, tmp_path):
    path = tmp_path / "c.llm-cache.jsonl"
    messages = convs(1)[0]
    with backend_for(server) as backend:
        backend.attach_cache(path)
        first = backend.run(backend.acomplete(messages, PARAMS, attempt=1))
        again = backend.run(backend.acomplete(messages, PARAMS, attempt=1))
        second = backend.run(backend.acomplete(messages, PARAMS, attempt=2))
    assert len(server.requests) == 2 and backend.stats.cached == 1
    assert again.cached and again.text == first.text and not second.cached
    with backend_for(server) as backend:  # a new process: only the file remains
        backend.attach_cache(path)
        replay = backend.run(backend.acomplete(messages, PARAMS, attempt=2))
        other = backend.run(backend.acomplete(messages, SamplingParams(temperature=0.5, max_tokens=64), attempt=2))
    assert replay.cached and replay.text == second.text and replay.prompt_tokens == second.prompt_tokens
    assert not other.cached and len(server.requests) == 3


def test_cache_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ReplyCache(path)
    k1, k2 = ReplyCache.key("b", [{"role": "user", "content": "1"}], PARAMS), ReplyCache.key("b", [], PARAMS)
    cache.put(k1, Reply("one\nline ünï", 1, 2, "stop"))
    cache.close()
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"key": "' + k2.encode() + b'", "text": "tor')  # a kill mid-write
    cache = ReplyCache(path)
    assert len(cache) == 1 and k2 not in cache
    assert cache.get(k1) == Reply("one\nline ünï", 1, 2, "stop", cached=True)
    assert path.read_bytes() == whole
    cache.put(k2, Reply("two"))
    cache.close()
    assert [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()] == [k1, k2]
    assert ReplyCache(path).get(k2).text == "two"


def test_cache_key_depends_on_every_part():
    m = [{"role": "user", "content": "x"}]
    base = ReplyCache.key("openai:a", m, PARAMS, 1)
    assert base == ReplyCache.key("openai:a", [dict(m[0])], SamplingParams(0.0, 1.0, 64), 1)
    variants = [ReplyCache.key("openai:b", m, PARAMS, 1), ReplyCache.key("openai:a", [{"role": "user", "content": "y"}], PARAMS, 1),
                ReplyCache.key("openai:a", m, SamplingParams(0.0, 1.0, 65), 1), ReplyCache.key("openai:a", m, PARAMS, 2)]
    assert len({base, *variants}) == 5


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("spec", ["gpt-4o", "openai:", "azure:gpt-4", "", "hf"])
def test_bad_backend_names(spec):
    with pytest.raises(ValueError, match="--llm must be KIND:MODEL") as info:
        parse_backend_spec(spec)
    assert "\n" not in str(info.value)


def test_good_backend_names():
    assert parse_backend_spec("openai:deepseek-ai/DeepSeek-V3:free") == ("openai", "deepseek-ai/DeepSeek-V3:free")
    assert parse_backend_spec("hf:/models/x") == ("hf", "/models/x")
    assert parse_backend_spec("vllm:C:\\m") == ("vllm", "C:\\m")


def test_vllm_missing_is_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed")
    with pytest.raises(BackendUnavailable, match=r"vLLM, which is not installed: pip install 'asap-fast\[vllm\]'"):
        make_backend("vllm:/models/x")


def test_engine_args():
    assert parse_engine_args(["tensor_parallel_size=2", "dtype=bfloat16", "enforce_eager=true"]) == {
        "tensor_parallel_size": 2, "dtype": "bfloat16", "enforce_eager": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_engine_args(["oops"])
    with pytest.raises(ValueError, match="engine-arg"):
        make_backend("openai:m", api_base="http://127.0.0.1:1/v1", engine_args={"x": 1})


def test_sampling_params_validation():
    for bad in (dict(temperature=-1), dict(top_p=0), dict(max_tokens=0), dict(max_tokens=1.5)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# ---------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def tiny():
    testing = pytest.importorskip("asap_fast.testing")
    tokenizer = testing.tiny_tokenizer()
    model = testing.tiny_causal_lm(len(tokenizer), arch="qwen2", seed=1)
    return model, tokenizer


def test_r1_prompt_format():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    assert r1_prompt(messages, "<s>") == "<s>S<｜User｜>U<｜Assistant｜>A<｜end▁of▁sentence｜><｜User｜>V<｜Assistant｜>"


def test_hf_backend_batches_waiting_requests(tiny):
    model, tokenizer = tiny
    backend = HFBackend(model, tokenizer, batch_size=3)
    calls = []
    original = backend._generate_batch
    backend._generate_batch = lambda conversations, params: calls.append(len(conversations)) or original(conversations, params)
    with backend:
        replies = backend.generate(convs(5, "Let me think"), SamplingParams(temperature=0.0, max_tokens=6))
        assert calls == [3, 2]
        # greedy and batched with left padding: the same text as one at a time
        alone = backend.generate(convs(5, "Let me think")[4:], SamplingParams(temperature=0.0, max_tokens=6))
    assert all(isinstance(r.text, str) for r in replies)
    assert all(r.completion_tokens == 6 and r.finish_reason == "length" for r in replies)
    assert replies[4].text == alone[0].text
    prompt = r1_prompt(convs(1, "Let me think")[0])
    assert replies[0].prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert backend.stats.requests == 6 and backend.stats.completion_tokens == 36


def test_hf_backend_uses_chat_template(tiny):
    model, tokenizer = tiny
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    try:
        backend = HFBackend(model, tokenizer)
        assert backend.format_prompt(convs(1)[0]) == "[user] q 0\n[assistant]"
    finally:
        tokenizer.chat_template = None


def test_hf_backend_load_failure_is_one_line(tmp_path):
    with pytest.raises(BackendUnavailable, match="hf backend: cannot load") as info:
        make_backend(f"hf:{tmp_path / 'missing'}")
    assert "\n" not in str(info.value)


def test_vllm_backend_calls_the_documented_api(monkeypatch):
    """vLLM cannot run here; this checks our side of its documented offline API (LLM(model=...,
    **engine_kwargs), LLM.chat(conversations, sampling_params=, use_tqdm=), RequestOutput fields)
    against a stand-in module, and the fallback to LLM.generate without a chat template."""
    import sys
    import types

    calls = []

    class Completion:
        def __init__(self, text):
            self.text, self.token_ids, self.finish_reason = text, [1] * len(text.split()), "stop"

    class Output:
        def __init__(self, prompt_ids, text):
            self.prompt_token_ids, self.outputs = prompt_ids, [Completion(text)]

    class FakeLLM:
        def __init__(self, model, **kwargs):
            calls.append(("init", model, kwargs))
            self.template = kwargs.pop("has_template", True)

        def get_tokenizer(self):
            return types.SimpleNamespace(chat_template="{{x}}" if self.template else None)

        def chat(self, messages, sampling_params=None, use_tqdm=True):
            calls.append(("chat", messages, sampling_params, use_tqdm))
            return [Output([0, 1, 2], "a b") for _ in messages]

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            calls.append(("generate", prompts, sampling_params, use_tqdm))
            return [Output([0], "c") for _ in prompts]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: ("SamplingParams", kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)

    with make_backend("vllm:/models/m", engine_args={"tensor_parallel_size": 2}) as backend:
        replies = backend.generate(convs(3), SamplingParams(temperature=0.0, max_tokens=9, seed=1))
    assert calls[0] == ("init", "/models/m", {"tensor_parallel_size": 2})
    kind, messages, sampling, use_tqdm = calls[1]
    assert kind == "chat" and messages == convs(3) and use_tqdm is False and len(calls) == 2  # one batched call
    assert sampling == ("SamplingParams", dict(n=1, temperature=0.0, top_p=1.0, max_tokens=9, seed=1))
    assert [(r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in replies] == [("a b", 3, 2, "stop")] * 3

    with make_backend("vllm:/models/m", engine_args={"has_template": False}) as backend:
        (reply,) = backend.generate(convs(1), PARAMS)
    assert calls[-1][0] == "generate" and calls[-1][1] == ["<｜User｜>q 0<｜Assistant｜>"] and reply.text == "c"
