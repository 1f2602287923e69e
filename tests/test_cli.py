"""The `asap` entry point as a user runs it: a real subprocess on real files."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import asap_fast as af

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"
ASAP = str(Path(sys.executable).parent / "asap")


def asap(*args, check=True, cwd=None):
    # The installed console script, as the README runs it: the one beside this interpreter, so the
    # test does not depend on PATH.
    result = subprocess.run([ASAP, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_version_and_help():
    assert asap("--version").stdout.strip() == f"asap-fast {af.__version__}"
    assert "split" in asap("--help").stdout
    assert "--task" in asap("split", "--help").stdout
    assert asap(check=False).returncode == 2


def test_split_sample_corpus(tmp_path):
    out = tmp_path / "steps.jsonl"
    result = asap("split", EXAMPLES, out)
    assert "asap split: 20 rows (19 written, 1 rejected)" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = {json.loads(line)["id"]: json.loads(line) for line in EXAMPLES.read_text().splitlines()}
    assert len(rows) == 19
    for row in rows:
        source = inputs[row["id"]]
        assert {k: row[k] for k in source} == source  # every input field kept
        assert row["steps"] == af.split_steps(af.parse_trace(source["generation"], require_code=False).think)
        assert row["n_steps"] == len(row["steps"])
    rejects = [json.loads(line) for line in (tmp_path / "steps.rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"id": "cac-98bff347", "stage": "split", "error": "no </think> tag in generation (truncated trace?)"}]
    # Re-running resumes: nothing left to do, nothing written twice.
    again = asap("split", EXAMPLES, out)
    assert "0 rows" in again.stderr and "resumed after 20" in again.stderr
    assert len(out.read_text().splitlines()) == 19


def test_split_bad_rows_become_rejects(tmp_path):
    src = tmp_path / "in.jsonl.gz"
    good = {"id": "ok", "prompt": "p", "generation": "<think>a\n\nb</think>\n```python\nx\n```"}
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write(json.dumps(good) + "\n")
        f.write("{not json\n")
        f.write("[1, 2]\n")
        f.write(json.dumps({"id": 7, "prompt": "p"}) + "\n")
        f.write(json.dumps({"id": "num", "generation": 12}) + "\n")
        f.write("\n")
        f.write(json.dumps({"id": "math", "kind": "math", "generation": "<think>x</think> 4"}) + "\n")
    out = tmp_path / "out.jsonl.gz"
    asap("split", src, out)
    with gzip.open(out, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["id"] for r in rows] == ["ok", "math"]
    assert rows[0]["steps"] == ["a", "b"] and rows[0]["code"] == "x\n"  # the block as captured
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.gz.rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"]) for r in rejects] == [("line:2", "split"), ("line:3", "split"), ("7", "split"), ("num", "split")]
    assert rejects[0]["error"].startswith("malformed JSON")
    assert rejects[1]["error"] == "a row must be a JSON object, got list"
    assert rejects[2]["error"] == "missing field 'generation'"
    assert rejects[3]["error"] == "generation must be str, not int"


def test_split_missing_input_is_a_clear_error(tmp_path):
    result = asap("split", tmp_path / "nope.jsonl", tmp_path / "out.jsonl", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"asap split: error: input not found: {tmp_path / 'nope.jsonl'}"
    assert not (tmp_path / "out.jsonl").exists()


def test_split_refuses_to_clobber_foreign_output(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"mine": 1}\n')
    result = asap("split", EXAMPLES, out, check=False)
    assert result.returncode == 2
    assert "exists but was not written by a resumable asap run" in result.stderr
    assert out.read_text() == '{"mine": 1}\n'



def test_module_entry_point(tmp_path):
    # cwd away from the checkout, so the installed package (with its compiled core) is imported.
    result = subprocess.run(
        [sys.executable, "-m", "asap_fast.cli", "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and "asap-fast" in result.stdout


@pytest.mark.parametrize("name", [
    "split", "direct", "coarse", "fine", "compress", "merge", "report", "sft",
    "eval",
])
def test_every_subcommand_help_explains_with_an_example(name):
    # In-process: the parser is what `asap COMMAND --help` prints; each epilog ends in an example.
    import argparse

    from asap_fast.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = sub.choices[name].format_help()
    assert f"example:\n  asap {name} " in text or "example:\n  accelerate " in text
