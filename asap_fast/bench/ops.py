"""The fused ops against torch, side by side in one run (``asap bench ops``; benchmarks/bench_ops.py).

linear_logsoftmax_gather (target log-probs of a linear head), providers:
  asap_fast          ops.linear_logsoftmax_gather, impl="auto" (Triton on CUDA, chunked torch on CPU)
  asap_fast_tf32x3   the same with input_precision="tf32x3" (CUDA, fp32 inputs only)
  asap_fast_torch    the same with impl="torch" (CUDA only; on CPU it is what "auto" runs)
  torch_eager        torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None])
  torch_lce          -F.linear_cross_entropy(hidden, weight, targets, reduction="none"), when torch has it
  torch_lce_chunked  the same with options=nn.LinearCrossEntropyOptions() (its chunked path)
logsoftmax_gather (target log-probs of given logits), providers:
  asap_fast, asap_fast_torch (CUDA only), torch_eager (log_softmax(logits.float()).gather)

Metrics per (op, shape, provider): time (ms), TFLOP/s (FLOPs = 2*N*D*V; linear only), GB/s (bytes =
weight + hidden + outputs for linear, logits + targets + outputs for logsoftmax), peak memory beyond
the inputs (MiB; the CUDA allocator's peak, or on CPU the peak of live tensors tracked per aten op,
which misses scratch memory inside single kernels) and the speed ratio against torch_eager.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import asap_fast.ops as ops
from asap_fast.bench import OPS_DTYPES, OPS_PROVIDERS, common

__all__ = ["ALL_PROVIDERS", "OpsConfig", "run"]

DTYPES = {name: getattr(torch, name) for name in OPS_DTYPES}
ALL_PROVIDERS = OPS_PROVIDERS


@dataclass
class OpsConfig:
    """What to measure; None means the device's default (see :func:`resolve_grid`)."""

    ops: tuple[str, ...] = ("linear", "logsoftmax")
    n: list[int] | None = None  # rows N (64 4096 16384 on CUDA, 64 256 on CPU; quick: 16 64 on CPU)
    d: list[int] | None = None  # hidden size D (896 3584; quick: 896)
    v: list[int] = field(default_factory=lambda: [151936])  # vocab size V
    dtype: str | None = None  # bfloat16 on CUDA, float32 on CPU
    device: str | None = None  # cpu, cuda, cuda:1 (default: cuda when available)
    providers: list[str] | None = None  # default: all that apply
    reps: int | None = None  # timed calls per provider (20 on CUDA, 3 on CPU)
    warmup: int | None = None  # untimed calls first (3 on CUDA, 1 on CPU)
    max_materialized_gib: float | None = None  # skip [N, V] providers beyond this (a third of memory)
    quick: bool = False  # small grid, few reps

    def __post_init__(self):
        unknown = set(self.ops) - {"linear", "logsoftmax"}
        if unknown:
            raise ValueError(f"ops are linear and/or logsoftmax; got {sorted(unknown)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}; got {self.dtype!r}")
        unknown = set(self.providers or ()) - set(ALL_PROVIDERS)
        if unknown:
            raise ValueError(f"providers must be among {', '.join(ALL_PROVIDERS)}; got {sorted(unknown)}")


def resolve_grid(config: OpsConfig, device: torch.device) -> OpsConfig:
    """A copy of ``config`` with every default filled in for ``device``."""
    config = dataclasses.replace(config)
    cuda = device.type == "cuda"
    if config.n is None:
        config.n = ([64, 4096] if cuda else [16, 64]) if config.quick else ([64, 4096, 16384] if cuda else [64, 256])
    if config.d is None:
        config.d = [896] if config.quick else [896, 3584]
    if config.reps is None:
        config.reps = (5 if config.quick else 20) if cuda else (2 if config.quick else 3)
    if config.warmup is None:
        config.warmup = 3 if cuda else 1
    if config.dtype is None:
        config.dtype = "bfloat16" if cuda else "float32"
    if config.max_materialized_gib is None:
        if cuda:
            total = torch.cuda.get_device_properties(device).total_memory
        else:
            try:
                total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                total = 16 << 30
        config.max_materialized_gib = total / 3 / 2**30
    return config


def wanted(name: str, config: OpsConfig, device: torch.device) -> bool:
    if config.providers:
        return name in config.providers
    if name == "asap_fast_torch":
        return device.type == "cuda"
    if name == "asap_fast_tf32x3":
        return device.type == "cuda" and config.dtype == "float32"
    if name == "torch_lce_chunked":
        return device.type == "cuda" and hasattr(torch.nn, "LinearCrossEntropyOptions")
    return True


@dataclass
class Provider:
    fn: Callable[..., torch.Tensor]
    materializes: bool  # allocates [N, V]: skipped beyond max_materialized_gib
    # On CPU the peak-memory tracker sees aten ops and a custom op is one opaque op to it, so the
    # memory of our ops is measured on the torch path that they run there.
    memory_fn: Callable[..., torch.Tensor] | None = None


