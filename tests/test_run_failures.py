"""Runs users can trust (issue 11's "Done when"), as a user meets them: the installed `asap` in a
real subprocess, real files, real signals, real filesystems.

- a resume that would mix runs (another --ratio, another input, another stage into the same OUT)
  stops with one line naming the field and both values, and leaves OUT byte-identical;
  --overwrite starts afresh;
- SIGINT / SIGTERM / SIGKILL at several points, then the same command, give the bytes of an
  uninterrupted run; so do shards of uneven sizes merged (step_surprisal included);
- bad inputs and hostile environments (a read-only or immutable OUT, a Latin-1 line, lone
  surrogates, a bare \\r, a truncated .jsonl.gz, a 50 MB row, a full disk, a binary input, a
  tokenizer whose pad id lies past the model's vocabulary) give one line or a reject, never a
  traceback, and no valid row is lost.

Signals are sent when the run says it has reached the point (a line on stderr, or the progress
file's committed row count), never after a sleep. Every subprocess gets OMP_NUM_THREADS=1: the
same thread count everywhere (bit-identical scores), and tiny models run faster on a busy machine.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from asap_fast.pipeline.records import rejects_path
from asap_fast.testing import as_foreground

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"
ASAP = str(Path(sys.executable).parent / "asap")
ENV = {k: v for k, v in os.environ.items() if k != "ASAP_DEBUG"}
ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
DEMO_LINE = "using the bundled demo scorer"
STAGE2_FIELDS = ("pruned_think", "step_surprisal", "kept_steps", "tokens_before", "tokens_after", "messages")


# ------------------------------------------------------------------------------------------ helpers


def asap(*args, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    # cwd=tmp_path: relative paths as a user types them, and never the checkout (see conftest).
    result = subprocess.run([ASAP, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=ENV, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([ASAP, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=ENV, preexec_fn=as_foreground)


def one_line(result) -> str:
    """The single line a failed command printed (with --quiet nothing else reaches stderr)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_files(out: Path) -> dict[str, bytes]:
    """Every file in OUT's folder, by name, with its bytes (what 'leaves OUT untouched' compares)."""
    # a lock file holds the pid of the last run that took it: not part of OUT's state
    return {p.name: p.read_bytes() for p in sorted(out.parent.iterdir()) if p.is_file() and p.suffix != ".lock"}


def outputs(out: Path) -> tuple[bytes, bytes]:
    rejects = rejects_path(out)
    return out.read_bytes(), rejects.read_bytes()


