"""`asap compress`: stage 1a + 1b + 2 in one run through a loopback chat-completions server and a tiny
scorer; rejects carry their stage; --skip-coarse needs no LLM and equals `asap fine` on the thinking."""

import json

import pytest
from llm_server import ChatServer, Scripted, prompt_think, user_content

from asap_fast.cli import main

pytest.importorskip("openai")


STEPS = (
    "Row {i} step 0: okay, let me read the problem: we need the minimum number of moves.",
    "Wait, maybe a greedy approach works if we always take the largest pile first?",
    "Hmm, for sample {i} the answer should be {k}, so let's verify with a quick table.",
    "Alternatively, dynamic programming over prefixes gives O(n^2) time overall.",
    "But n can be up to 200000, which is far too slow for quadratic algorithms.",
    "So the final plan: sort, sweep once, and keep a running sum modulo 1e9+7.",
)


def generation_of(i: int) -> str:
    steps = [s.format(i=i, k=7 * i + 3) for s in STEPS]
    return "<think>\n" + "\n\n".join(steps) + f"\n</think>\n\nUse a loop.\n```python\nprint({i})\n```\n"


ROWS = [{"id": f"r{i}", "prompt": f"Problem {i}: print {i}.", "generation": generation_of(i)} for i in range(6)]
ROWS.insert(2, {"id": "cut", "prompt": "Problem x.", "generation": "<think>\nnever closed"})


def script(body, call):
    content = user_content(body)
    if "The compressed thinking is:" in content:  # stage 1b
        think = prompt_think(body)
        if "Row 4 " in think:
            return Scripted("Completely unrelated words, never valid.")
        sections = think.split("\n\n")
        return Scripted("```\n" + "\n\n".join(sections[k] for k in (0, 2, 3, 5)) + "\n```")
    return Scripted("Step-by-Step Solution\n1. Read the input.\n2. Print it.")  # stage 1a


@pytest.fixture
def server():
    s = ChatServer(script)
    yield s
    s.close()


def cli(*argv) -> int:
    """The `asap` entry point in-process (its exit code; errors as one line on stderr)."""
    return main([str(a) for a in argv])


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_compress_runs_all_three_stages(tmp_path, server, model_dir, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, ROWS)
    llm = ["--llm", "openai:m", "--api-base", server.url, "--api-key", "k", "--backoff", "0.01", "--timeout", "5",
           "--max-attempts", "1"]
    assert cli("compress", src, out, *llm, "--model", model_dir, "--ratio", "0.6", "--batch", "3") == 0
    written = {r["id"]: r for r in read(out)}
    assert sorted(written) == ["r0", "r1", "r2", "r3", "r5"]
    for row in written.values():
        assert row["direct_thought"].startswith("Step-by-Step Solution")
        assert row["coarse_alignment"] == [0, 2, 3, 5] and row["coarse_attempts"] == 1
        assert len(row["step_surprisal"]) == 4  # stage 2 scored the coarse thinking's steps
        coarse_steps = row["coarse_think"].split("\n\n")
        assert row["pruned_think"] == "\n\n".join(coarse_steps[k] for k in row["kept_steps"])
        assert row["tokens_after"] <= int(0.6 * row["tokens_before"])
        assert row["messages"][-1]["content"].startswith("<think>\n" + row["pruned_think"] + "\n</think>\n")
    rejects = {r["id"]: r for r in read(tmp_path / "out.rejects.jsonl")}
    assert rejects["cut"]["stage"] == "direct"
    assert rejects["r4"]["stage"] == "coarse" and "no valid compression in 2 requests" in rejects["r4"]["error"]
    assert "asap compress: 7 rows (5 written, 2 rejected)" in capsys.readouterr().err
    # the same as the three commands one after another: stage 2 alone on the stage-1 output
    stage1 = tmp_path / "stage1.jsonl"
    keys = ("pruned_think", "step_surprisal", "kept_steps", "tokens_before", "tokens_after", "messages")
    write(stage1, [{k: v for k, v in r.items() if k not in keys} for r in read(out)])
    assert cli("fine", stage1, tmp_path / "fine.jsonl", "--model", model_dir, "--ratio", "0.6", "--quiet") == 0
    assert read(tmp_path / "fine.jsonl") == read(out)
    # resume: a second run asks the LLM nothing and writes nothing twice
    requests = len(server.requests)
    assert cli("compress", src, out, *llm, "--model", model_dir, "--ratio", "0.6", "--quiet") == 0
    assert len(server.requests) == requests and len(read(out)) == 5


def test_compress_skip_coarse_needs_no_llm_and_prunes_the_original_thinking(tmp_path, model_dir):
    src = tmp_path / "in.jsonl"
    rows = [dict(r, coarse_think="ignored") for r in ROWS]
    write(src, rows)
    assert cli("compress", src, tmp_path / "c.jsonl", "--skip-coarse", "--model", model_dir, "--budget", "120",
               "--quiet") == 0
    write(tmp_path / "plain.jsonl", ROWS)
    assert cli("fine", tmp_path / "plain.jsonl", tmp_path / "f.jsonl", "--model", model_dir, "--budget", "120",
               "--quiet") == 0
    compressed, fine = read(tmp_path / "c.jsonl"), read(tmp_path / "f.jsonl")
    # budget 120 keeps some steps of every row (a budget that removes every step is a reject)
    assert len(compressed) == 6 and all(r["kept_steps"] and r["tokens_after"] <= 120 for r in compressed)
    # the same rows as `asap fine` writes, but for the `method` that `asap compress` names
    assert all(r["method"] == "asap" for r in compressed)
    assert [{k: v for k, v in r.items() if k not in ("coarse_think", "method")} for r in compressed] == fine
    assert all("direct_thought" not in r for r in compressed)
    rejects = read(tmp_path / "c.rejects.jsonl")
    assert [(r["id"], r["stage"]) for r in rejects] == [("cut", "fine")]


def test_compress_without_llm_or_skip_is_an_error(tmp_path, model_dir, capsys):
    src = tmp_path / "in.jsonl"
    write(src, ROWS[:1])
    assert cli("compress", src, tmp_path / "o.jsonl", "--model", model_dir) == 2
    assert "--llm is required" in capsys.readouterr().err
