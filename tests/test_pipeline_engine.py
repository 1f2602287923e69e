"""Resumable corpus runs: a run killed at any point resumes to exactly the uninterrupted output."""

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from asap_fast.pipeline.engine import CorpusWriter, RowError, run_corpus


def make_input(path, n=200):
    rows = []
    for i in range(n):
        if i % 17 == 5:
            rows.append("{broken json")
        elif i % 23 == 7:
            rows.append(json.dumps({"id": f"r{i}", "prompt": "no generation here"}))
        else:
            rows.append(json.dumps({"id": f"r{i}", "generation": "x" * (i % 13), "n": i}))
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")


def process(rows):
    # Deterministic stage: reject every row whose generation is empty, else add a field.
    return [RowError("empty generation") if not r.record["generation"] else {**r.record, "len": len(r.record["generation"])}
            for r in rows]


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_uninterrupted_run(tmp_path, suffix):
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    make_input(src)
    summary = run_corpus(src, out, stage="t", process=process, batch_size=8, quiet=True)
    assert summary.rows == 200 and summary.written + summary.rejected == 200
    rejects = [json.loads(line) for line in read_lines(tmp_path / "out.rejects.jsonl")]
    assert {r["error"] for r in rejects} >= {"empty generation", "missing field 'generation'"}
    assert any(r["error"].startswith("malformed JSON") and r["id"].startswith("line:") for r in rejects)
    assert len(read_lines(out)) == summary.written


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_corpus import process
    from asap_fast.pipeline.engine import run_corpus
    calls = 0
    def dying(rows):
        global calls
        calls += 1
        if calls == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real kill -9
        return process(rows)
    run_corpus({src!r}, {out!r}, stage="t", process=dying, batch_size=8, commit_seconds=0.0, quiet=True)
