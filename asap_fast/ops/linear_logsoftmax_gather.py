"""Target log-probabilities of a linear head without materialising the [N, V] logits.

    linear_logsoftmax_gather(hidden, weight, targets, bias)
        == torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(-1, targets[:, None])[:, 0]

Triton: the vocab is tiled; each tile's logits are dot products accumulated in fp32 and folded at
once into an online (max, sum of exp, target logit) per row, so only a tile of logits ever exists.
Torch (CPU, or without triton): fp32 matmuls over bounded chunks of rows and vocab, folded into a
running log-sum-exp; the implementation is picked in ``_dispatch.resolve_impl``. In ASAP's
stage 2 the rows are the K step-boundary hidden states (tens to a few thousand), D is 896..4096 and
V about 152k: the weight (V x D) dominates the traffic, and for small K one row block alone cannot
fill the GPU, hence the split-V grid below.

Deliberate difference from the torch expression: the logits are never rounded to the input dtype
(torch's bf16 matmul returns bf16 logits before ``.float()``); both implementations here keep them
in fp32, which is closer to the exact value. Inference only: no autograd formula is registered.
"""

from __future__ import annotations

import torch

from asap_fast.ops._dispatch import (
    FLOAT_DTYPES,
    TORCH_CHUNK_BYTES,
    TRITON_INTERPRETED,
    check_float_matrix,
    check_impl,
    check_targets,
    ARCHS,
    check_targets_range,
    device_arch,
    num_sms,
    run_impl,
    tl,
    triton,
)

__all__ = ["FP32_PRECISIONS", "plan_launches", "linear_logsoftmax_gather", "linear_logsoftmax_gather_ref", "plan_torch_chunks"]

# tl.dot precisions offered for fp32 inputs: "ieee" (exact fp32 FMA, off the tensor cores) and
# "tf32x3" (three TF32 tensor-core products, ~fp32 accuracy). Plain "tf32" (~1e-3 relative error
# on each logit) is not offered: it would change surprisal ranks.
FP32_PRECISIONS = ("ieee", "tf32x3")


