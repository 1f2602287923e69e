"""Stage-1 prompt templates: the paper's direct-thought (1a) and coarse-pruning (1b) prompts.

Templates are plain text with named placeholders in braces. Substitution is one pass over the
template for the placeholder names only, so braces elsewhere (code, LaTeX, JSON in a custom
template) and placeholder-like text inside the substituted values are left exactly as they are.

    direct (1a):  {question}  and  {answer_code} (code)  or  {answer} (math)
    coarse (1b):  {anchor}  {think}

The code prompts are the paper's, verbatim. The paper names the math variant of the direct prompt
only by its changes ("how to get this answer step by step", "Answer:", "Final Answer"); ours
applies those, fences the answer with a plain ``` instead of ```python and drops "(with code)".
The coarse prompt is the same for code and math.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from asap_fast.core.traces import TraceError, parse_trace

__all__ = [
    "COARSE_TEMPLATE",
    "DIRECT_CODE_TEMPLATE",
    "DIRECT_MATH_TEMPLATE",
    "KINDS",
    "PromptTemplate",
    "coarse_template",
    "direct_answer",
    "direct_template",
    "load_template",
    "question_text",
    "row_kind",
]

KINDS = ("code", "math")
PROMPT_CHOICES = ("auto", "code", "math")

DIRECT_CODE_TEMPLATE = """\
Given a question, please tell me how to get this code step by step.
Question:
```
{question}
```
Code:
```python
{answer_code}
```
Only return a detailed (with code) step-by-step solution (containing only "Step-by-Step Solution" and "Final Code"). The detailed step-by-step solution is:"""

DIRECT_MATH_TEMPLATE = """\
Given a question, please tell me how to get this answer step by step.
Question:
```
{question}
```
Answer:
```
{answer}
```
Only return a detailed step-by-step solution (containing only "Step-by-Step Solution" and "Final Answer"). The detailed step-by-step solution is:"""

COARSE_TEMPLATE = """\
Compress the given thinking by referring to the provided solution. The goal is to remove irrelevant reasoning paths while retaining all content along the core reasoning path. Compression must be based on thinking, ensuring that the original wording and structure are preserved as much as possible. Follow these strict rules:
1. Use thinking as the foundation: Do not rewrite or replace its content with solution——only use solution to determine which parts are relevant.
2. Remove unnecessary reasoning: Aggressively remove alternative paths that are not part of the core reasoning path.
3. Retain key supporting content: Keep examples, reflections, and tests that help illustrate, verify, or analyze the core reasoning path.
4. Preserve original words: Do not paraphrase, reorder, or change any words.
5. Do not add new words: Do not introduce new concepts, symbols, or abbreviations.
If you understand, compress the following thinking based on the given solution.
Solution:
```
{anchor}
```
Thinking:
```
{think}
```
The compressed thinking is:"""

# Placeholders each stage fills; a template must contain every name of one of its alternatives.
STAGE_PLACEHOLDERS = {
    "direct": ("question", "answer_code", "answer"),
    "coarse": ("anchor", "think"),
}
STAGE_REQUIREMENTS = {
    "direct": (("question", "answer_code"), ("question", "answer")),
    "coarse": (("anchor", "think"),),
}


@dataclass(frozen=True)
class PromptTemplate:
    """A stage's prompt: ``render(**values)`` fills the stage's placeholders in one pass.

    stage:  "direct" or "coarse" (which placeholders are substituted and required).
    text:   the template text.
    source: where it came from (a file path or "builtin:<name>"), for error messages.
    """

    stage: str
    text: str
    source: str = "custom"

    def __post_init__(self):
        if self.stage not in STAGE_PLACEHOLDERS:
            raise ValueError(f"stage must be one of {tuple(STAGE_PLACEHOLDERS)}, got {self.stage!r}")
        present = set(self.placeholders())
        if not any(set(option) <= present for option in STAGE_REQUIREMENTS[self.stage]):
            needed = " or ".join(" and ".join("{" + n + "}" for n in option) for option in STAGE_REQUIREMENTS[self.stage])
            found = ", ".join("{" + n + "}" for n in sorted(present)) or "none"
            raise ValueError(f"{self.stage} template {self.source} must contain {needed} (found: {found})")

    def placeholders(self) -> list[str]:
        """The stage placeholders that occur in the text, in order of first occurrence."""
        names = STAGE_PLACEHOLDERS[self.stage]
        found = re.findall(r"\{(" + "|".join(names) + r")\}", self.text)
        return list(dict.fromkeys(found))

    def render(self, **values: str) -> str:
        names = STAGE_PLACEHOLDERS[self.stage]
        missing = [n for n in self.placeholders() if n not in values]
        if missing:
            raise KeyError(f"no value for placeholder {{{missing[0]}}} of {self.source}")
        pattern = re.compile(r"\{(" + "|".join(names) + r")\}")
        return pattern.sub(lambda m: str(values[m.group(1)]), self.text)


BUILTIN = {
    ("direct", "code"): PromptTemplate("direct", DIRECT_CODE_TEMPLATE, "builtin:direct-code"),
    ("direct", "math"): PromptTemplate("direct", DIRECT_MATH_TEMPLATE, "builtin:direct-math"),
    ("coarse", "code"): PromptTemplate("coarse", COARSE_TEMPLATE, "builtin:coarse"),
    ("coarse", "math"): PromptTemplate("coarse", COARSE_TEMPLATE, "builtin:coarse"),
}


def direct_template(kind: str) -> PromptTemplate:
    """The paper's direct-thought prompt for ``kind`` ("code" or "math")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return BUILTIN["direct", kind]


