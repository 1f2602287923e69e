"""asap_fast.ops.linear_logsoftmax_gather: torch path in-process, Triton kernels through the interpreter.

Tolerance rule: against an fp64 ground truth, the op's max error may be at most twice that of the
plain-torch expression at the test dtype, torch.log_softmax((hidden @ weight.T + bias).float(), -1)
.gather(...) (whose bf16/fp16 matmul rounds the logits), plus a small atol per dtype.

The Triton cases run in one subprocess (this file run as a script) because TRITON_INTERPRET=1 must
be set before triton decorates the kernels, i.e. before asap_fast.ops is first imported.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from op_tolerance import assert_within_tolerance as check_tolerance
from op_tolerance import error_stats

from asap_fast.ops import (
    _dispatch,
    linear_logsoftmax_gather,
    linear_logsoftmax_gather_ref,
)
from asap_fast.testing import PeakLiveBytes

# Fetched by module path: the package re-exports a function of the same name.
linear_module = importlib.import_module("asap_fast.ops.linear_logsoftmax_gather")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATOL = {"torch.float32": 2e-5, "torch.bfloat16": 1e-4, "torch.float16": 1e-4}


def make_inputs(n_rows: int, n_hidden: int, n_vocab: int, dtype: torch.dtype, seed: int, *, bias: bool,
                strided: bool = False, masked_prefix: int = 0):
    """Random hidden (N, D), weight (V, D), bias (V,) or None and targets (N,) including 0 and V-1.

    Logits come out with a standard deviation of about 3, like a language model's.
    strided: hidden is every other column of a wider tensor and weight a transposed (D, V) tensor.
    masked_prefix: the bias is -inf on the first columns (targets then avoid them).
    """
    gen = torch.Generator().manual_seed(seed)
    scale = 3.0 / n_hidden**0.5
    if strided:
        hidden = torch.randn(n_rows, 2 * n_hidden, generator=gen).to(dtype)[:, ::2]
        weight = (torch.randn(n_hidden, n_vocab, generator=gen) * scale).to(dtype).T
    else:
        hidden = torch.randn(n_rows, n_hidden, generator=gen).to(dtype)
        weight = (torch.randn(n_vocab, n_hidden, generator=gen) * scale).to(dtype)
    bias_tensor = (torch.randn(n_vocab, generator=gen) * 0.5).to(dtype) if bias or masked_prefix else None
    if masked_prefix:
        bias_tensor[:masked_prefix] = float("-inf")
    targets = torch.randint(masked_prefix, n_vocab, (n_rows,), generator=gen)
    targets[-1] = n_vocab - 1
    if n_rows > 1:
        targets[0] = masked_prefix
    return hidden, weight, targets, bias_tensor


def errors_vs_truth(ours, hidden, weight, targets, bias) -> dict:
    """Max/mean abs error of ours and of torch's expression at the input dtype vs the fp64 truth."""
    logits64 = hidden.double() @ weight.double().T
    logits = hidden @ weight.T
    if bias is not None:
        logits64 = logits64 + bias.double()
        logits = logits + bias
    truth = torch.log_softmax(logits64, -1).gather(-1, targets[:, None])[:, 0]
    torch_result = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    return error_stats(ours, truth, torch_result, input_dtype=str(hidden.dtype))


def assert_within_tolerance(stats: dict, expected_rows: int) -> None:
    check_tolerance(stats, expected_rows, ATOL[stats["input_dtype"]])


# --------------------------------------------------------------------------------------------
# torch path


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(
    "n_rows, n_hidden, n_vocab, bias",
    [
        (1, 1, 1, False),
        (1, 33, 151936, True),
        (3, 33, 152064, False),
        (7, 65, 1000, True),
        (130, 17, 515, False),
        (100_000, 8, 40, True),
    ],
)
def test_torch_path_matches_fp64(dtype_name, n_rows, n_hidden, n_vocab, bias):
    inputs = make_inputs(n_rows, n_hidden, n_vocab, DTYPES[dtype_name], seed=n_rows + n_vocab, bias=bias)
    hidden, weight, targets, bias_tensor = inputs
    ours = linear_logsoftmax_gather(hidden, weight, targets, bias_tensor, impl="torch")
    assert_within_tolerance(errors_vs_truth(ours, *inputs), n_rows)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_path_strided_and_masked(dtype_name):
    inputs = make_inputs(9, 24, 2333, DTYPES[dtype_name], seed=2, bias=True, strided=True, masked_prefix=900)
    hidden, weight, targets, bias = inputs
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    # a budget small enough that the first vocab chunks are entirely -inf
    ours = linear_logsoftmax_gather_ref(hidden, weight, targets, bias, chunk_bytes=16 * 24 * 100)
    assert_within_tolerance(errors_vs_truth(ours, *inputs), 9)
    assert_within_tolerance(errors_vs_truth(linear_logsoftmax_gather(*inputs, impl="torch"), *inputs), 9)