if triton is not None:
    LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
    LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

    # Row counts and split sizes vary from call to call: specializing on them (== 1, multiples of
    # 16) would compile a new kernel for each new value instead of reusing one.
    @triton.jit(do_not_specialize=["n_rows", "tiles_per_split"])
    def _linear_lse_partials_kernel(
        Hidden_ptr,  # (N, D) fp32/bf16/fp16
        Weight_ptr,  # (V, D) same dtype as hidden
        Bias_ptr,  # (V,) fp32/bf16/fp16, unused unless HAS_BIAS
        Targets_ptr,  # (N,) int64; rows whose target is outside [0, V) get NaN
        PartialMax_ptr,  # (num_splits, N) fp32: per split, max logit of the row times log2(e)
        PartialSumExp_ptr,  # (num_splits, N) fp32: sum of exp2(logit * log2(e) - that max)
        PartialTarget_ptr,  # (num_splits, N) fp32: target logit if it falls in the split, else 0
        Out_ptr,  # (N,) fp32, written directly when WRITE_OUTPUT (a single split)
        n_rows,
        n_hidden,
        n_vocab,
        tiles_per_split,
        stride_hidden_row,
        stride_hidden_col,
        stride_weight_row,
        stride_weight_col,
        stride_partial_split,
        HAS_BIAS: tl.constexpr,
        WRITE_OUTPUT: tl.constexpr,
        EVEN_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        UPCAST_OPERANDS: tl.constexpr,
    ):
        # Axis 0 (row blocks) is launched fastest, so the programs resident together share one
        # split's weight tiles through L2 instead of each streaming the whole weight from HBM.
        row_block = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1).to(tl.int64)
        rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < n_rows
        hidden_row_ptrs = Hidden_ptr + rows[:, None] * stride_hidden_row

        # Logits are carried in base 2 (scaled by log2(e)): exp2 is one MUFU.EX2, exp an extra multiply.
        running_max = tl.full([BLOCK_N], float("-inf"), tl.float32)  # log2 units
        running_sum = tl.zeros([BLOCK_N], tl.float32)

        v_begin = split * tiles_per_split * BLOCK_V
        v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, n_vocab)
        for v_start in range(v_begin, v_end, BLOCK_V):
            cols = v_start + tl.arange(0, BLOCK_V).to(tl.int64)
            col_mask = cols < n_vocab
            weight_col_ptrs = Weight_ptr + cols[:, None] * stride_weight_row
            acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for d_start in range(0, n_hidden, BLOCK_D):
                ds = d_start + tl.arange(0, BLOCK_D)
                if EVEN_D:
                    h_mask = row_mask[:, None]
                    w_mask = col_mask[:, None]
                else:
                    h_mask = row_mask[:, None] & (ds[None, :] < n_hidden)
                    w_mask = col_mask[:, None] & (ds[None, :] < n_hidden)
                h = tl.load(hidden_row_ptrs + ds[None, :] * stride_hidden_col, mask=h_mask, other=0.0)
                w = tl.load(weight_col_ptrs + ds[None, :] * stride_weight_col, mask=w_mask, other=0.0)
                if UPCAST_OPERANDS:
                    h = h.to(tl.float32)
                    w = w.to(tl.float32)
                acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
            if HAS_BIAS:
                acc += tl.load(Bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            # One live [BLOCK_N, BLOCK_V] fp32 tile besides the accumulator: the target logit is
            # not picked out of the tile (a where-sum, a third tile) but computed on its own below.
            scaled = tl.where(col_mask[None, :], acc * LOG2E, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scaled, axis=1))
            # All -inf so far (a bias that masks vocab): shift by 0 so exp2 gives 0, not nan.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp2(running_max - shift) + tl.sum(tl.exp2(scaled - shift[:, None]), axis=1)
            running_max = new_max

        # The target logit, by its own per-row dot product in the one split whose columns hold the
        # target: BLOCK_N weight rows gathered once (N*D elements in all, against V*D for the tiles),
        # fp32 products of the input values, as exact as the tile's own.
        # NaN for a target outside [0, V): the range is not checked on the host (a sync per call);
        # NaN survives the combine of the splits.
        # Loaded only now: int64 targets held across the vocab loop cost registers (small spills on sm_80).
        targets = tl.load(Targets_ptr + rows, mask=row_mask, other=-1)
        target_ok = (targets >= 0) & (targets < n_vocab)
        in_split = target_ok & (targets >= v_begin) & (targets < v_end)
        target_row_ptrs = Weight_ptr + tl.where(in_split, targets, 0)[:, None] * stride_weight_row
        target_dot = tl.zeros([BLOCK_N], tl.float32)
        for d_start in range(0, n_hidden, BLOCK_D):
            ds = d_start + tl.arange(0, BLOCK_D)
            t_mask = in_split[:, None] & (ds[None, :] < n_hidden)
            h = tl.load(hidden_row_ptrs + ds[None, :] * stride_hidden_col, mask=t_mask, other=0.0)
            w = tl.load(target_row_ptrs + ds[None, :] * stride_weight_col, mask=t_mask, other=0.0)
            target_dot += tl.sum(h.to(tl.float32) * w.to(tl.float32), axis=1)
        if HAS_BIAS:
            target_dot += tl.load(Bias_ptr + targets, mask=in_split, other=0.0).to(tl.float32)
        target_logit = tl.where(target_ok, tl.where(in_split, target_dot, 0.0), float("nan"))

        if WRITE_OUTPUT:
            # Padded rows (row_mask False) have a zero sum; log2(1) keeps the interpreter quiet.
            log2_sum = tl.log2(tl.where(row_mask, running_sum, 1.0))
            tl.store(Out_ptr + rows, target_logit - (running_max + log2_sum) * LN2, mask=row_mask)
        else:
            offsets = split * stride_partial_split + rows
            tl.store(PartialMax_ptr + offsets, running_max, mask=row_mask)
            tl.store(PartialSumExp_ptr + offsets, running_sum, mask=row_mask)
            tl.store(PartialTarget_ptr + offsets, target_logit, mask=row_mask)

    @triton.jit(do_not_specialize=["n_rows", "num_splits"])
    def _combine_partials_kernel(
        PartialMax_ptr,  # (num_splits, N) fp32, log2 units
        PartialSumExp_ptr,  # (num_splits, N) fp32, sums of exp2
        PartialTarget_ptr,  # (num_splits, N) fp32
        Out_ptr,  # (N,) fp32
        n_rows,
        num_splits,
        stride_partial_split,
        BLOCK_N: tl.constexpr,
    ):
        row_block = tl.program_id(0).to(tl.int64)
        rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < n_rows
        running_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK_N], tl.float32)
        target_logit = tl.zeros([BLOCK_N], tl.float32)
        offsets = rows  # int64: advanced by one split's stride per iteration
        for _ in range(0, num_splits):
            part_max = tl.load(PartialMax_ptr + offsets, mask=row_mask, other=float("-inf"))
            part_sum = tl.load(PartialSumExp_ptr + offsets, mask=row_mask, other=0.0)
            target_logit += tl.load(PartialTarget_ptr + offsets, mask=row_mask, other=0.0)
            new_max = tl.maximum(running_max, part_max)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp2(running_max - shift) + part_sum * tl.exp2(part_max - shift)
            running_max = new_max
            offsets += stride_partial_split
        log2_sum = tl.log2(tl.where(row_mask, running_sum, 1.0))
        tl.store(Out_ptr + rows, target_logit - (running_max + log2_sum) * LN2, mask=row_mask)


