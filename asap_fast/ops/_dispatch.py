"""The one place that decides which implementation of an op runs, and how big the torch path's chunks are.

Every op in ``asap_fast.ops`` takes ``impl="auto" | "triton" | "torch"``:

* ``"triton"``: the Triton kernel. Needs triton importable and a CUDA tensor, or a CPU tensor with
  ``TRITON_INTERPRET=1`` set before ``asap_fast.ops`` was imported (triton's interpreter, how CI
  tests the kernels without a GPU).
* ``"torch"``: the chunked plain-torch path (``<op>_ref``); runs on every device with bounded memory.
* ``"auto"``: the value of the environment variable ``ASAP_FAST_OPS_IMPL`` when it is set to
  ``"triton"`` or ``"torch"``; otherwise Triton when it can run, else torch, quietly.

An explicit choice (argument or environment variable) that cannot run raises a one-line
``RuntimeError`` naming what is missing; ``"auto"`` never raises for lack of triton or a GPU.
A Triton kernel that fails to compile or launch on a device where it should run (a GPU without
bf16 MMA, ROCm, a Triton version the kernels were not written for) makes ``"auto"`` fall back to
the torch path with one warning naming the cause (once per op, device and dtype); an explicit
``"triton"`` raises it. Kernels launch under their tensors' device, not the current one.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable

import torch

try:  # triton is optional: the package (and the torch path) must import and run without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is not installed
    triton = None
    tl = None

ENV_VAR = "ASAP_FAST_OPS_IMPL"
IMPLS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_interpret_requested() -> bool:
    """Whether TRITON_INTERPRET is on now, read the way triton reads it (its knobs, triton >= 3.4)."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


# Triton decides at decoration time (when the op modules are imported) whether a kernel is compiled
# or interpreted, so what counts is the flag's value then, not at call time.
TRITON_INTERPRETED = triton_interpret_requested()

# Default budget for the temporaries of the torch path (fp32 chunks of logits and upcast inputs).
TORCH_CHUNK_BYTES = 256 * 1024 * 1024


def check_impl(impl: object) -> None:
    """Raise ValueError unless ``impl`` is one of IMPLS (called at each op's public entry)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on tensors of ``device``, else what is missing."""
    if triton is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and TRITON_INTERPRETED:
        return None
    if device.type == "cpu" and triton_interpret_requested():
        return f"got device {device.type} (TRITON_INTERPRET=1 must be set before asap_fast.ops is imported)"
    return f"got device {device.type}"


def requested_impl(impl: str) -> tuple[str, str]:
    """(choice, where it came from): ``impl`` itself, or ``ASAP_FAST_OPS_IMPL`` when impl is "auto"."""
    if impl == "auto":
        env_value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env_value not in IMPLS:
            raise ValueError(f"{ENV_VAR} must be one of {IMPLS}; got {env_value!r}")
        if env_value != "auto":
            return env_value, f"{ENV_VAR}={env_value!r}"
    return impl, f"impl={impl!r}"


