"""`asap compress --method ...` end to end on real traces: every method on the run engine (resume,
shards, manifest), math rows without a python block, option errors, and `asap report A B ...`."""

from __future__ import annotations

import json

import pytest

from asap_fast.cli import main
from asap_fast.testing import trace_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEP_METHODS = ("spirit", "selective-context")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(cot_traces, tmp_path_factory):
    """Real code and math traces, shortened, with their kind; one truncated trace; one code row
    whose answer has no python block."""
    rows = []
    for kind in ("math", "code"):
        chosen = 0
        for record in [r for r in cot_traces if r["kind"] == kind and "</think>" in r["generation"]]:
            if chosen == 4:
                break
            try:
                prompt, steps = trace_case(record, max_chars=1500, max_prompt_chars=300)
            except ValueError:  # an empty thinking
                continue
            if len(steps) < 4:
                continue
            chosen += 1
            answer = record["generation"].split("</think>", 1)[1]
            rows.append({"id": record["id"], "kind": kind, "prompt": prompt[: -len("\n<think>\n")],
                         "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>" + answer})
    rows.insert(3, {"id": "cut", "kind": "math", "prompt": "p", "generation": "<think>\nnever closed"})
    rows.append({"id": "nocode", "kind": "code", "prompt": "p", "generation": "<think>\na\n\nb\n</think>\nprose only"})
    path = tmp_path_factory.mktemp("corpus") / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", STEP_METHODS)