@pytest.mark.parametrize("chunk_bytes", [2000, 100_000, 1 << 28])
def test_torch_path_any_chunking_matches_fp64(chunk_bytes):
    inputs = make_inputs(37, 19, 1001, torch.bfloat16, seed=4, bias=True)
    ours = linear_logsoftmax_gather_ref(*inputs, chunk_bytes=chunk_bytes)
    assert_within_tolerance(errors_vs_truth(ours, *inputs), 37)


@pytest.mark.parametrize("upcast", [True, False])
@pytest.mark.parametrize(
    "n_rows, n_hidden, n_vocab, budget",
    [(4096, 896, 151936, 256 << 20), (64, 3584, 152064, 256 << 20), (100_000, 4096, 151936, 64 << 20),
     (3, 5, 7, 1), (10, 1 << 20, 50, 1 << 20), (1, 896, 151936, 1 << 20)],
)
def test_torch_chunk_plan_fits_the_budget(n_rows, n_hidden, n_vocab, budget, upcast):
    rows, cols = linear_module.plan_torch_chunks(n_rows, n_hidden, n_vocab, budget,
                                                 upcast_hidden=upcast, upcast_weight=upcast)
    assert 1 <= rows <= n_rows and 1 <= cols <= n_vocab
    alive = 4 * (2 * rows * cols + upcast * (cols * n_hidden + rows * n_hidden))
    print(f"rows {rows} cols {cols}: {alive} B alive for a budget of {budget} B")
    # only the one-row, one-column floor may exceed the budget
    assert alive <= budget or (rows == 1 and (cols == 1 or not upcast))
    assert rows * cols < n_rows * n_vocab or n_rows * n_vocab * 8 <= budget


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_path_memory_is_bounded(dtype):
    n_rows, n_hidden, n_vocab = 1000, 64, 5000
    inputs = make_inputs(n_rows, n_hidden, n_vocab, dtype, seed=8, bias=True)
    hidden, weight, targets, bias = inputs
    full_fp32 = n_rows * n_vocab * 4
    budget = 1 << 20

    with PeakLiveBytes(inputs) as eager:
        torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(-1, targets[:, None])
    assert eager.peak >= full_fp32  # the tracker sees the eager path's [N, V] tensors

    with PeakLiveBytes(inputs) as chunked:
        ours = linear_logsoftmax_gather_ref(*inputs, chunk_bytes=budget)
    print(f"peak live tensors: chunked {chunked.peak} B (budget {budget} B), eager {eager.peak} B")
    # the budget, plus O(N) state: running log-sum-exp, target logits, output, per-chunk (rows,) vectors
    assert chunked.peak <= budget + 16 * n_rows
    assert_within_tolerance(errors_vs_truth(ours, *inputs), n_rows)


# --------------------------------------------------------------------------------------------
# input validation


def test_errors_name_what_was_expected_and_what_arrived():
    hidden, weight, targets, bias = make_inputs(4, 8, 50, torch.float32, seed=0, bias=True)
    op = linear_logsoftmax_gather
    with pytest.raises(ValueError, match=r"hidden must be a 2-D \(N, D\) tensor; got shape \(8,\)"):
        op(hidden[0], weight, targets)
    with pytest.raises(ValueError, match=r"weight must be a 2-D \(V, D\) tensor; got shape \(50, 8, 1\)"):
        op(hidden, weight[..., None], targets)
    with pytest.raises(ValueError, match=r"weight must be \(V, D\) with D = hidden.shape\[1\] = 8; got weight shape \(50, 7\)"):
        op(hidden, weight[:, :7], targets)
    with pytest.raises(ValueError, match="weight must have hidden's dtype torch.float32; got torch.bfloat16"):
        op(hidden, weight.bfloat16(), targets)
    with pytest.raises(ValueError, match="hidden must be float32, bfloat16 or float16; got torch.float64"):
        op(hidden.double(), weight.double(), targets)
    with pytest.raises(ValueError, match=r"V >= 1 and D >= 1"):
        op(hidden[:, :0], weight[:, :0], targets)
    with pytest.raises(ValueError, match=r"bias must have shape \(V,\) = \(50,\); got \(49,\)"):
        op(hidden, weight, targets, bias[:49])
    with pytest.raises(ValueError, match="bias must be float32, bfloat16 or float16; got torch.int64"):
        op(hidden, weight, targets, bias.long())
    with pytest.raises(ValueError, match="targets must be int64 class indices; got torch.float32"):
        op(hidden, weight, targets.float())
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(4,\) to match hidden.shape\[0\]; got \(5,\)"):
        op(hidden, weight, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"weight must be on hidden's device cpu; got meta"):
        op(hidden, weight.to("meta"), targets)
    with pytest.raises(ValueError, match="impl must be one of"):
        op(hidden, weight, targets, impl="fast")


