"""Issue 21, run engine: extra probes beside tests/test_run_integrity.py, written independently of
main's implementation (hard-linked side files, hostile rows into Parquet OUT, one Parquet part per
value type, a kill -9 holder of the lock, merge refusing a locked shard)."""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from asap_fast.cli import main as cli

# Second, independent probes of what tests/test_run_integrity.py covers: the slow tier keeps the
# default run within its time.
pytestmark = pytest.mark.slow
from asap_fast.pipeline.engine import RunOptions, run_corpus
from asap_fast.pipeline.records import rejects_path
from asap_fast.pipeline.claim import OutputBusy, claim_output

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "sample-traces.jsonl")


def identity(records):
    return [{**r, "seen": True} for r in records]


def run(inp, out, **kw):
    return run_corpus(inp, out, stage="t", process=identity, options=RunOptions(quiet=True, **kw))


def write_rows(path, rows):
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows))


def test_a_second_run_on_a_locked_out_stops_at_once_naming_the_pid(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, [{"id": i, "generation": "g"} for i in range(5)])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from asap_fast.pipeline.claim import claim_output
        claim_output({str(out)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # outside the checkout: the installed package
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy, match=f"pid {holder.pid}"):
            run(inp, out)
        assert not out.exists()  # refused before anything was written
        assert cli(["split", str(inp), str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(holder.pid) in err
    finally:
        holder.kill()  # kill -9: the kernel drops the flock with the process
        holder.wait()
    run(inp, out)
    assert len(out.read_text().splitlines()) == 5


def test_merge_holds_the_shard_locks(tmp_path):
    from asap_fast.pipeline.shards import merge_shards

    from asap_fast.pipeline.shards import shard_plan

    inp, shard = tmp_path / "in.jsonl", tmp_path / "s0.jsonl"
    write_rows(inp, [{"id": i, "generation": "g"} for i in range(4)])
    rows, meta = shard_plan(inp, (0, 1))
    run_corpus(inp, shard, stage="t", process=identity, options=RunOptions(quiet=True), rows=rows, shard=(0, 1),
               meta=meta)
    holder = subprocess.Popen([sys.executable, "-c", "import time; from asap_fast.pipeline.claim import claim_output; "
                               f"claim_output({str(shard)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            merge_shards(tmp_path / "m.jsonl", [shard])
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_concurrent_cli_runs_never_mix_rows(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, [{"id": i, "prompt": "p", "kind": "math", "generation": f"<think>a.\n\nb {i}.</think> ok"} for i in range(3000)])
    cmd = [sys.executable, "-m", "asap_fast.cli", "split", str(inp), str(out), "--quiet", "--batch", "16",
           "--commit-seconds", "0"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    assert "pid" in [err for rc, err in results if rc == 2][0]
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    rejected = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert rejected == [] and ids == list(range(3000))


@pytest.mark.parametrize("how", ["same", "spelling", "symlink", "hardlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_out_is_never_the_input(tmp_path, how, overwrite, capsys):
    inp = tmp_path / "in.jsonl"
    write_rows(inp, [{"id": i, "generation": "g"} for i in range(4)])
    before = inp.read_bytes()
    out = {"same": inp, "spelling": tmp_path / "x" / ".." / "in.jsonl"}.get(how, tmp_path / "alias.jsonl")
    (tmp_path / "x").mkdir()
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hardlink":
        os.link(inp, out)
    args = ["split", str(inp), str(out), "--quiet"] + (["--overwrite"] if overwrite else [])
    assert cli(args) == 2
    assert "input" in capsys.readouterr().err
    assert inp.read_bytes() == before


def test_a_side_file_that_is_the_input_is_refused(tmp_path):
    inp = tmp_path / "in.jsonl"
    write_rows(inp, [{"id": 1, "generation": "g"}])
    os.link(inp, tmp_path / "out.jsonl.progress.json")
    with pytest.raises(ValueError, match="input"):
        run(inp, tmp_path / "out.jsonl", overwrite=True)
    assert inp.stat().st_size > 0


def hostile_rows():
    yield b'{"id": "deep", "generation": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
    yield b'{"id": "bigint", "generation": "g", "n": ' + b"9" * 5000 + b"}\n"
    yield b'{"id": "nan", "generation": "g", "x": NaN}\n'
    yield b'{"id": "inf", "generation": "g", "x": -Infinity}\n'
    yield b'{"id": "surrogate", "generation": "\\ud800"}\n'
    yield b"\xff\xfe not utf-8\n"
    yield b"[1, 2]\n"


def fuzzed_rows(rng, n):
    good = json.dumps({"id": "f", "generation": "<think>a</think> b", "n": [1, {"k": 2.5}]}).encode()
    alphabet = b'{}[]":,0123456789eE.-+\\ufdNaIty \xef\xbb\xbf\xff\x00'
    for _ in range(n):
        row = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            at = rng.randrange(len(row) + 1)
            if op == 0:
                row[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            elif op == 1 and row:
                del row[at:at + rng.randint(1, 4)]
            else:
                row[at:at] = rng.choice([b"[" * 5000, b"9" * 4400, b"NaN", b"1e999", b"\\udc00"])
        yield bytes(row).replace(b"\n", b" ") + b"\n"


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_whatever_one_row_holds_it_is_written_or_rejected_with_its_line(tmp_path, suffix):
    rng = random.Random(21)
    rows = list(hostile_rows()) + list(fuzzed_rows(rng, 400))
    ok = [(json.dumps({"id": f"ok{k}", "generation": "g"}) + "\n").encode() for k in range(len(rows))]
    lines = [line for pair in zip(ok, rows) for line in pair]
    inp, out = tmp_path / "in.jsonl", tmp_path / f"out.{suffix}"
    write_rows(inp, lines)
    summary = run(inp, out, batch=7)
    assert summary.rows == len(lines) and summary.written + summary.rejected == len(lines)
    rejects = [json.loads(x) for x in rejects_path(out).read_text().splitlines()]
    # the hostile rows are lines 2, 4, ..., 14 (each after a good row): those that cannot be read
    # are named by their line; NaN / -Infinity rows are read and refused when written, by their id
    assert {"line:2", "line:4", "line:10", "line:12", "line:14", "nan", "inf"} <= {r["id"] for r in rejects}
    for r in rejects:
        assert r["error"] and "\n" not in r["error"]
    # every written row is strict JSON (no NaN / Infinity)
    from asap_fast.pipeline.records import read_rows
    for row in read_rows(out):
        assert row.error is None
        json.dumps(row.record, allow_nan=False)
    assert {f"ok{k}" for k in range(len(rows))} <= {r.record.get("id") for r in read_rows(out)}
    # a resume of the finished run is not stopped by any of them either
    assert run(inp, out).rows == 0


def test_a_utf8_bom_is_read(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, [b"\xef\xbb\xbf" + json.dumps({"id": 1, "generation": "g"}).encode() + b"\n"])
    assert run(inp, out).written == 1


def test_parquet_out_of_the_sample_file(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from asap_fast.pipeline.records import read_rows

    out = tmp_path / "out.parquet"
    assert cli(["split", EXAMPLES, str(out), "--quiet"]) == 0
    meta = pq.read_schema(out).metadata
    assert json.loads(meta[b"asap_fast.json_fields"]) == ["prompt"]
    back = {r.record["id"]: r.record["prompt"] for r in read_rows(out)}
    sample = {r["id"]: r["prompt"] for r in map(json.loads, open(EXAMPLES, encoding="utf-8"))}
    assert back and all(sample[k] == v for k, v in back.items())


def test_mixed_types_across_parts_are_json_text(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    values = ["s", [1, 2], 3, {"a": 1}, None, 2.5, True]
    write_rows(inp, [{"id": i, "generation": "g", "v": v} for i, v in enumerate(values)])
    run(inp, out, batch=1, commit_seconds=0)  # one part per row: every type in its own part
    from asap_fast.pipeline.records import read_rows
    assert [r.record["v"] for r in read_rows(out)] == values
    assert pq.read_table(out).column("v").to_pylist()[:2] == ['"s"', "[1, 2]"]


def test_ratio_error_prints_the_value_as_given(capsys):
    with pytest.raises(SystemExit):
        cli(["fine", "a.jsonl", "b.jsonl", "--ratio", "1.0000001"])
    assert "got 1.0000001" in capsys.readouterr().err


def test_dev_null_out_is_a_clear_error(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_rows(inp, [{"id": 1, "generation": "g"}])
    assert cli(["split", str(inp), "/dev/null", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "/dev/null" in err and "is not a" in err and "File exists" not in err


@pytest.mark.slow
def test_a_finished_fine_run_returns_without_loading_a_model(tmp_path, monkeypatch, capsys):
    from asap_fast.stage2.fine import ScorerSpec

    out = tmp_path / "f.jsonl"
    assert cli(["fine", EXAMPLES, str(out), "--quiet", "--device", "cpu"]) == 0
    before = out.read_bytes()

    def no_load(*a, **k):
        raise AssertionError("a finished run loaded the model")

    monkeypatch.setattr(ScorerSpec, "load", no_load)
    assert cli(["fine", EXAMPLES, str(out), "--device", "cpu"]) == 0
    rows = sum(1 for line in open(EXAMPLES, encoding="utf-8") if line.strip())
    assert f"already complete: {rows} rows" in capsys.readouterr().err
    assert out.read_bytes() == before
    # another option is still a mismatch, not "complete"
    assert cli(["fine", EXAMPLES, str(out), "--device", "cpu", "--budget", "7", "--quiet"]) == 2