# Row-block sizes the dispatcher picks from (tl.dot needs every tile dimension >= 16); beyond 128
# rows the fp32 accumulator tile [BLOCK_N, BLOCK_V] no longer fits the registers of one program.
BLOCK_N_CHOICES = (16, 32, 64, 128)
COMBINE_BLOCK_N = 256
COMBINE_WARPS = 4


# Tiles of the partials kernel per arch, per operand kind ("16bit": bf16 / fp16; fp32 by precision)
# and BLOCK_N: (BLOCK_V, BLOCK_D, num_warps, num_stages, maxnreg). Every entry was picked by the AOT
# compile (``asap bench ops --aot``; benchmarks/README.md has the figures) as the first, widest,
# candidate with 0 spill bytes over its bias / single-split variants:
# - fp32 operands take twice the registers of 16-bit ones and tf32x3 keeps three operand splits
#   live, so fp32 tiles are narrower: BLOCK_D 16-32 and, from 64 rows (sm_90: 128), BLOCK_V 64. On
#   sm_80, whose mma.sync / FMA keep operand fragments in registers, BLOCK_D 16 and 8 warps.
# - maxnreg (ptxas's .maxnreg) is None (ptxas's choice) unless that spilled: ptxas 12.x then often
#   aims at exactly 128 registers and spills 4-20 bytes to reach it (sm_80 16-bit at 16-32 rows, sm_80
#   fp32 ieee at 128); a stated budget of 255 keeps those values in registers. It is not set
#   everywhere: on sm_90 fp32 ieee the 255 budget made ptxas spill 16 bytes where its own choice
#   (148-200 registers) spilled none.
# - The widest tile is not always kept: sm_90 fp32 ieee [128, 64] x 32 spilled 16-68 bytes whatever
#   the budget; [128, 64] x 16 does not (twice the D iterations, the same bytes from HBM).
_TILES = {
    "sm_80": {
        ("16bit", 16): (128, 64, 4, 3, 255), ("16bit", 32): (128, 64, 4, 3, 255),
        ("16bit", 64): (128, 64, 4, 3, None), ("16bit", 128): (128, 64, 8, 3, None),
        ("ieee", 16): (128, 32, 8, 3, None), ("ieee", 32): (128, 32, 8, 3, None),
        ("ieee", 64): (64, 16, 4, 3, None), ("ieee", 128): (64, 16, 8, 3, 255),
        ("tf32x3", 16): (64, 32, 4, 3, None), ("tf32x3", 32): (128, 32, 8, 3, None),
        ("tf32x3", 64): (128, 16, 8, 3, None), ("tf32x3", 128): (64, 16, 8, 3, None),
    },
    "sm_90": {
        ("16bit", 16): (128, 64, 4, 3, None), ("16bit", 32): (128, 64, 4, 3, None),
        ("16bit", 64): (128, 64, 4, 3, None), ("16bit", 128): (128, 64, 8, 3, None),
        ("ieee", 16): (128, 32, 4, 3, None), ("ieee", 32): (128, 32, 4, 3, None),
        ("ieee", 64): (64, 32, 4, 3, None), ("ieee", 128): (64, 16, 8, 3, None),
        ("tf32x3", 16): (128, 32, 4, 3, None), ("tf32x3", 32): (128, 32, 8, 3, None),
        ("tf32x3", 64): (64, 32, 4, 3, None), ("tf32x3", 128): (64, 32, 8, 3, None),
    },
}
# sm_100 (tcgen05 MMA, accumulators in tensor memory): sm_90's table, not tuned beyond one entry;
# its figures are reported by the AOT compile, not enforced. 16-bit at 128 rows with a bias spilled
# 40 bytes at 3 stages (with or without maxnreg 255) and none at 4 (254 registers; 4 stages of
# [128, 64] + [128, 64] 16-bit tiles are 128 KiB of sm_100's 228 KiB shared memory).
_TILES["sm_100"] = {**_TILES["sm_90"], ("16bit", 128): (128, 64, 8, 4, None)}


