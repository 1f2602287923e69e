"""What every measurement shares: timing percentiles, peak memory, tidy CSV rows, the table.

Every measurement appends rows with the same columns (to benchmarks/results.csv when run from the
scripts, to ``--csv PATH`` with ``asap bench``):
timestamp, op, provider, shape, dtype, metric, unit, p20, p50, p80, device, torch, triton, git_sha.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from asap_fast.testing import PeakLiveBytes

# The repository's results file, when the package runs from a checkout (benchmarks/ is not in the wheel).
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_CSV = REPO_ROOT / "benchmarks" / "results.csv"
FIELDS = (
    "timestamp", "op", "provider", "shape", "dtype", "metric", "unit",
    "p20", "p50", "p80", "device", "torch", "triton", "git_sha",
)


def pick_device(name: str | None) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1") or, when None, CUDA if available else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU's product name, or the CPU model with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def versions() -> tuple[str, str]:
    """(torch version, triton version or "none")."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return torch.__version__, triton_version


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """Short commit of the checkout the benchmark runs from, "+dirty" when it has changes; "unknown"
    for an installed package or without git."""
    root = REPO_ROOT
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if sha and dirty else "")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, *, reps: int) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn``, each timed alone (CUDA events on a GPU)."""
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """(p20, p50, p80) of the samples, linear interpolation."""
    values = torch.tensor(samples, dtype=torch.float64)
    p20, p50, p80 = torch.quantile(values, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)).tolist()
    return p20, p50, p80


def peak_memory_bytes(fn: Callable[[], object], device: torch.device, inputs=()) -> int:
    """Extra memory ``fn`` needs at its peak, beyond its ``inputs`` and what was allocated before.

    CUDA: the caching allocator's peak. Elsewhere: the peak of tensors alive at once, tracked per
    aten op (PeakLiveBytes; custom ops count as one op whose output is all that is seen of them,
    so an opaque op's internal chunks are missed: run its decomposed path to see them).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    with PeakLiveBytes(inputs) as tracker:
        fn()
    return tracker.peak


def make_row(op: str, provider: str, shape: str, dtype: str, metric: str, unit: str,
             values: tuple[float, float, float], device: torch.device) -> dict:
    """One tidy CSV row (the context columns filled in)."""
    torch_version, triton_version = versions()
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "op": op,
        "provider": provider,
        "shape": shape,
        "dtype": dtype,
        "metric": metric,
        "unit": unit,
        "p20": f"{values[0]:.6g}",
        "p50": f"{values[1]:.6g}",
        "p80": f"{values[2]:.6g}",
        "device": device_name(device),
        "torch": torch_version,
        "triton": triton_version,
        "git_sha": git_sha(),
    }


def append_rows(rows: list[dict], path: Path = RESULTS_CSV) -> None:
    """Append rows to the CSV, writing the header when the file is new or empty."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def format_table(headers: list[str], table: list[list[str]]) -> str:
    """A plain fixed-width table, right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join(lines)


def print_table(headers: list[str], table: list[list[str]]) -> None:
    """:func:`format_table` on stdout."""
    print(format_table(headers, table))

