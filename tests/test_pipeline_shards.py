"""Scaling out: `--shard i/n` + `asap merge` equal one run byte for byte; Ray actors equal no Ray."""

import argparse
import json
from pathlib import Path

import pytest

from asap_fast.cli import main
from asap_fast.cli.common import shard as parse_shard
from asap_fast.pipeline.records import count_rows, read_rows
from asap_fast.pipeline.shards import merge_shards, shard_range

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The sample traces with a malformed line, blank lines and a row missing its prompt mixed in."""
    lines = EXAMPLES.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(7, "")
    lines.insert(11, json.dumps({"id": "no-prompt", "generation": "<think>\na\n</think>\n"}))
    lines.insert(15, "   ")
    path = tmp_path_factory.mktemp("in") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*argv) -> int:
    """The `asap` entry point in-process (its exit code; errors as one line on stderr)."""
    return main([str(a) for a in argv])


def fine(src, out, model_dir, *extra):
    assert cli("fine", src, out, "--model", model_dir, "--budget", "200", "--batch", "3", "--quiet", *extra) == 0


def test_parse_shard_and_ranges():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)
    for total in (0, 1, 7, 100):
        for n in (1, 3, 8):
            ranges = [shard_range(total, i, n) for i in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_read_rows_slice_matches_read_rows(corpus, tmp_path):
    rows = list(read_rows(corpus))
    assert count_rows(corpus) == len(rows) == 22
    for start, stop in ((0, None), (0, 5), (3, 9), (20, None), (21, 22), (5, 5)):
        got = list(read_rows(corpus, start, stop))
        assert [(r.line, r.record, r.error) for r in got] == [(r.line, r.record, r.error) for r in rows[start:stop]]
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": str(i), "n": i} for i in range(600)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    assert count_rows(tmp_path / "t.parquet") == 600
    got = list(read_rows(tmp_path / "t.parquet", 255, 513))
    assert [r.record for r in got] == records[255:513] and got[0].line == 256


def test_three_shards_merged_equal_one_run_byte_for_byte(corpus, tmp_path, model_dir):
    whole = tmp_path / "whole.jsonl"
    fine(corpus, whole, model_dir)
    shards = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    for i, shard in enumerate(shards):
        fine(corpus, shard, model_dir, "--shard", f"{i}/3")
        progress = json.loads(shard.with_name(shard.name + ".progress.json").read_text())
        start, stop = shard_range(22, i, 3)
        assert progress["shard"] == [i, 3] and progress["expected"] == stop - start == progress["rows"]
        assert progress["finished"] is True
    merged = tmp_path / "merged.jsonl"
    assert cli("merge", merged, *shards, "--quiet") == 0
    assert merged.read_bytes() == whole.read_bytes()
    assert (tmp_path / "merged.rejects.jsonl").read_bytes() == (tmp_path / "whole.rejects.jsonl").read_bytes()
    rejects = [json.loads(line)["id"] for line in (tmp_path / "merged.rejects.jsonl").read_text().splitlines()]
    assert "line:4" in rejects and "no-prompt" in rejects
    # merging again needs --overwrite; parquet output of the same shards holds the same rows
    assert cli("merge", merged, *shards, "--quiet") == 2
    assert cli("merge", merged, *shards, "--quiet", "--overwrite") == 0


def test_parquet_shards_merge(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from asap_fast.core.errors import RowError
    from asap_fast.pipeline.engine import RunOptions, run_corpus
    from asap_fast.pipeline.shards import shard_plan

    records = [{"id": str(i), "generation": "x" * (i % 5)} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet")

    def process(records):
        return [{**r, "n": len(r["generation"])} if r["generation"] else RowError("empty") for r in records]

    shards = []
    for i in range(3):
        rows, meta = shard_plan(tmp_path / "in.parquet", (i, 3))
        shards.append(tmp_path / f"s{i}.parquet")
        run_corpus(tmp_path / "in.parquet", shards[-1], stage="t", process=process,
                   options=RunOptions(batch=4, quiet=True), rows=rows, shard=(i, 3), meta=meta)
    result = merge_shards(tmp_path / "m.parquet", shards)
    assert result == {"shards": 3, "rows": 40, "rejects": 10}
    expected = [{**r, "n": len(r["generation"])} for r in records if r["generation"]]
    assert pq.read_table(tmp_path / "m.parquet").to_pylist() == expected
    merge_shards(tmp_path / "m2.jsonl", shards)  # another format: the same rows
    assert [json.loads(x) for x in (tmp_path / "m2.jsonl").read_text().splitlines()] == expected


def test_merge_refuses_incomplete_missing_or_misordered_shards(corpus, tmp_path, model_dir, capsys):
    shards = [tmp_path / f"s{i}.jsonl" for i in range(2)]
    for i, shard in enumerate(shards):
        fine(corpus, shard, model_dir, "--shard", f"{i}/2")
    out = tmp_path / "m.jsonl"
    with pytest.raises(ValueError, match="missing shard"):
        merge_shards(out, shards[:1])
    with pytest.raises(ValueError, match="in order"):
        merge_shards(out, shards[::-1])
    # a shard killed half way: its progress file says fewer rows than its slice
    progress_file = shards[1].with_name(shards[1].name + ".progress.json")
    progress = json.loads(progress_file.read_text())
    progress_file.write_text(json.dumps({**progress, "rows": 0, "out": 0, "rejects_bytes": 0, "finished": False}))
    assert cli("merge", out, *shards) == 2
    assert "shard 1/2" in capsys.readouterr().err and not out.exists()
    # resuming that shard with another --shard is refused; with its own it finishes
    assert cli("fine", corpus, shards[1], "--model", model_dir, "--shard", "0/2", "--quiet") == 2
    fine(corpus, shards[1], model_dir, "--shard", "1/2")
    merge_shards(out, shards)
    whole = tmp_path / "w.jsonl"
    fine(corpus, whole, model_dir)
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.ray  # a local Ray runtime: the Ray tier
def test_ray_two_cpu_actors_equal_the_plain_run(corpus, tmp_path, model_dir, monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray puts the driver's working directory on its workers' sys.path: start them outside the
    # checkout so they import the installed package (with its compiled core), not the source tree.
    monkeypatch.chdir(tmp_path)
    import torch

    # The driver computes with more threads than the CPU share an actor is scheduled with (1 of 2);
    # with this model 2 threads' sums differ from 1 thread's in the last bits (4 of 18 rows when
    # the actors used their share), so the actors must compute with the driver's count.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    plain, viaray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    try:
        fine(corpus, plain, model_dir)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            fine(corpus, viaray, model_dir, "--ray", "--ray-actors", "2", "--ray-chunk", "12")
        finally:
            ray.shutdown()
    finally:
        torch.set_num_threads(previous)
    assert viaray.read_bytes() == plain.read_bytes()
    manifest = json.loads(plain.with_name("plain.jsonl.manifest.json").read_text())
    assert manifest["options"]["scorer"]["cpu_threads"] == 2  # what decides the last bits on CPU
    assert (tmp_path / "ray.rejects.jsonl").read_bytes() == (tmp_path / "plain.rejects.jsonl").read_bytes()


@pytest.mark.ray  # a local Ray runtime: the Ray tier
def test_ray_compress_skip_coarse_and_a_baseline_equal_their_plain_runs(corpus, tmp_path, model_dir, monkeypatch):
    """`asap compress --ray`: stage 2 alone (--skip-coarse) and an LM baseline on Ray Data actors write
    the bytes of the same run without Ray, rejects included."""
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)  # the workers import the installed package (see the test above)
    runs = {"asap": ("--skip-coarse", "--budget", "200"), "sc": ("--method", "selective-context", "--ratio", "0.5")}

    def compress(name, out, *extra):
        assert cli("compress", corpus, out, "--model", model_dir, "--batch", "3", "--quiet", *runs[name], *extra) == 0

    for name in runs:
        compress(name, tmp_path / f"{name}-plain.jsonl")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for name in runs:
            compress(name, tmp_path / f"{name}-ray.jsonl", "--ray", "--ray-actors", "2", "--ray-chunk", "12")
    finally:
        ray.shutdown()
    for name in runs:
        plain, viaray = tmp_path / f"{name}-plain.jsonl", tmp_path / f"{name}-ray.jsonl"
        assert plain.stat().st_size > 0 and viaray.read_bytes() == plain.read_bytes(), name
        assert (tmp_path / f"{name}-ray.rejects.jsonl").read_bytes() == \
            (tmp_path / f"{name}-plain.rejects.jsonl").read_bytes(), name


def test_ray_compress_refuses_stage_one(corpus, tmp_path, capsys):
    assert cli("compress", corpus, tmp_path / "o.jsonl", "--llm", "openai:x", "--ray") == 2
    assert "--ray runs stage 2 alone (--skip-coarse) or a baseline" in capsys.readouterr().err
