"""asap_fast.ops.logsoftmax_gather: torch path in-process, Triton kernel through triton's interpreter.

Tolerance rule: against an fp64 ground truth, the op's max error may be at most twice that of the
plain-torch expression (torch.log_softmax(logits.float(), -1).gather(...)) plus a small atol.

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

from asap_fast.ops import _dispatch, logsoftmax_gather, logsoftmax_gather_ref
from asap_fast.testing import PeakLiveBytes

# Fetched by module path: the package re-exports a function of the same name.
lsg_module = importlib.import_module("asap_fast.ops.logsoftmax_gather")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Both sides compute in fp32 from the same rounded inputs: only fp32 rounding separates them.
ATOL = 1e-5


def make_inputs(n_rows: int, n_vocab: int, dtype: torch.dtype, seed: int, *, strided: bool = False,
                masked_prefix: int = 0):
    """Random logits (N, V) with a realistic spread and targets that include 0 and V-1.

    strided: logits is a non-contiguous view (every other column of a wider tensor).
    masked_prefix: the first columns are -inf in every row (targets then avoid them).
    """
    gen = torch.Generator().manual_seed(seed)
    width = 2 * n_vocab if strided else n_vocab
    full = (torch.randn(n_rows, width, generator=gen) * 4.0 + 1.0).to(dtype)
    logits = full[:, ::2] if strided else full
    low = masked_prefix
    targets = torch.randint(low, n_vocab, (n_rows,), generator=gen)
    targets[-1] = n_vocab - 1
    if n_rows > 1:
        targets[0] = low
    if masked_prefix:
        logits[:, :masked_prefix] = float("-inf")
    return logits, targets


def errors_vs_truth(ours: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Max/mean abs error of ours and of torch's fp32 expression against the fp64 truth."""
    truth = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None])[:, 0]
    torch_result = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    return error_stats(ours, truth, torch_result)


def assert_within_tolerance(stats: dict, expected_rows: int) -> None:
    check_tolerance(stats, expected_rows, ATOL)


# --------------------------------------------------------------------------------------------
# torch path


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(
    "n_rows, n_vocab",
    [(1, 1), (1, 151936), (3, 152064), (5, 151936), (257, 1000), (100_000, 11)],
)
def test_torch_path_matches_fp64(dtype_name, n_rows, n_vocab):
    logits, targets = make_inputs(n_rows, n_vocab, DTYPES[dtype_name], seed=n_rows * 7 + n_vocab)
    ours = logsoftmax_gather(logits, targets, impl="torch")
    assert_within_tolerance(errors_vs_truth(ours, logits, targets), n_rows)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_path_strided_and_masked(dtype_name):
    logits, targets = make_inputs(9, 3001, DTYPES[dtype_name], seed=3, strided=True, masked_prefix=700)
    assert not logits.is_contiguous()
    ours = logsoftmax_gather(logits, targets, impl="torch")
    assert_within_tolerance(errors_vs_truth(ours, logits, targets), 9)


def test_torch_path_chunking_does_not_change_the_result():
    logits, targets = make_inputs(37, 5003, torch.bfloat16, seed=11)
    whole = logsoftmax_gather_ref(logits, targets)
    row_by_row = logsoftmax_gather_ref(logits, targets, chunk_bytes=1)
    # 3 rows per chunk: 12 full chunks and a tail of 1
    three_rows = logsoftmax_gather_ref(logits, targets, chunk_bytes=3 * 8 * 5003)
    assert torch.equal(whole, row_by_row)
    assert torch.equal(whole, three_rows)


def test_row_chunk_size_respects_the_budget():
    assert _dispatch.row_chunk_size(10, 100, 1000) == 10
    assert _dispatch.row_chunk_size(10, 100, 350) == 3
    assert _dispatch.row_chunk_size(10, 100, 1) == 1  # never zero rows
    assert _dispatch.row_chunk_size(0, 100, 10_000) == 1
    assert _dispatch.row_chunk_size(4, 8 * 151936, 256 * 2**20) == 4


