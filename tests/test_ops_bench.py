"""``asap bench ops|stage2|align``: the package's measurements (asap_fast/bench), which the
benchmarks/*.py scripts wrap, run for real on small sizes: the table, the tidy CSV rows, errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from asap_fast.bench.common import FIELDS
from asap_fast.cli import main as asap

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == list(FIELDS)
    return rows


def test_bench_ops_prints_the_table_and_appends_rows(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "rows.csv"
    assert asap(["bench", "ops", "--n", "4", "--d", "32", "--v", "1000", "--reps", "1", "--warmup", "1",
                 "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear_logsoftmax_gather" in printed and "logsoftmax_gather" in printed and "max|diff" in printed
    rows = read_csv(out)
    providers = {(r["op"], r["provider"]) for r in rows}
    assert {("linear_logsoftmax_gather", "asap_fast"), ("linear_logsoftmax_gather", "torch_eager"),
            ("logsoftmax_gather", "asap_fast"), ("logsoftmax_gather", "torch_eager")} <= providers
    assert {r["metric"] for r in rows} >= {"time", "bandwidth", "peak_memory", "speedup_vs_torch_eager"}
    assert all(float(r["p50"]) > 0 for r in rows if r["metric"] == "time")
    # appending again keeps one header
    assert asap(["bench", "ops", "--ops", "logsoftmax", "--n", "2", "--v", "100", "--reps", "1", "--csv", str(out)]) == 0
    assert len(read_csv(out)) > len(rows)


def test_bench_align_matches_difflib_on_real_traces(tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert asap(["bench", "align", "--limit", "6", "--repeats", "1", "--only", "difflib",
                 "--csv", str(out)]) == 0
    rows = read_csv(out)
    flips = {r["provider"]: float(r["p50"]) for r in rows if r["metric"] == "decision_flips_vs_difflib"}
    assert flips == {"difflib": 0.0, "asap_fast": 0.0}
    assert "6 traces" in capsys.readouterr().out


@pytest.mark.slow  # four model processes; CI also runs `asap bench stage2` itself
def test_bench_stage2_side_by_side_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert asap(["bench", "stage2", "--tokens", "300", "--vocab", "1024", "--tokenizer-vocab",
                 "1024", "--hidden", "32", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--layers", "1", "--reps", "2",
                 "--threads", "1", "--providers", "asap_fast,reference,backbone", "--batch", "2",
                 "--batch-tokens", "200", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "asap_fast vs reference: max |surprisal difference|" in printed
    assert "same kept set in 2/2 traces" in printed
    rows = read_csv(out)
    measures = {r["shape"].split(",")[0] for r in rows}
    assert len(measures) == 2 and any(m.startswith("batch=2") for m in measures)
    assert {r["provider"] for r in rows} == {"asap_fast", "reference", "backbone"}
    assert {"time", "throughput", "peak_rss", "time_vs_backbone", "time_vs_asap_fast"} <= {r["metric"] for r in rows}


def test_bench_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    import asap_fast.bench.stage2 as stage2

    monkeypatch.setattr(stage2, "vllm_installed", lambda: False)
    assert asap(["bench", "stage2", "--providers", "asap_fast,vllm"]) == 2
    assert "provider vllm needs vLLM, which is not installed" in capsys.readouterr().err
    assert asap(["bench", "ops", "--providers", "fastest"]) == 2
    assert "providers must be among" in capsys.readouterr().err
    assert asap(["bench", "align", "--traces", str(tmp_path / "missing.jsonl")]) == 2
    assert "traces not found" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench_ops.py", "bench_stage2.py", "bench_align.py"])
def test_the_scripts_are_wrappers_of_the_package(script, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--csv" in proc.stdout