@pytest.mark.parametrize("bad_target", [-1, 50])
def test_out_of_range_targets_are_rejected(bad_target):
    hidden, weight, targets, _ = make_inputs(4, 8, 50, torch.float32, seed=0, bias=False)
    targets[1] = bad_target
    with pytest.raises(ValueError, match=r"targets must lie in \[0, V\) = \[0, 50\); got min"):
        linear_logsoftmax_gather(hidden, weight, targets, impl="torch")


def test_explicit_triton_on_cpu_without_interpreter_fails_loudly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_dispatch, "TRITON_INTERPRETED", False)
    inputs = make_inputs(4, 8, 50, torch.float32, seed=0, bias=True)
    with pytest.raises(RuntimeError, match=r"^impl='triton' needs triton and a CUDA tensor \(or TRITON_INTERPRET=1\); got device cpu$"):
        linear_logsoftmax_gather(*inputs, impl="triton")
    assert torch.isfinite(linear_logsoftmax_gather(*inputs)).all()


# --------------------------------------------------------------------------------------------
# Triton kernels under TRITON_INTERPRET=1 (small shapes; the interpreter runs programs in numpy)

INTERPRETER_CASES = [
    # defaults: BLOCK_N 16, 3 vocab tiles -> 3 splits + combine
    dict(n=1, d=1, v=300, bias=True),
    # defaults: BLOCK_N 64, 8 splits (16-bit: one 128-column tile each, the last a tail of 105
    # columns; fp32: BLOCK_V 64, two tiles each)
    dict(n=37, d=67, v=1001, bias=False),
    # a single split writes the output directly; odd D with BLOCK_D 32 masks the D tail
    dict(n=37, d=67, v=1001, bias=True, num_splits=1, block_d=32),
    # BLOCK_N 128 with 130 rows (second row block almost empty), D a multiple of BLOCK_D
    dict(n=130, d=64, v=515, bias=True),
    # the first split's 256 columns are all -inf (bias masking): partial max -inf, sum 0
    dict(n=20, d=40, v=700, bias=True, masked_prefix=300, block_v=64, num_splits=3),
    # non-contiguous hidden and weight, splits of two tiles
    dict(n=9, d=24, v=333, bias=False, strided=True, block_v=32, num_splits=5),
    # a real vocabulary plus one: the last 128-column tile holds one column
    dict(n=3, d=20, v=151937, bias=False),
    # sm_80's fp32 tiles ([*, 64] x 16, asap_fast.ops.linear_logsoftmax_gather._TILES): BLOCK_N 128,
    # a D tail of 8 after two 16-wide blocks, a vocab tail of 3 columns
    dict(n=70, d=40, v=515, bias=True, block_v=64, block_d=16),
    # D = 900: 28 full 32-wide D blocks and a tail of 4
    dict(n=5, d=900, v=1000, bias=True, num_splits=2),
    # both at once, fp32 only: the interpreter gathers the whole 137M-element weight through index
    # arrays (~40 s a dtype); blocks larger than a GPU's keep it there, the tails stay (385 and 132)
    dict(n=2, d=900, v=151937, bias=True, block_v=2048, block_d=256, dtypes=("float32",)),
]
INTERPRETER_IDS = [
    f"{dt}-N{c['n']}-D{c['d']}-V{c['v']}{'-bias' if c['bias'] else ''}"
    f"{''.join(f'-{k}{c[k]}' for k in ('num_splits', 'block_d', 'block_v', 'masked_prefix', 'strided') if k in c)}"
    for c in INTERPRETER_CASES
    for dt in c.get("dtypes", DTYPES)
]