def coarse_template(kind: str = "code") -> PromptTemplate:
    """The paper's coarse-pruning prompt (one prompt for both kinds)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return BUILTIN["coarse", kind]


def load_template(path: str | Path, stage: str) -> PromptTemplate:
    """A custom template from a UTF-8 text file, validated for ``stage``'s placeholders.

    One trailing newline (the one editors add) is dropped; the rest is kept as written.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template not found: {path}")
    text = path.read_text(encoding="utf-8")
    text = text.removesuffix("\n")
    return PromptTemplate(stage, text, str(path))


def row_kind(record: dict, prompt: str) -> str:
    """The row's kind under ``--prompt``: the choice itself, or for "auto" the row's ``kind`` field
    (code when absent). Raises ValueError for an unknown kind."""
    if prompt not in PROMPT_CHOICES:
        raise ValueError(f"prompt must be one of {PROMPT_CHOICES}, got {prompt!r}")
    if prompt != "auto":
        return prompt
    kind = record.get("kind") or "code"
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected code or math; or pass --prompt code|math)")
    return kind


def question_text(record: dict) -> str:
    """The row's question: its ``prompt`` as it is, as the reference inserts it (not stripped; an
    empty one too); chat messages are joined by their contents."""
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        prompt = "\n".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in prompt)
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string or chat messages, not {type(prompt).__name__}")
    return prompt


def direct_answer(record: dict, kind: str) -> str:
    """The known answer the direct thought explains.

    code: the first python block after </think> as captured (``Trace.code``: its final newline
          kept, so a blank line precedes the closing fence in the prompt, as in the reference).
    math: the text after </think> (the answer this trace reached, so that the anchor follows the
          thinking being compressed); the row's ``answer`` field only when nothing follows
          </think>. Raises TraceError (one line) for an unusable generation.
    """
    trace = parse_trace(record["generation"], require_code=kind == "code")
    if kind == "code":
        assert trace.code is not None
        return trace.code
    if trace.answer:
        return trace.answer
    answer = record.get("answer")
    if isinstance(answer, (str, int, float)) and str(answer).strip():
        return str(answer).strip()
    raise TraceError("nothing after </think> and no 'answer' field: no answer to anchor on")