def committed(out: Path) -> int:
    """Rows the run has made durable, from its progress file (replaced atomically); -1 before it exists."""
    try:
        return json.loads(out.with_name(out.name + ".progress.json").read_text())["rows"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    """Poll a file the run writes until ``condition()``; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_for_stderr_line(process: subprocess.Popen, text: str) -> list[str]:
    """Read the run's stderr up to the line containing ``text`` (what the run prints at that point)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return seen
    process.wait()
    pytest.fail(f"the run ended (exit {process.returncode}) without printing {text!r}: {''.join(seen)[-2000:]}")


def tear(out: Path) -> None:
    """What a kill in the middle of a write leaves: a partial line after the last commit."""
    with out.open("ab") as f:
        f.write(b'{"id": "torn", "gen')
    rejects = rejects_path(out)
    with rejects.open("ab") as f:
        f.write(b'{"id": "torn-rej')


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def split_generation(i: int, steps: int = 3) -> str:
    body = "\n\n".join(f"Row {i} step {k}: think about it." for k in range(steps))
    return f"<think>\n{body}\n</think>\n```python\nprint({i})\n```"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    """The 20 sample traces (one truncated) with a malformed line, a row without a prompt and a
    blank line mixed in: 22 rows, of which 18 are written by `asap fine --ratio 0.5` (a one-step
    trace is a reject: the ratio would remove its only step)."""
    lines = EXAMPLES.read_text(encoding="utf-8").splitlines()
    lines.insert(4, "{not json")
    lines.insert(9, "")
    lines.insert(13, json.dumps({"id": "no-prompt", "generation": "<think>\na\n</think>\n"}))
    path = work / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fine_args(src, out, model_dir, *extra, ratio="0.5"):
    return ("fine", src, out, "--model", model_dir, "--ratio", ratio, "--quiet", *extra)


@pytest.fixture(scope="module")
def reference(work, corpus, model_dir) -> Path:
    """One uninterrupted `asap fine` run of the corpus: the bytes every other way must give."""
    out = work / "reference" / "fine.jsonl"
    asap(*fine_args(corpus, out, model_dir, "--batch", "8"), cwd=work, check=True)
    assert len(out.read_text().splitlines()) == 18
    rejects = [json.loads(line)["error"] for line in out.with_name("fine.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 4 and any(e.startswith("the budget removes every step: ratio 0.5") for e in rejects)
    return out


@pytest.fixture(scope="module")
def big_input(work) -> Path:
    """6000 small traces: `asap split` with a commit per 50 rows takes a few seconds, long enough to
    be stopped anywhere."""
    rows = []
    for i in range(6000):
        if i % 997 == 5:
            rows.append({"id": f"r{i}", "generation": "<think>\ncut"})  # a reject now and then
        else:
            rows.append({"id": f"r{i}", "generation": split_generation(i, i % 5 + 1)})
    return write_jsonl(work / "big.jsonl", rows)


@pytest.fixture(scope="module")
def split_reference(work, big_input) -> Path:
    out = work / "split-reference" / "steps.jsonl"
    asap("split", big_input, out, "--quiet", cwd=work, check=True)
    return out


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, *options) -> a fresh tmpfs folder; unmounted after the test. Skips without root."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                                 str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


# ------------------------------------------------------------------------------ resume mismatches


@pytest.mark.slow  # three runs that load a model
def test_changed_ratio_stops_naming_the_field_then_overwrite_restarts(tmp_path, corpus, model_dir, reference):
    out = tmp_path / "fine.jsonl"
    asap(*fine_args(corpus, out, model_dir, ratio="0.3"), cwd=tmp_path, check=True)
    before = run_files(out)
    result = asap(*fine_args(corpus, out, model_dir, ratio="0.5"), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == (
        f"asap fine: error: {out} was begun with options.prune.ratio = 0.3, this run has 0.5; run with the same "
        f"input and options to resume, or pass --overwrite to start fine.jsonl afresh")
    assert run_files(out) == before  # nothing written, nothing removed, no stray temporary file
    # --overwrite starts afresh: exactly an uninterrupted run with the new options
    asap(*fine_args(corpus, out, model_dir, "--overwrite"), cwd=tmp_path, check=True)
    assert outputs(out) == outputs(reference)
    assert json.loads(out.with_name("fine.jsonl.manifest.json").read_text())["options"]["prune"]["ratio"] == 0.5


def test_other_input_into_the_same_out_stops(tmp_path, corpus, model_dir, reference):
    out = tmp_path / "out" / "fine.jsonl"
    shutil.copytree(reference.parent, out.parent)  # a finished run of the corpus (its manifest names it)
    before = run_files(out)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(corpus.read_text().splitlines(keepends=True)[:6]), encoding="utf-8")
    result = asap(*fine_args(other, out, model_dir), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith(
        f'asap fine: error: {out} was begun with input.path = "{corpus}", this run has "{other}"; ')
    assert run_files(out) == before


def test_same_path_other_content_stops(tmp_path):
    # Same path and size, other bytes: the content hash tells the inputs apart.
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"r{i}", "generation": split_generation(i)} for i in range(50)]
    write_jsonl(src, rows)
    out = tmp_path / "out" / "steps.jsonl"
    asap("split", src, out, "--quiet", cwd=tmp_path, check=True)
    before = run_files(out)
    data = src.read_bytes()
    src.write_bytes(data.replace(b'"r7"', b'"x7"'))
    assert len(src.read_bytes()) == len(data)
    result = asap("split", src, out, "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "was begun with input.hash = " in one_line(result)
    assert run_files(out) == before
    # options that cannot change the bytes may change on resume
    src.write_bytes(data)
    os.utime(src, ns=(json.loads(before["steps.jsonl.manifest.json"])["input"]["mtime_ns"],) * 2)
    result = asap("split", src, out, "--workers", "1", "--batch", "7", "--commit-seconds", "0", cwd=tmp_path,
                  check=True)
    assert "resumed after 50" in result.stderr


def test_split_then_fine_into_the_same_out_stops(tmp_path, corpus, model_dir):
    out = tmp_path / "out" / "o.jsonl"
    asap("split", corpus, out, "--quiet", cwd=tmp_path, check=True)
    before = run_files(out)
    result = asap(*fine_args(corpus, out, model_dir), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith(f'asap fine: error: {out} was begun with stage = "split", this run has "fine"; ')
    assert run_files(out) == before
    result = asap("split", corpus, out, "--task", "math", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and 'options.task = "auto", this run has "math"' in one_line(result)
    assert run_files(out) == before


@pytest.fixture(scope="module")
def demo_input(work) -> Path:
    """Two short traces: the bundled demo scorer (a real small model) scores them in a second."""
    rows = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda r: len(r["generation"]))
    return write_jsonl(work / "demo-in.jsonl", [r for r in rows if "</think>" in r["generation"]][:2])


@pytest.fixture(scope="module")
def demo_reference(work, demo_input) -> Path:
    out = work / "demo-reference" / "fine.jsonl"
    asap("fine", demo_input, out, "--ratio", "0.5", "--quiet", cwd=work, check=True)
    return out


def test_mismatch_is_refused_before_the_model_loads(tmp_path, demo_input, demo_reference):
    out = tmp_path / "out" / "fine.jsonl"
    shutil.copytree(demo_reference.parent, out.parent)
    before = run_files(out)
    result = asap("fine", demo_input, out, "--ratio", "0.3", cwd=tmp_path)  # not quiet: loading is announced
    assert result.returncode == 2 and run_files(out) == before
    assert "options.prune.ratio = 0.5, this run has 0.3" in result.stderr
    assert DEMO_LINE not in result.stderr


# ------------------------------------------------------------------------- interrupt, kill, resume


@pytest.mark.slow  # two runs that load a model
def test_sigint_during_model_load_then_resume(tmp_path, demo_input, demo_reference):
    out = tmp_path / "fine.jsonl"
    process = start("fine", demo_input, out, "--ratio", "0.5", cwd=tmp_path)
    wait_for_stderr_line(process, DEMO_LINE)  # printed just before the weights are read
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait() == 130, rest
    assert "Traceback" not in rest
    last = rest.strip().splitlines()[-1]
    # the signal lands in the load, or just after it, before any row is committed
    assert last in ("asap fine: interrupted before any row was committed; run the same command again to start",
                    "asap fine: interrupted after 0 rows; run the same command again to resume"), rest
    assert committed(out) <= 0 and (not out.exists() or out.stat().st_size == 0)
    asap("fine", demo_input, out, "--ratio", "0.5", "--quiet", cwd=tmp_path, check=True)
    assert outputs(out) == outputs(demo_reference)


# A signal sent on seeing the progress file lands at the end of a commit, the window where a commit
# is durable but not yet recorded as done in the process: the deterministic form of this case is
# test_pipeline_engine.py::test_interrupt_just_after_the_progress_file_is_replaced_writes_no_row_twice.

@pytest.mark.slow  # two runs that load a model
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_while_scoring_then_resume_equals_one_run(tmp_path, corpus, model_dir, reference, sig):
    out = tmp_path / "fine.jsonl"
    at = 3 if sig == signal.SIGINT else 6
    # one row per commit, so the run is stopped between rows that are durable and rows that are not
    process = start(*fine_args(corpus, out, model_dir, "--batch", "1", "--commit-seconds", "0"), cwd=tmp_path)
    wait_until(lambda: committed(out) >= at, process, f"{at} rows were committed")
    process.send_signal(sig)
    err = process.stderr.read()
    code = process.wait()
    done = committed(out)
    assert at <= done < 22, f"the run was not stopped mid-way ({done} rows committed)"
    if sig == signal.SIGINT:
        assert code == 130 and "Traceback" not in err
        assert err.strip() == f"asap fine: interrupted after {done} rows; run the same command again to resume"
    else:
        assert code == -signal.SIGKILL
        tear(out)
    result = asap(*fine_args(corpus, out, model_dir), cwd=tmp_path, check=True)
    assert result.stderr == ""  # --quiet
    assert outputs(out) == outputs(reference)
    progress = json.loads(out.with_name("fine.jsonl.progress.json").read_text())
    assert progress["rows"] == 22 and progress["finished"] is True


@pytest.mark.parametrize("sig,at,suffix", [
    (signal.SIGKILL, 0, ".jsonl"),  # as soon as the run has begun OUT, before its first commit
    (signal.SIGKILL, 1000, ".jsonl"),
    (signal.SIGKILL, 3500, ".jsonl.gz"),
    (signal.SIGINT, 2000, ".jsonl"),
    (signal.SIGTERM, 2500, ".jsonl.gz"),  # a scheduler's stop is a Ctrl-C
])
def test_split_stopped_at_several_points_then_resume_equals_one_run(tmp_path, big_input, split_reference, sig, at,
                                                                    suffix):
    out = tmp_path / f"steps{suffix}"
    process = start("split", big_input, out, "--batch", "50", "--commit-seconds", "0", "--quiet", cwd=tmp_path)
    wait_until(lambda: committed(out) >= at, process, f"{at} rows were committed")
    process.send_signal(sig)
    err = process.stderr.read()
    code = process.wait()
    done = committed(out)
    assert at <= done < 6000, f"the run was not stopped mid-way ({done} rows committed)"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        tear(out)
    else:
        assert code == 130 and err.strip() == f"asap split: interrupted after {done} rows; run the same command " \
                                              f"again to resume"
    result = asap("split", big_input, out, cwd=tmp_path, check=True)
    if done:
        assert f"resumed after {done}" in result.stderr
    got_out, got_rejects = outputs(out)
    if suffix == ".jsonl.gz":
        got_out = gzip.decompress(got_out)  # one gzip member per commit: the same text
    assert (got_out, got_rejects) == outputs(split_reference)


@pytest.mark.slow  # three runs that load a model, at once
def test_uneven_shards_with_other_batches_merge_to_one_run(tmp_path, corpus, model_dir, reference):
    # 22 rows in 3 shards: 7, 7 and 8 rows, each scored with another --batch, all three at once.
    shards = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    processes = [start(*fine_args(corpus, shard, model_dir, "--shard", f"{i}/3", "--batch", str(2 * i + 1)),
                       cwd=tmp_path) for i, shard in enumerate(shards)]
    for process in processes:
        err = process.stderr.read()
        assert process.wait() == 0 and "Traceback" not in err, err
    assert [json.loads(s.with_name(s.name + ".progress.json").read_text())["expected"] for s in shards] == [7, 7, 8]
    merged = tmp_path / "merged.jsonl"
    asap("merge", merged, *shards, "--quiet", cwd=tmp_path, check=True)
    whole = [json.loads(line) for line in reference.read_text().splitlines()]
    got = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in whole]
    for mine, theirs in zip(got, whole):  # the scores themselves, not only the kept steps
        assert mine["step_surprisal"] == theirs["step_surprisal"], mine["id"]
    assert outputs(merged) == outputs(reference)


# ------------------------------------------------------------------------------ hostile outputs


def test_read_only_filesystem_out_is_one_line(tmp_path, tmpfs):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"id": "a", "generation": split_generation(1)}])
    read_only = tmpfs("1m", "ro")
    for out in (read_only / "o.jsonl", read_only / "sub" / "o.jsonl"):
        result = asap("split", src, out, cwd=tmp_path)
        assert result.returncode == 1
        where = out if out.parent == read_only else out.parent
        assert one_line(result) == f"asap split: error: cannot write {where}: Read-only file system"
    assert list(read_only.iterdir()) == []


