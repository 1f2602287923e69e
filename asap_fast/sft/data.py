"""SFT data: ``messages`` rows -> token ids with the loss on the response only.

The paper trains on
``<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜><think>\\n{pruned}\\n</think>\\n{answer}<｜end▁of▁sentence｜>``
with the loss on the response (its Eq. 3); the reference script trains on every token. Here each
row's ``messages`` ([..., {"role": "user"}, {"role": "assistant"}]) becomes a prompt and a
completion:

- prompt     = the chat template applied to every message but the last, with the generation prompt
               (``<｜Assistant｜><think>\\n`` for R1), so it ends where evaluation's prompt ends;
- completion = the assistant content + EOS, minus a leading ``<think>\\n`` that the prompt already
               ends with (or that is moved into it when the template's generation prompt lacks it).

Both are tokenized separately without special tokens (the template writes BOS), so the training
sequence is exactly what the model sees at inference: the prompt tokenized alone, then its own
tokens. Rendering the whole conversation instead would not work with the R1 template, which deletes
everything up to ``</think>`` from assistant turns. labels are -100 on every prompt token.

This module needs only a tokenizer (no trl, no torch); ``asap_fast.sft`` drives the training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from asap_fast.core.chat import unwrap_rendered_chat
from asap_fast.pipeline.records import read_jsonl

__all__ = [
    "R1_CHAT_TEMPLATE",
    "THINK_OPEN",
    "EncodedExample",
    "PreparedData",
    "default_special_tokens",
    "encode_messages",
    "keeps_sample",
    "ensure_chat_template",
    "iter_messages",
    "prepare_examples",
    "split_prompt_completion",
]

THINK_OPEN = "<think>\n"

# The chat template of DeepSeek-R1-Distill-Qwen-7B / -Llama-8B (the revision whose generation prompt
# ends with "<think>\n"), as the Jinja text of their tokenizer_config.json. Used when the tokenizer
# has no template of its own (or with ``chat_template: r1``).
R1_CHAT_TEMPLATE = (
    r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    r"{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    r"{%- for message in messages %}{%- if message['role'] == 'system' %}"
    r"{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    r"{{bos_token}}{{ns.system_prompt}}"
    r"{%- for message in messages %}"
    r"{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    r"{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    r"{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    r"{%- set ns.is_first = true -%}{%- else %}"
    r"{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    r"{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    r"{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    r"{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    r"{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    r"{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    r"{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}"
    r"{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    r"{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    r"{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"
)


def ensure_chat_template(tokenizer, choice: str = "auto") -> str:
    """Set the tokenizer's chat template and say which one it is.

    choice: "auto" keeps the tokenizer's own template and sets the R1 one when it has none;
            "r1" always sets the R1 template; any other value is a path to a Jinja file.
    Returns "own", "r1" or the path.
    """
    if choice == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "own"
        tokenizer.chat_template = R1_CHAT_TEMPLATE
        return "r1"
    if choice == "r1":
        tokenizer.chat_template = R1_CHAT_TEMPLATE
        return "r1"
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"chat_template must be 'auto', 'r1' or a Jinja file; {choice!r} is none of them")
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Reading rows


def _dataset_kind(path: Path) -> str:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if path.is_dir():
        return "disk"
    return "unknown"


def iter_messages(path: str | os.PathLike, field: str = "messages") -> Iterator[tuple[str, Any]]:
    """Yield (row id, value of ``field``) for every row of a corpus file or directory.

    Formats: .jsonl / .jsonl.gz (read with Python's json, which also accepts the Infinity that
    ``step_surprisal`` may hold), .parquet (only ``field`` and ``id`` are read) and a ``datasets``
    save_to_disk directory (a Dataset, or a DatasetDict with a "train" split). Raises ValueError
    with the row's id when a row has no ``field`` or cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    kind = _dataset_kind(path)
    if kind == "jsonl":
        for row in read_jsonl(path):
            if row.record is None:
                raise ValueError(f"dataset {path}, row {row.id}: {row.error}")
            if field not in row.record:
                present = ", ".join(sorted(row.record)) or "none"
                raise ValueError(
                    f"dataset {path}, row {row.id}: no {field!r} field (fields: {present}); expected rows written by "
                    f"`asap fine`"
                )
            yield row.id, row.record[field]
    elif kind == "parquet":
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        if field not in names:
            raise ValueError(f"dataset {path}: no {field!r} column (columns: {', '.join(names) or 'none'})")
        table = pq.read_table(path, columns=[field] + (["id"] if "id" in names and field != "id" else []))
        ids = table.column("id").to_pylist() if "id" in table.column_names and field != "id" else None
        for i, value in enumerate(table.column(field).to_pylist()):
            yield (str(ids[i]) if ids is not None else f"row:{i + 1}"), value
    elif kind == "disk":
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise ValueError(f"dataset {path}: not a datasets save_to_disk directory ({e})") from None
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise ValueError(f"dataset {path}: a DatasetDict without a 'train' split (splits: {', '.join(data)})")
            data = data["train"]
        if field not in data.column_names:
            raise ValueError(f"dataset {path}: no {field!r} column (columns: {', '.join(data.column_names) or 'none'})")
        ids = data["id"] if "id" in data.column_names and field != "id" else None
        for i, value in enumerate(data[field]):
            yield (str(ids[i]) if ids is not None else f"row:{i + 1}"), value
    else:
        raise ValueError(f"dataset must be .jsonl, .jsonl.gz, .parquet or a save_to_disk directory, got {path.name}")


