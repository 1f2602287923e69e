"""Step segmentation and trace parsing against their Python definitions."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asap_fast as af
from asap_fast import _core

# Separators and every kind of whitespace Python's str.strip() knows, including non-ASCII ones.
TRICKY = st.text(alphabet=st.sampled_from(list("ab \n\n\n\t\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\u200b") + ["\ud800", "\U0001f600"]), max_size=60)


def steps_ref(text: str) -> list[str]:
    return [p.strip() for p in text.strip().split("\n\n") if p.strip()]


def sections_ref(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"\n\n", text.strip())]


@given(TRICKY)
@settings(max_examples=2000, deadline=None)
def test_split_steps_matches_python(text):
    assert af.split_steps(text) == steps_ref(text)
    spans = af.split_step_spans(text)
    assert [text[s:e] for s, e in spans] == steps_ref(text)
    assert [text[s:e] for s, e in _core.split_section_spans(text)] == sections_ref(text)


def test_whitespace_table_is_pythons():
    # Every code point on which str.isspace() and the C++ table could disagree changes strip().
    for cp in range(0x110000):
        ch = chr(cp)
        expected = [] if ch.isspace() else [ch]
        assert af.split_steps(ch) == expected, hex(cp)


def test_split_steps_on_real_traces(cot_traces):
    texts = [row["generation"] for row in cot_traces]
    for text in texts:
        steps = af.split_steps(text)
        assert steps == steps_ref(text)
        assert [text[s:e] for s, e in af.split_step_spans(text)] == steps
    assert af.split_steps_batch(texts, workers=2) == [steps_ref(t) for t in texts]


def test_split_edge_cases():
    assert af.split_steps("") == []
    assert af.split_steps(" \n\n \n\n") == []
    assert af.split_steps("a\n\n\nb") == ["a", "b"]  # "\n\n" then "\nb"
    assert af.split_step_spans("  x \n\n y") == [(2, 3), (7, 8)]
    assert _core.split_section_spans("") == [(0, 0)]  # re.split keeps the one empty section


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a"]])
def test_split_rejects_non_str(bad):
    with pytest.raises(TypeError, match="split_steps\\(\\): argument 'text' must be str"):
        af.split_steps(bad)
    with pytest.raises(TypeError, match="must be (a sequence of )?str"):
        af.split_steps_batch([bad] if not isinstance(bad, list) else bad[:0] + [bad])


def test_parse_trace_code():
    gen = "<think>\nfirst\n\nsecond\n</think>\n\nExplanation.\n```python\nprint(1)\n```\nmore\n```python\nx\n```"
    trace = af.parse_trace(gen)
    assert trace.think == "first\n\nsecond"
    assert trace.answer.startswith("Explanation.") and trace.answer.endswith("```")
    assert trace.code == "print(1)\n"  # as captured: the final newline stays


def test_parse_trace_math_needs_no_code():
    trace = af.parse_trace("<think>x</think> The answer is 4.", require_code=False)
    assert (trace.think, trace.answer, trace.code) == ("x", "The answer is 4.", None)


@pytest.mark.parametrize(
    ("generation", "reason"),
    [
        ("no tags at all", "no <think>"),
        ("<think>cut off mid-thought", "no </think>"),
        ("</think> <think>", "</think> comes before <think>"),
        ("<think>x</think>\n```cpp\nint main(){}\n```", "no ```python block after </think>"),
        ("<think>```python\nx\n```</think> only prose", "no ```python block after </think>"),
        ("<think>x</think>\n```python\nprint(1)", "no ```python block after </think>"),  # unclosed
        # only the part up to a second </think> is looked at
        ("<think>x</think> a </think>\n```python\nprint(1)\n```", "no ```python block after </think>"),
        (42, "generation must be str, not int"),
    ],
)
def test_parse_trace_errors(generation, reason):
    with pytest.raises(af.TraceError, match=re.escape(reason)) as info:
        af.parse_trace(generation)
    assert "\n" not in str(info.value)


def test_parse_trace_empty_thinking_is_valid():
    # the reference's rule has no thinking-length condition; stages 1b and 2 reject it themselves
    trace = af.parse_trace("<think>\n\n</think>\n\n```python\nx\n```")
    assert (trace.think, trace.code) == ("", "x\n")


def test_parse_trace_on_real_traces(cot_traces):
    """Exactly the rows the reference's rule accepts (the rule restated here from its facts)."""
    block = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL | re.IGNORECASE)
    ok = 0
    for row in cot_traces:
        gen = row["generation"]
        code_kind = row["kind"] == "code"
        if "<think>" not in gen or "</think>" not in gen:
            with pytest.raises(af.TraceError, match="no </think>"):
                af.parse_trace(gen, require_code=code_kind)
            continue
        assert gen.index("<think>") < gen.index("</think>")
        after = gen.split("</think>")[1]
        if code_kind and not block.search(after):
            with pytest.raises(af.TraceError, match="python block"):
                af.parse_trace(gen)
            continue
        trace = af.parse_trace(gen, require_code=code_kind)
        assert trace.think == gen.split("<think>", 1)[1].split("</think>", 1)[0].strip()
        assert trace.answer == gen.split("</think>", 1)[1].strip()
        if code_kind:
            assert trace.code == block.search(after).group(1)
        ok += 1
    assert ok == 136 + 110  # complete code traces with a python block + complete math traces