def test_out_where_writing_is_not_permitted_is_one_line(tmp_path):
    # root ignores file modes; an immutable folder (chattr +i) refuses root too
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1) to make a folder that refuses writes")
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "generation": split_generation(1)}])
        result = asap("split", src, locked / "o.jsonl", cwd=tmp_path)
        assert result.returncode == 1
        assert one_line(result) == f"asap split: error: cannot write {locked / 'o.jsonl'}: Operation not permitted"
        assert list(locked.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=False)


def fill_the_disk(tmp_path, tmpfs, big_input) -> tuple[Path, Path, dict]:
    """`asap split` into a 1 MB tmpfs: (the tmpfs, OUT, the progress file) after the disk filled."""
    disk = tmpfs("1m")
    out = disk / "steps.jsonl"
    result = asap("split", big_input, out, "--batch", "100", "--commit-seconds", "0", "--quiet", cwd=tmp_path)
    assert result.returncode == 1
    # OUT or a file beside it (the progress file) is what met the full disk
    assert re.fullmatch(rf"asap split: error: cannot write {re.escape(str(disk))}/steps\.\S+: No space left on device",
                        one_line(result)), result.stderr
    progress = json.loads(out.with_name("steps.jsonl.progress.json").read_text())
    assert 0 < progress["rows"] < 6000
    return disk, out, progress