def linear_providers(config, device) -> dict[str, Provider]:
    providers = {}
    if wanted("asap_fast", config, device):
        providers["asap_fast"] = Provider(
            lambda h, w, t: ops.linear_logsoftmax_gather(h, w, t), False,
            None if device.type == "cuda" else (lambda h, w, t: ops.linear_logsoftmax_gather_ref(h, w, t)))
    if wanted("asap_fast_tf32x3", config, device):
        providers["asap_fast_tf32x3"] = Provider(
            lambda h, w, t: ops.linear_logsoftmax_gather(h, w, t, input_precision="tf32x3"), False)
    if wanted("asap_fast_torch", config, device):
        providers["asap_fast_torch"] = Provider(
            lambda h, w, t: ops.linear_logsoftmax_gather(h, w, t, impl="torch"), False)
    if wanted("torch_eager", config, device):
        providers["torch_eager"] = Provider(
            lambda h, w, t: torch.log_softmax((h @ w.T).float(), -1).gather(-1, t[:, None])[:, 0], True)
    if wanted("torch_lce", config, device) and hasattr(F, "linear_cross_entropy"):
        providers["torch_lce"] = Provider(
            lambda h, w, t: -F.linear_cross_entropy(h, w, t, reduction="none").float(), True)
    if wanted("torch_lce_chunked", config, device) and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        options = torch.nn.LinearCrossEntropyOptions()
        providers["torch_lce_chunked"] = Provider(
            lambda h, w, t: -F.linear_cross_entropy(h, w, t, reduction="none", options=options).float(), False)
    return providers


def logsoftmax_providers(config, device) -> dict[str, Provider]:
    providers = {}
    if wanted("asap_fast", config, device):
        providers["asap_fast"] = Provider(
            lambda x, t: ops.logsoftmax_gather(x, t), False,
            None if device.type == "cuda" else (lambda x, t: ops.logsoftmax_gather_ref(x, t)))
    if wanted("asap_fast_torch", config, device):
        providers["asap_fast_torch"] = Provider(lambda x, t: ops.logsoftmax_gather(x, t, impl="torch"), False)
    if wanted("torch_eager", config, device):
        providers["torch_eager"] = Provider(
            lambda x, t: torch.log_softmax(x.float(), -1).gather(-1, t[:, None])[:, 0], True)
    return providers


def run_case(op, shape, providers, inputs, flops, nbytes, materialized_bytes, config, device, rows, table):
    """Time every provider on the same inputs; fill CSV rows and table lines."""
    times, reference = {}, None
    for name, provider in providers.items():
        if provider.materializes and materialized_bytes > config.max_materialized_gib * 2**30:
            table.append([op, shape, name, "skipped", "", "", "", "", f"[N,V] needs {materialized_bytes / 2**30:.1f} GiB"])
            continue
        call = lambda: provider.fn(*inputs)  # noqa: E731
        with torch.inference_mode():
            for _ in range(config.warmup):
                call()
            out = call()
            samples = common.time_fn(call, device, reps=config.reps)
            # measured apart from the timed calls: on CPU a sampling thread runs beside the call
            memory_fn = provider.memory_fn or provider.fn
            peak = common.peak_memory_bytes(lambda: memory_fn(*inputs), device, inputs=inputs)
        if reference is None:
            reference = out
        max_diff = (out.float() - reference.float()).abs().max().item()
        time_pct = common.percentiles(samples)
        times[name] = time_pct
        dtype = str(inputs[0].dtype).replace("torch.", "")
        rows.append(common.make_row(op, name, shape, dtype, "time", "ms", tuple(t * 1e3 for t in time_pct), device))
        if flops:
            tflops = common.percentiles([flops / s / 1e12 for s in samples])
            rows.append(common.make_row(op, name, shape, dtype, "throughput", "TFLOP/s", tflops, device))
        gbps = common.percentiles([nbytes / s / 1e9 for s in samples])
        rows.append(common.make_row(op, name, shape, dtype, "bandwidth", "GB/s", gbps, device))
        if peak is not None:
            rows.append(common.make_row(op, name, shape, dtype, "peak_memory", "MiB", (peak / 2**20,) * 3, device))
        table.append([
            op, shape, name, f"{time_pct[1] * 1e3:.3f}",
            f"{flops / time_pct[1] / 1e12:.3f}" if flops else "",
            f"{nbytes / time_pct[1] / 1e9:.2f}",
            f"{peak / 2**20:.1f}" if peak is not None else "?",
            "", f"max|diff vs {next(iter(times))}| {max_diff:.2e}",
        ])
    if "torch_eager" in times:
        base = times["torch_eager"]
        for line in table:
            if line[0] == op and line[1] == shape and line[2] in times:
                ratio = base[1] / times[line[2]][1]
                line[7] = f"{ratio:.2f}x"
                pct = tuple(b / p for b, p in zip(base, times[line[2]]))
                dtype = str(inputs[0].dtype).replace("torch.", "")
                rows.append(common.make_row(op, line[2], shape, dtype, "speedup_vs_torch_eager", "x", pct, device))


