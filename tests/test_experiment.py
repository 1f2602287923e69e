"""`asap experiment`: the config's errors are one line, the plan's fingerprints change exactly the steps
a change affects, the results table is computed from the steps' own files, and (slow tier) a small
experiment runs end to end, is reused on a second run and re-runs only one method after its budget
changes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from asap_fast.cli import main as asap_main
from asap_fast.experiment import build_plan, load_experiment, run_experiment
from asap_fast.experiment.results import collect_results
from asap_fast.testing import as_foreground

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "experiments" / "cpu-smoke.yaml"
PAPER = ROOT / "configs" / "experiments" / "paper-code.yaml"


def smoke_config(tmp_path: Path, edit=None, name="exp.yaml") -> Path:
    """The shipped smoke config, copied beside its relative paths' targets (absolute), then edited."""
    data = yaml.safe_load(SMOKE.read_text())
    data["sft"]["recipe"] = str(ROOT / "configs" / "sft" / "cpu-smoke.yaml")
    data["eval"]["benchmarks"]["eval-mini"]["data"] = str(ROOT / "examples" / "eval-mini.jsonl")
    if edit is not None:
        edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fingerprints(config: Path, out: Path) -> dict[str, str]:
    return {s.name: s.fingerprint for s in build_plan(load_experiment(config), out)}


def test_shipped_configs_load_and_plan(tmp_path):
    smoke = load_experiment(SMOKE)
    assert [m.name for m in smoke.methods] == ["asap", "selective-context", "spirit"]
    steps = [s.name for s in build_plan(smoke, tmp_path)]
    assert steps[0] == "traces" and steps[-1] == "results"
    assert {"compress/asap", "sft/spirit", "eval/base/eval-mini", "eval/selective-context/eval-mini"} <= set(steps)
    paper = load_experiment(PAPER)
    assert paper.reference_method == "asap" and paper.sft_accelerate.endswith("fsdp.yaml")
    assert paper.paper["asap"]["humaneval_plus"]["pass_at_1"] == 78.66
    # 6 methods x (compress, sft) + 7 models x 3 benchmarks + traces + results
    assert len(build_plan(paper, tmp_path)) == 6 * 2 + 7 * 3 + 2


