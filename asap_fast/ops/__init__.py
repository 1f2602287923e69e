"""Fused kernels: Triton on CUDA (or under TRITON_INTERPRET=1), chunked torch elsewhere.

Each op takes ``impl="auto" | "triton" | "torch"``; the choice is made in one place,
:func:`asap_fast.ops._dispatch.resolve_impl`, with ``ASAP_FAST_OPS_IMPL`` as the default for
``"auto"``. Both ops are ``torch.library.custom_op``s in the ``asap_fast`` namespace (inference
only: no autograd).
"""

from asap_fast.ops._dispatch import ENV_VAR, IMPLS
from asap_fast.ops.linear_logsoftmax_gather import (
    linear_logsoftmax_gather,
    linear_logsoftmax_gather_ref,
)
from asap_fast.ops.logsoftmax_gather import logsoftmax_gather, logsoftmax_gather_ref

__all__ = [
    "ENV_VAR",
    "IMPLS",
    "linear_logsoftmax_gather",
    "linear_logsoftmax_gather_ref",
    "logsoftmax_gather",
    "logsoftmax_gather_ref",
]