def test_full_disk_is_one_line_keeps_the_commits_and_resumes_identically(tmp_path, tmpfs, big_input,
                                                                          split_reference):
    disk, out, progress = fill_the_disk(tmp_path, tmpfs, big_input)
    reference_out, _ = outputs(split_reference)
    assert out.read_bytes()[: progress["out"]] == reference_out[: progress["out"]]  # every commit is intact
    # space freed: the same command resumes to exactly the uninterrupted output
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    result = asap("split", big_input, out, cwd=tmp_path, check=True)
    assert f"resumed after {progress['rows']}" in result.stderr
    assert outputs(out) == outputs(split_reference)


def test_full_disk_cuts_the_uncommitted_tail_back(tmp_path, tmpfs, big_input):
    _, out, progress = fill_the_disk(tmp_path, tmpfs, big_input)
    assert out.stat().st_size == progress["out"]


# ------------------------------------------------------------------------------- hostile inputs


def test_bad_lines_become_rejects_and_no_valid_row_is_lost(tmp_path):
    def good(i: int) -> bytes:
        return json.dumps({"id": f"g{i}", "generation": split_generation(i) + " é ☃"}, ensure_ascii=False).encode()

    lines = [
        good(0),
        # a Latin-1 line among UTF-8 ones
        json.dumps({"id": "latin", "generation": "<think>\ncafé\n</think>\n```python\nx\n```"},
                   ensure_ascii=False).encode("latin-1"),
        good(1),
        # a lone surrogate escape: valid JSON, but text no UTF-8 file can hold
        b'{"id": "sur", "generation": "<think>\\ud800 a\\n</think>\\n```python\\nx\\n```"}',
        # a surrogate pair is a valid character
        b'{"id": "pair", "generation": "<think>\\ud83d\\ude00 a\\n</think>\\n```python\\nx\\n```"}',
        # a lone surrogate in the id of a row that is rejected anyway
        b'{"id": "x\\udc00y", "prompt": "no generation"}',
        # a bare \r between JSON tokens is whitespace inside the row, not a line end
        b'{"id": "cr",\r "generation": "<think>\\na\\n</think>\\n```python\\nx\\n```"}',
        good(2) + b"\r",  # a CRLF line end
        good(3),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    result = asap("split", src, out, cwd=tmp_path, check=True)
    assert "asap split: 9 rows (6 written, 3 rejected)" in result.stderr
    assert read_ids(out) == ["g0", "g1", "pair", "cr", "g2", "g3"]
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[2])["think"] == "\U0001F600 a"
    raw = (tmp_path / "out.rejects.jsonl").read_bytes()
    raw.decode("utf-8")  # the rejects file is valid UTF-8 whatever the input held
    rejects = [json.loads(line) for line in raw.splitlines()]
    assert [(r["id"], r["stage"]) for r in rejects] == [("line:2", "split"), ("line:4", "split"), ("line:6", "split")]
    assert rejects[0]["error"] == "invalid UTF-8 at byte 43 of the line"
    assert rejects[1]["error"] == "text with a lone surrogate ('\\ud800') cannot be written as UTF-8"
    assert rejects[2]["error"] == "text with a lone surrogate ('\\udc00') cannot be written as UTF-8"
    # the same rows through a gzip input and a gzip output
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    asap("split", gz, tmp_path / "gz.jsonl.gz", "--quiet", cwd=tmp_path, check=True)
    assert gzip.decompress((tmp_path / "gz.jsonl.gz").read_bytes()) == out.read_bytes()
    assert (tmp_path / "gz.jsonl.gz.rejects.jsonl").read_bytes() == raw


