"""Run an experiment's plan: each step once, each heavy step in its own process.

Every step leaves ``DIR/<step>/step.json`` when it finishes, holding its fingerprint and command. A
re-run reuses a step whose manifest holds the current fingerprint and whose outputs exist, and says
why it runs any other (new, its options changed, an input changed, or it did not finish). A step
that must run again from other options starts from an empty directory; one that was interrupted
with the same options keeps its directory, so a compression resumes where it stopped.

Heavy steps (compress, sft, eval) run as ``python -m asap_fast.cli ...`` children (under
``accelerate launch`` for a multi-GPU SFT), so each one's GPU memory is returned when it ends. Their
output goes to ``DIR/<step>/log.txt`` and to the terminal. The child runs in its step's directory:
never in a checkout, whose source tree would shadow the installed package.
"""

from __future__ import annotations

import difflib
import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asap_fast.experiment.config import Experiment
from asap_fast.experiment.plan import Input, Step, build_plan

__all__ = ["ExperimentError", "StepFailed", "StepInterrupted", "StepStatus", "plan_status", "run_experiment"]

MANIFEST = "step.json"
LOG = "log.txt"


class ExperimentError(ValueError):
    """The experiment cannot start or go on (one line)."""


class StepFailed(ExperimentError):
    """A step's command failed; names the step and its log."""


class StepInterrupted(ExperimentError):
    """Ctrl-C (or SIGTERM to the child) during a step; a re-run resumes."""


@dataclass
class StepStatus:
    step: Step
    done: bool
    reason: str  # why it runs ("new", "options changed: ...") or "done"


def _manifest_path(step: Step) -> Path:
    return Path(step.dir) / MANIFEST