def partials_tile(block_n: int, dtype: torch.dtype, precision: str, arch: str) -> tuple[int, int, int, int, int | None]:
    """(BLOCK_V, BLOCK_D, num_warps, num_stages, maxnreg) of the partials kernel for a row block of ``block_n``.

    From the AOT compile: every choice compiles without spills on sm_80 and sm_90 (``_TILES``).
    ``arch`` is "sm_80", "sm_90" or "sm_100"; ``precision`` matters for fp32 only.
    """
    assert block_n in BLOCK_N_CHOICES and arch in ARCHS
    return _TILES[arch][(precision if dtype == torch.float32 else "16bit", block_n)]


def _triton_config(n_rows: int, n_hidden: int, n_vocab: int, n_sms: int, dtype: torch.dtype, precision: str,
                   arch: str):
    """Block sizes, warps, stages and the number of vocab splits for the partials kernel."""
    block_n = min(128, max(16, triton.next_power_of_2(n_rows)))
    block_v, block_d, num_warps, num_stages, maxnreg = partials_tile(block_n, dtype, precision, arch)
    row_blocks = triton.cdiv(n_rows, block_n)
    vocab_tiles = triton.cdiv(n_vocab, block_v)
    # Enough programs for about two waves over the SMs: with K of tens of rows a single row block
    # must be split over the vocab, with thousands of rows the row blocks alone fill the GPU.
    num_splits = max(1, min(vocab_tiles, triton.cdiv(2 * n_sms, row_blocks)))
    return block_n, block_v, block_d, num_splits, num_warps, num_stages, maxnreg


def _dot_precision(dtype: torch.dtype, input_precision: str, upcast_operands: bool) -> str:
    # fp32 products never in plain TF32 (tl.dot's default for fp32, ~1e-3 relative error); for
    # bf16/fp16 operands the value is ignored by tl.dot.
    return input_precision if dtype == torch.float32 or upcast_operands else "tf32"


def plan_launches(n_rows: int, n_hidden: int, n_vocab: int, dtype: torch.dtype, has_bias: bool, *,
                  input_precision: str = "ieee", arch: str, n_sms: int, block_n: int | None = None,
                  block_v: int | None = None, block_d: int | None = None, num_splits: int | None = None,
                  upcast_operands: bool = False) -> list[dict]:
    """The kernel launches of one call, as the launcher makes them (n_rows >= 1).

    Each: ``fn``, ``grid``, ``constexprs`` (argument name -> value), ``num_warps``, ``num_stages``,
    ``maxnreg`` (None: ptxas's choice),
    ``tiles_per_split`` / ``num_splits`` for the partials kernel. ``asap_fast.ops.aot`` compiles
    every launch this can return over its shape grid; a test checks that over the grid.
    """
    cfg_n, cfg_v, cfg_d, cfg_splits, num_warps, num_stages, maxnreg = _triton_config(
        n_rows, n_hidden, n_vocab, n_sms, dtype, input_precision, arch
    )
    block_n = block_n or cfg_n
    block_v = block_v or cfg_v
    block_d = block_d or cfg_d
    vocab_tiles = triton.cdiv(n_vocab, block_v)
    tiles_per_split = triton.cdiv(vocab_tiles, min(num_splits or cfg_splits, vocab_tiles))
    # Recomputed from tiles_per_split so that no split is empty.
    num_splits = triton.cdiv(vocab_tiles, tiles_per_split)
    row_blocks = triton.cdiv(n_rows, block_n)
    write_output = num_splits == 1
    launches = [dict(
        fn=_linear_lse_partials_kernel, grid=(row_blocks, num_splits), num_warps=num_warps,
        num_stages=num_stages, maxnreg=maxnreg, tiles_per_split=tiles_per_split, num_splits=num_splits,
        constexprs=dict(
            HAS_BIAS=has_bias, WRITE_OUTPUT=write_output, EVEN_D=n_hidden % block_d == 0, BLOCK_N=block_n,
            BLOCK_V=block_v, BLOCK_D=block_d,
            DOT_PRECISION=_dot_precision(dtype, input_precision, upcast_operands),
            UPCAST_OPERANDS=upcast_operands,
        ),
    )]
    if not write_output:
        launches.append(dict(
            fn=_combine_partials_kernel, grid=(triton.cdiv(n_rows, COMBINE_BLOCK_N),), num_warps=COMBINE_WARPS,
            num_stages=1, maxnreg=None, constexprs=dict(BLOCK_N=COMBINE_BLOCK_N),
        ))
    return launches


