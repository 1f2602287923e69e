"""Stage 1 end to end: `asap direct` and `asap coarse` through a real loopback chat-completions server
(and the hf backend on a tiny model), validation, rejects, the reply cache and resume after kill -9."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from llm_server import ChatServer, Scripted, prompt_think, user_content

pytest.importorskip("openai")

from asap_fast.cli import main
from asap_fast.core.errors import RowError
from asap_fast.core.matching import align_steps
from asap_fast.stage1.stages import (
    CoarseStage,
    explain_rejection,
    llm_cache_path,
    original_sections,
    snap_to_original,
    strip_fences,
)

TESTS = os.path.dirname(os.path.abspath(__file__))


def cli(argv: list[str]) -> int:
    """`asap <argv>` in-process: the real entry point (every error as one line and an exit code)."""
    return main(argv)


STEPS = (
    "Row {i} step 0: okay, let me read the problem: we need the minimum number of moves.",
    "Wait, maybe a greedy approach works if we always take the largest pile first?",
    "Hmm, for sample {i} the answer should be {k}, so let's verify with a quick table.",
    "Alternatively, dynamic programming over prefixes gives O(n^2) time overall.",
    "But n can be up to 200000, which is far too slow for quadratic algorithms.",
    "So the final plan: sort, sweep once, and keep a running sum modulo 1e9+7.",
)


def sections_of(i: int, n: int = 6) -> list[str]:
    """n thinking sections; sections of one row are far apart (difflib ratio < 0.4)."""
    return [step.format(i=i, k=7 * i + 3) for step in STEPS[:n]]


def generation_of(i: int, n: int = 6) -> str:
    return "<think>\n" + "\n\n".join(sections_of(i, n)) + f"\n</think>\n\nUse a loop.\n```python\nprint({i})\n```\n"


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_rows(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def compress(think: str, keep=(0, 2, 3)) -> str:
    sections = think.split("\n\n")
    return "\n\n".join(sections[k] for k in keep if k < len(sections))


def coarse_script(body, call):
    """Valid compressions (sections 0, 2, 3) in a fence; rows whose thinking names a behaviour get it."""
    think = prompt_think(body)
    if "Row 3 " in think and call == 0:
        return Scripted("This is not from the thinking at all.")
    if "Row 4 " in think:
        return Scripted("Completely unrelated words, never valid.")
    if "Row 5 " in think and call == 0:
        return Scripted("")
    return Scripted("```\n" + compress(think) + "\n```", usage=(100, 20))


def api_args(server, *extra):
    return ["--llm", "openai:test-model", "--api-base", server.url, "--api-key", "k", "--backoff", "0.01",
            "--timeout", "5", *extra]


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- helpers


def test_strip_fences():
    assert strip_fences("```\na\n\nb\n```") == "a\n\nb"
    assert strip_fences("  ```text\na\n```  ") == "a"
    assert strip_fences("a\n```") == "a"
    assert strip_fences("```a\n\nb```") == "a\n\nb"
    # a thinking that ends in a code block keeps its closing fence (the reference would cut it)
    assert strip_fences("a\n\n```python\nx = 1\n```") == "a\n\n```python\nx = 1\n```"
    assert strip_fences("```\na\n\n```python\nx = 1\n```\n```") == "a\n\n```python\nx = 1\n```"


def test_explain_rejection_names_the_section():
    original = "\n\n".join(sections_of(1))
    bad = "\n\n".join([sections_of(1)[0], "zzzz qqqq", sections_of(1)[3]])
    assert align_steps(original, bad) is None
    reason = explain_rejection(original, bad)
    assert re.fullmatch(r"section 2 of 3 matched no original section \(best difflib ratio 0\.\d\d < 0\.6\)", reason)
    out_of_order = "\n\n".join([sections_of(1)[5], sections_of(1)[0]])
    assert explain_rejection(original, out_of_order) == \
        "section 2 of 2 matched no original section (no original section was left)"


def test_snap_to_original():
    think = "\n\n".join(sections_of(2))
    edited = "\n\n".join(s + " Indeed." for s in sections_of(2)[1:3])
    alignment = align_steps(think, edited)
    assert alignment == [1, 2]
    assert snap_to_original(think, alignment) == "\n\n".join(sections_of(2)[1:3])
    assert original_sections(" a\n\n\n\n b ") == ["a", "", "b"]


def test_llm_cache_path(tmp_path):
    assert llm_cache_path(tmp_path / "o.jsonl") == tmp_path / "o.llm-cache.jsonl"
    assert llm_cache_path(tmp_path / "o.jsonl.gz") == tmp_path / "o.llm-cache.jsonl"
    assert llm_cache_path(tmp_path / "o.parquet") == tmp_path / "o.llm-cache.jsonl"
    assert llm_cache_path(tmp_path / "dataset_dir") == tmp_path / "dataset_dir.llm-cache.jsonl"


def test_coarse_stage_validates_options():
    for bad in (dict(metric="levenshtein"), dict(threshold=1.5), dict(max_attempts=-1), dict(max_attempts=1.5)):
        with pytest.raises(ValueError):
            CoarseStage(None, None, **bad)


# ---------------------------------------------------------------------------------------------- direct


def direct_rows():
    rows = [{"id": f"c{i}", "kind": "code", "prompt": f"Problem {i}: print {i}.", "generation": generation_of(i)}
            for i in range(4)]
    rows.append({"id": "m0", "kind": "math", "prompt": "What is 2 + 2?",
                 "generation": "<think>\nTwo plus two.\n\nIt is 4.\n</think>\n\nThe answer is $\\boxed{4}$.", "answer": "4"})
    rows.append({"id": "no-prompt", "generation": generation_of(9)})
    rows.append({"id": "no-generation", "prompt": "P"})
    rows.append({"id": "cut", "prompt": "P", "generation": "<think>\nI was cut off mid"})
    rows.append({"id": "no-code", "kind": "code", "prompt": "P", "generation": "<think>\nx\n</think>\nNo code."})
    rows.append({"id": "empty-prompt", "prompt": "", "generation": generation_of(8)})
    return rows


def test_direct_writes_direct_thought_and_rejects_bad_rows(tmp_path, server, capsys):
    server.script = lambda body, call: (
        Scripted(status=500) if "Problem 1:" in user_content(body) and call == 0
        else Scripted("Step-by-Step Solution\n1. " + user_content(body).split("\n")[3], usage=(30, 5)))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, direct_rows())
    assert cli(["direct", str(src), str(out), *api_args(server)]) == 0

    written = {r["id"]: r for r in read_rows(out)}
    # an empty question is inserted as it is, as the reference does
    assert sorted(written) == ["c0", "c1", "c2", "c3", "empty-prompt", "m0"]
    assert written["c2"]["direct_thought"] == "Step-by-Step Solution\n1. Problem 2: print 2."
    assert written["c2"]["generation"] == generation_of(2) and written["c2"]["kind"] == "code"
    rejects = {r["id"]: r for r in read_rows(tmp_path / "out.rejects.jsonl")}
    assert {r["stage"] for r in rejects.values()} == {"direct"}
    assert rejects["no-prompt"]["error"] == "missing field 'prompt'"
    assert rejects["no-generation"]["error"] == "missing field 'generation'"
    assert "no </think>" in rejects["cut"]["error"]
    assert "no ```python block" in rejects["no-code"]["error"]

    prompts = {user_content(r["body"]) for r in server.requests}
    code_prompt = next(p for p in prompts if "Problem 3:" in p)
    # the block as captured, its final newline included: a blank line before the closing fence
    assert "Code:\n```python\nprint(3)\n\n```" in code_prompt
    math_prompt = next(p for p in prompts if "2 + 2" in p)
    assert "Answer:\n```\nThe answer is $\\boxed{4}$.\n```" in math_prompt
    assert all(r["body"]["temperature"] == 0.0 and r["body"]["max_tokens"] == 16384 for r in server.requests)
    assert len(server.requests) == 7  # 6 rows + one retried 500

    err = capsys.readouterr().err
    assert "asap direct: 10 rows (6 written, 4 rejected)" in err
    assert "rejected 1: missing field 'prompt'" in err
    assert "LLM openai:test-model: 7 requests, 1 retried (1 500), 6 replies; 180 prompt + 30 completion tokens" in err


def test_direct_prompt_and_template_options(tmp_path, server):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, [{"id": "m", "kind": "math", "prompt": "Q", "generation": "<think>\nt\n</think>\nA = 4"}])
    template = tmp_path / "t.txt"
    template.write_text("Explain {answer} for {question} {x}\n", encoding="utf-8")
    assert cli(["direct", str(src), str(out), *api_args(server), "--template", str(template), "--temperature", "0.3"]) == 0
    assert user_content(server.requests[0]["body"]) == "Explain A = 4 for Q {x}"
    assert server.requests[0]["body"]["temperature"] == 0.3
    out2 = tmp_path / "out2.jsonl"
    assert cli(["direct", str(src), str(out2), *api_args(server), "--prompt", "code"]) == 0
    assert "no ```python block" in read_rows(tmp_path / "out2.rejects.jsonl")[0]["error"]


def test_bad_template_is_a_one_line_error(tmp_path, server, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, direct_rows()[:1])
    template = tmp_path / "t.txt"
    template.write_text("Compress {think}", encoding="utf-8")
    assert cli(["coarse", str(src), str(out), *api_args(server), "--template", str(template)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asap coarse: error: coarse template") and "{anchor} and {think}" in err and "\n" not in err
    assert not out.exists() and server.requests == []


def test_bad_llm_name_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_rows(src, direct_rows()[:1])
    assert cli(["direct", str(src), str(tmp_path / "o.jsonl"), "--llm", "gpt-4o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asap direct: error: --llm must be KIND:MODEL") and "\n" not in err


def test_unreachable_endpoint_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, direct_rows())
    argv = ["direct", str(src), str(out), "--llm", "openai:m", "--api-base", f"http://127.0.0.1:{free_port()}/v1",
            "--max-retries", "1", "--backoff", "0.01"]
    start = time.monotonic()
    assert cli(argv) == 1
    assert time.monotonic() - start < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("asap direct: error: cannot reach http://127.0.0.1:")
    assert read_rows(out) == [] and read_rows(tmp_path / "out.rejects.jsonl") == []
    assert json.loads((tmp_path / "out.jsonl.progress.json").read_text())["rows"] == 0


def test_persistent_5xx_stops_the_run_unless_reject_failed(tmp_path, server, capsys):
    server.script = lambda body, call: Scripted(status=503) if "Problem 2:" in user_content(body) else Scripted("ok")
    rows = [r for r in direct_rows() if r["id"] in ("c0", "c1", "c2", "c3")]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, rows)
    assert cli(["direct", str(src), str(out), *api_args(server, "--max-retries", "1", "--batch", "2")]) == 1
    err = capsys.readouterr().err
    assert "asap direct: error: HTTP 503" in err and "2 tries" in err
    assert [r["id"] for r in read_rows(out)] == ["c0", "c1"]  # the batch before the failure is kept

    assert cli(["direct", str(src), str(out), *api_args(server, "--max-retries", "1", "--reject-failed")]) == 0
    assert [r["id"] for r in read_rows(out)] == ["c0", "c1", "c3"]
    (reject,) = read_rows(tmp_path / "out.rejects.jsonl")
    assert reject["id"] == "c2" and reject["error"].startswith("HTTP 503")


def test_concurrency_bound_through_the_cli(tmp_path, server):
    server.script = lambda body, call: Scripted("ok", delay=0.1)
    rows = [{"id": i, "prompt": f"P{i}", "generation": generation_of(i)} for i in range(10)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, rows)
    assert cli(["direct", str(src), str(out), *api_args(server, "--concurrency", "3", "--quiet")]) == 0
    assert server.max_in_flight == 3 and len(read_rows(out)) == 10


# ---------------------------------------------------------------------------------------------- coarse


def coarse_rows(n=7):
    rows = [{"id": f"r{i}", "generation": generation_of(i), "direct_thought": f"Step-by-Step Solution for {i}"}
            for i in range(n)]
    rows.append({"id": "no-anchor", "generation": generation_of(10)})
    rows.append({"id": "cut", "generation": "<think>\nno end", "direct_thought": "x"})
    return rows


def test_coarse_validates_reasks_and_rejects(tmp_path, server, capsys):
    server.script = coarse_script
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, coarse_rows())
    # --max-attempts counts re-requests after the first, as the reference's: 2 -> at most 3 requests
    assert cli(["coarse", str(src), str(out), *api_args(server, "--max-attempts", "2")]) == 0

    written = {r["id"]: r for r in read_rows(out)}
    assert sorted(written) == ["r0", "r1", "r2", "r3", "r5", "r6"]
    for rid, row in written.items():
        i = int(rid[1:])
        assert row["coarse_think"] == compress("\n\n".join(sections_of(i)))
        assert row["coarse_alignment"] == [0, 2, 3]
        assert row["direct_thought"] == f"Step-by-Step Solution for {i}"
    assert [written[r]["coarse_attempts"] for r in ("r0", "r3", "r5")] == [1, 2, 1]  # r5: empty reply retried by the client

    rejects = {r["id"]: r["error"] for r in read_rows(tmp_path / "out.rejects.jsonl")}
    assert re.fullmatch(r"no valid compression in 3 requests: section 1 of 1 matched no original section "
                        r"\(best difflib ratio 0\.\d\d < 0\.6\)", rejects["r4"])
    assert rejects["no-anchor"] == "no direct_thought (run `asap direct` on the corpus first)"
    assert "no </think>" in rejects["cut"]

    per_row = {}
    for request in server.requests:
        per_row[prompt_think(request["body"]).split(":")[0]] = per_row.get(prompt_think(request["body"]).split(":")[0], 0) + 1
        assert request["body"]["temperature"] == 1.0 and request["body"]["top_p"] == 1.0
    assert per_row["Row 4 step 0"] == 3 and per_row["Row 3 step 0"] == 2 and per_row["Row 0 step 0"] == 1
    # the empty reply of row 5 is retried by the client before the stage sees it
    assert per_row["Row 5 step 0"] == 2
    prompt = user_content(server.requests[0]["body"])
    assert prompt.startswith("Compress the given thinking by referring to the provided solution.")
    assert "Solution:\n```\nStep-by-Step Solution for " in prompt

    err = capsys.readouterr().err
    assert "asap coarse: 9 rows (6 written, 3 rejected)" in err
    assert "rejected 1: no valid compression in N requests" in err  # reasons are counted without their numbers
    assert "rows accepted by attempts needed: 5 after 1, 1 after 2; rows with no valid compression: 1" in err
    assert "1 retried (1 empty reply)" in err


def test_coarse_empty_replies_count_as_attempts(tmp_path, server):
    server.script = lambda body, call: Scripted("")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, coarse_rows(1)[:1])
    assert cli(["coarse", str(src), str(out), *api_args(server, "--max-retries", "0", "--max-attempts", "1")]) == 0
    (reject,) = read_rows(tmp_path / "out.rejects.jsonl")
    assert reject["error"] == "no valid compression in 2 requests: empty reply"
    assert len(server.requests) == 2


def test_coarse_snap_threshold_and_metric(tmp_path, server):
    def script(body, call):
        think = prompt_think(body)
        return Scripted("\n\n".join(s + " Indeed." for s in compress(think, keep=(1, 4)).split("\n\n")))

    server.script = script
    src = tmp_path / "in.jsonl"
    write_rows(src, coarse_rows(2)[:2])
    out = tmp_path / "snap.jsonl"
    assert cli(["coarse", str(src), str(out), *api_args(server, "--snap-to-original", "--metric", "indel")]) == 0
    row = read_rows(out)[0]
    assert row["coarse_alignment"] == [1, 4]
    assert row["coarse_think"] == "\n\n".join(sections_of(0)[k] for k in (1, 4))
    strict = tmp_path / "strict.jsonl"
    assert cli(["coarse", str(src), str(strict), *api_args(server, "--threshold", "0.99", "--max-attempts", "1")]) == 0
    assert read_rows(strict) == []
    assert all(r["error"].startswith("no valid compression in 2 requests: section 1 of 2")
               for r in read_rows(tmp_path / "strict.rejects.jsonl"))


def test_rerun_makes_no_requests_for_cached_replies(tmp_path, server, capsys):
    server.script = coarse_script
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(src, coarse_rows())
    assert cli(["coarse", str(src), str(out), *api_args(server)]) == 0
    first, first_rejects, sent = read_rows(out), read_rows(tmp_path / "out.rejects.jsonl"), len(server.requests)
    assert (tmp_path / "out.llm-cache.jsonl").exists()
    capsys.readouterr()
    # the same OUT: everything is committed, nothing to do
    assert cli(["coarse", str(src), str(out), *api_args(server)]) == 0
    assert len(server.requests) == sent and read_rows(out) == first
    # OUT lost but the cache kept: every row is redone from the cache, not one request
    for name in ("out.jsonl", "out.rejects.jsonl", "out.jsonl.progress.json"):
        (tmp_path / name).unlink()
    capsys.readouterr()
    assert cli(["coarse", str(src), str(out), *api_args(server)]) == 0
    assert len(server.requests) == sent
    assert read_rows(out) == first and read_rows(tmp_path / "out.rejects.jsonl") == first_rejects
    assert f"0 requests, 0 replies, {sent - 1} from cache" in capsys.readouterr().err
    # --no-cache pays again
    for name in ("out.jsonl", "out.rejects.jsonl", "out.jsonl.progress.json"):
        (tmp_path / name).unlink()
    assert cli(["coarse", str(src), str(out), *api_args(server, "--no-cache", "--quiet")]) == 0
    assert len(server.requests) > sent


KILLED_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_stage1 import cli
    sys.exit(cli({argv!r}))
""")