def _read_manifest(step: Step) -> dict | None:
    try:
        data = json.loads(_manifest_path(step).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _changes(old: list[str], new: list[str]) -> str:
    """What differs between two specs, in a few words: changed options and changed inputs."""
    was, now, inputs, files = [], [], [], False
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        removed, added = old[i1:i2], new[j1:j2]
        inputs += [a[1:-1].split("@")[0] for a in added if a.startswith("<") and "@" in a]
        files = files or any(a.startswith(("<file:", "<dir:", "<name:")) for a in added)
        removed, added = [a for a in removed if not a.startswith("<")], [a for a in added if not a.startswith("<")]
        if removed or added:
            # a changed value is shown with its flag: "--ratio 0.5 -> --ratio 0.4"
            values_only = not any(a.startswith("--") for a in removed + added)
            flag = old[i1 - 1] if op == "replace" and values_only and i1 > 0 and old[i1 - 1].startswith("--") else None
            was.append(" ".join(([flag] if flag else []) + removed) or "-")
            now.append(" ".join(([flag] if flag else []) + added) or "-")
    parts = []
    if was:
        parts.append(f"options changed ({', '.join(was)} -> {', '.join(now)})")
    if inputs:
        parts.append("input changed: " + ", ".join(dict.fromkeys(inputs)))
    if files:
        parts.append("a file or model it reads changed")
    return "; ".join(parts) or "changed"


def plan_status(steps: list[Step]) -> list[StepStatus]:
    statuses = []
    for s in steps:
        if s.kind == "results":
            statuses.append(StepStatus(s, False, "always rebuilt"))
            continue
        manifest = _read_manifest(s)
        outputs_there = all(os.path.exists(p) for p in s.outputs.values())
        if manifest is None:
            reason = "did not finish" if Path(s.dir).exists() else "new"
            statuses.append(StepStatus(s, False, reason))
        elif manifest.get("fingerprint") != s.fingerprint:
            statuses.append(StepStatus(s, False, _changes(manifest.get("spec") or [], s.spec())))
        elif manifest.get("status") != "done":
            statuses.append(StepStatus(s, False, "did not finish"))
        elif not outputs_there:
            statuses.append(StepStatus(s, False, "its output is gone"))
        else:
            statuses.append(StepStatus(s, True, "done"))
    return statuses


def shell_command(step: Step) -> str:
    if step.kind in ("traces", "results"):
        return "(in process)"
    prefix = ["accelerate", "launch", "--config_file", step.accelerate.path, "-m", "asap_fast.cli"] \
        if step.accelerate is not None else ["asap"]
    return shlex.join(prefix + step.command())


def run_experiment(exp: Experiment, out_dir: str | os.PathLike, *, only: str | None = None, dry_run: bool = False,
                   quiet: bool = False, validate: Callable[[Step], None] | None = None,
                   log: Callable[[str], None] | None = None) -> list[StepStatus]:
    """Run the steps that are not done (or only ``only``); returns the plan's statuses as found."""
    from asap_fast.experiment.results import write_results

    out_dir = Path(out_dir).resolve()
    say = log or (lambda msg: print(f"asap experiment: {msg}", file=sys.stderr, flush=True))
    steps = build_plan(exp, out_dir)
    if validate is not None:
        for s in steps:
            validate(s)
    statuses = plan_status(steps)
    by_name = {st.step.name: st for st in statuses}
    if only is not None and only not in by_name:
        raise ExperimentError(f"--only {only}: no such step (steps: {', '.join(by_name)})")
    todo = [st for st in statuses if not st.done and (only is None or st.step.name == only)]

    if dry_run:
        for i, st in enumerate(statuses, 1):
            mark = "done" if st.done else ("run " if st in todo else "skip")
            missing = "".join(f"; input not found: {p}" for p in _missing_inputs(st.step)) if st in todo else ""
            print(f"{i:>3}. [{mark}] {st.step.name}: {st.reason}{missing}\n       {shell_command(st.step)}")
        return statuses

    _check_inputs([st.step for st in todo])
    if only is not None:
        missing = [n for n in by_name[only].step.needs if not by_name[n].done]
        if missing:
            raise ExperimentError(f"--only {only}: it needs {', '.join(missing)}, not finished; run without --only")
    out_dir.mkdir(parents=True, exist_ok=True)
    from asap_fast.pipeline.claim import OutputBusy, claim_output
    from asap_fast.pipeline.engine import SigtermAsInterrupt

    try:
        claim_output(out_dir / "experiment")
    except OutputBusy:
        raise ExperimentError(f"{out_dir} is in use by another asap experiment; wait for it to end") from None

    heavy = [st for st in todo if st.step.kind != "results"]
    if only is not None and only != "results" and not heavy:
        say(f"step {only} is done (nothing to do; its inputs and options are unchanged)")
    skipped = [st.step.name for st in statuses if st.done]
    if skipped and not quiet:
        say(f"{len(skipped)} step(s) done before, reused: {', '.join(skipped)}")
    if heavy and not quiet:
        say(f"{len(heavy)} step(s) to run: " + "; ".join(f"{st.step.name} ({st.reason})" for st in heavy))
    for i, st in enumerate(heavy, 1):
        s = st.step
        if not quiet:
            say(f"[{i}/{len(heavy)}] {s.name} ({st.reason})")
        _prepare_dir(s)
        started = time.perf_counter()
        try:
            with SigtermAsInterrupt():  # a scheduler's stop ends the step (and its child) as Ctrl-C does
                if s.kind == "traces":
                    _select_traces(exp, s)
                else:
                    _run_child(s, quiet)
        except KeyboardInterrupt:
            raise StepInterrupted(f"interrupted during step {s.name}; run the same command again to go on "
                                  f"(finished steps are kept)") from None
        seconds = time.perf_counter() - started
        _write_manifest(s, "done", seconds)
        if not quiet:
            say(f"[{i}/{len(heavy)}] {s.name} done in {seconds:.1f} s")
    if only is None or only == "results":
        paths = write_results(exp, steps)
        if not quiet:
            say("results: " + ", ".join(str(p) for p in paths))
    return statuses


def _missing_inputs(s: Step) -> list[str]:
    """External files a step reads that are not there (the plan fingerprints them as "name:")."""
    missing = [a.path.split("=", 1)[-1] for a in s.argv if isinstance(a, Input) and a.key.startswith("name:")]
    if str(s.details.get("source", "")).startswith("name:"):
        missing.append(s.details["source"][5:])
    return missing


def _check_inputs(steps: list[Step]) -> None:
    for s in steps:
        missing = _missing_inputs(s)
        if missing:
            raise ExperimentError(f"step {s.name}: input not found: {missing[0]}")


def _prepare_dir(s: Step) -> None:
    """An unfinished step with the same fingerprint keeps its directory (a compression resumes);
    anything else starts empty."""
    d = Path(s.dir)
    manifest = _read_manifest(s)
    if d.exists() and (manifest is None or manifest.get("fingerprint") != s.fingerprint):
        shutil.rmtree(d)
    elif d.exists() and s.kind == "sft":
        shutil.rmtree(d)  # a training run does not resume: it starts over
    d.mkdir(parents=True, exist_ok=True)
    _write_manifest(s, "running", None)


def _write_manifest(s: Step, status: str, seconds: float | None) -> None:
    data = {"step": s.name, "status": status, "fingerprint": s.fingerprint, "spec": s.spec(),
            "command": shell_command(s), "seconds": None if seconds is None else round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if status == "done" else None}
    path = _manifest_path(s)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _select_traces(exp: Experiment, s: Step) -> None:
    """The first ``limit`` rows (of at most ``max_chars`` characters of generation), copied as they
    are: a row that does not parse is kept, so that the compress steps reject it with its reason."""
    import gzip

    out = Path(s.outputs["out"])
    tmp = out.with_name(out.name + ".tmp")
    opener = gzip.open if exp.traces.endswith(".gz") else open
    n = 0
    with opener(exp.traces, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            if not line.strip():
                continue
            if exp.traces_limit is not None and n >= exp.traces_limit:
                break
            if exp.traces_max_chars is not None:
                try:
                    generation = json.loads(line).get("generation")
                except (ValueError, AttributeError, RecursionError):
                    generation = None
                if isinstance(generation, str) and len(generation) > exp.traces_max_chars:
                    continue
            dst.write(line if line.endswith(b"\n") else line + b"\n")
            n += 1
    if n == 0:
        raise ExperimentError(f"step traces: no row of {exp.traces} is selected (limit / max_chars)")
    os.replace(tmp, out)


def _run_child(s: Step, quiet: bool) -> None:
    argv = [sys.executable, "-m", "asap_fast.cli", *s.command()]
    if s.accelerate is not None:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", s.accelerate.path,
                "-m", "asap_fast.cli", *s.command()]
    log_path = Path(s.dir) / LOG
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        log.write(f"$ {shell_command(s)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=s.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            while True:
                # Wait in short slices, not in one blocking read: a Ctrl-C that the kernel hands to
                # another thread of this process does not interrupt a read in the main thread, and
                # a child can stay silent for minutes (a model loading, a long row); the handler's
                # KeyboardInterrupt is raised here within a slice instead.
                ready, _, _ = select.select([proc.stdout], [], [], 0.25)
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        raise StepFailed(f"step {s.name} failed (exit {rc}): {_last_line(log_path)}; log: {log_path}")


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if len(lines) > 1 else "no output"
