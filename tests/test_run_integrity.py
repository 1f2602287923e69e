"""Hostile input against the run engine, second round: one run per OUT, OUT never the input, side
files that are OUT's alone, and no single row (whatever its bytes) that can stop a run."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asap_fast.pipeline.claim import lock_path
from asap_fast.pipeline.engine import RunOptions, run_corpus
from asap_fast.pipeline.records import rejects_path

ASAP = str(Path(sys.executable).parent / "asap")
ENV = {k: v for k, v in os.environ.items() if k != "ASAP_DEBUG"}
ENV.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"


def asap(*args, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([ASAP, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=ENV, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def generation(i: int) -> str:
    return f"<think>\nRow {i} a.\n\nRow {i} b.\n</think>\n```python\nprint({i})\n```"


def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "p", "generation": generation(i)}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- the lock


def test_a_second_run_on_a_locked_out_stops_naming_the_holder(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    assert asap("split", src, out, "--quiet", cwd=tmp_path).returncode == 0
    finished = out.read_bytes()
    # Another process holds OUT's lock (as a live run does for its whole life).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock_path(out))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = asap("split", src, out, "--quiet", cwd=tmp_path)
        assert result.returncode == 2 and time.monotonic() - started < 30
        assert result.stderr.strip() == (f"asap split: error: {out} is in use by another asap run "
                                         f"(pid {holder.pid}); wait for it to end or stop it")
        assert out.read_bytes() == finished
        # asap merge refuses a shard that a live run holds
        other = write_rows(tmp_path / "o.jsonl", 1)
        result = asap("merge", tmp_path / "m.jsonl", out, other, cwd=tmp_path)
        assert result.returncode == 2 and f"(pid {holder.pid})" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a killed holder's lock: no stale lock to clean up
    assert asap("split", src, out, "--quiet", "--overwrite", cwd=tmp_path).returncode == 0
    assert out.read_bytes() == finished


def test_two_runs_started_together_never_mix(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "out.jsonl"
    runs = [subprocess.Popen([ASAP, "split", str(src), str(out), "--quiet"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV) for _ in range(2)]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    # the second either met the first's lock, or started after it ended and found OUT complete
    assert 0 in [code for code, _ in results], results
    for code, err in results:
        assert code == 0 or (code == 2 and "is in use by another asap run" in err), results
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"r{i}" for i in range(3000)]  # every row once, in order


# ----------------------------------------------------------------------- OUT is never the input


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_that_is_the_input_is_refused_whatever_its_spelling(tmp_path, overwrite):
    src = write_rows(tmp_path / "in.jsonl", 3)
    original = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.jsonl")
    os.link(src, tmp_path / "hard.jsonl")
    extra = ["--overwrite"] if overwrite else []
    for out in ("in.jsonl", "./in.jsonl", "sub/../in.jsonl", str(src), "link.jsonl", "hard.jsonl"):
        result = asap("split", "in.jsonl", out, "--quiet", *extra, cwd=tmp_path)
        assert result.returncode == 2, (out, result.stderr)
        assert "would overwrite the input" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert src.read_bytes() == original
    # a side file of OUT that is the input: OUT "in" writes in.rejects.jsonl
    rejects_input = write_rows(tmp_path / "in.rejects.jsonl", 2)
    result = asap("split", "in.rejects.jsonl", "in.jsonl", "--quiet", *extra, cwd=tmp_path)
    assert result.returncode == 2 and "would overwrite the input" in result.stderr
    assert len(rejects_input.read_text().splitlines()) == 2


def test_a_side_file_the_run_did_not_write_is_refused(tmp_path):
    src = write_rows(tmp_path / "bad.jsonl", 2)
    mine = tmp_path / "data.rejects.jsonl"
    mine.write_text("my own notes\n")
    result = asap("split", src, tmp_path / "data.jsonl", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "data.rejects.jsonl exists but was not written by a run" in result.stderr
    assert mine.read_text() == "my own notes\n"


def test_outs_that_differ_only_in_format_keep_their_own_rejects(tmp_path):
    pytest.importorskip("pyarrow")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "ok", "generation": generation(0)}) + "\n{not json\n", encoding="utf-8")
    outs = [tmp_path / "o.jsonl", tmp_path / "o.jsonl.gz", tmp_path / "o.parquet"]
    for out in outs:
        assert asap("split", src, out, "--quiet", cwd=tmp_path).returncode == 0
    assert len({rejects_path(out) for out in outs}) == 3
    for out in outs:
        (reject,) = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
        assert reject["id"] == "line:2"


def test_out_that_is_not_a_regular_file_is_one_line(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", 1)
    result = asap("split", src, "/dev/null", "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "asap split: error: OUT /dev/null is not a regular file or directory"


# --------------------------------------------------------------------- no row can stop a run


def _identity(records):
    return [{**r, "seen": True} for r in records]


def hostile_lines(rng: random.Random) -> list[bytes]:
    """Row bytes that have broken a reader: the named cases, then random mutations of a valid row."""
    good = json.dumps({"id": "x", "generation": "g", "n": 1.5}).encode()
    lines = [
        b"[" * 200_000 + b"]" * 200_000,                     # RecursionError in json
        b'{"id": "deep", "generation": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": "bigint", "generation": "g", "n": ' + b"9" * 5000 + b"}",  # past Python's digit limit
        b'{"id": "nan", "generation": "g", "n": NaN}', b'{"id": "inf", "generation": "g", "n": -Infinity}',
        b'{"id": "surrogate", "generation": "\\udc80"}', b"\xff\xfe\x00", b"", b"   ", b"null", b'"s"',
        b'{"id": "x", "generation": "g", "n": 1e999}',        # float overflow: inf
    ]
    for _ in range(300):
        mutated = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            op, at = rng.random(), rng.randrange(len(mutated) + 1)
            if op < 0.4:
                mutated[at:at] = bytes([rng.randrange(256)])
            elif op < 0.7 and mutated:
                del mutated[min(at, len(mutated) - 1)]
            elif mutated:
                mutated[min(at, len(mutated) - 1)] = rng.choice(b'{}[]":,\\0123456789eE-+.NaIfinty \t\r')
        lines.append(bytes(mutated).replace(b"\n", b" "))
    return lines


def test_no_row_stops_a_run_fuzzed(tmp_path):
    rng = random.Random(21)
    lines = hostile_lines(rng)
    good = [json.dumps({"id": f"good{i}", "generation": "g"}).encode() for i in range(len(lines))]
    body = [line for pair in zip(good, lines) for line in pair]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(body) + b"\n")
    out = tmp_path / "out.jsonl"
    summary = run_corpus(src, out, stage="t", process=_identity, options=RunOptions(batch=7, quiet=True))
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rejects = [json.loads(line) for line in rejects_path(out).read_text(encoding="utf-8").splitlines()]
    nonblank = sum(1 for line in body if line.strip())
    assert summary.written + summary.rejected == nonblank == len(written) + len(rejects)
    assert [r["id"] for r in written if str(r.get("id")).startswith("good")] == [f"good{i}" for i in range(len(lines))]
    for reject in rejects:  # every reject says which line and why, in one line
        assert reject["id"] and reject["error"] and "\n" not in reject["error"]
        assert str(reject["id"]).startswith("line:") or reject["id"] in {"x", "deep", "bigint", "nan", "inf", "surrogate"}
    by_id = {r["id"]: r["error"] for r in rejects}
    assert by_id["line:2"] == "unreadable JSON: nested too deeply"
    assert by_id["deep"] if "deep" in by_id else by_id["line:4"] == "unreadable JSON: nested too deeply"
    assert "4300" in by_id["line:6"] or "digits" in by_id["line:6"]
    # NaN / Infinity are read, and a row holding one when it is written is a reject (strict JSON out)
    assert "strict JSON" in by_id["nan"] and "strict JSON" in by_id["inf"]
    # what was written is strict JSON: no NaN / Infinity a strict reader refuses
    text = out.read_text(encoding="utf-8")
    json.loads("[" + ",".join(text.splitlines()) + "]", parse_constant=lambda c: pytest.fail(f"{c} written"))


def test_a_byte_order_mark_opens_the_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "first", "generation": "g"}).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    summary = run_corpus(src, out, stage="t", process=_identity, options=RunOptions(quiet=True))
    assert summary.written == 1 and json.loads(out.read_text())["id"] == "first"


def test_a_stage_output_with_nan_is_a_reject_not_bare_nan(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    summary = run_corpus(src, out, stage="t", options=RunOptions(quiet=True),
                         process=lambda rs: [{**r, "score": float("nan") if r["id"] == "r1" else 1.0} for r in rs])
    assert summary.written == 1 and summary.rejected == 1
    (reject,) = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert reject["id"] == "r1" and "strict JSON" in reject["error"]


def test_ratio_error_shows_the_value_as_given(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", 1)
    result = asap("fine", src, tmp_path / "o.jsonl", "--ratio", "1.0000001", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "1.0000001" in result.stderr, result.stderr


def test_gzip_input_lock_and_identity_work_for_gz_too(tmp_path):
    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "a", "generation": generation(0)}) + "\n")
    result = asap("split", src, src, "--quiet", "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and "would overwrite the input" in result.stderr
    with gzip.open(src, "rt") as f:
        assert json.loads(f.readline())["id"] == "a"
    fd = os.open(lock_path(tmp_path / "o.jsonl"), os.O_RDWR | os.O_CREAT)
    try:  # a lock this test process holds: the CLI (another process) must see it
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert asap("split", src, tmp_path / "o.jsonl", "--quiet", cwd=tmp_path).returncode == 2
    finally:
        os.close(fd)


@pytest.mark.parametrize("batch", ["1", "64"])
def test_parquet_out_holds_fields_of_mixed_types(tmp_path, batch):
    """The sample traces' prompt is text in some rows and chat messages in others: Parquet stores
    such a field as JSON text (named in its metadata) and every asap reader gives the values back."""
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out.parquet"
    result = asap("split", EXAMPLES, out, "--quiet", "--batch", batch, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert pq.read_schema(out).metadata[b"asap_fast.json_fields"] == b'["prompt"]'
    back = tmp_path / "back.jsonl"
    assert asap("split", out, back, "--quiet", cwd=tmp_path).returncode == 0
    plain = tmp_path / "plain.jsonl"
    assert asap("split", EXAMPLES, plain, "--quiet", cwd=tmp_path).returncode == 0
    rows = [json.loads(line) for line in back.read_text().splitlines()]
    expected = [json.loads(line) for line in plain.read_text().splitlines()]
    # a column store has every field in every row: a field a row lacked reads back as null
    assert [{k: v for k, v in r.items() if v is not None or k in e} for r, e in zip(rows, expected)] == expected
    assert {type(r["prompt"]) for r in rows} == {str, list}


def test_a_slow_stage_commits_each_finished_row_within_one_batch(tmp_path):
    """A stage that yields rows as they finish (every per-row stage and method does) has each one
    written, counted and committed at once, however large the batch: Ctrl-C keeps the work done."""
    src = write_rows(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"
    progress_file = out.with_name(out.name + ".progress.json")
    seen_committed = []

    def slow(records):
        for record in records:
            seen_committed.append(json.loads(progress_file.read_text())["rows"])
            yield {**record, "done": True}

    run_corpus(src, out, stage="t", process=slow, options=RunOptions(batch=64, commit_seconds=0, quiet=True))
    assert seen_committed == list(range(12))  # row k starts once rows 0..k-1 are durable


def test_per_row_stages_yield_their_rows():
    import inspect

    from asap_fast.methods.llmlingua2 import LLMLingua2Stage
    from asap_fast.methods.selective_context import SelectiveContextStage
    from asap_fast.methods.spirit import SpiritStage
    from asap_fast.methods.tokenskip import TokenSkipStage
    from asap_fast.stage2.fine import FineStage

    for stage in (FineStage, SpiritStage, SelectiveContextStage, LLMLingua2Stage, TokenSkipStage):
        assert inspect.isgenerator(stage.process(object.__new__(stage), [])), stage.__name__


@pytest.mark.parametrize("suffix", [".jsonl"])
def test_resume_refuses_an_input_edited_before_the_resume_point(tmp_path, suffix):
    """Size, mtime and the first and last MiB are the same (rsync -t, touch -r), a row in the middle
    is not: the resume re-hashes the prefix it skips and refuses to go on."""
    from asap_fast.pipeline.engine import Interrupted
    from asap_fast.pipeline.records import InputChanged

    rows = [{"id": f"r{i}", "generation": "x" * 50_000 + str(i % 10)} for i in range(120)]  # ~6 MB

    def write(rows):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        src.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data)

    src, out = tmp_path / f"in{suffix}", tmp_path / "out.jsonl"
    write(rows)
    calls = 0

    def stop_after_a_while(records):
        nonlocal calls
        for record in records:
            calls += 1
            if calls > 60:
                raise KeyboardInterrupt
            yield record

    with pytest.raises(Interrupted):
        run_corpus(src, out, stage="t", process=stop_after_a_while, options=RunOptions(batch=8, commit_seconds=0, quiet=True))
    stat = src.stat()
    edited = [dict(r) for r in rows]
    edited[30]["generation"] = edited[30]["generation"][:-1] + str((30 + 1) % 10)  # same length
    write(edited)
    if not suffix.endswith(".gz"):
        assert src.stat().st_size == stat.st_size
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(InputChanged, match="has changed since OUT was begun"):
        run_corpus(src, out, stage="t", process=_identity, options=RunOptions(quiet=True))
    # the original input resumes and ends as one uninterrupted run would
    write(rows)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run_corpus(src, out, stage="t", process=_identity, options=RunOptions(quiet=True))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [r["id"] for r in rows]
