"""`asap fine` end to end: a real (tiny) model on disk, the real CLI, real files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import asap_fast as af
from asap_fast.stage2.pruning import prune_steps_ref
from asap_fast.stage2.surprisal import first_token_surprisal

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"
ASAP = str(Path(sys.executable).parent / "asap")


def asap(*args, check=True, cwd=None):
    # The installed console script, as the README runs it: the one beside this interpreter, so the
    # test does not depend on PATH.
    result = subprocess.run([ASAP, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr
    return result


R1_USER, R1_ASSISTANT = "<｜begin▁of▁sentence｜><｜User｜>", "<｜Assistant｜>"


def test_fine_on_sample_corpus_matches_the_reference_rule(tmp_path, model_dir):
    out = tmp_path / "fine.jsonl"
    result = asap("fine", EXAMPLES, out, "--model", model_dir, "--budget", "300", "--batch", "4")
    # One trace is a single step of 401 tokens: budget 300 would remove every step, so that row is a
    # reject with the reason (never an empty thinking in SFT data; a deliberate difference from the
    # reference), beside the truncated trace.
    assert "asap fine: 20 rows (18 written, 2 rejected)" in result.stderr
    assert "rejected 1: the budget removes every step" in result.stderr
    # 8 sample prompts are R1-rendered strings; one of them is the truncated trace
    assert "prompts holding a rendered chat template: 7 " in result.stderr
    rejects = {r["id"]: r["error"] for r in map(json.loads, (tmp_path / "fine.rejects.jsonl").read_text().splitlines())}
    assert rejects["m500-math500_deepseek_r1-math500_0016"] == \
        "the budget removes every step: budget 300, 401 tokens in 1 steps"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    before, after = sum(r["tokens_before"] for r in rows), sum(r["tokens_after"] for r in rows)
    assert f"trace tokens {before:,} -> {after:,} (x{after / before:.3f})" in result.stderr  # what pruning did
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert any(isinstance(row["prompt"], list) for row in rows)  # chat-message prompts are handled too
    for row in rows[::3]:
        trace = af.parse_trace(row["generation"], require_code=row.get("kind", "code") == "code")
        steps = af.split_steps(trace.think)
        prompt = row["prompt"] if isinstance(row["prompt"], str) else "\n".join(m["content"] for m in row["prompt"])
        if prompt.startswith(R1_USER) and prompt.endswith(R1_ASSISTANT):  # a rendered R1 prompt: its user content
            prompt = prompt[len(R1_USER):-len(R1_ASSISTANT)]
        expected = first_token_surprisal(model, tokenizer, prompt + "\n<think>\n", steps)
        assert row["step_surprisal"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        # the reference: the whole thinking counted (special tokens included); within the budget it
        # is written as it is, else the rule runs on the stripped steps and the kept ones are
        # written as their original paragraphs
        thinking = row["generation"].split("<think>", 1)[1].split("</think>", 1)[0].strip()
        assert row["tokens_before"] == len(tokenizer.encode(thinking))
        if row["tokens_before"] <= 300:
            assert row["pruned_think"] == thinking and row["kept_steps"] == list(range(len(steps)))
            continue
        kept = prune_steps_ref(steps, row["step_surprisal"], tokenizer, max_tokens=300)
        assert row["kept_steps"] == kept
        assert af.split_steps(row["pruned_think"]) == [steps[k] for k in kept]
        assert row["tokens_after"] == len(tokenizer.encode(row["pruned_think"])) and kept and row["pruned_think"]
        question = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": prompt}]
        assert row["messages"] == question + [
            {"role": "assistant", "content": "<think>\n" + row["pruned_think"] + "\n</think>\n" + trace.answer},
        ]


def test_fine_uses_coarse_think_and_rejects_bad_rows(tmp_path, model_dir):
    src = tmp_path / "in.jsonl"
    good = {"id": "a", "prompt": "Add.", "generation": "<think>\nx\n\ny\n\nz\n</think>\n```python\nprint(1)\n```",
            "coarse_think": "x\n\nz"}
    rows = [
        good,
        {"id": "no-prompt", "generation": good["generation"]},
        {"id": "cut", "prompt": "p", "generation": "<think>\nnever closed"},
        {"id": "long", "prompt": "p", "generation": "<think>\n" + "word " * 5000 + "\n</think>\n```python\nx\n```"},
        {"id": "bad-type", "prompt": 3, "generation": good["generation"]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    asap("fine", src, out, "--model", model_dir, "--ratio", "0.5", "--max-length", "2000")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["id"] for w in written] == ["a"]
    assert len(written[0]["step_surprisal"]) == 2  # the coarse thinking's steps, not the original's
    rejects = {r["id"]: r["error"] for r in map(json.loads, (tmp_path / "out.rejects.jsonl").read_text().splitlines())}
    assert rejects["no-prompt"] == "missing field 'prompt'"
    assert rejects["cut"].startswith("no </think>")
    assert "more than the model's context of 2000" in rejects["long"]
    assert rejects["bad-type"] == "prompt must be str or a list of chat messages, not int"


def test_fine_iterative_mode_runs(tmp_path, model_dir):
    out = tmp_path / "it.jsonl"
    src = tmp_path / "in.jsonl"
    src.write_text("".join(line + "\n" for line in EXAMPLES.read_text().splitlines()[:2]))
    asap("fine", src, out, "--model", model_dir, "--mode", "iterative", "--steps-per-round", "4", "--ratio", "0.7")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for row in map(json.loads, out.read_text().splitlines()):
        steps = af.split_steps(row["pruned_think"])  # the budget test is on the stripped kept steps
        assert len(tokenizer.encode("\n\n".join(steps))) <= int(0.7 * row["tokens_before"])


def test_fine_bad_model_path_is_a_clear_error(tmp_path):
    result = asap("fine", EXAMPLES, tmp_path / "o.jsonl", "--model", tmp_path / "missing", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
