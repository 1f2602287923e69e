"""Stage-1 prompt templates: the paper's text, one-pass substitution, custom templates, answers."""

import re
import textwrap
from pathlib import Path

import pytest

from asap_fast.stage1.prompts import (
    COARSE_TEMPLATE,
    DIRECT_CODE_TEMPLATE,
    DIRECT_MATH_TEMPLATE,
    PromptTemplate,
    coarse_template,
    direct_answer,
    direct_template,
    load_template,
    question_text,
    row_kind,
)
from asap_fast.core.traces import TraceError

PAPER = Path(__file__).resolve().parents[2] / "shared" / "PAPER.md"
GENERATION = "<think>\nLet me think.\n\nSo x = 1.\n</think>\n\nExplained.\n```python\nprint(1)\n```\nDone."


def paper_blocks():
    if not PAPER.exists():
        pytest.skip(f"{PAPER} not checked out")
    blocks = re.findall(r"\n\n((?:    .*\n|\n)+)", PAPER.read_text(encoding="utf-8"))
    return [textwrap.dedent(b).strip("\n") for b in blocks]


def test_code_prompts_are_the_papers_verbatim():
    direct, coarse = paper_blocks()
    assert DIRECT_CODE_TEMPLATE == direct
    assert COARSE_TEMPLATE == coarse


def test_math_prompt_applies_the_papers_changes():
    assert "how to get this answer step by step" in DIRECT_MATH_TEMPLATE
    assert "\nAnswer:\n```\n{answer}\n```\n" in DIRECT_MATH_TEMPLATE
    assert '"Final Answer"' in DIRECT_MATH_TEMPLATE and "code" not in DIRECT_MATH_TEMPLATE.lower()
    assert direct_template("math").placeholders() == ["question", "answer"]
    assert direct_template("code").placeholders() == ["question", "answer_code"]
    assert coarse_template().placeholders() == ["anchor", "think"]


def test_render_is_one_pass_and_leaves_other_braces():
    template = PromptTemplate("coarse", "{x} {anchor} | {think} {{think}}")
    out = template.render(anchor="uses {think} and {0}", think="def f(): return {'a': 1}")
    assert out == "{x} uses {think} and {0} | def f(): return {'a': 1} {def f(): return {'a': 1}}"


def test_direct_code_prompt_renders_question_and_code():
    out = direct_template("code").render(question="Q?", answer_code="print(1)", answer="unused")
    assert out.startswith("Given a question, please tell me how to get this code step by step.\nQuestion:\n```\nQ?\n```")
    assert "Code:\n```python\nprint(1)\n```\nOnly return" in out


@pytest.mark.parametrize(
    "stage, text, message",
    [
        ("coarse", "Solution: {anchor}", r"coarse template \S*t\.txt must contain \{anchor\} and \{think\} \(found: \{anchor\}\)"),
        ("coarse", "nothing here", r"\(found: none\)"),
        ("direct", "Q: {question}", r"\{question\} and \{answer_code\} or \{question\} and \{answer\}"),
        ("direct", "{answer_code}", r"found: \{answer_code\}"),
    ],
)
def test_custom_template_missing_placeholders(tmp_path, stage, text, message):
    path = tmp_path / "t.txt"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_template(path, stage)
    assert "\n" not in str(info.value)


def test_custom_template_from_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Q {question}\nA {answer}\n", encoding="utf-8")
    template = load_template(path, "direct")
    assert template.render(question="q", answer="a", answer_code="c") == "Q q\nA a"
    with pytest.raises(FileNotFoundError):
        load_template(tmp_path / "missing.txt", "direct")


def test_row_kind():
    assert row_kind({}, "auto") == "code"
    assert row_kind({"kind": "math"}, "auto") == "math"
    assert row_kind({"kind": "math"}, "code") == "code"
    with pytest.raises(ValueError, match="unknown kind 'poem'"):
        row_kind({"kind": "poem"}, "auto")


def test_question_text_is_the_prompt_as_it_is():
    # the reference inserts the question unstripped, an empty one too
    assert question_text({"prompt": " Q \n"}) == " Q \n"
    assert question_text({"prompt": ""}) == ""
    assert question_text({"prompt": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]}) == "A\nB"
    with pytest.raises(ValueError, match="prompt must be a string"):
        question_text({"prompt": None})


def test_direct_answer_choices():
    assert direct_answer({"generation": GENERATION}, "code") == "print(1)\n"  # as captured
    assert direct_answer({"generation": GENERATION, "answer": "9"}, "math").startswith("Explained.")
    bare = "<think>\nSo x = 4.\n</think>\n"
    assert direct_answer({"generation": bare, "answer": 4}, "math") == "4"
    with pytest.raises(TraceError, match="no answer"):
        direct_answer({"generation": bare}, "math")
    with pytest.raises(TraceError, match="no ```python block"):
        direct_answer({"generation": bare}, "code")
    with pytest.raises(TraceError, match="no </think>"):
        direct_answer({"generation": "<think>\ncut off"}, "math")


def test_real_traces_render(cot_traces):
    rendered = 0
    for record in cot_traces:
        kind = row_kind(record, "auto")
        try:
            answer = direct_answer(record, kind)
            question = question_text(record)
        except ValueError:
            continue
        out = direct_template(kind).render(question=question, answer_code=answer, answer=answer)
        assert question in out and answer in out
        rendered += 1
    assert rendered > 100
