"""Prompts that already hold a rendered chat template.

Some corpora store the prompt as the text a chat template made of it, e.g. can-ai-code's
``<｜begin▁of▁sentence｜><｜User｜>Write a function ...<｜Assistant｜>``. Taken as the user's
content, such a prompt would be wrapped in a second template at SFT time (doubled role tags in the
training text) and its role tags would sit in stage 2's scoring prefix. :func:`unwrap_rendered_chat`
recognises the three template families of the models the paper and its baselines use (DeepSeek-R1,
ChatML as in Qwen, Llama 3) and gives back the conversation they rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RenderedChat", "unwrap_rendered_chat"]


@dataclass(frozen=True)
class RenderedChat:
    """template: "r1", "chatml" or "llama3". messages: the conversation the template rendered,
    without the final (empty) assistant turn that a generation prompt opens."""

    template: str
    messages: list[dict]

    @property
    def text(self) -> str:
        """The messages' contents joined by newlines (the question as raw text)."""
        return "\n".join(m["content"] for m in self.messages)


# A generation prompt may already open the thinking; that belongs to the template, not the question.
_OPEN_THINK = re.compile(r"<think>\s*\Z")

_R1_BOS, _R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
_R1_TURN = re.compile(r"(<｜User｜>|<｜Assistant｜>)")
_CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>\n?|\Z)", re.S)
_LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|\Z)", re.S)


def _close(template: str, messages: list[dict]) -> RenderedChat | None:
    # Only a conversation that ends by opening the assistant's turn (a generation prompt) and has a
    # user turn is a rendered prompt; anything else is left as the text it is.
    if not messages or messages[-1] != {"role": "assistant", "content": ""}:
        return None
    messages = messages[:-1]
    if not any(m["role"] == "user" for m in messages):
        return None
    return RenderedChat(template, messages)


def _r1(prompt: str) -> RenderedChat | None:
    if "<｜User｜>" not in prompt or "<｜Assistant｜>" not in prompt:
        return None
    text = _OPEN_THINK.sub("", prompt.removeprefix(_R1_BOS))
    head, *parts = _R1_TURN.split(text)
    messages = [{"role": "system", "content": head}] if head else []
    for tag, content in zip(parts[::2], parts[1::2]):
        role = "user" if tag == "<｜User｜>" else "assistant"
        messages.append({"role": role, "content": content.removesuffix(_R1_EOS)})
    return _close("r1", messages)


def _by_turns(template: str, pattern: re.Pattern, prompt: str, lead: str = "") -> RenderedChat | None:
    text = _OPEN_THINK.sub("", prompt)
    text = text.removeprefix(lead)
    turns = list(pattern.finditer(text))
    # every character must belong to a turn: a prompt that merely mentions the tokens stays text
    if not turns or turns[0].start() != 0 or sum(t.end() - t.start() for t in turns) != len(text):
        return None
    return _close(template, [{"role": t.group(1), "content": t.group(2)} for t in turns])


def unwrap_rendered_chat(prompt: object) -> RenderedChat | None:
    """The conversation a known chat template rendered into ``prompt``, or None when ``prompt`` is
    not such a string (plain text, chat messages, anything else)."""
    if not isinstance(prompt, str) or "<" not in prompt:
        return None
    return (_r1(prompt)
            or _by_turns("chatml", _CHATML_TURN, prompt)
            or _by_turns("llama3", _LLAMA3_TURN, prompt, lead="<|begin_of_text|>"))