def test_method_runs_resumes_and_shards(method, corpus, model_dir, tmp_path, capsys):
    out = tmp_path / f"{method}.jsonl"
    args = ("compress", corpus, out, "--method", method, "--model", model_dir, "--quiet")
    assert cli(*args) == 0
    rows = read(out)
    rejects = read(tmp_path / f"{method}.rejects.jsonl")
    assert {"cut", "nocode"} <= {r["id"] for r in rejects}
    assert all(r["stage"] == method for r in rejects)
    assert "python" in next(r["error"] for r in rejects if r["id"] == "nocode")
    # a step holding more than half of the tokens can leave nothing under ratio 0.5 (the reference's rule)
    assert all(r["error"].startswith("the budget removes every step") for r in rejects if r["id"] not in ("cut", "nocode"))
    assert len(rows) + len(rejects) == 10 and len(rows) >= 6
    assert {r["kind"] for r in rows} == {"math", "code"}  # math rows need no code block
    for row in rows:
        assert row["method"] == method
        assert row["tokens_after"] <= row["tokens_before"]
        assert row["messages"][-1]["content"].startswith("<think>\n" + row["pruned_think"] + "\n</think>\n")
    manifest = json.loads((tmp_path / f"{method}.jsonl.manifest.json").read_text())
    assert manifest["options"]["method"] == method and manifest["options"][method]["target"]["ratio"] == 0.5
    first = out.read_bytes()
    assert cli(*args) == 0  # a finished run resumes to nothing
    assert out.read_bytes() == first
    shards = []
    for i in range(2):
        shard = tmp_path / f"shard{i}.jsonl"
        assert cli(*args[:2], shard, *args[3:], "--shard", f"{i}/2") == 0
        shards.append(shard)
    merged = tmp_path / "merged.jsonl"
    assert cli("merge", merged, *shards, "--quiet") == 0
    assert merged.read_bytes() == first
    capsys.readouterr()
    assert cli(*args, "--ratio", "0.3") == 2  # other options into the same OUT
    assert "ratio" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_bytes(corpus, model_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C after a few batches (injected into the stage), then the same command: the bytes of an
    uninterrupted run."""
    from asap_fast.methods.selective_context import SelectiveContextStage

    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    args = ("--method", "selective-context", "--unit", "sentence", "--model", model_dir, "--quiet", "--batch", "2",
            "--commit-seconds", "0")
    assert cli("compress", corpus, full, *args) == 0
    original, calls = SelectiveContextStage.process, []

    def stopping(self, records):
        calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, records)

    monkeypatch.setattr(SelectiveContextStage, "process", stopping)
    assert cli("compress", corpus, part, *args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert 0 < len(part.read_bytes()) < len(full.read_bytes())
    monkeypatch.setattr(SelectiveContextStage, "process", original)
    assert cli("compress", corpus, part, *args) == 0
    assert part.read_bytes() == full.read_bytes()
    assert (tmp_path / "part.rejects.jsonl").read_bytes() == (tmp_path / "full.rejects.jsonl").read_bytes()


def test_llmlingua_methods_through_the_cli(corpus, model_dir, tmp_path, monkeypatch):
    pytest.importorskip("llmlingua")
    from asap_fast.methods.llmlingua2 import seed_tiktoken_cache
    from asap_fast.testing import tiny_token_classifier

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    seed_tiktoken_cache()
    classifier = tiny_token_classifier(tmp_path / "tiny-xlm-roberta-large")
    for method in ("llmlingua2", "tokenskip"):
        out = tmp_path / f"{method}.jsonl"
        assert cli("compress", corpus, out, "--method", method, "--model", model_dir, "--lingua-model", classifier,
                   "--device", "cpu", "--quiet") == 0
        rows = read(out)
        assert len(rows) == 8 and all(r["method"] == method for r in rows)  # word methods keep every row
        if method == "tokenskip":
            assert all(r["messages"][0]["content"].endswith(f"<|eot_id|>{r['tokenskip_ratio']!r}<|eot_id|>")
                       for r in rows)
        else:
            assert all(r["kept_words"] is not None for r in rows)


def test_report_compares_methods(corpus, model_dir, tmp_path):
    outs = []
    assert cli("fine", corpus, tmp_path / "fine.jsonl", "--model", model_dir, "--ratio", "0.5", "--quiet") == 0
    outs.append(tmp_path / "fine.jsonl")
    for method in STEP_METHODS:
        out = tmp_path / f"{method}.jsonl"
        assert cli("compress", corpus, out, "--method", method, "--model", model_dir, "--quiet") == 0
        outs.append(out)
    page = tmp_path / "cmp.html"
    assert cli("report", *outs, page, "--max-traces", "2") == 0
    html = page.read_text()
    for label in ("asap", "spirit", "selective-context"):
        assert f'data-label="{label}"' in html
    assert html.count('<section class="trace"') == 2
    assert html.count('class="col" data-method=') == 6
    assert "<del>" in html and "<script" not in html
    # one input: the single-method report as before
    assert cli("report", outs[0], tmp_path / "one.html") == 0
    assert "Corpus statistics" in (tmp_path / "one.html").read_text()


@pytest.mark.parametrize("argv,message", [
    (("--method", "spirit", "--unit", "token"), "--unit does not apply to --method spirit"),
    (("--method", "spirit", "--llm", "openai:x"), "only --method asap"),
    (("--method", "selective-context", "--mode", "iterative"), "--mode"),
    (("--method", "tokenskip", "--ratio", "0.5"), "draws its ratio"),
    (("--method", "tokenskip", "--match-ratio", "0.5", "--tokenskip-ratios", "0.5,1"), "not both"),
    (("--match-ratio", "0.5", "--mode", "iterative", "--skip-coarse"), "--mode global"),
    (("--method", "llmlingua2", "--lingua-model", "some/classifier"), "xlm-roberta-large"),
    (("--method", "spirit", "--skip-coarse"), "--skip-coarse"),
])
def test_option_errors_are_one_line(argv, message, corpus, tmp_path, capsys):
    assert cli("compress", corpus, tmp_path / "o.jsonl", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_match_ratio_through_the_cli(corpus, model_dir, tmp_path):
    """--match-ratio on `asap fine`, `asap compress --skip-coarse` and a baseline: each row records its
    knob and keeps about the ratio; the manifest says matched, so a plain --ratio run is another run."""
    outs = {}
    for name, argv in {"fine": ("fine",), "asap": ("compress", "--skip-coarse"),
                       "selective-context": ("compress", "--method", "selective-context")}.items():
        outs[name] = tmp_path / f"{name}.jsonl"
        assert cli(*argv[:1], corpus, outs[name], *argv[1:], "--model", model_dir, "--match-ratio", "0.5",
                   "--quiet") == 0
        rows = read(outs[name])
        assert len(rows) >= 6 and all("match_knob" in r for r in rows)
        mean = sum(r["tokens_after"] / r["tokens_before"] for r in rows) / len(rows)
        assert abs(mean - 0.5) < 0.05, (name, mean)  # short shortened traces: coarse knobs
    assert [r["pruned_think"] for r in read(outs["fine"])] == [r["pruned_think"] for r in read(outs["asap"])]
    assert cli("fine", corpus, outs["fine"], "--model", model_dir, "--ratio", "0.5", "--quiet") == 2  # not a resume


def test_asap_rows_carry_their_method(corpus, model_dir, tmp_path):
    """`asap compress --skip-coarse` on math rows: no python block needed; rows say method asap."""
    out = tmp_path / "asap.jsonl"
    assert cli("compress", corpus, out, "--skip-coarse", "--model", model_dir, "--ratio", "0.5", "--quiet") == 0
    rows = read(out)
    assert len(rows) >= 6 and all(r["method"] == "asap" for r in rows)
    assert {r["kind"] for r in rows} == {"math", "code"}


def test_full_asap_compress_on_math_rows(cot_traces, model_dir, tmp_path):
    """`asap compress` with its LLM stages (a loopback chat server) on real math traces: the math
    direct-thought prompt, no python block required, every stage's fields written."""
    pytest.importorskip("openai")
    from llm_server import ChatServer, Scripted, prompt_think, user_content

    def script(body, call):
        content = user_content(body)
        if "The compressed thinking is:" in content:  # stage 1b: keep every other section
            sections = prompt_think(body).split("\n\n")
            return Scripted("\n\n".join(sections[::2]))
        assert "answer step by step" in content and "Final Answer" in content  # the math anchor prompt
        return Scripted("Step-by-Step Solution\n1. Compute.\nFinal Answer\n4")

    rows = []
    for record in [r for r in cot_traces if r["kind"] == "math" and "</think>" in r["generation"]]:
        prompt, steps = trace_case(record, max_chars=1200, max_prompt_chars=300)
        if len(steps) < 6:
            continue
        if len(rows) == 3:
            break
        answer = record["generation"].split("</think>", 1)[1]
        rows.append({"id": record["id"], "kind": "math", "prompt": prompt[: -len("\n<think>\n")],
                     "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>" + answer})
    src, out = tmp_path / "math.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ChatServer(script)
    try:
        assert cli("compress", src, out, "--llm", "openai:m", "--api-base", server.url, "--api-key", "k",
                   "--model", model_dir, "--ratio", "0.8", "--quiet") == 0
    finally:
        server.close()
    written = read(out)
    assert len(written) == len(rows)
    for row in written:
        assert row["method"] == "asap" and row["direct_thought"].endswith("Final Answer\n4")
        assert row["coarse_think"] and row["kept_steps"] and "```python" not in row["messages"][-1]["content"][-20:]