def run_interpreter_cases() -> dict:
    """Body of the subprocess: every (case, dtype) through the Triton kernels; stats keyed by id."""
    assert _dispatch.TRITON_INTERPRETED, "run with TRITON_INTERPRET=1 set before import"
    results = {"auto_impl_on_cpu": _dispatch.resolve_impl("auto", torch.device("cpu"))}
    ids = iter(INTERPRETER_IDS)
    for seed, case in enumerate(INTERPRETER_CASES):
        overrides = {k: case[k] for k in ("num_splits", "block_d", "block_v") if k in case}
        for dtype in (DTYPES[name] for name in case.get("dtypes", DTYPES)):
            inputs = make_inputs(case["n"], case["d"], case["v"], dtype, seed=seed, bias=case["bias"],
                                 strided=case.get("strided", False), masked_prefix=case.get("masked_prefix", 0))
            if overrides:
                ours = linear_module._linear_logsoftmax_gather_triton(*inputs, **overrides)
            else:
                ours = linear_logsoftmax_gather(*inputs, impl="triton")
            results[next(ids)] = errors_vs_truth(ours, *inputs)
    # fp32 products as three TF32 products (the interpreter computes them in fp32 all the same:
    # this checks the plumbing; the accuracy on tensor cores is a gpu test)
    inputs = make_inputs(37, 67, 1001, torch.float32, seed=11, bias=True)
    results["tf32x3"] = errors_vs_truth(linear_logsoftmax_gather(*inputs, impl="triton", input_precision="tf32x3"), *inputs)
    # targets outside [0, V) reach the kernel unchecked on a GPU: masked, NaN in their rows only,
    # with one split (direct output) and with several (through the combine kernel)
    hidden, weight, targets, bias = make_inputs(6, 40, 700, torch.float32, seed=12, bias=True)
    targets[1], targets[4] = -1, 700
    results["bad_targets"] = {
        str(splits): linear_module._linear_logsoftmax_gather_triton(hidden, weight, targets, bias, num_splits=splits,
                                                                    block_v=64).isnan().tolist()
        for splits in (1, 4)
    }
    return results


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != _dispatch.ENV_VAR}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"interpreter subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_interpreter_makes_auto_pick_triton_on_cpu(interpreter_results):
    assert interpreter_results["auto_impl_on_cpu"] == "triton"


@pytest.mark.parametrize("case_id", INTERPRETER_IDS)
def test_triton_kernel_matches_fp64(interpreter_results, case_id):
    n_rows = int(case_id.split("-N")[1].split("-")[0])
    assert_within_tolerance(interpreter_results[case_id], n_rows)


def test_triton_kernel_tf32x3_option(interpreter_results):
    assert_within_tolerance(interpreter_results["tf32x3"], 37)


def test_triton_kernel_gives_nan_for_out_of_range_targets(interpreter_results):
    expected = [False, True, False, False, True, False]
    assert interpreter_results["bad_targets"] == {"1": expected, "4": expected}


# --------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(
    "n_rows, n_hidden, n_vocab, bias",
    [(1, 896, 151936, False), (64, 3584, 152064, True), (1000, 896, 151936, True), (4096, 3584, 151936, False),
     # a vocabulary that is not a multiple of the 128-column tile and a D that is not one of BLOCK_D
     (1, 900, 151937, True), (300, 900, 151937, False)],
)
def test_gpu_triton_matches_fp64_and_torch_path(dtype_name, n_rows, n_hidden, n_vocab, bias):
    inputs = make_inputs(n_rows, n_hidden, n_vocab, DTYPES[dtype_name], seed=n_rows, bias=bias)
    inputs = tuple(t.cuda() if t is not None else None for t in inputs)
    ours = linear_logsoftmax_gather(*inputs, impl="triton")
    torch_path = linear_logsoftmax_gather(*inputs, impl="torch")
    assert_within_tolerance(errors_vs_truth(ours, *inputs), n_rows)
    # both accumulate in fp32 from the same inputs
    assert (ours - torch_path).abs().max().item() <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("n_rows, n_hidden, n_vocab", [(64, 896, 151936), (1000, 900, 151937)])
def test_gpu_tf32x3_is_fp32_accurate(n_rows, n_hidden, n_vocab):
    inputs = make_inputs(n_rows, n_hidden, n_vocab, torch.float32, seed=5, bias=True)
    inputs = tuple(t.cuda() for t in inputs)
    ieee = linear_logsoftmax_gather(*inputs, impl="triton")
    tf32x3 = linear_logsoftmax_gather(*inputs, impl="triton", input_precision="tf32x3")
    stats = errors_vs_truth(tf32x3, *inputs)
    print(f"max |tf32x3 - ieee| {(tf32x3 - ieee).abs().max().item():.3e}")
    # three TF32 products recover ~fp32 products; the log-sum-exp over 152k terms adds the rest
    check_tolerance(stats, n_rows, 1e-4)


@pytest.mark.gpu
def test_gpu_triton_many_rows_matches_torch_path():
    inputs = make_inputs(100_000, 896, 151936, torch.bfloat16, seed=1, bias=False)
    inputs = tuple(t.cuda() if t is not None else None for t in inputs)
    ours = linear_logsoftmax_gather(*inputs, impl="triton")
    torch_path = linear_logsoftmax_gather(*inputs, impl="torch")
    assert ours.shape == (100_000,) and torch.isfinite(ours).all()
    assert (ours - torch_path).abs().max().item() <= 1e-3


if __name__ == "__main__":
    print(json.dumps(run_interpreter_cases()))