def run(config: OpsConfig, *, log=print) -> list[dict]:
    """Measure every (op, shape, provider) of ``config``; prints the table through ``log`` and
    returns the tidy rows."""
    device = common.pick_device(config.device)
    config = resolve_grid(config, device)
    dtype = DTYPES[config.dtype]
    torch_version, triton_version = common.versions()
    log(f"device: {common.device_name(device)} | torch {torch_version} | triton {triton_version} | "
        f"dtype {config.dtype} | N {config.n} D {config.d} V {config.v} | reps {config.reps} warmup {config.warmup}")

    rows: list[dict] = []
    table: list[list[str]] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    element = torch.empty((), dtype=dtype).element_size()
    for n_vocab in config.v:
        if "linear" in config.ops:
            for n_hidden in config.d:
                weight = (torch.randn(n_vocab, n_hidden, generator=gen) / n_hidden**0.5).to(dtype).to(device)
                for n_rows in config.n:
                    hidden = torch.randn(n_rows, n_hidden, generator=gen).to(dtype).to(device)
                    targets = torch.randint(0, n_vocab, (n_rows,), generator=gen).to(device)
                    shape = f"N={n_rows},D={n_hidden},V={n_vocab}"
                    run_case(
                        "linear_logsoftmax_gather", shape, linear_providers(config, device), (hidden, weight, targets),
                        flops=2 * n_rows * n_hidden * n_vocab,
                        nbytes=(n_vocab + n_rows) * n_hidden * element + n_rows * 4,
                        materialized_bytes=n_rows * n_vocab * (element + 8),
                        config=config, device=device, rows=rows, table=table,
                    )
                del weight
        if "logsoftmax" in config.ops:
            for n_rows in config.n:
                logits = (torch.randn(n_rows, n_vocab, generator=gen) * 3).to(dtype).to(device)
                targets = torch.randint(0, n_vocab, (n_rows,), generator=gen).to(device)
                run_case(
                    "logsoftmax_gather", f"N={n_rows},V={n_vocab}", logsoftmax_providers(config, device), (logits, targets),
                    flops=0, nbytes=n_rows * n_vocab * element + n_rows * 12,
                    materialized_bytes=n_rows * n_vocab * 8,
                    config=config, device=device, rows=rows, table=table,
                )
                del logits

    log(common.format_table(["op", "shape", "provider", "p50 ms", "TFLOP/s", "GB/s", "peak MiB", "vs eager", "check"],
                            table))
    return rows


@dataclass
class AotConfig:
    """``asap bench ops --aot``: compile every kernel configuration for these architectures, no GPU needed."""

    archs: tuple[str, ...] = ("sm_80", "sm_90", "sm_100")
    only: str | None = None  # compile only the specs whose label contains this

    def __post_init__(self):
        from asap_fast.ops._dispatch import ARCHS

        unknown = [a for a in self.archs if a not in ARCHS]
        if unknown or not self.archs:
            raise ValueError(f"--arch takes a comma-separated subset of {','.join(ARCHS)}; got {','.join(self.archs)}")


def run_aot(config: AotConfig, *, log=print) -> list[dict]:
    """Compile every spec of :func:`asap_fast.ops.aot.aot_specs` per arch; print registers, spills,
    stack, shared memory and tensor-core instructions per spec; return tidy rows (one per figure).

    Spills, stack or a dot kernel without tensor-core instructions on sm_80/sm_90 are marked FAIL
    in the table (tests/test_ops_aot.py enforces them); on sm_100 they are listed only.
    """
    from asap_fast.ops.aot import aot_specs, compile_spec

    headers = ["arch", "spec", "regs", "spill st/ld", "stack", "smem", "tensor-core", "check"]
    table, rows, failures = [], [], 0
    device = torch.device("cpu")
    for arch in config.archs:
        for spec in aot_specs(arch):
            if config.only and config.only not in spec.label:
                continue
            report = compile_spec(spec, arch)
            problems = report.problems
            enforced = arch != "sm_100"
            failures += bool(problems) and enforced
            check = "ok" if not problems else ("FAIL: " if enforced else "listed: ") + "; ".join(problems)
            table.append([arch, spec.label, str(report.registers), f"{report.spill_stores}/{report.spill_loads}",
                          str(report.stack), str(report.shared), str(report.tensor_core_instructions), check])
            log(common.format_table(headers, [table[-1]]).splitlines()[-1])
            for metric, unit, value in (("registers", "per_thread", report.registers),
                                        ("spill_stores", "bytes", report.spill_stores),
                                        ("spill_loads", "bytes", report.spill_loads),
                                        ("stack", "bytes", report.stack),
                                        ("shared_memory", "bytes", report.shared),
                                        ("tensor_core_instructions", "count", report.tensor_core_instructions)):
                rows.append(common.make_row("aot_compile", arch, spec.label, "", metric, unit, (value,) * 3, device))
    log("")
    log(common.format_table(headers, table))
    log(f"{len(table)} specs compiled; {failures} fail the sm_80/sm_90 check (no spill, tensor cores in dot kernels)")
    return rows