def test_torch_path_memory_is_bounded():
    n_rows, n_vocab = 1000, 5000
    logits, targets = make_inputs(n_rows, n_vocab, torch.bfloat16, seed=5)
    full_fp32 = n_rows * n_vocab * 4
    budget = 1 << 20

    with PeakLiveBytes([logits, targets]) as eager:
        torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])
    assert eager.peak >= 2 * full_fp32  # the tracker sees the eager path's [N, V] fp32 tensors

    with PeakLiveBytes([logits, targets]) as chunked:
        ours = logsoftmax_gather_ref(logits, targets, chunk_bytes=budget)
    print(f"peak live tensors: chunked {chunked.peak} B (budget {budget} B), eager {eager.peak} B")
    # the budget, plus the (N,) output and the (rows, 1) gather results
    assert chunked.peak <= budget + 8 * n_rows
    assert_within_tolerance(errors_vs_truth(ours, logits, targets), n_rows)


# --------------------------------------------------------------------------------------------
# input validation


def test_errors_name_what_was_expected_and_what_arrived():
    logits, targets = make_inputs(4, 50, torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"logits must be a 2-D \(N, V\) tensor; got shape \(4, 50, 1\)"):
        logsoftmax_gather(logits[..., None], targets)
    with pytest.raises(ValueError, match=r"got shape \(50,\)"):
        logsoftmax_gather(logits[0], targets)
    with pytest.raises(ValueError, match="logits must be float32, bfloat16 or float16; got torch.int64"):
        logsoftmax_gather(logits.long(), targets)
    with pytest.raises(ValueError, match=r"V >= 1"):
        logsoftmax_gather(logits[:, :0], targets)
    with pytest.raises(ValueError, match="targets must be int64 class indices; got torch.float32"):
        logsoftmax_gather(logits, targets.float())
    with pytest.raises(ValueError, match="targets must be int64 class indices; got torch.int32"):
        logsoftmax_gather(logits, targets.int())
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(4,\) .*got \(4, 1\)"):
        logsoftmax_gather(logits, targets[:, None])
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(4,\) .*got \(3,\)"):
        logsoftmax_gather(logits, targets[:3])
    with pytest.raises(ValueError, match=r"targets must be on the same device as logits \(cpu\); got meta"):
        logsoftmax_gather(logits, targets.to("meta"))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        logsoftmax_gather(logits.tolist(), targets)
    with pytest.raises(ValueError, match="impl must be one of"):
        logsoftmax_gather(logits, targets, impl="cuda")


@pytest.mark.parametrize("bad_target", [-1, 50, 10**6])
def test_out_of_range_targets_are_rejected(bad_target):
    logits, targets = make_inputs(4, 50, torch.float32, seed=0)
    targets[2] = bad_target
    with pytest.raises(ValueError, match=r"targets must lie in \[0, V\) = \[0, 50\); got min"):
        logsoftmax_gather(logits, targets, impl="torch")


def test_explicit_triton_on_cpu_without_interpreter_fails_loudly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_dispatch, "TRITON_INTERPRETED", False)
    logits, targets = make_inputs(4, 50, torch.float32, seed=0)
    with pytest.raises(RuntimeError, match=r"impl='triton' needs triton and a CUDA tensor \(or TRITON_INTERPRET=1\)"):
        logsoftmax_gather(logits, targets, impl="triton")
    # auto falls back quietly
    assert torch.isfinite(logsoftmax_gather(logits, targets)).all()


# --------------------------------------------------------------------------------------------
# Triton kernel under TRITON_INTERPRET=1 (small shapes; the interpreter runs programs in numpy)