def test_truncated_gzip_keeps_every_complete_row_and_names_the_damage(tmp_path):
    rows = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines()]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    cut = gzip.compress(data, mtime=0)
    cut = cut[: len(cut) * 2 // 3]
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(cut)
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")  # rows wholly before the cut
    assert 0 < complete < len(rows)
    out = tmp_path / "out.jsonl"
    for attempt in range(2):  # re-running resumes and meets the same damage, losing nothing
        result = asap("split", src, out, "--task", "math", "--quiet", cwd=tmp_path)
        assert result.returncode == 1
        assert one_line(result) == (
            f"asap split: error: {src} is damaged after its first {complete} rows: the compressed stream ends "
            f"early (truncated file) (after line {complete}); the rows before the damage were written")
        kept = read_ids(out) + read_ids(tmp_path / "out.rejects.jsonl")
        assert sorted(kept) == sorted(r["id"] for r in rows[:complete])
        assert len(read_ids(out)) == sum("</think>" in r["generation"] for r in rows[:complete])
    assert not json.loads(out.with_name("out.jsonl.progress.json").read_text()).get("finished")


def test_a_50_mb_row_is_rejected_quickly_without_exhausting_memory(tmp_path, model_dir):
    rows = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines()[:2]]
    think = "word " * 10_000_000  # 50 MB, ~10 M tokens
    huge = {"id": "huge", "prompt": "p", "generation": "<think>\n" + think + "\n</think>\n```python\nx\n```"}
    src = write_jsonl(tmp_path / "in.jsonl", [rows[0], huge, rows[1]])
    assert src.stat().st_size > 50_000_000
    out = tmp_path / "out.jsonl"
    with (tmp_path / "stderr.txt").open("w+") as stderr:  # a file: no pipe to fill while we wait
        process = subprocess.Popen([ASAP, *map(str, fine_args(src, out, model_dir))], stderr=stderr,
                                   stdin=subprocess.DEVNULL, cwd=tmp_path, env=ENV)
        _, status, usage = os.wait4(process.pid, 0)  # the peak memory of this one process
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        err = stderr.read()
    assert process.returncode == 0 and err == "", err
    # Tokenizing the row in full takes ~10 GB and minutes; capping it by characters first, the
    # process holds little more than the row's text (the tiny model alone takes ~0.4 GB).
    peak_gb = usage.ru_maxrss * 1024 / 1e9 if sys.platform != "darwin" else usage.ru_maxrss / 1e9
    assert peak_gb < 2.0, f"peak RSS {peak_gb:.1f} GB"
    assert read_ids(out) == [rows[0]["id"], rows[1]["id"]]
    (reject,) = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "huge" and reject["error"].startswith("trace has 50,000,0")
    assert "more than the model's context of 16384 tokens" in reject["error"]


