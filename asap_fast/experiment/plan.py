"""The steps of an experiment, in the order they run, each with the fingerprint that decides whether
a finished copy of it can be reused.

    traces                      the selected sample of the traces (in process)
    compress/<method>           asap compress --method ... (asap fine --ratio 1 for "original")
    sft/<method>                asap sft --config RECIPE (under accelerate launch when configured)
    eval/base/<benchmark>       asap eval on the untrained student: the reference row
    eval/<method>/<benchmark>   asap eval on each fine-tuned model
    results                     results.md / .csv / .html (in process, always rebuilt)

A step's fingerprint hashes its command line with every path it reads replaced by that input's own
fingerprint: an upstream step's fingerprint, or the content of an external file (a directory: its
listing with sizes, and the content of its small files). Where DIR lives does not matter, and a
changed option or input changes exactly the steps downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asap_fast.experiment.config import Experiment

__all__ = ["Input", "Step", "build_plan", "flags"]

_SMALL_FILE = 1 << 20  # files of a model directory up to this size are hashed by content


@dataclass(frozen=True)
class Input:
    """A path a step reads: ``key`` is what the fingerprint sees instead of the path."""

    path: str
    key: str


@dataclass
class Step:
    name: str  # "compress/asap"
    kind: str  # traces | compress | sft | eval | results
    argv: list  # the command after `asap`: str and Input items (empty for in-process steps)
    outputs: dict[str, str]  # what it leaves behind, by role ("out", "model", "results")
    needs: list[str] = field(default_factory=list)  # steps whose outputs it reads
    accelerate: Input | None = None  # sft: run under `accelerate launch --config_file`
    details: dict[str, Any] = field(default_factory=dict)  # in-process steps' settings
    fingerprint: str = ""

    @property
    def dir(self) -> str:
        return os.path.dirname(next(iter(self.outputs.values())))

    def command(self) -> list[str]:
        return [a.path if isinstance(a, Input) else a for a in self.argv]

    def spec(self) -> list[str]:
        """The command line as the fingerprint sees it (paths replaced by their keys)."""
        out = [f"<{a.key}>" if isinstance(a, Input) else a for a in self.argv]
        if self.accelerate is not None:
            out = ["accelerate", f"<{self.accelerate.key}>", *out]
        if self.details:
            out += [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(self.details.items())]
        return out


def flags(options: dict[str, Any]) -> list[str]:
    """YAML options -> command-line flags: ``skip_coarse: true`` -> ``--skip-coarse``, ``false``/null
    -> nothing, a list -> comma-joined, anything else -> ``--name value``."""
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def overrides(values: dict[str, Any]) -> list[str]:
    """SFT KEY=VALUE overrides (values as YAML, which `asap sft` parses back)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


class Digests:
    """Content fingerprints of external inputs, computed once per run."""

    def __init__(self):
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            self.cache[path] = self._digest(Path(path))
        return self.cache[path]

    @staticmethod
    def _digest(path: Path) -> str:
        h = hashlib.sha256()
        if path.is_file():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return "file:" + h.hexdigest()[:20]
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
                    continue
                size = p.stat().st_size
                h.update(f"{p.relative_to(path)}\0{size}\0".encode())
                if size <= _SMALL_FILE:
                    h.update(p.read_bytes())
            return "dir:" + h.hexdigest()[:20]
        # not a local path (a hub id) or not there yet: the name itself; a missing file is reported
        # by the runner before the step that needs it starts
        return "name:" + str(path)


def build_plan(exp: Experiment, out_dir: str | os.PathLike) -> list[Step]:
    out_dir = Path(out_dir).resolve()
    digests = Digests()
    steps: list[Step] = []

    def step(name, kind, outputs, needs=(), **kw) -> Step:
        s = Step(name=name, kind=kind, argv=[], outputs={k: str(out_dir / name / v) for k, v in outputs.items()},
                 needs=list(needs), **kw)
        steps.append(s)
        return s

    def seal(s: Step) -> None:
        # in dependency order: every upstream fingerprint is known when a step is sealed
        s.fingerprint = hashlib.sha256(json.dumps([s.kind, s.spec()]).encode()).hexdigest()[:16]

    def own(s: Step, role: str, prefix: str = "") -> Input:
        # a step's own output: its place under DIR, not its content
        return Input(prefix + s.outputs[role], "out:" + os.path.relpath(s.outputs[role], out_dir))

    def reads(s: Step, role: str, prefix: str = "") -> Input:
        return Input(prefix + s.outputs[role], s.name + "@" + s.fingerprint)

    traces = step("traces", "traces", {"out": "traces.jsonl"}, details={
        "source": digests(exp.traces), "limit": exp.traces_limit, "max_chars": exp.traces_max_chars})
    seal(traces)

    compressed = {}
    for m in exp.methods:
        s = step(f"compress/{m.name}", "compress", {"out": "out.jsonl"}, needs=["traces"])
        if m.kind == "original":
            # the paper's "Original SFT": every step kept (ratio 1), written with the fields SFT reads
            s.argv = ["fine", reads(traces, "out"), own(s, "out"), "--ratio", "1"]
        else:
            s.argv = ["compress", reads(traces, "out"), own(s, "out"), "--method", m.kind]
        s.argv += ["--model", _model(exp.scorer, digests), *flags({**exp.compress_options, **m.options})]
        seal(s)
        compressed[m.name] = s

    models: dict[str, Input | str] = {"base": _model(exp.student, digests)}
    for m in exp.methods:
        s = step(f"sft/{m.name}", "sft", {"model": "model"}, needs=[f"compress/{m.name}"],
                 accelerate=Input(exp.sft_accelerate, digests(exp.sft_accelerate)) if exp.sft_accelerate else None)
        student = _model(exp.student, digests)
        s.argv = ["sft", "--config", Input(exp.sft_recipe, digests(exp.sft_recipe)),
                  Input("model_name_or_path=" + student.path, student.key) if isinstance(student, Input)
                  else "model_name_or_path=" + student,
                  reads(compressed[m.name], "out", "dataset="), own(s, "model", "output_dir="),
                  *overrides({**exp.sft_overrides, **m.sft_overrides})]
        seal(s)
        models[m.name] = reads(s, "model")

    for model_name, model in models.items():
        method = next((m for m in exp.methods if m.name == model_name), None)
        for b in exp.benchmarks:
            s = step(f"eval/{model_name}/{b.name}", "eval", {"results": "results.json"},
                     needs=[] if method is None else [f"sft/{model_name}"])
            s.argv = ["eval", "--benchmark", b.benchmark, "--data", Input(b.data, digests(b.data)), "--model", model,
                      "--backend", exp.eval_backend, "--out", own(s, "results"),
                      *flags({**exp.eval_options, **b.options, **(method.eval_options if method else {})})]
            seal(s)

    results = step("results", "results", {"md": "results.md"}, needs=[s.name for s in steps if s.kind != "traces"])
    results.outputs = {"md": str(out_dir / "results.md"), "csv": str(out_dir / "results.csv"),
                       "html": str(out_dir / "results.html")}
    seal(results)
    return steps


def _model(value: str, digests: Digests) -> Input | str:
    """A local model directory is an input (its content fingerprinted); a hub id is a plain name."""
    return Input(value, digests(value)) if os.path.exists(value) else value