def test_kill_9_then_resume_pays_for_no_reply_twice(tmp_path):
    rows = [{"id": f"r{i}", "generation": generation_of(i), "direct_thought": f"anchor {i}"} for i in range(24)]
    src = tmp_path / "in.jsonl"
    write_rows(src, rows)

    def script(body, call):
        return Scripted(compress(prompt_think(body)))

    clean, killed, resumed = ChatServer(script), ChatServer(script), ChatServer(script)
    try:
        clean_out = tmp_path / "clean" / "out.jsonl"
        assert cli(["coarse", str(src), str(clean_out), *api_args(clean, "--quiet")]) == 0

        out = tmp_path / "killed" / "out.jsonl"
        killed.hold_after(10)
        argv = ["coarse", str(src), str(out), *api_args(killed, "--concurrency", "3", "--batch", "5",
                                                         "--commit-seconds", "3600", "--quiet")]
        process = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(tests=TESTS, argv=argv)], cwd=tmp_path)
        deadline = time.monotonic() + 60
        while killed.held == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert killed.held > 0, "the run never reached the held request"
        # No reply arrives any more; wait until the client has logged every one it received (a
        # kill between receiving a reply and logging it would lose that one reply, by design).
        answered = set(killed.answered)
        cache = llm_cache_path(out)
        while time.monotonic() < deadline:
            if cache.exists() and len(cache.read_bytes().splitlines()) >= len(answered):
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert len(answered) >= 10 and set(killed.answered) == answered
        assert len(cache.read_bytes().splitlines()) == len(answered)
        assert read_rows(out) == []  # nothing was committed: every row is redone on resume

        assert cli(["coarse", str(src), str(out), *api_args(resumed, "--quiet")]) == 0
        requested_again = {r["key"] for r in resumed.requests}
        assert not requested_again & answered, "a reply received before the kill was paid for again"
        assert len(resumed.requests) == len(rows) - len(answered), (len(resumed.requests), len(answered))
        assert read_rows(out) == read_rows(clean_out)
        assert len(read_rows(out)) == len(rows)
    finally:
        for s in (clean, killed, resumed):
            s.close()