INTERPRETER_CASES = [
    dict(n=1, v=1, block_v=None, strided=False, masked_prefix=0),
    dict(n=1, v=37, block_v=None, strided=False, masked_prefix=0),
    dict(n=6, v=1000, block_v=128, strided=False, masked_prefix=0),  # tail tile of 104
    dict(n=33, v=4099, block_v=None, strided=False, masked_prefix=0),  # 2 tiles of 4096, tail of 3
    dict(n=5, v=1001, block_v=128, strided=True, masked_prefix=300),  # 2 whole -inf tiles first
    dict(n=3, v=151937, block_v=None, strided=False, masked_prefix=0),  # a real vocab plus one: tail of 385
]
INTERPRETER_IDS = [
    f"{dt}-N{c['n']}-V{c['v']}-B{c['block_v']}{'-strided' if c['strided'] else ''}{'-masked' if c['masked_prefix'] else ''}"
    for c in INTERPRETER_CASES
    for dt in DTYPES
]


def run_interpreter_cases() -> dict:
    """Body of the subprocess: every (case, dtype) through the Triton kernel; stats keyed by id."""
    assert _dispatch.TRITON_INTERPRETED, "run with TRITON_INTERPRET=1 set before import"
    results = {"auto_impl_on_cpu": _dispatch.resolve_impl("auto", torch.device("cpu"))}
    ids = iter(INTERPRETER_IDS)
    for seed, case in enumerate(INTERPRETER_CASES):
        for dtype_name, dtype in DTYPES.items():
            logits, targets = make_inputs(case["n"], case["v"], dtype, seed=seed,
                                          strided=case["strided"], masked_prefix=case["masked_prefix"])
            if case["block_v"] is None:
                ours = logsoftmax_gather(logits, targets, impl="triton")
            else:
                ours = lsg_module._logsoftmax_gather_triton(logits, targets, block_v=case["block_v"])
            results[next(ids)] = errors_vs_truth(ours, logits, targets)
    # targets outside [0, V) reach the kernel unchecked on a GPU: a masked load, NaN in that row only
    logits, targets = make_inputs(5, 300, torch.float32, seed=9)
    targets[1], targets[3] = -1, 10**6
    results["bad_targets"] = lsg_module._logsoftmax_gather_triton(logits, targets).isnan().tolist()
    return results


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != _dispatch.ENV_VAR}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"interpreter subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_interpreter_makes_auto_pick_triton_on_cpu(interpreter_results):
    assert interpreter_results["auto_impl_on_cpu"] == "triton"


@pytest.mark.parametrize("case_id", INTERPRETER_IDS)
def test_triton_kernel_matches_fp64(interpreter_results, case_id):
    stats = interpreter_results[case_id]
    n_rows = int(case_id.split("-N")[1].split("-")[0])
    assert_within_tolerance(stats, n_rows)


def test_triton_kernel_gives_nan_for_out_of_range_targets(interpreter_results):
    assert interpreter_results["bad_targets"] == [False, True, False, True, False]


# --------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n_rows, n_vocab", [(1, 151936), (300, 152064), (20_000, 151936), (7, 151937), (300, 151937)])
def test_gpu_triton_matches_fp64_and_torch_path(dtype_name, n_rows, n_vocab):
    logits, targets = make_inputs(n_rows, n_vocab, DTYPES[dtype_name], seed=n_rows)
    logits, targets = logits.cuda(), targets.cuda()
    ours = logsoftmax_gather(logits, targets, impl="triton")
    torch_path = logsoftmax_gather(logits, targets, impl="torch")
    # fp64 truth row-chunked: [20000, 152k] fp64 is 24 GB
    stats = {"ours_max": 0.0, "ours_mean": 0.0, "torch_max": 0.0, "torch_mean": 0.0}
    for start in range(0, n_rows, 2048):
        part = errors_vs_truth(ours[start:start + 2048], logits[start:start + 2048], targets[start:start + 2048])
        weight = part["shape"][0] / n_rows
        for key in ("ours", "torch"):
            stats[f"{key}_max"] = max(stats[f"{key}_max"], part[f"{key}_max"])
            stats[f"{key}_mean"] += part[f"{key}_mean"] * weight
    stats.update(dtype=str(ours.dtype), shape=list(ours.shape), finite=bool(torch.isfinite(ours).all()))
    assert_within_tolerance(stats, n_rows)
    assert (ours - torch_path).abs().max().item() <= 2e-5


if __name__ == "__main__":
    print(json.dumps(run_interpreter_cases()))