def _linear_logsoftmax_gather_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    block_n: int | None = None,
    block_v: int | None = None,
    block_d: int | None = None,
    num_splits: int | None = None,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """Launch the partials kernel over (row blocks, vocab splits), then combine the splits.

    hidden: (N, D), weight: (V, D) same float dtype, bias: (V,) or None, targets: (N,) int64 -> (N,) fp32.
    input_precision: tl.dot precision for fp32 inputs (FP32_PRECISIONS); bf16/fp16 use their MMA.
    The block and split overrides exist for tests (forcing several splits, tail tiles) and tuning.
    """
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    out = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    if n_rows == 0:
        return out
    # Triton's interpreter (3.9 included) multiplies bf16 tiles as their raw uint16 bits in tl.dot
    # (triton-lang/triton#11584), so under TRITON_INTERPRET the operands go to fp32 first; compiled
    # kernels keep bf16 tensor-core MMA.
    upcast_operands = TRITON_INTERPRETED and hidden.dtype == torch.bfloat16
    partials_launch, *combine = plan_launches(
        n_rows, n_hidden, n_vocab, hidden.dtype, bias is not None, input_precision=input_precision,
        arch=device_arch(hidden.device), n_sms=num_sms(hidden.device), block_n=block_n, block_v=block_v,
        block_d=block_d, num_splits=num_splits, upcast_operands=upcast_operands,
    )
    num_splits = partials_launch["num_splits"]
    partials = torch.empty((3, num_splits if combine else 1, n_rows), dtype=torch.float32, device=out.device)
    _linear_lse_partials_kernel[partials_launch["grid"]](
        hidden,
        weight,
        bias if bias is not None else hidden,  # never read when HAS_BIAS is False
        targets,
        partials[0],
        partials[1],
        partials[2],
        out,
        n_rows,
        n_hidden,
        n_vocab,
        partials_launch["tiles_per_split"],
        hidden.stride(0),
        hidden.stride(1),
        weight.stride(0),
        weight.stride(1),
        partials.stride(1),
        **partials_launch["constexprs"],
        num_warps=partials_launch["num_warps"],
        num_stages=partials_launch["num_stages"],
        maxnreg=partials_launch["maxnreg"],
    )
    for launch in combine:
        _combine_partials_kernel[launch["grid"]](
            partials[0],
            partials[1],
            partials[2],
            out,
            n_rows,
            num_splits,
            partials.stride(1),
            **launch["constexprs"],
            num_warps=launch["num_warps"],
            num_stages=launch["num_stages"],
        )
    return out