# ---------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    testing = pytest.importorskip("asap_fast.testing")
    tokenizer = testing.tiny_tokenizer()
    model = testing.tiny_causal_lm(len(tokenizer), arch="qwen2", seed=3, max_position_embeddings=1024)
    path = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_backend_end_to_end(tmp_path, tiny_model_dir, capsys):
    rows = [{"id": f"c{i}", "prompt": f"Problem {i}.", "generation": generation_of(i, 3)} for i in range(3)]
    rows.append({"id": "bad", "prompt": "P", "generation": "no tags"})
    src, direct, coarse = tmp_path / "in.jsonl", tmp_path / "direct.jsonl", tmp_path / "coarse.jsonl"
    write_rows(src, rows)
    llm = ["--llm", f"hf:{tiny_model_dir}", "--max-tokens", "8", "--gen-batch", "2"]
    assert cli(["direct", str(src), str(direct), *llm]) == 0
    written = read_rows(direct)
    assert [r["id"] for r in written] == ["c0", "c1", "c2"]
    assert all(isinstance(r["direct_thought"], str) and r["direct_thought"] for r in written)
    assert "no <think>" in read_rows(tmp_path / "direct.rejects.jsonl")[0]["error"]
    assert f"LLM hf:{tiny_model_dir}: 3 requests" in capsys.readouterr().err

    assert cli(["coarse", str(direct), str(coarse), *llm, "--max-attempts", "1", "--seed", "0"]) == 0
    assert read_rows(coarse) == []  # a random model writes no valid compression
    rejects = read_rows(tmp_path / "coarse.rejects.jsonl")
    assert [r["id"] for r in rejects] == ["c0", "c1", "c2"] and {r["stage"] for r in rejects} == {"coarse"}
    assert all(r["error"].startswith("no valid compression in 2 requests: ") for r in rejects)
    assert "rows with no valid compression: 3" in capsys.readouterr().err


