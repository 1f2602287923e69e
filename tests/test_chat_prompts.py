"""Prompts that already hold a rendered chat template: the conversation is recovered, stage 2 scores
the user's content and writes it as the SFT message, and SFT data never wraps a second template."""

from __future__ import annotations

import json
import random

import pytest

from asap_fast.core.chat import unwrap_rendered_chat
from asap_fast.stage2.fine import prompt_messages, prompt_text, sft_messages

BOS, USER, ASSISTANT, EOS = "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"


def render_r1(messages, think=False):
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    out = BOS + system
    for m in messages:
        if m["role"] == "user":
            out += USER + m["content"]
        elif m["role"] == "assistant":
            out += ASSISTANT + m["content"] + EOS
    return out + ASSISTANT + ("<think>\n" if think else "")


def render_chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def render_llama3(messages):
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return "<|begin_of_text|>" + turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def random_conversation(rng: random.Random) -> list[dict]:
    alphabet = "ab \n\t<>|{}`é\u2028#"
    text = lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))  # noqa: E731
    messages = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(0, 2)):
        messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
    return messages + [{"role": "user", "content": text()}]


@pytest.mark.parametrize("render,name", [(render_r1, "r1"), (render_chatml, "chatml"), (render_llama3, "llama3")])
def test_every_rendered_conversation_comes_back(render, name):
    rng = random.Random(name)
    for _ in range(300):
        messages = random_conversation(rng)
        chat = unwrap_rendered_chat(render(messages))
        assert chat is not None and chat.template == name
        assert chat.messages == messages


def test_r1_generation_prompt_that_opens_the_thinking():
    chat = unwrap_rendered_chat(render_r1([{"role": "user", "content": "Write f."}], think=True))
    assert chat.messages == [{"role": "user", "content": "Write f."}] and chat.text == "Write f."


@pytest.mark.parametrize("text", [
    "Write a function.", "", "Explain <|im_start|> tokens.", f"a {USER} b", f"{USER}question",  # no generation prompt
    f"{BOS}{USER}q{ASSISTANT}partial answer",  # an assistant turn already begun is not a prompt
    "<|im_start|>user\nq<|im_end|>\ntrailing text", f"{BOS}{ASSISTANT}",  # no user turn
])
def test_text_that_is_not_a_rendered_prompt_stays_text(text):
    assert unwrap_rendered_chat(text) is None
    assert prompt_messages(text) == [{"role": "user", "content": text}] and prompt_text(text) == text


def test_stage2_prefix_and_sft_messages_use_the_users_content(cot_traces):
    rendered = [r for r in cot_traces if isinstance(r["prompt"], str) and r["prompt"].startswith(BOS + USER)]
    assert len(rendered) == 48  # the bundled can-ai-code traces store R1-rendered prompts
    for r in rendered:
        text = prompt_text(r["prompt"])
        assert text == r["prompt"][len(BOS + USER):-len(ASSISTANT)]
        messages = sft_messages(r["prompt"], "kept", "answer")
        assert messages[0] == {"role": "user", "content": text}
        assert not any(tag in json.dumps(messages, ensure_ascii=False) for tag in (BOS, USER, ASSISTANT))


def test_sft_data_unwraps_a_rendered_user_turn():
    from asap_fast.sft.data import R1_CHAT_TEMPLATE, prepare_examples, split_prompt_completion
    from asap_fast.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size=400)
    tokenizer.chat_template = R1_CHAT_TEMPLATE
    plain = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "<think>\nok\n</think>\nf"}]
    wrapped = [{"role": "user", "content": render_r1(plain[:1])}, plain[1]]
    assert split_prompt_completion(wrapped, tokenizer) == split_prompt_completion(plain, tokenizer)
    prompt, _ = split_prompt_completion(wrapped, tokenizer)
    assert prompt.count(USER) == 1 and prompt.count(ASSISTANT) == 1
    prepared = prepare_examples([("a", wrapped), ("b", plain)], tokenizer, max_length=None)
    assert prepared.prompts_unwrapped == 1 and prepared.examples[0].input_ids == prepared.examples[1].input_ids
