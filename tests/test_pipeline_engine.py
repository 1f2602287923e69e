"""The run engine (asap_fast.pipeline.engine): a run killed at any point resumes to exactly the
uninterrupted output, in every format."""

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from asap_fast.core.errors import RowError
from asap_fast.pipeline.engine import CorpusWriter, Interrupted, RunOptions, run_corpus
from asap_fast.pipeline.records import rejects_path


def opts(**kw):
    return RunOptions(quiet=True, **kw)


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


def process(records):
    # Deterministic stage: reject every row whose generation is empty, else add a field.
    return [RowError("empty generation") if not r["generation"] else {**r, "len": len(r["generation"])}
            for r in records]


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_uninterrupted_run(tmp_path, suffix):
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    make_input(src)
    summary = run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    assert summary.rows == 200 and summary.written + summary.rejected == 200
    rejects = [json.loads(line) for line in read_lines(rejects_path(out))]
    assert {r["error"] for r in rejects} >= {"empty generation", "missing field 'generation'"}
    assert any(r["error"].startswith("malformed JSON") and r["id"].startswith("line:") for r in rejects)
    assert len(read_lines(out)) == summary.written


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_pipeline_engine import process
    from asap_fast.pipeline.engine import RunOptions, run_corpus
    calls = 0
    def dying(rows):
        global calls
        calls += 1
        if calls == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real kill -9
        return process(rows)
    run_corpus({src!r}, {out!r}, stage="t", process=dying,
               options=RunOptions(batch=8, commit_seconds=0.0, quiet=True))
