"""Prompt building and the generation backends (transformers with a tiny model built from a
config; vLLM only for its clear error when it is missing)."""

from __future__ import annotations

import sys

import pytest

from asap_fast.evaluation import BackendUnavailable, HFGenerator, build_prompt
from asap_fast.evaluation.generate import R1_TEMPLATE, VLLMGenerator, load_generator
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

MARKERS = ("<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(len(tok), seed=1)
    return model, tok


def test_build_prompt_without_template_uses_r1_format(tiny):
    _, tok = tiny
    assert not getattr(tok, "chat_template", None)
    expected = "<｜begin▁of▁sentence｜><｜User｜>Solve it.<｜Assistant｜><think>\n"
    assert build_prompt(tok, "Solve it.") == expected
    assert R1_TEMPLATE.format(prompt="x").endswith("<｜Assistant｜><think>\n")


@pytest.mark.parametrize(
    "template, expected_tail",
    [
        # Qwen-style template: the assistant tag, then "<think>\n" is appended
        ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
         "<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n<think>\n"),
        # R1-style template that already opens the thinking: nothing appended
        ("{{ bos_token }}{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}"
         "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}",
         "<｜User｜>Solve it.<｜Assistant｜><think>\n"),
        # ends with "<think>" but no newline: only the newline is added
        ("{% for m in messages %}U:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}A:<think>{% endif %}",
         "U:Solve it.A:<think>\n"),
    ],
)
def test_build_prompt_with_chat_template(template, expected_tail):
    tok = tiny_tokenizer()
    tok.chat_template = template
    text = build_prompt(tok, "Solve it.")
    assert text.endswith(expected_tail)
    assert text.count("<think>") == 1


@pytest.mark.parametrize("generation_prompt", ["<｜Assistant｜><think>\\n", "<｜Assistant｜>"])
def test_build_prompt_is_the_references_bytes_for_r1_templates(generation_prompt):
    """The reference: the user message, the chat template without a generation prompt, then
    "<｜Assistant｜><think>\\n" appended (both revisions of R1's template give the same text)."""
    from asap_fast.sft.data import R1_CHAT_TEMPLATE

    tok = tiny_tokenizer()
    tok.add_tokens(["<｜begin▁of▁sentence｜>"], special_tokens=True)
    tok.bos_token = "<｜begin▁of▁sentence｜>"
    tok.chat_template = R1_CHAT_TEMPLATE.replace("<｜Assistant｜><think>\\n'}}{% endif %}",
                                                 generation_prompt + "'}}{% endif %}")
    assert generation_prompt in tok.chat_template
    user = "You will be given a competitive programming problem.\n  def f():\n"
    plain = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=False)
    assert build_prompt(tok, user) == plain + "<｜Assistant｜><think>\n"
    assert build_prompt(tok, user) == "<｜begin▁of▁sentence｜><｜User｜>" + user + "<｜Assistant｜><think>\n"


def test_hf_backend_generates_batched_greedy(tiny):
    model, tok = tiny
    prompts = [build_prompt(tok, p) for p in ("Add two numbers.", "A much longer problem statement, " * 3, "x")]
    gen = HFGenerator(model, tok, batch_size=2)
    run = gen.generate(prompts, max_new_tokens=6)
    assert run.backend == "hf" and run.wall_s > 0
    assert [len(s) for s in run.samples] == [1, 1, 1]
    for [g] in run.samples:
        assert 1 <= g.num_tokens <= 6
        assert g.finish_reason in ("stop", "length")
        assert isinstance(g.text, str) and g.latency_s > 0
    # greedy is deterministic and does not depend on the batch composition (prompt 0 alone)
    again = HFGenerator(model, tok, batch_size=1).generate(prompts[:1], max_new_tokens=6)
    assert again.samples[0][0].text == run.samples[0][0].text