def test_binary_input_is_refused_before_the_model_loads(tmp_path):
    src = tmp_path / "weights.jsonl"  # a binary file under a JSON Lines name
    src.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64)
    out = tmp_path / "o.jsonl"
    result = asap("fine", src, out, cwd=tmp_path)  # the bundled scorer announces its load when not quiet
    assert result.returncode == 2
    assert one_line(result) == (f"asap fine: error: input {src} is not a text file (a NUL byte at offset 4); "
                                f"JSON Lines is UTF-8 text")
    assert DEMO_LINE not in result.stderr and list(tmp_path.iterdir()) == [src]
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text('{"id": 1}\n')
    result = asap("split", not_gzip, out, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == (f"asap split: error: input {not_gzip} is not gzip-compressed, though its name ends "
                                f"in .gz")
    gz_binary = tmp_path / "bin.jsonl.gz"
    gz_binary.write_bytes(gzip.compress(bytes(range(256))))
    result = asap("split", gz_binary, out, cwd=tmp_path)
    assert result.returncode == 2 and "is not a text file (a NUL byte at offset 0)" in one_line(result)
    assert not out.exists()


@pytest.fixture(scope="module")
def pad_past_vocab_model(work, model_dir) -> Path:
    """model_dir's model with a tokenizer that gained <pad> (id = the model's vocabulary size) and
    <extra> after it, the embedding never resized: a common state of fine-tuned checkpoints."""
    from transformers import AutoConfig, AutoTokenizer

    path = work / "pad-past-vocab"
    shutil.copytree(model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(["<extra>"], special_tokens=True)
    tokenizer.save_pretrained(path)
    vocab = AutoConfig.from_pretrained(path).vocab_size
    assert tokenizer.pad_token_id == vocab and tokenizer.convert_tokens_to_ids("<extra>") == vocab + 1
    return path


def test_pad_token_past_the_vocabulary(tmp_path, corpus, reference, pad_past_vocab_model):
    # Scores never depend on the pad id (padding is never attended), so the output is the
    # reference's; a row whose text holds an id the model lacks is a reject naming both sizes.
    src = tmp_path / "in.jsonl"
    extra = {"id": "uses-extra", "prompt": "Solve <extra> now.", "generation": split_generation(1)}
    src.write_text(corpus.read_text() + json.dumps(extra) + "\n", encoding="utf-8")
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(pad_past_vocab_model).vocab_size
    out = tmp_path / "fine.jsonl"
    asap(*fine_args(src, out, pad_past_vocab_model, "--batch", "4"), cwd=tmp_path, check=True)
    reference_out, reference_rejects = outputs(reference)
    got_out, got_rejects = outputs(out)
    assert got_out == reference_out
    assert got_rejects.startswith(reference_rejects)
    (reject,) = [json.loads(line) for line in got_rejects[len(reference_rejects):].splitlines()]
    assert reject["id"] == "uses-extra"
    assert reject["error"] == (f"the tokenizer gave token id {vocab + 1}, but the model's embedding has {vocab} "
                               f"rows (tokenizer vocabulary {vocab + 2}): tokenizer and model do not match")