# ---------------------------------------------------------------------------------------------
# Encoding


def _check_messages(messages: Any) -> list[dict]:
    """The messages, once they are a conversation that ends with an assistant turn (else ValueError)."""
    if isinstance(messages, str):  # a messages column stored as a JSON string
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise ValueError("'messages' is a string that is not JSON") from None
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("'messages' must be a list of at least 2 {role, content} messages (user, then assistant)")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs a string 'role' and 'content', got {str(m)[:80]!r}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant's, got role {messages[-1]['role']!r}")
    if not messages[-1]["content"]:
        raise ValueError("the assistant message is empty")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def unwrap_user_turns(messages: list[dict]) -> list[dict] | None:
    """``messages`` with every user turn that holds a rendered chat template (a prompt stored as
    ``<｜User｜>...<｜Assistant｜>`` text) replaced by the conversation it rendered; None when there
    is none, so the tokenizer's template never wraps a second template's tags."""
    out, changed = [], False
    for m in messages:
        rendered = unwrap_rendered_chat(m["content"]) if m["role"] == "user" else None
        out.extend(rendered.messages if rendered else [m])
        changed = changed or rendered is not None
    return out if changed else None


def split_prompt_completion(messages: Any, tokenizer) -> tuple[str, str]:
    """(prompt text, completion text without EOS) for one conversation; see the module docstring."""
    messages = _check_messages(messages)
    messages = unwrap_user_turns(messages) or messages
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    completion = messages[-1]["content"]
    if completion.startswith(THINK_OPEN):
        if not prompt.endswith(THINK_OPEN):
            # Evaluation prompts end with "<think>\n" (PAPER.md), so training puts it on the prompt side too.
            prompt += THINK_OPEN
        completion = completion[len(THINK_OPEN) :]
    return prompt, completion