def test_hf_backend_stops_at_eos_and_counts_it(tiny):
    _, tok = tiny
    eos = tok.eos_token_id

    class AlwaysEOS:
        """A stand-in model whose generate() emits two tokens and then EOS (then padding)."""

        generation_config = None

        def parameters(self):
            import torch

            yield torch.zeros(1)

        def generate(self, input_ids, attention_mask, generation_config):
            import torch

            n = input_ids.shape[0]
            tail = torch.tensor([[5, 6, eos, eos, eos]] * n)
            return torch.cat([input_ids, tail], dim=1)

    run = HFGenerator(AlwaysEOS(), tok).generate(["a", "bb"], max_new_tokens=5)
    for [g] in run.samples:
        assert g.num_tokens == 3 and g.finish_reason == "stop"
        assert g.text == tok.decode([5, 6])


def test_hf_backend_validates_sampling(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    with pytest.raises(ValueError, match="temperature > 0"):
        gen.generate(["x"], max_new_tokens=2, num_samples=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(["x"], max_new_tokens=0)


def test_hf_backend_samples_several_per_prompt(tiny):
    model, tok = tiny
    run = HFGenerator(model, tok).generate(["x", "y"], max_new_tokens=3, num_samples=3, temperature=1.0, seed=3)
    assert [len(s) for s in run.samples] == [3, 3]


def test_vllm_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BackendUnavailable, match="--backend hf"):
        VLLMGenerator("/nonexistent/model")
    with pytest.raises(BackendUnavailable, match="not installed"):
        load_generator("vllm", "/nonexistent/model")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        load_generator("tgi", "/nonexistent/model")


class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _FakeLLM:
    """Stands in for vllm.LLM with the documented offline API: LLM(model=..., ...),
    get_tokenizer(), generate(prompts, sampling_params, use_tqdm=...) -> [RequestOutput]."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.tokenizer = tiny_tokenizer()
        self.calls = []
        _FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        from types import SimpleNamespace

        self.calls.append((prompts, sampling_params))
        eos = self.tokenizer.eos_token_id
        code = self.tokenizer("</think>\n```python\nx = 1\n```", add_special_tokens=False)["input_ids"]
        outputs = []
        for i, prompt in enumerate(prompts):
            assert set(prompt) == {"prompt_token_ids"} and all(isinstance(t, int) for t in prompt["prompt_token_ids"])
            ids = code + [eos] if i % 2 == 0 else code[:3]
            reason = "stop" if i % 2 == 0 else "length"
            completion = SimpleNamespace(token_ids=ids, finish_reason=reason, stop_reason=None, text="ignored")
            metrics = SimpleNamespace(arrival_time=10.0, finished_time=10.5 + i)
            outputs.append(SimpleNamespace(outputs=[completion] * sampling_params.kwargs["n"], metrics=metrics))
        return outputs


def test_vllm_backend_plumbing_with_a_stand_in_module(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=_FakeLLM, SamplingParams=_FakeSamplingParams))
    gen = load_generator("vllm", "/models/x", tensor_parallel_size=2, dtype="bfloat16", seed=7, batch_size=99)
    llm = _FakeLLM.instances[-1]
    assert llm.kwargs["model"] == "/models/x" and llm.kwargs["tensor_parallel_size"] == 2
    assert llm.kwargs["dtype"] == "bfloat16" and "batch_size" not in llm.kwargs
    tok = gen.tokenizer
    prompts = [build_prompt(tok, "a"), build_prompt(tok, "b")]
    run = gen.generate(prompts, max_new_tokens=3000)
    [(requests, params)] = llm.calls
    assert params.kwargs["temperature"] == 0.0 and params.kwargs["max_tokens"] == 3000 and params.kwargs["n"] == 1
    assert requests[0]["prompt_token_ids"] == tok(prompts[0], add_special_tokens=False)["input_ids"]
    [first], [second] = run.samples
    assert first.finish_reason == "stop" and first.text.endswith("```python\nx = 1\n```")
    code_len = len(tok("</think>\n```python\nx = 1\n```", add_special_tokens=False)["input_ids"])
    assert first.num_tokens == code_len + 1  # EOS counted, not in the text
    assert second.finish_reason == "length" and second.num_tokens == 3
    assert (first.latency_s, second.latency_s) == (0.5, 1.5)
