"""An experiment's YAML file, read into typed settings with one-line errors naming the key.

Paths in the file are relative to the file itself, so a config runs the same from any directory.
Two names point into the installed package: ``asap_fast:demo-scorer`` (the bundled demo scorer) and
``asap_fast:cot-traces`` (the 294 bundled sample traces). A model that is not an existing path is
kept as written (a hub id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Benchmark", "ConfigError", "Experiment", "Method", "load_experiment"]

# `method:` values: the baselines of `asap compress --method`, asap itself, and "original" (the
# paper's "Original SFT" row: every step kept, see plan.py)
METHOD_KINDS = ("asap", "original", "spirit", "selective-context", "llmlingua2", "tokenskip")


class ConfigError(ValueError):
    """The experiment file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Method:
    name: str  # the key under `methods:`: names the steps and the result rows
    kind: str  # one of METHOD_KINDS
    options: dict[str, Any]  # flags of `asap compress` (or `asap fine` for "original")
    eval_options: dict[str, Any]  # extra flags of `asap eval` for the model trained on this method
    sft_overrides: dict[str, Any]  # extra KEY=VALUE overrides of the SFT recipe for this method


@dataclass(frozen=True)
class Benchmark:
    name: str  # the key under `eval.benchmarks:`
    benchmark: str  # `asap eval --benchmark`
    data: str  # `asap eval --data`
    options: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    traces: str
    traces_limit: int | None
    traces_max_chars: int | None
    scorer: str
    student: str
    compress_options: dict[str, Any]
    methods: tuple[Method, ...]
    sft_recipe: str
    sft_overrides: dict[str, Any]
    sft_accelerate: str | None
    eval_backend: str
    eval_options: dict[str, Any]
    benchmarks: tuple[Benchmark, ...]
    reference_method: str | None  # the row "vs ASAP" compares with
    paper: dict[str, Any] = field(default_factory=dict)  # published numbers: method -> benchmark -> metrics


def _package_path(name: str) -> str | None:
    if name == "asap_fast:demo-scorer":
        from asap_fast.scorers import DEFAULT_SCORER

        return str(DEFAULT_SCORER)
    if name == "asap_fast:cot-traces":
        from asap_fast.data import COT_TRACES

        return str(COT_TRACES)
    return None


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.base = path.parent

    def fail(self, key: str, message: str):
        raise ConfigError(f"{self.path}: {key}: {message}")

    def mapping(self, value, key: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                self.fail(key, f"keys must be strings, got {k!r}")
        return dict(value)

    def known(self, section: dict, allowed: set[str], key: str) -> None:
        unknown = sorted(set(section) - allowed)
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            self.fail(where, f"unknown key (known: {', '.join(sorted(allowed))})")

    def file_name(self, name: str, key: str, what: str) -> None:
        if not name.replace("-", "").replace("_", "").isalnum():
            self.fail(key, f"a {what}'s name may hold only letters, digits, - and _ (it names files)")

    def string(self, section: dict, name: str, key: str, *, default=None, required=True) -> str | None:
        value = section.get(name, default)
        if value is None:
            if required:
                self.fail(key, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def count(self, section: dict, name: str, key: str) -> int | None:
        value = section.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(key, f"expected a whole number >= 1, got {value!r}")
        return value

    def file(self, value: str) -> str:
        """A path relative to the config file (kept as written when it does not exist: the plan says so)."""
        packaged = _package_path(value)
        if packaged is not None:
            return packaged
        return str((self.base / os.path.expanduser(value)).resolve())

    def model(self, value: str) -> str:
        """A local model directory relative to the config, else a hub id as written."""
        packaged = _package_path(value)
        if packaged is not None:
            return packaged
        local = self.base / os.path.expanduser(value)
        if local.exists() or value.startswith((".", "/", "~")):
            return str(local.resolve())
        return value

    def options(self, value, key: str) -> dict[str, Any]:
        options = self.mapping(value, key)
        for name, v in options.items():
            if isinstance(v, (dict,)) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)):
                self.fail(f"{key}.{name}", "an option takes a scalar or a list of scalars")
        return options


