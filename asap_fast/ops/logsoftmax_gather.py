"""Target log-probabilities from logits in one pass over each row.

    logsoftmax_gather(logits, targets)
        == torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]

Triton kernel (CUDA, or CPU through TRITON_INTERPRET=1), chunked torch reference elsewhere; the
implementation is picked in ``_dispatch.resolve_impl``. Inference only: no autograd formula is
registered, so the result cannot be backpropagated through.
"""

from __future__ import annotations

import torch

from asap_fast.ops._dispatch import (
    TORCH_CHUNK_BYTES,
    check_float_matrix,
    check_impl,
    check_targets,
    check_targets_range,
    row_chunk_size,
    run_impl,
    tl,
    triton,
)

__all__ = ["logsoftmax_gather", "logsoftmax_gather_ref"]

# Vocab tile of one program; 4096 fp32 lanes over 8 warps is 16 per thread, enough loads in flight
# to stream a 152k-entry row at memory speed without spilling.
_MAX_BLOCK_V = 4096


if triton is not None:

    @triton.jit
    def _logsoftmax_gather_kernel(
        Logits_ptr,  # (N, V) fp32/bf16/fp16
        Targets_ptr,  # (N,) int64; rows whose target is outside [0, V) get NaN
        Out_ptr,  # (N,) fp32
        n_vocab,
        stride_logits_row,
        stride_logits_col,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = Logits_ptr + row * stride_logits_row
        target = tl.load(Targets_ptr + row)
        # Masked: the range is not checked on the host (that would sync every call), so a bad
        # target must not read outside the row; its row comes out NaN instead.
        target_ok = (target >= 0) & (target < n_vocab)
        target_logit = tl.load(row_ptr + target * stride_logits_col, mask=target_ok, other=float("nan")).to(tl.float32)

        running_max = float("-inf")
        running_sum = 0.0
        for v_start in range(0, n_vocab, BLOCK_V):
            cols = v_start + tl.arange(0, BLOCK_V)
            logits = tl.load(
                row_ptr + cols.to(tl.int64) * stride_logits_col, mask=cols < n_vocab, other=float("-inf")
            ).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(logits, axis=0))
            # A tile (and everything before it) can be all -inf (vocab masking); shifting by 0 then
            # keeps exp(-inf - shift) = 0 instead of exp(-inf + inf) = nan.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(logits - shift), axis=0)
            running_max = new_max
        tl.store(Out_ptr + row, target_logit - (running_max + tl.log(running_sum)))


def plan_launch(n_rows: int, n_vocab: int, *, block_v: int | None = None) -> dict:
    """The one launch of a call (n_rows >= 1): ``fn``, ``grid``, ``constexprs``, ``num_warps``,
    ``num_stages``; ``asap_fast.ops.aot`` compiles every launch this returns over its shape grid."""
    if block_v is None:
        block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(n_vocab))
    return dict(fn=_logsoftmax_gather_kernel, grid=(n_rows,), constexprs=dict(BLOCK_V=block_v),
                num_warps=8 if block_v >= 2048 else 4, num_stages=3, maxnreg=None)


def _logsoftmax_gather_triton(
    logits: torch.Tensor, targets: torch.Tensor, *, block_v: int | None = None
) -> torch.Tensor:
    """Launch one program per row. logits: (N, V) fp32/bf16/fp16; targets: (N,) int64 -> (N,) fp32."""
    n_rows, n_vocab = logits.shape
    out = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return out
    launch = plan_launch(n_rows, n_vocab, block_v=block_v)
    _logsoftmax_gather_kernel[launch["grid"]](
        logits,
        targets,
        out,
        n_vocab,
        logits.stride(0),
        logits.stride(1),
        **launch["constexprs"],
        num_warps=launch["num_warps"],
        num_stages=launch["num_stages"],
    )
    return out


def logsoftmax_gather_ref(
    logits: torch.Tensor, targets: torch.Tensor, *, chunk_bytes: int = TORCH_CHUNK_BYTES
) -> torch.Tensor:
    """Plain-torch reference and CPU path of :func:`logsoftmax_gather`, with bounded memory.

    == torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0], that very
    expression applied to chunks of rows so that the fp32 temporaries alive at once stay within
    ``chunk_bytes`` (a single row at least).

    logits: (N, V) fp32/bf16/fp16; targets: (N,) int64 in [0, V) (NaN in the rows of others).
    Returns (N,) fp32.
    """
    n_rows, n_vocab = logits.shape
    out = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    # On a GPU an out-of-range index would be a device-side assert: gather through clamped
    # indices, NaN after. In host memory the op checked the range already (gather raises anyway).
    target_ok = None
    if targets.device.type != "cpu":
        target_ok = (targets >= 0) & (targets < n_vocab)
        targets = targets.clamp(0, n_vocab - 1)
    # Per row: the fp32 copy of the row (absent for fp32 input, counted anyway) and its log-probs.
    rows_per_chunk = row_chunk_size(n_rows, 2 * 4 * n_vocab, chunk_bytes)
    for start in range(0, n_rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_rows)
        log_probs = torch.log_softmax(logits[start:stop].float(), dim=1)
        out[start:stop] = log_probs.gather(1, targets[start:stop, None])[:, 0]
        del log_probs  # before the next chunk is allocated: one chunk alive at a time
    return out if target_ok is None else out.masked_fill_(~target_ok, float("nan"))


@torch.library.custom_op("asap_fast::logsoftmax_gather", mutates_args=())
def _logsoftmax_gather_op(logits: torch.Tensor, targets: torch.Tensor, impl: str) -> torch.Tensor:
    check_targets_range(targets, logits.shape[1])
    return run_impl("logsoftmax_gather", impl, logits, lambda: _logsoftmax_gather_triton(logits, targets),
                    lambda: logsoftmax_gather_ref(logits, targets))


@_logsoftmax_gather_op.register_fake
def _logsoftmax_gather_fake(logits: torch.Tensor, targets: torch.Tensor, impl: str) -> torch.Tensor:
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


def logsoftmax_gather(logits: torch.Tensor, targets: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Log-probability of each row's target class, in fp32, in one pass over each row.

    == torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]

    The max and the log-sum-exp are accumulated online over vocab tiles in fp32, so no [N, V] fp32
    copy is made (the torch path works on bounded chunks of rows). A ``torch.library.custom_op``
    (``torch.ops.asap_fast.logsoftmax_gather``) with a fake implementation, so it traces under
    ``torch.compile(fullgraph=True)``. Inference only: no autograd formula is registered.

    Args:
        logits: (N, V) fp32/bf16/fp16, any strides.
        targets: (N,) int64 in [0, V), on the same device. Checked (ValueError) in host memory;
            on a GPU, where checking would stall every call, the rows of others come out NaN.
        impl: "auto" | "triton" | "torch"; see ``asap_fast.ops._dispatch`` (and ASAP_FAST_OPS_IMPL).

    Returns:
        (N,) fp32 log-probabilities (<= 0).
    """
    check_impl(impl)
    check_float_matrix("logits", logits, "(N, V)")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one column (V >= 1); got shape {tuple(logits.shape)}")
    check_targets(targets, logits.shape[0], logits.device, "logits")
    return _logsoftmax_gather_op(logits, targets, impl)