def plan_torch_chunks(
    n_rows: int, n_hidden: int, n_vocab: int, chunk_bytes: int, *, upcast_hidden: bool = True,
    upcast_weight: bool = True,
) -> tuple[int, int]:
    """(rows, vocab columns) per chunk of the torch path, so that its fp32 temporaries fit ``chunk_bytes``.

    Alive at once: the chunk's logits and logsumexp's temporary of the same size (rows x cols fp32
    each, together at most half the budget), a weight chunk upcast to fp32 (cols x D, a quarter;
    free when the weight already is fp32) and a hidden chunk upcast to fp32 (rows x D, a quarter;
    likewise). Rows are kept whole up to a 4096-column chunk, then columns grow as far as the budget
    allows: few, large matmuls. Each is at least one row / one column, so a tiny budget degrades to
    row-by-row, column-by-column work.
    """
    quarter = chunk_bytes // 4
    rows = min(max(n_rows, 1), quarter // (4 * min(n_vocab, 4096)))
    if upcast_hidden:
        rows = min(rows, quarter // (4 * n_hidden))
    rows = max(1, rows)
    cols = min(n_vocab, quarter // (4 * rows))
    if upcast_weight:
        cols = min(cols, quarter // (4 * n_hidden))
    return rows, max(1, cols)


def linear_logsoftmax_gather_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_bytes: int = TORCH_CHUNK_BYTES,
) -> torch.Tensor:
    """Plain-torch reference and CPU path of :func:`linear_logsoftmax_gather`, with bounded memory.

    == torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(-1, targets[:, None])[:, 0],
    with the logits computed in fp32 from fp32 copies of the inputs, chunk by chunk over the vocab
    (outer, so each weight chunk is upcast once) and the rows (inner), folding each chunk into a
    running log-sum-exp and target logit per row (when the whole vocab fits one chunk, simply the
    expression above per chunk of rows). Temporaries stay within ``chunk_bytes`` (see
    :func:`plan_torch_chunks`); the running state is two (N,) fp32 vectors.

    hidden: (N, D) fp32/bf16/fp16; weight: (V, D) same dtype; bias: (V,) fp32/bf16/fp16 or None;
    targets: (N,) int64 in [0, V) (NaN in the rows of others). Returns (N,) fp32.
    """
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    device = hidden.device
    # On a GPU an out-of-range index would be a device-side assert: gather through clamped
    # indices, NaN after. In host memory the op checked the range already (gather raises anyway).
    target_ok = None
    if device.type != "cpu":
        target_ok = (targets >= 0) & (targets < n_vocab)
        targets = targets.clamp(0, n_vocab - 1)
    rows_per_chunk, cols_per_chunk = plan_torch_chunks(
        n_rows, n_hidden, n_vocab, chunk_bytes,
        upcast_hidden=hidden.dtype != torch.float32, upcast_weight=weight.dtype != torch.float32,
    )
    if cols_per_chunk == n_vocab:
        # The whole vocab fits one chunk (fp32 weights, modest N): the torch expression itself per
        # row chunk, one pass fewer than folding a log-sum-exp.
        out = torch.empty(n_rows, dtype=torch.float32, device=device)
        weight_t = weight.float().T
        for start in range(0, n_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_rows)
            hidden_chunk = hidden[start:stop].float()
            logits = hidden_chunk @ weight_t if bias is None else torch.addmm(bias.float(), hidden_chunk, weight_t)
            out[start:stop] = torch.log_softmax(logits, dim=1).gather(1, targets[start:stop, None])[:, 0]
            del logits, hidden_chunk  # before the next chunk is allocated: one chunk alive at a time
        return out if target_ok is None else out.masked_fill_(~target_ok, float("nan"))

    running_lse = torch.full((n_rows,), float("-inf"), dtype=torch.float32, device=device)
    target_logit = torch.zeros(n_rows, dtype=torch.float32, device=device)
    for v_start in range(0, n_vocab, cols_per_chunk):
        v_stop = min(v_start + cols_per_chunk, n_vocab)
        weight_chunk_t = weight[v_start:v_stop].float().T  # (D, cols) fp32
        bias_chunk = bias[v_start:v_stop].float() if bias is not None else None
        for start in range(0, n_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_rows)
            hidden_chunk = hidden[start:stop].float()
            if bias_chunk is not None:
                logits = torch.addmm(bias_chunk, hidden_chunk, weight_chunk_t)
            else:
                logits = hidden_chunk @ weight_chunk_t  # (rows, cols) fp32

            local_targets = targets[start:stop] - v_start
            in_chunk = (local_targets >= 0) & (local_targets < v_stop - v_start)
            picked = logits.gather(1, local_targets.clamp(0, v_stop - v_start - 1)[:, None])[:, 0]
            target_logit[start:stop] += torch.where(in_chunk, picked, 0.0)
            # logaddexp(-inf, -inf) is -inf, so vocab chunks masked to -inf by the bias stay harmless.
            running_lse[start:stop] = torch.logaddexp(running_lse[start:stop], torch.logsumexp(logits, dim=1))
            del logits, hidden_chunk  # before the next chunk is allocated: one chunk alive at a time
        del weight_chunk_t
    out = target_logit - running_lse
    return out if target_ok is None else out.masked_fill_(~target_ok, float("nan"))


@torch.library.custom_op("asap_fast::linear_logsoftmax_gather", mutates_args=())
def _linear_logsoftmax_gather_op(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None, impl: str,
    input_precision: str = "ieee",
) -> torch.Tensor:
    check_targets_range(targets, weight.shape[0])
    return run_impl(
        "linear_logsoftmax_gather", impl, hidden,
        lambda: _linear_logsoftmax_gather_triton(hidden, weight, targets, bias, input_precision=input_precision),
        lambda: linear_logsoftmax_gather_ref(hidden, weight, targets, bias),
    )


@_linear_logsoftmax_gather_op.register_fake
def _linear_logsoftmax_gather_fake(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None, impl: str,
    input_precision: str = "ieee",
) -> torch.Tensor:
    return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


def linear_logsoftmax_gather(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    input_precision: str = "ieee",
) -> torch.Tensor:
    """Log-probability of each row's target under a linear head, without materialising [N, V].

    == torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(-1, targets[:, None])[:, 0]

    The vocab is processed in tiles (Triton) or bounded chunks (torch); logits are fp32 dot
    products (never rounded to the input dtype) folded into an online log-sum-exp and a gather of
    the target logit. A ``torch.library.custom_op`` (``torch.ops.asap_fast.linear_logsoftmax_gather``)
    with a fake implementation, so it traces under ``torch.compile(fullgraph=True)``. Inference
    only: no autograd formula is registered.

    Args:
        hidden: (N, D) fp32/bf16/fp16, e.g. the K step-boundary hidden states.
        weight: (V, D), same dtype and device as hidden (the LM head, ``lm_head.weight``).
        targets: (N,) int64 in [0, V). Checked (ValueError) in host memory; on a GPU, where
            checking would stall every call, the rows of others come out NaN.
        bias: (V,) fp32/bf16/fp16 or None.
        impl: "auto" | "triton" | "torch"; see ``asap_fast.ops._dispatch`` (and ASAP_FAST_OPS_IMPL).
        input_precision: fp32 inputs on the Triton path: "ieee" (exact fp32 products, the
            default) or "tf32x3" (tensor cores, three TF32 products per product, ~fp32 accuracy).
            No effect on bf16/fp16 inputs or on the torch path, which is fp32 throughout.

    Returns:
        (N,) fp32 log-probabilities (<= 0).
    """
    check_impl(impl)
    if input_precision not in FP32_PRECISIONS:
        raise ValueError(f"input_precision must be one of {FP32_PRECISIONS}; got {input_precision!r}")
    check_float_matrix("hidden", hidden, "(N, D)")
    check_float_matrix("weight", weight, "(V, D)")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be (V, D) with D = hidden.shape[1] = {hidden.shape[1]}; got weight shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0 or hidden.shape[1] == 0:
        raise ValueError(
            f"need V >= 1 and D >= 1; got hidden shape {tuple(hidden.shape)}, weight shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have hidden's dtype {hidden.dtype}; got {weight.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight must be on hidden's device {hidden.device}; got {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor (V,) or None; got {type(bias).__name__}")
        if bias.dtype not in FLOAT_DTYPES:
            raise ValueError(f"bias must be float32, bfloat16 or float16; got {bias.dtype}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape (V,) = ({weight.shape[0]},); got {tuple(bias.shape)}")
        if bias.device != hidden.device:
            raise ValueError(f"bias must be on hidden's device {hidden.device}; got {bias.device}")
    check_targets(targets, hidden.shape[0], hidden.device, "hidden")
    return _linear_logsoftmax_gather_op(hidden, weight, targets, bias, impl, input_precision)