""")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("kill_at", [1, 4, 11])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, suffix, kill_at):
    src = tmp_path / f"in{suffix}"
    make_input(src)
    clean = tmp_path / "clean" / f"out{suffix}"
    run_corpus(src, clean, stage="t", process=process, options=opts(batch=8))

    out = tmp_path / "killed" / f"out{suffix}"
    script = KILLER.format(tests=os.path.dirname(__file__), src=str(src), out=str(out), kill_at=kill_at)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr
    # A torn line, as a kill in the middle of a write leaves it, must not survive the resume.
    with open(out, "ab") as f:
        f.write(b'{"id": "torn", "gen')
    summary = run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    assert summary.resumed_from + summary.rows == 200
    assert (summary.resumed_from > 0) == (kill_at > 1)  # every batch before the kill was committed
    assert read_lines(out) == read_lines(clean)
    assert read_lines(rejects_path(out)) == read_lines(rejects_path(clean))


def test_resume_skips_committed_rows(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=50)
    run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    seen = []
    summary = run_corpus(src, out, stage="t", process=lambda rows: seen.extend(rows) or process(rows), options=opts())
    assert seen == [] and summary.rows == 0 and summary.resumed_from == 50
    # The input is part of the run's manifest: a grown input is another run, refused before any
    # work with the field that differs; --overwrite (RunOptions.overwrite) starts OUT afresh.
    before = out.read_bytes()
    with open(src, "a") as f:
        f.write(json.dumps({"id": "new", "generation": "abc"}) + "\n")
    with pytest.raises(ValueError, match=r"was begun with input\.size = \d+, this run has \d+"):
        run_corpus(src, out, stage="t", process=process, options=opts())
    assert out.read_bytes() == before
    summary = run_corpus(src, out, stage="t", process=process, options=opts(overwrite=True))
    assert summary.rows == 51 and summary.resumed_from == 0 and json.loads(read_lines(out)[-1])["id"] == "new"


def test_writer_refuses_unsupported_output(tmp_path):
    with pytest.raises(ValueError, match="unsupported format .out.csv.: use .jsonl, .jsonl.gz, .parquet or a datasets directory"):
        CorpusWriter(tmp_path / "out.csv", stage="t")


def test_stage_returning_wrong_count_is_an_error(tmp_path):
    src = tmp_path / "in.jsonl"
    make_input(src, n=5)
    with pytest.raises(RuntimeError, match="returned 0 results for"):
        run_corpus(src, tmp_path / "out.jsonl", stage="t", process=lambda rows: [], options=opts())


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

    with pytest.raises(Interrupted, match="interrupted after 16 rows; run the same command again to resume"):
        run_corpus(src, out, stage="t", process=failing_once, options=opts(batch=8, commit_seconds=0.0))
    summary = run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    assert summary.resumed_from == 16 and summary.rows == 24
    got = [r.record for r in read_rows(out)]
    expected = [{**r, "len": len(r["generation"])} for r in records if r["generation"]]
    assert got == expected
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [r["id"] for r in rejects] == [r["id"] for r in records if not r["generation"]]


def test_progress_line_shows_rates_and_eta():
    import io

    from asap_fast.pipeline.progress import Progress

    stream = io.StringIO()  # not a terminal: plain log lines, no tqdm bar
    progress = Progress("fine", quiet=False, total=100, stream=stream)
    progress.start -= 10.0  # ten seconds into the run
    progress.last_log = float("-inf")  # due for a line
    progress.update(25, tokens_before=5000, tokens_after=1000)
    assert stream.getvalue().strip() == "asap fine: 25/100 rows, 2.50 rows/s, 500 trace tokens/s, ETA 30s"
    # a resumed run counts the rows done before it, but rates and ETA only from its own rows
    stream = io.StringIO()
    progress = Progress("split", quiet=False, done=40, total=100, stream=stream)
    progress.start -= 10.0
    progress.last_log = float("-inf")
    progress.update(20)
    assert stream.getvalue().strip() == "asap split: 60/100 rows, 2.00 rows/s, ETA 20s"
    quiet = Progress("split", quiet=True, total=100, stream=stream)
    quiet.last_log = float("-inf")
    quiet.update(5)
    assert stream.getvalue().count("\n") == 1


def test_total_rows_counts_only_what_is_left(tmp_path, monkeypatch):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=30)
    seen = []

    class Spy:
        """Records the total a run announces: a shard's slice, else the input's row count."""

        def __init__(self, stage, *, quiet, done=0, total=None, count_total=None, stream=None):
            seen.append((done, total if total is not None else count_total()))

        def update(self, rows, tokens_before=0, tokens_after=0):
            pass

        def close(self):
            pass

    import asap_fast.pipeline.engine as engine

    monkeypatch.setattr(engine, "Progress", Spy)
    run_corpus(src, out, stage="t", process=process, options=opts(batch=8), rows=(0, 20))
    run_corpus(src, tmp_path / "o2.jsonl", stage="t", process=process, options=opts())
    run_corpus(src, tmp_path / "o2.jsonl", stage="t", process=process, options=opts())  # resumed: all 30 done
    assert seen == [(0, 20), (0, 30), (30, 30)]


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
    run_corpus(src, out, stage="t", process=lambda records: [dict(r) for r in records],
               options=opts(batch=4, commit_seconds=0.0))
    got = [r.record for r in read_rows(out)]
    assert got == [{**r, "only_late": r.get("only_late")} for r in records]


def _clean_run(tmp_path, src):
    clean = tmp_path / "clean" / "out.jsonl"
    run_corpus(src, clean, stage="t", process=process, options=opts(batch=8))
    return read_lines(clean), read_lines(rejects_path(clean))


def _committed_rows(out):
    return json.loads(out.with_name(out.name + ".progress.json").read_text())["rows"]


def test_interrupt_just_after_the_progress_file_is_replaced_writes_no_row_twice(tmp_path, monkeypatch):
    # Deterministic stand-in for Ctrl-C / SIGTERM landing at the end of a commit: the directory
    # fsync that follows the atomic replace of OUT.progress.json is interrupted.
    import asap_fast.pipeline.engine as engine

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=40)
    expected = _clean_run(tmp_path, src)
    real_fsync_dir, calls = engine._fsync_dir, []

    def fsync_dir(path):
        real_fsync_dir(path)
        calls.append(path)
        if len(calls) == 4:  # 2 when OUT is begun (manifest, progress), then one per commit
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_fsync_dir", fsync_dir)
    with pytest.raises(Interrupted):
        run_corpus(src, out, stage="t", process=process, options=opts(batch=8, commit_seconds=0.0))
    monkeypatch.setattr(engine, "_fsync_dir", real_fsync_dir)
    lines, rejects = read_lines(out), read_lines(rejects_path(out))
    assert len(lines) + len(rejects) == _committed_rows(out)
    assert len({json.loads(line)["id"] for line in lines}) == len(lines), "a row was committed twice"
    run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    assert (read_lines(out), read_lines(rejects_path(out))) == expected


def test_failed_progress_write_writes_no_row_twice(tmp_path, monkeypatch):
    # A full disk (or any OSError) that spares OUT's append but hits OUT.progress.json once.
    import errno

    import asap_fast.pipeline.engine as engine

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(src, n=40)
    expected = _clean_run(tmp_path, src)
    real_write_json, calls = engine.CorpusWriter._write_json, []

    def write_json(self, path, data):
        calls.append(path)
        if len(calls) == 4:  # manifest and progress when OUT is begun, then one per commit
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write_json(self, path, data)

    monkeypatch.setattr(engine.CorpusWriter, "_write_json", write_json)
    with pytest.raises(engine.OutputError, match="No space left on device"):
        run_corpus(src, out, stage="t", process=process, options=opts(batch=8, commit_seconds=0.0))
    monkeypatch.setattr(engine.CorpusWriter, "_write_json", real_write_json)
    progress = json.loads(out.with_name("out.jsonl.progress.json").read_text())
    assert out.stat().st_size == progress["out"], "the uncommitted tail was left in OUT"
    lines = read_lines(out)
    assert len({json.loads(line)["id"] for line in lines}) == len(lines), "a row was committed twice"
    run_corpus(src, out, stage="t", process=process, options=opts(batch=8))
    assert (read_lines(out), read_lines(rejects_path(out))) == expected


def test_rows_that_cannot_be_encoded_become_rejects(tmp_path):
    # A stage's output with a lone surrogate (no UTF-8 file can hold it) is a reject, written
    # safely; so is a reject whose id holds one. The rows around them are kept.
    from asap_fast.pipeline.records import Row

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "generation": "g"}) + "\n" for i in range(3)))
    summary = run_corpus(src, out, stage="t", options=opts(),
                         process=lambda records: [{**r, "x": "\ud800" if r["id"] == "r1" else "ok"} for r in records])
    assert summary.written == 2 and summary.rejected == 1
    assert [json.loads(line)["id"] for line in read_lines(out)] == ["r0", "r2"]
    (reject,) = [json.loads(line) for line in (rejects_path(out)).read_bytes().decode().splitlines()]
    assert reject == {"id": "r1", "stage": "t",
                      "error": "text with a lone surrogate ('\\ud800') cannot be written as UTF-8"}

    writer = CorpusWriter(tmp_path / "w.jsonl", stage="t")
    writer.reject(Row(1, {"id": "bad\udc00id"}), "some error")
    writer.close(finished=True)
    raw = (tmp_path / "w.rejects.jsonl").read_bytes()
    assert json.loads(raw.decode("utf-8")) == {"id": "bad\udc00id", "stage": "t", "error": "some error"}