@dataclass
class EncodedExample:
    """One training sequence. input_ids = prompt ids + completion ids + [eos]; labels -100 on the prompt."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int

    @property
    def completion_mask(self) -> list[int]:
        return [0] * self.prompt_length + [1] * (len(self.input_ids) - self.prompt_length)


def _encode_batch(pairs: list[tuple[str, str]], tokenizer, eos: int) -> list[EncodedExample]:
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for prompt_ids, completion_ids in zip(prompts, completions):
        completion_ids = list(completion_ids)
        if not completion_ids or completion_ids[-1] != eos:
            completion_ids.append(eos)
        out.append(
            EncodedExample(
                input_ids=list(prompt_ids) + completion_ids,
                labels=[-100] * len(prompt_ids) + completion_ids,
                prompt_length=len(prompt_ids),
            )
        )
    return out


def _eos_id(tokenizer, eos_token_id: int | None) -> int:
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; set eos_token in the config")
    return eos


def encode_messages(messages: Any, tokenizer, eos_token_id: int | None = None) -> EncodedExample:
    """Tokenize one conversation (prompt and completion separately, no special tokens added)."""
    return _encode_batch([split_prompt_completion(messages, tokenizer)], tokenizer, _eos_id(tokenizer, eos_token_id))[0]


@dataclass
class PreparedData:
    """The encoded examples that fit, and what happened to the others."""

    examples: list[EncodedExample]
    samples_total: int = 0
    dropped_too_long: int = 0
    max_length: int | None = None
    dropped_ids: list[str] = field(default_factory=list)  # the first 20, for the report
    longest_dropped: int = 0
    prompts_unwrapped: int = 0  # samples whose user turn held a rendered chat template

    @property
    def samples_used(self) -> int:
        return len(self.examples)

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    @property
    def response_tokens(self) -> int:
        return sum(len(e.input_ids) - e.prompt_length for e in self.examples)

    def stats(self) -> dict:
        # not dataclasses.asdict: it would deep-copy every example
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "examples"}
        lengths = sorted(len(e.input_ids) for e in self.examples)
        out.update(
            samples_used=self.samples_used,
            tokens=self.tokens,
            response_tokens=self.response_tokens,
            tokens_per_sample_mean=(self.tokens / len(lengths)) if lengths else 0.0,
            tokens_per_sample_max=lengths[-1] if lengths else 0,
        )
        return out

    def to_dataset(self):
        """A ``datasets.Dataset`` with input_ids, labels and completion_mask (trl's pre-tokenized format)."""
        import datasets

        return datasets.Dataset.from_dict(
            {
                "input_ids": [e.input_ids for e in self.examples],
                "labels": [e.labels for e in self.examples],
                "completion_mask": [e.completion_mask for e in self.examples],
            }
        )


def default_special_tokens(tokenizer) -> int:
    """How many special tokens ``tokenizer(text)`` adds to one text by default (1 for the R1
    tokenizers' BOS, 0 for Qwen's)."""
    probe = "x"
    return len(tokenizer(probe)["input_ids"]) - len(tokenizer(probe, add_special_tokens=False)["input_ids"])


def keeps_sample(n_tokens: int, max_length: int | None, extra_special: int) -> bool:
    """The reference's length filter: a sample is kept when the length it measures, our token
    count plus the special tokens its tokenizer call adds again to the templated text (one more
    BOS for R1's), is strictly below ``max_length``."""
    return max_length is None or n_tokens + extra_special < max_length


def prepare_examples(
    rows: Iterable[tuple[str, Any]],
    tokenizer,
    *,
    max_length: int | None,
    eos_token_id: int | None = None,
    batch_size: int = 256,
) -> PreparedData:
    """Encode (id, messages) rows and drop, counting them, those the reference's length filter
    drops (:func:`keeps_sample`: kept when ``len(input_ids)`` plus the tokenizer's default special
    tokens is below ``max_length``, so every kept sample also fits ``max_length``).

    Dropping happens here, on exact token counts, so that no sample is ever truncated by the
    trainer (a truncated trace would teach the model to stop mid-thought). A malformed row raises
    ValueError naming it; nothing is skipped silently.
    """
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 or null, got {max_length!r}")
    eos = _eos_id(tokenizer, eos_token_id)
    extra_special = default_special_tokens(tokenizer)
    prepared = PreparedData(examples=[], max_length=max_length)

    def flush(batch):
        if not batch:
            return
        # one tokenizer call per batch: fast tokenizers encode a batch on all cores
        for (row_id, (_, completion)), example in zip(batch, _encode_batch([pair for _, pair in batch], tokenizer, eos)):
            if completion.strip() and len(example.input_ids) - example.prompt_length <= 1:
                raise ValueError(
                    f"dataset row {row_id}: the tokenizer encodes the response as no tokens; is it the model's tokenizer?"
                )
            if not keeps_sample(len(example.input_ids), max_length, extra_special):
                prepared.dropped_too_long += 1
                prepared.longest_dropped = max(prepared.longest_dropped, len(example.input_ids))
                if len(prepared.dropped_ids) < 20:
                    prepared.dropped_ids.append(row_id)
            else:
                prepared.examples.append(example)
        batch.clear()

    batch: list[tuple[str, tuple[str, str]]] = []
    for row_id, messages in rows:
        prepared.samples_total += 1
        try:
            messages = _check_messages(messages)
            unwrapped = unwrap_user_turns(messages)
            prepared.prompts_unwrapped += unwrapped is not None
            batch.append((row_id, split_prompt_completion(unwrapped or messages, tokenizer)))
        except ValueError as e:
            raise ValueError(f"dataset row {row_id}: {e}") from None
        if len(batch) >= batch_size:
            flush(batch)
    flush(batch)
    return prepared