""")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("kill_at", [1, 4, 11])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, suffix, kill_at):
    src = tmp_path / f"in{suffix}"
    make_input(src)
    clean = tmp_path / "clean" / f"out{suffix}"
    run_corpus(src, clean, stage="t", process=process, batch_size=8, quiet=True)

    out = tmp_path / "killed" / f"out{suffix}"
    script = KILLER.format(tests=os.path.dirname(__file__), src=str(src), out=str(out), kill_at=kill_at)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr
    # A torn line, as a kill in the middle of a write leaves it, must not survive the resume.
    with open(out, "ab") as f:
        f.write(b'{"id": "torn", "gen')
    summary = run_corpus(src, out, stage="t", process=process, batch_size=8, quiet=True)
    assert summary.resumed_from + summary.rows == 200
    assert (summary.resumed_from > 0) == (kill_at > 1)  # every batch before the kill was committed
    assert read_lines(out) == read_lines(clean)
    assert read_lines(out.parent / "out.rejects.jsonl") == read_lines(clean.parent / "out.rejects.jsonl")


def test_resume_skips_committed_rows(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=50)
    run_corpus(src, out, stage="t", process=process, batch_size=8, quiet=True)
    seen = []
    summary = run_corpus(src, out, stage="t", process=lambda rows: seen.extend(rows) or process(rows), quiet=True)
    assert seen == [] and summary.rows == 0 and summary.resumed_from == 50
    # Appending rows to the input and re-running processes only the new ones.
    with open(src, "a") as f:
        f.write(json.dumps({"id": "new", "generation": "abc"}) + "\n")
    summary = run_corpus(src, out, stage="t", process=process, quiet=True)
    assert summary.rows == 1 and json.loads(read_lines(out)[-1])["id"] == "new"


def test_writer_refuses_unsupported_output(tmp_path):
    with pytest.raises(ValueError, match="unsupported format .out.csv.: use .jsonl, .jsonl.gz, .parquet or a datasets directory"):
        CorpusWriter(tmp_path / "out.csv", stage="t")


def test_stage_returning_wrong_count_is_an_error(tmp_path):
    src = tmp_path / "in.jsonl"
    make_input(src, n=5)
    with pytest.raises(RuntimeError, match="returned 0 results for"):
        run_corpus(src, tmp_path / "out.jsonl", stage="t", process=lambda rows: [], quiet=True)


@pytest.mark.parametrize("in_fmt", ["jsonl", "parquet", "datasets"])
@pytest.mark.parametrize("out_fmt", ["jsonl.gz", "parquet", "datasets"])
def test_formats_round_trip_and_resume(tmp_path, in_fmt, out_fmt):
    pytest.importorskip("datasets")
    from asap_fast.pipeline.records import read_rows, rejects_path

    records = [{"id": f"r{i}", "generation": "g" * (i % 4), "nested": {"k": [i, i + 1]}, "maybe": None if i % 2 else "s"}
               for i in range(40)]
    src = {"jsonl": tmp_path / "in.jsonl", "parquet": tmp_path / "in.parquet", "datasets": tmp_path / "in_ds"}[in_fmt]
    if in_fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        import datasets

        ds = datasets.Dataset.from_list(records)
        ds.to_parquet(str(src)) if in_fmt == "parquet" else ds.save_to_disk(str(src))
    assert [r.record for r in read_rows(src)] == records

    out = {"jsonl.gz": tmp_path / "out.jsonl.gz", "parquet": tmp_path / "out.parquet", "datasets": tmp_path / "out_ds"}[out_fmt]
    calls = 0

    def failing_once(rows):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # an interrupted run: two batches committed, nothing finished
        return process(rows)

    with pytest.raises(KeyboardInterrupt):
        run_corpus(src, out, stage="t", process=failing_once, batch_size=8, commit_seconds=0.0, quiet=True)
    summary = run_corpus(src, out, stage="t", process=process, batch_size=8, quiet=True)
    assert summary.resumed_from == 16 and summary.rows == 24
    got = [r.record for r in read_rows(out)]
    expected = [{**r, "len": len(r["generation"])} for r in records if r["generation"]]
    assert got == expected
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [r["id"] for r in rejects] == [r["id"] for r in records if not r["generation"]]


def test_progress_line_shows_rates_and_eta(capsys):
    from asap_fast.pipeline.engine import ProgressReporter

    reporter = ProgressReporter("fine", quiet=False, total=100)
    reporter.tty = False
    reporter.start -= 10.0  # ten seconds into the run
    reporter.last = float("-inf")  # due for a line
    reporter.update(25, tokens=5000)
    line = capsys.readouterr().err.strip()
    assert line.startswith("asap fine: 25 rows/100, 2.5 rows/s, 500 tokens/s, ETA 30s")


def test_total_rows_counts_only_what_is_left(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=30)
    seen = []

    class Spy:
        def __init__(self, stage, *, quiet, total=None):
            seen.append(total)

        def update(self, rows, **counters):
            pass

        def close(self):
            pass

    import asap_fast.pipeline.engine as corpus

    original = corpus.ProgressReporter
    corpus.ProgressReporter = Spy
    try:
        run_corpus(src, out, stage="t", process=process, batch_size=8, quiet=True, total_rows=30, rows=(0, 20))
        run_corpus(src, tmp_path / "o2.jsonl", stage="t", process=process, quiet=True, total_rows=30)
    finally:
        corpus.ProgressReporter = original
    assert seen == [20, 30]


@pytest.mark.parametrize("out_name", ["out.parquet", "out_ds"])
def test_parts_with_different_schemas_combine(tmp_path, out_name):
    pytest.importorskip("datasets")
    from asap_fast.pipeline.records import read_rows

    # First batch: 'extra' always null and 'only_late' absent; second batch: both strings.
    records = [{"id": f"r{i}", "generation": "g", "extra": None if i < 4 else "x"} for i in range(8)]
    for r in records[4:]:
        r["only_late"] = "y"
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / out_name
    run_corpus(src, out, stage="t", process=lambda rows: [dict(r.record) for r in rows], batch_size=4,
               commit_seconds=0.0, quiet=True)
    got = [r.record for r in read_rows(out)]
    assert got == [{**r, "only_late": r.get("only_late")} for r in records]