def resolve_impl(impl: str, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op called with ``impl`` on tensors of ``device``.

    ``impl="auto"`` defers to ``ASAP_FAST_OPS_IMPL`` when that is set to an explicit choice.
    """
    impl, source = requested_impl(impl)
    if impl == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if impl == "auto":
        return "torch" if reason is not None else "triton"
    if reason is not None:
        raise RuntimeError(f"{source} needs triton and a CUDA tensor (or TRITON_INTERPRET=1); {reason}")
    return "triton"


def launch_device(device: torch.device):
    """Context in which to launch a kernel on tensors of ``device``: Triton launches on the current
    CUDA device, so inputs on cuda:1 while cuda:0 is current would fault without it."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# (op, device, dtype) -> why its Triton kernel could not run there; "auto" then goes straight to
# the torch path, so the warning is given once and the failing compile is not retried per call.
TRITON_FAILURES: dict[tuple[str, str, str], str] = {}


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "no message"
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_impl(op: str, impl: str, like: torch.Tensor, triton_fn: Callable[[], torch.Tensor],
             torch_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run ``triton_fn`` or ``torch_fn`` as :func:`resolve_impl` decides for tensors like ``like``.

    A Triton kernel that raises while compiling or launching makes ``"auto"`` warn once (per op,
    device and dtype, naming the cause) and use the torch path from then on; an explicit
    ``"triton"`` raises a one-line RuntimeError with the cause. Out-of-memory is never hidden.
    """
    if resolve_impl(impl, like.device) == "torch":
        return torch_fn()
    choice, source = requested_impl(impl)
    key = (op, str(like.device), str(like.dtype).replace("torch.", ""))
    if choice == "auto" and key in TRITON_FAILURES:
        return torch_fn()
    try:
        with launch_device(like.device):
            return triton_fn()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - compile / launch failures have no common base class
        where = str(like.device)
        if like.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(like.device)})"
        cause = _one_line(e)
        if choice != "auto":
            raise RuntimeError(f"{source}: the Triton kernel of {op} cannot run on {where}, {key[2]}: {cause}") from e
        TRITON_FAILURES[key] = cause
        warnings.warn(
            f"asap_fast.ops.{op}: the Triton kernel cannot run on {where}, {key[2]} ({cause}); using the torch "
            f"path instead (impl='torch' or {ENV_VAR}=torch skips the attempt)",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch_fn()


def row_chunk_size(n_rows: int, bytes_per_row: int, budget_bytes: int) -> int:
    """Rows per chunk so that a chunk's temporaries (``bytes_per_row`` each) fit ``budget_bytes``.

    Always at least 1 row (a single row is the smallest unit any path works on) and at most n_rows.
    """
    assert bytes_per_row > 0 and budget_bytes > 0
    return max(1, min(max(n_rows, 1), budget_bytes // bytes_per_row))


def check_float_matrix(name: str, tensor: object, shape_doc: str) -> None:
    """One-line ValueError unless ``tensor`` is a 2-D fp32/bf16/fp16 torch.Tensor (``shape_doc``: "(N, V)")."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}; got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D {shape_doc} tensor; got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16; got {tensor.dtype}")


def check_targets(targets: object, n_rows: int, device: torch.device, rows_name: str) -> None:
    """One-line errors unless ``targets`` is an int64 (N,) tensor on ``device``, N taken from ``rows_name``.

    The range [0, V) is checked by check_targets_range.
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor (N,) int64; got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 class indices; got {targets.dtype}")
    if tuple(targets.shape) != (n_rows,):
        raise ValueError(
            f"targets must have shape (N,) = ({n_rows},) to match {rows_name}.shape[0]; got {tuple(targets.shape)}"
        )
    if targets.device != device:
        raise ValueError(f"targets must be on the same device as {rows_name} ({device}); got {targets.device}")


def check_targets_range(targets: torch.Tensor, n_classes: int) -> None:
    """ValueError unless every target lies in [0, n_classes), for targets in host memory.

    On a GPU the check would copy a result to the host on every call (a stall per call, and no
    CUDA-graph capture), so it is skipped there: every implementation masks its target loads and
    returns NaN in the rows of out-of-range targets. Callers that build targets from token ids
    check them once, upstream (the scorer checks ids against the embedding when it tokenizes).
    Data-dependent, so it runs inside the custom op's eager body rather than in the public entry,
    which torch.compile(fullgraph=True) traces.
    """
    if targets.numel() == 0 or targets.device.type != "cpu":
        return
    lowest, highest = torch.aminmax(targets)
    if lowest < 0 or highest >= n_classes:
        raise ValueError(f"targets must lie in [0, V) = [0, {n_classes}); got min {int(lowest)}, max {int(highest)}")


# GPU architectures the kernels are compiled for ahead of time (asap_fast.ops.aot) and tuned per.
ARCHS = ("sm_80", "sm_90", "sm_100")


def arch_of_capability(major: int, minor: int = 0) -> str:
    """The tuning family of a CUDA compute capability: sm_100 from 10.0 up, sm_90 for 9.x, else sm_80."""
    if major >= 10:
        return "sm_100"
    return "sm_90" if major == 9 else "sm_80"


def device_arch(device: torch.device) -> str:
    """The tuning family ("sm_80", "sm_90", "sm_100") of a CUDA device; "sm_90" elsewhere (the interpreter)."""
    if device.type == "cuda":
        return arch_of_capability(*torch.cuda.get_device_capability(device))
    return "sm_90"


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a small fixed number elsewhere: the interpreter)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


_SM_COUNTS: dict[int, int] = {}


def _cuda_sm_count(index: int) -> int:
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]