def test_dry_run_prints_every_step_and_names_missing_inputs(tmp_path, capsys):
    assert asap_main(["experiment", str(PAPER), "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "input not found" in out and "codeforces-cots.jsonl" in out
    assert "accelerate launch --config_file" in out and "--release v4_v5" in out
    assert not (tmp_path / "x").exists()  # a dry run writes nothing


def test_fingerprints_do_not_depend_on_where_dir_is(tmp_path):
    config = smoke_config(tmp_path)
    assert fingerprints(config, tmp_path / "a") == fingerprints(config, tmp_path / "b" / "c")


@pytest.mark.parametrize("edit, changed", [
    # one method's budget: that method's chain only
    (lambda d: d["methods"]["asap"].update(match_ratio=0.4), {"compress/asap", "sft/asap", "eval/asap/eval-mini"}),
    # an SFT override: every training and what evaluates it, no compression
    (lambda d: d["sft"]["overrides"].update(max_steps=3),
     {f"sft/{m}" for m in ("asap", "selective-context", "spirit")}
     | {f"eval/{m}/eval-mini" for m in ("asap", "selective-context", "spirit")}),
    # an eval option: every evaluation, the base one included
    (lambda d: d["eval"]["options"].update(max_new_tokens=8),
     {f"eval/{m}/eval-mini" for m in ("base", "asap", "selective-context", "spirit")}),
    # the sample of traces: everything but the untrained student's evaluation
    (lambda d: d["traces"].update(limit=5), "all but eval/base"),
])
def test_a_change_reruns_exactly_the_steps_it_affects(tmp_path, edit, changed):
    before = fingerprints(smoke_config(tmp_path, name="a.yaml"), tmp_path / "out")
    after = fingerprints(smoke_config(tmp_path, edit, name="b.yaml"), tmp_path / "out")
    differ = {name for name in before if before[name] != after[name]} - {"results"}
    if changed == "all but eval/base":
        changed = set(before) - {"results", "eval/base/eval-mini"}
    assert differ == changed


def test_a_changed_file_it_reads_changes_its_steps(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(ROOT / "configs" / "sft" / "cpu-smoke.yaml", recipe)
    config = smoke_config(tmp_path, lambda d: d["sft"].update(recipe=str(recipe)))
    before = fingerprints(config, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    after = fingerprints(config, tmp_path / "out")
    assert {n for n in before if before[n] != after[n]} - {"results"} == \
        {n for n in before if n.startswith("sft/") or (n.startswith("eval/") and not n.startswith("eval/base"))}


BAD_CONFIGS = {
    "not yaml": ("methods: [", "not valid YAML"),
    "a list": ("- 1\n", "top level: expected a mapping"),
    "unknown key": ({"methodz": {}}, "methodz: unknown key"),
    "unknown traces key": ({"traces": {"path": "asap_fast:cot-traces", "limits": 3}}, "traces.limits: unknown key"),
    "unknown benchmark key": ({"eval": {"benchmarks": {"b": {"data": "x", "split": 1}}}}, "eval.benchmarks.b.split"),
    "no methods": ({"methods": {}}, "methods: name at least one method"),
    "unknown method": ({"methods": {"x": {"method": "magic"}}}, "methods.x.method: unknown method 'magic'"),
    "base as a name": ({"methods": {"base": {"method": "asap"}}}, "methods.base"),
    "a path in a name": ({"methods": {"../x": {"method": "asap"}}}, "only letters, digits"),
    "nested option": ({"methods": {"asap": {"budget": {"a": 1}}}}, "methods.asap.budget: an option takes a scalar"),
    "limit 0": ({"traces": {"path": "asap_fast:cot-traces", "limit": 0}}, "traces.limit: expected a whole number"),
    "no benchmarks": ({"eval": {"backend": "hf", "benchmarks": {}}}, "eval.benchmarks: name at least one"),
    "bad backend": ({"eval": {"backend": "tpu", "benchmarks": {"b": {"data": "x"}}}}, "eval.backend"),
    "no data": ({"eval": {"benchmarks": {"b": {"benchmark": "humaneval"}}}}, "eval.benchmarks.b.data: missing"),
    "unknown reference": ({"reference": "nope"}, "reference: 'nope' is not a method"),
    "no scorer": ({"scorer": None}, "scorer: missing"),
    "misspelled option": ({"methods": {"asap": {"method": "asap", "skip_coarse": True, "budgte": 5}}},
                          "step compress/asap: asap compress refuses its options: unrecognized arguments: --budgte 5"),
    "bad option value": ({"eval": {"backend": "hf", "options": {"max_new_tokens": "many"},
                                   "benchmarks": {"b": {"benchmark": "humaneval", "data": "x"}}}},
                         "asap eval refuses its options: argument --max-new-tokens"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, capsys, case):
    change, message = BAD_CONFIGS[case]
    if isinstance(change, str):
        path = tmp_path / "bad.yaml"
        path.write_text(change)
    else:
        path = smoke_config(tmp_path, lambda d: d.update(change))
    code = asap_main(["experiment", str(path), "--out", str(tmp_path / "x"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("asap experiment: error: ") and message in err, err


def _write_rows(path: Path, rows: list[tuple[str, int, int]], rejects: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "tokens_before": b, "tokens_after": a}) + "\n" for i, b, a in rows))
    if rejects:
        path.with_name("out.rejects.jsonl").write_text('{"id": "z", "error": "x"}\n' * rejects)


def test_results_are_computed_from_the_steps_files(tmp_path):
    config = smoke_config(tmp_path, lambda d: d.update(paper={"asap": {"eval-mini": {"pass_at_1": 50.0}}}))
    exp = load_experiment(config)
    steps = build_plan(exp, tmp_path / "out")
    out = {s.name: s.outputs for s in steps}
    # asap wrote rows a, b (c rejected); selective-context a, b, c; spirit has not run
    _write_rows(Path(out["compress/asap"]["out"]), [("a", 100, 40), ("b", 300, 60)], rejects=1)
    _write_rows(Path(out["compress/selective-context"]["out"]), [("a", 100, 50), ("b", 300, 150), ("c", 50, 5)])
    for model, p, tokens in (("base", 0.5, 100.0), ("asap", 0.75, 50.0), ("selective-context", 0.25, 80.0)):
        path = Path(out[f"eval/{model}/eval-mini"]["results"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pass_at_1": p, "avg_tokens": tokens, "latency_s": 0.5, "n_problems": 6}))
    rows = {r.model: r for r in collect_results(exp, steps)}
    asap, sc, spirit, base = rows["asap"], rows["selective-context"], rows["spirit"], rows["base"]
    # totals over the rows both written methods share (a, b): (40 + 60) / 400 and (50 + 150) / 400
    assert (asap.shared_rows, asap.rows, asap.rejects) == (2, 2, 1)
    assert asap.compression == pytest.approx(100 / 400) and sc.compression == pytest.approx(200 / 400)
    assert asap.mean_ratio == pytest.approx((0.4 + 0.2) / 2)
    assert asap.d_pass_base == pytest.approx(25.0) and asap.d_tokens_base == pytest.approx(-50.0)
    assert sc.d_pass_ref == pytest.approx(-50.0) and sc.d_tokens_ref == pytest.approx(60.0)
    assert asap.paper_pass_at_1 == 50.0 and sc.paper_pass_at_1 is None
    assert spirit.compression is None and spirit.pass_at_1 is None and base.compression is None
    from asap_fast.experiment.results import write_results

    md, csv_path, html_path = write_results(exp, steps)
    text = md.read_text()
    assert "| spirit | spirit | eval-mini | n/a | n/a |" in text  # missing, never made up
    assert "0.250 (100/400 tokens of 2 shared rows; 2 written, 1 rejected)" in text
    assert csv_path.read_text().count("\n") == 1 + 4 and "<svg" in html_path.read_text()


def test_a_failed_step_stops_the_run_naming_the_step_and_its_log(tmp_path):
    config = smoke_config(tmp_path, lambda d: d.update(scorer="/nonexistent/model", traces={
        "path": "asap_fast:cot-traces", "limit": 2}))
    out = tmp_path / "out"
    # never in the checkout: `python -m` there would import the source tree
    run = subprocess.run([sys.executable, "-m", "asap_fast.cli", "experiment", str(config), "--out", str(out)],
                         capture_output=True, text=True, cwd=tempfile.mkdtemp(), timeout=300, check=False)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("asap experiment: step compress/asap failed (exit 2): ")
    assert f"log: {out / 'compress' / 'asap' / 'log.txt'}" in last
    assert "/nonexistent/model" in (out / "compress" / "asap" / "log.txt").read_text()
    assert json.loads((out / "traces" / "step.json").read_text())["status"] == "done"
    assert json.loads((out / "compress" / "asap" / "step.json").read_text())["status"] == "running"
    assert not (out / "sft").exists()


def test_only_runs_one_step_and_needs_its_inputs(tmp_path):
    config = smoke_config(tmp_path, lambda d: d.update(traces={"path": "asap_fast:cot-traces", "limit": 3}))
    exp = load_experiment(config)
    with pytest.raises(ValueError, match="--only sft/asap: it needs compress/asap, not finished"):
        run_experiment(exp, tmp_path / "out", only="sft/asap", quiet=True)
    with pytest.raises(ValueError, match="--only nope: no such step"):
        run_experiment(exp, tmp_path / "out", only="nope", quiet=True)
    run_experiment(exp, tmp_path / "out", only="traces", quiet=True)
    assert len((tmp_path / "out" / "traces" / "traces.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "out" / "compress").exists()


@pytest.mark.slow  # compresses, trains and evaluates (about 1 minute on 2 cores)
def test_a_small_experiment_runs_reuses_and_reruns_one_method(tmp_path):
    def small(d, ratio=0.5):
        d["traces"]["limit"] = 4
        d["methods"] = {"asap": {"method": "asap", "skip_coarse": True, "ratio": ratio},
                        "selective-context": {"ratio": 0.5}}
        d["sft"]["overrides"]["max_steps"] = 1
        d["eval"]["options"]["max_new_tokens"] = 8

    out = tmp_path / "out"
    first = smoke_config(tmp_path, small, name="first.yaml")
    asap = [sys.executable, "-m", "asap_fast.cli", "experiment"]
    cwd = tempfile.mkdtemp()
    subprocess.run([*asap, str(first), "--out", str(out), "--quiet"], check=True, cwd=cwd, timeout=900)
    table = (out / "results.md").read_text()
    for model in ("base", "asap", "selective-context"):
        assert f"| {model} |" in table
    assert "n/a | n/a | n/a | n/a |" not in table.split("| asap |")[1].splitlines()[0]
    manifests = {p: p.read_text() for p in out.glob("**/step.json")}
    assert len(manifests) == 1 + 2 + 2 + 3

    again = subprocess.run([*asap, str(first), "--out", str(out)], capture_output=True, text=True, cwd=cwd, timeout=300,
                           check=False)
    assert again.returncode == 0 and "8 step(s) done before, reused" in again.stderr
    assert {p: p.read_text() for p in out.glob("**/step.json")} == manifests  # nothing ran

    second = smoke_config(tmp_path, lambda d: small(d, ratio=0.4), name="second.yaml")
    plan = subprocess.run([*asap, str(second), "--out", str(out), "--dry-run"], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=True).stdout
    assert "compress/asap: options changed (--ratio 0.5 -> --ratio 0.4)" in plan
    assert "sft/asap: input changed: compress/asap" in plan
    subprocess.run([*asap, str(second), "--out", str(out), "--quiet"], check=True, cwd=cwd, timeout=900)
    rerun = {p for p in manifests if p.read_text() != manifests[p]}
    assert {str(p.relative_to(out).parent) for p in rerun} == {"compress/asap", "sft/asap", "eval/asap/eval-mini"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_step_and_a_rerun_picks_it_up(tmp_path, sig):
    """Ctrl-C (SIGINT to the runner) or a scheduler's stop (SIGTERM): the runner stops the step's
    child, says which step, exits 130; the re-run's plan resumes that step."""
    import time

    config = smoke_config(tmp_path, lambda d: d.update(traces={"path": "asap_fast:cot-traces", "limit": 40}))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "asap_fast.cli", "experiment", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.mkdtemp(),
                            preexec_fn=as_foreground)
    log = out / "compress" / "asap" / "log.txt"
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert log.exists(), "the compress step never started"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the runner did not stop within 120 s of the signal; its output:\n{err[-3000:]}")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("asap experiment: interrupted during step compress/asap; run the same "
                                            "command again to go on (finished steps are kept)")
    plan = subprocess.run([sys.executable, "-m", "asap_fast.cli", "experiment", str(config), "--out", str(out),
                           "--dry-run"], capture_output=True, text=True, cwd=tempfile.mkdtemp(), check=True).stdout
    assert "[done] traces: done" in plan and "[run ] compress/asap: did not finish" in plan


@pytest.mark.slow  # compresses, trains and evaluates once (about 35 s on 2 cores)
def test_sft_runs_under_accelerate_launch_when_the_config_names_a_file(tmp_path):
    accelerate_config = tmp_path / "cpu.yaml"  # accelerate on CPU without MPI: its simple launcher
    accelerate_config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\n"
                                 "num_machines: 1\nnum_processes: 1\nuse_cpu: true\n")

    def small(d):
        d["traces"]["limit"] = 3
        d["methods"] = {"asap": {"method": "asap", "skip_coarse": True, "ratio": 0.5}}
        d["sft"].update(accelerate=str(accelerate_config))
        d["sft"]["overrides"]["max_steps"] = 1
        d["eval"]["options"]["max_new_tokens"] = 4

    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "asap_fast.cli", "experiment", str(smoke_config(tmp_path, small)),
                    "--out", str(out), "--quiet"], check=True, cwd=tempfile.mkdtemp(), timeout=900)
    log = (out / "sft" / "asap" / "log.txt").read_text()
    assert log.startswith(f"$ accelerate launch --config_file {accelerate_config} -m asap_fast.cli sft ")
    summary = json.loads((out / "sft" / "asap" / "model" / "sft_summary.json").read_text())
    assert summary["global_steps"] == 1
    assert json.loads((out / "eval" / "asap" / "eval-mini" / "results.json").read_text())["n_problems"] == 6