TOP_KEYS = {"name", "traces", "scorer", "student", "compress", "methods", "sft", "eval", "reference", "paper"}


def load_experiment(path: str | os.PathLike) -> Experiment:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    r = _Reader(path.resolve())
    data = r.mapping(data, "top level")
    r.known(data, TOP_KEYS, "")

    traces = data.get("traces")
    if isinstance(traces, str):
        traces = {"path": traces}
    traces = r.mapping(traces, "traces")
    r.known(traces, {"path", "limit", "max_chars"}, "traces")
    traces_path = r.file(r.string(traces, "path", "traces.path"))

    scorer = r.model(r.string(data, "scorer", "scorer"))
    student = r.model(r.string(data, "student", "student"))

    methods_data = r.mapping(data.get("methods"), "methods")
    if not methods_data:
        r.fail("methods", "name at least one method")
    methods = []
    for name, spec in methods_data.items():
        key = f"methods.{name}"
        r.file_name(name, key, "method")
        if name == "base":
            r.fail(key, "'base' is the untrained student's row; choose another name")
        spec = r.mapping(spec, key)
        kind = spec.pop("method", name)
        if kind not in METHOD_KINDS:
            r.fail(f"{key}.method", f"unknown method {kind!r} (known: {', '.join(METHOD_KINDS)})")
        eval_options = r.options(spec.pop("eval", None), f"{key}.eval")
        sft_overrides = r.mapping(spec.pop("sft", None), f"{key}.sft")
        methods.append(Method(name=name, kind=kind, options=r.options(spec, key), eval_options=eval_options,
                              sft_overrides=sft_overrides))

    sft = r.mapping(data.get("sft"), "sft")
    recipe = r.file(r.string(sft, "recipe", "sft.recipe"))
    accelerate = sft.get("accelerate")
    if accelerate is not None:
        accelerate = r.file(r.string(sft, "accelerate", "sft.accelerate"))
    r.known(sft, {"recipe", "overrides", "accelerate"}, "sft")

    ev = r.mapping(data.get("eval"), "eval")
    r.known(ev, {"backend", "options", "benchmarks"}, "eval")
    backend = r.string(ev, "backend", "eval.backend", default="auto")
    if backend not in ("auto", "vllm", "hf"):
        r.fail("eval.backend", f"expected auto, vllm or hf, got {backend!r}")
    benches_data = r.mapping(ev.get("benchmarks"), "eval.benchmarks")
    if not benches_data:
        r.fail("eval.benchmarks", "name at least one benchmark")
    benchmarks = []
    for name, spec in benches_data.items():
        key = f"eval.benchmarks.{name}"
        r.file_name(name, key, "benchmark")
        spec = r.mapping(spec, key)
        r.known(spec, {"benchmark", "data", "options"}, key)
        benchmarks.append(Benchmark(name=name, benchmark=r.string(spec, "benchmark", f"{key}.benchmark", default=name),
                                    data=r.file(r.string(spec, "data", f"{key}.data")),
                                    options=r.options(spec.get("options"), f"{key}.options")))

    reference = data.get("reference")
    names = [m.name for m in methods]
    if reference is None:
        reference = next((m.name for m in methods if m.kind == "asap"), None)
    elif reference not in names:
        r.fail("reference", f"{reference!r} is not a method of this experiment ({', '.join(names)})")

    return Experiment(
        path=r.path, name=r.string(data, "name", "name", default=path.stem), traces=traces_path,
        traces_limit=r.count(traces, "limit", "traces.limit"),
        traces_max_chars=r.count(traces, "max_chars", "traces.max_chars"),
        scorer=scorer, student=student, compress_options=r.options(data.get("compress"), "compress"),
        methods=tuple(methods), sft_recipe=recipe, sft_overrides=r.mapping(sft.get("overrides"), "sft.overrides"),
        sft_accelerate=accelerate, eval_backend=backend, eval_options=r.options(ev.get("options"), "eval.options"),
        benchmarks=tuple(benchmarks), reference_method=reference, paper=r.mapping(data.get("paper"), "paper"),
    )