def test_process_api_returns_row_errors(tiny_model_dir):
    from asap_fast.stage1.llm import HFBackend
    from asap_fast.stage1.stages import DirectStage

    with HFBackend(str(tiny_model_dir), batch_size=4) as backend:
        stage = DirectStage(backend, prompt="code")
        results = stage.process([{"prompt": "P", "generation": generation_of(1)},
                                 {"prompt": "P", "generation": "<think>\nx\n</think>\nno code"}])
    assert isinstance(results[0], dict) and "direct_thought" in results[0]
    assert isinstance(results[1], RowError) and "no ```python block" in str(results[1])


def test_progress_line_has_rate_eta_and_counters(tmp_path):
    # Stage 1 reports progress through the run engine's Progress: the rows a previous run
    # committed count as done, rates and the ETA come from this run's rows. (The LLM's request and
    # token counters are in the end summary, tested above, no longer in the progress line.)
    import io

    from asap_fast.pipeline.progress import Progress

    stream = io.StringIO()
    progress = Progress("coarse", quiet=False, done=10, total=30, stream=stream)
    progress.start -= 10.0
    progress.last_log = float("-inf")
    progress.update(5)
    assert stream.getvalue().strip() == "asap coarse: 15/30 rows, 0.50 rows/s, ETA 30s"
