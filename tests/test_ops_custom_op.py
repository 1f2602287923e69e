"""The ops as torch custom ops (opcheck, fake tensors, torch.compile) and the impl selection."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import asap_fast.ops as ops
from asap_fast.ops import _dispatch


def lsg_inputs(n_rows=6, n_vocab=300, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n_rows, n_vocab, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, n_vocab, (n_rows,), generator=gen)
    if n_rows:
        targets[0], targets[-1] = 0, n_vocab - 1
    return logits, targets


def linear_inputs(n_rows=6, n_hidden=24, n_vocab=300, dtype=torch.float32, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, n_hidden, generator=gen).to(dtype)
    weight = (torch.randn(n_vocab, n_hidden, generator=gen) * 0.5).to(dtype)
    bias_tensor = torch.randn(n_vocab, generator=gen).to(dtype) if bias else None
    targets = torch.randint(0, n_vocab, (n_rows,), generator=gen)
    if n_rows:
        targets[0], targets[-1] = 0, n_vocab - 1
    return hidden, weight, targets, bias_tensor


# --------------------------------------------------------------------------------------------
# custom ops


def test_ops_are_registered_in_the_asap_fast_namespace():
    assert hasattr(torch.ops.asap_fast, "logsoftmax_gather")
    assert hasattr(torch.ops.asap_fast, "linear_logsoftmax_gather")
    logits, targets = lsg_inputs()
    direct = torch.ops.asap_fast.logsoftmax_gather(logits, targets, "torch")
    assert torch.equal(direct, ops.logsoftmax_gather(logits, targets, impl="torch"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_opcheck_logsoftmax_gather(dtype, impl):
    logits, targets = lsg_inputs(dtype=dtype)
    result = torch.library.opcheck(torch.ops.asap_fast.logsoftmax_gather.default, (logits, targets, impl))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_linear_logsoftmax_gather(dtype, bias):
    hidden, weight, targets, bias_tensor = linear_inputs(dtype=dtype, bias=bias)
    result = torch.library.opcheck(
        torch.ops.asap_fast.linear_logsoftmax_gather.default, (hidden, weight, targets, bias_tensor, "auto")
    )
    assert all(v == "SUCCESS" for v in result.values()), result


def test_fake_implementations_give_shape_and_dtype():
    with FakeTensorMode():
        logits = torch.empty(5, 151936, dtype=torch.bfloat16)
        hidden = torch.empty(5, 896, dtype=torch.bfloat16)
        weight = torch.empty(151936, 896, dtype=torch.bfloat16)
        targets = torch.empty(5, dtype=torch.int64)
        out_lsg = ops.logsoftmax_gather(logits, targets)
        out_linear = ops.linear_logsoftmax_gather(hidden, weight, targets)
    for out in (out_lsg, out_linear):
        assert out.shape == (5,) and out.dtype == torch.float32


def test_compile_fullgraph_matches_eager():
    """Inductor, fullgraph: the ops inside a graph with ordinary ops around them."""
    hidden, weight, targets, bias = linear_inputs(n_rows=9, dtype=torch.bfloat16, bias=True)
    logits, lsg_targets = lsg_inputs(n_rows=9)

    def score(hidden, weight, targets, bias, logits, lsg_targets):
        fused = ops.linear_logsoftmax_gather(hidden * 2, weight, targets, bias)
        gathered = ops.logsoftmax_gather(logits.relu(), lsg_targets)
        return -(fused + gathered), fused.sum()

    args = (hidden, weight, targets, bias, logits, lsg_targets)
    eager = score(*args)
    torch._dynamo.reset()
    compiled = torch.compile(score, fullgraph=True)(*args)
    for c, e in zip(compiled, eager):
        print(f"max |compiled - eager| = {(c - e).abs().max().item():.3e}")
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-5)


def test_compile_dynamic_shapes():
    def score(hidden, weight, targets):
        return ops.linear_logsoftmax_gather(hidden, weight, targets, impl="torch").exp()

    torch._dynamo.reset()
    compiled = torch.compile(score, fullgraph=True, dynamic=True, backend="aot_eager")
    for n_rows in (3, 17, 1):
        hidden, weight, targets, _ = linear_inputs(n_rows=n_rows, seed=n_rows, bias=False)
        torch.testing.assert_close(compiled(hidden, weight, targets), score(hidden, weight, targets))


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_zero_rows_give_an_empty_result(impl):
    logits, targets = lsg_inputs(n_rows=0)
    hidden, weight, _, bias = linear_inputs(n_rows=0)
    for out in (ops.logsoftmax_gather(logits, targets, impl=impl),
                ops.linear_logsoftmax_gather(hidden, weight, targets, bias, impl=impl)):
        assert out.shape == (0,) and out.dtype == torch.float32


def test_no_autograd_backward_raises():
    """Inference only: the ops register no autograd formula, and backward says so."""
    logits, targets = lsg_inputs()
    logits.requires_grad_(True)
    out = ops.logsoftmax_gather(logits, targets)
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        out.sum().backward()


# --------------------------------------------------------------------------------------------
# impl selection (one place: _dispatch.resolve_impl)

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(_dispatch, "TRITON_INTERPRETED", False)


def test_auto_picks_torch_on_cpu_and_triton_on_cuda(no_interpreter):
    assert _dispatch.resolve_impl("auto", CPU) == "torch"
    assert _dispatch.resolve_impl("torch", CPU) == "torch"
    if _dispatch.triton is not None:
        assert _dispatch.resolve_impl("auto", CUDA) == "triton"
        assert _dispatch.resolve_impl("triton", CUDA) == "triton"
    assert _dispatch.resolve_impl("torch", CUDA) == "torch"


def test_interpreter_enables_triton_on_cpu(no_interpreter, monkeypatch):
    if _dispatch.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(_dispatch, "TRITON_INTERPRETED", True)
    assert _dispatch.resolve_impl("auto", CPU) == "triton"


def test_interpreter_set_after_import_is_named_in_the_error(no_interpreter, monkeypatch):
    if _dispatch.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="must be set before asap_fast.ops is imported"):
        _dispatch.resolve_impl("triton", CPU)
    assert _dispatch.resolve_impl("auto", CPU) == "torch"


def test_environment_variable_is_the_default_for_auto(no_interpreter, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "torch")
    assert _dispatch.resolve_impl("auto", CUDA) == "torch"
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match=r"^ASAP_FAST_OPS_IMPL='triton' needs triton and a CUDA tensor"):
        _dispatch.resolve_impl("auto", CPU)
    # an explicit argument wins over the variable
    assert _dispatch.resolve_impl("torch", CPU) == "torch"
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=r"ASAP_FAST_OPS_IMPL must be one of \('auto', 'triton', 'torch'\); got 'cuda'"):
        _dispatch.resolve_impl("auto", CPU)
    monkeypatch.setenv(_dispatch.ENV_VAR, "")
    assert _dispatch.resolve_impl("auto", CPU) == "torch"


def test_environment_variable_reaches_the_public_ops(no_interpreter, monkeypatch):
    logits, targets = lsg_inputs()
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="ASAP_FAST_OPS_IMPL='triton' needs triton"):
        ops.logsoftmax_gather(logits, targets)
    monkeypatch.setenv(_dispatch.ENV_VAR, "torch")
    assert torch.isfinite(ops.linear_logsoftmax_gather(*linear_inputs())).all()


def test_missing_triton_is_named(no_interpreter, monkeypatch):
    monkeypatch.setattr(_dispatch, "triton", None)
    assert _dispatch.resolve_impl("auto", CUDA) == "torch"
    with pytest.raises(RuntimeError, match="triton is not installed"):
        _dispatch.resolve_impl("triton", CUDA)


def test_package_imports_and_runs_without_triton():
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class BlockTriton(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
                return None

        sys.meta_path.insert(0, BlockTriton())
        import torch
        import asap_fast.ops as ops
        logits = torch.randn(3, 10)
        targets = torch.tensor([0, 4, 9])
        assert torch.isfinite(ops.logsoftmax_gather(logits, targets)).all()
        try:
            ops.logsoftmax_gather(logits, targets, impl="triton")
        except RuntimeError as error:
            print(error)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "impl='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1); triton is not installed" in proc.stdout


# --------------------------------------------------------------------------------------------
# a Triton kernel that cannot compile or launch where it should run


@pytest.fixture
def triton_believed_runnable(no_interpreter, monkeypatch):
    """auto picks Triton for CPU tensors as it would on a GPU; the kernels here are compiled (not
    interpreted), and Triton, having no CPU driver, really fails to compile and launch them: the
    situation of a GPU the kernels cannot serve (no bf16 MMA, ROCm, a mismatched Triton)."""
    if _dispatch.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(_dispatch, "triton_unavailable_reason", lambda device: None)
    monkeypatch.setattr(_dispatch, "TRITON_FAILURES", {})


def test_auto_falls_back_to_torch_with_one_warning_naming_the_cause(triton_believed_runnable):
    import warnings

    logits, targets = lsg_inputs()
    hidden, weight, lin_targets, bias = linear_inputs(dtype=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            lsg = ops.logsoftmax_gather(logits, targets)
            linear = ops.linear_logsoftmax_gather(hidden, weight, lin_targets, bias)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print("\n".join(messages))
    assert len(messages) == 2  # one per op (and device, dtype), not one per call
    assert messages[0].startswith("asap_fast.ops.logsoftmax_gather: the Triton kernel cannot run on cpu, float32 (")
    assert messages[1].startswith("asap_fast.ops.linear_logsoftmax_gather: the Triton kernel cannot run on cpu, bfloat16 (")
    for message in messages:
        assert "active drivers" in message and "using the torch path instead" in message and "\n" not in message
    assert torch.equal(lsg, ops.logsoftmax_gather(logits, targets, impl="torch"))
    assert torch.equal(linear, ops.linear_logsoftmax_gather(hidden, weight, lin_targets, bias, impl="torch"))


def test_explicit_triton_still_raises_when_the_kernel_cannot_run(triton_believed_runnable, monkeypatch):
    logits, targets = lsg_inputs()
    with pytest.raises(RuntimeError, match=r"^impl='triton': the Triton kernel of logsoftmax_gather cannot run on "
                                           r"cpu, float32: RuntimeError: .*active drivers"):
        ops.logsoftmax_gather(logits, targets, impl="triton")
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match=r"^ASAP_FAST_OPS_IMPL='triton': the Triton kernel of linear_logsoftmax_gather"):
        ops.linear_logsoftmax_gather(*linear_inputs())
    # a failure remembered for auto does not excuse an explicit choice
    monkeypatch.delenv(_dispatch.ENV_VAR)
    with pytest.warns(RuntimeWarning):
        ops.logsoftmax_gather(logits, targets)
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        ops.logsoftmax_gather(logits, targets, impl="triton")


def test_input_precision_is_validated_and_reaches_the_op():
    hidden, weight, targets, bias = linear_inputs()
    with pytest.raises(ValueError, match=r"input_precision must be one of \('ieee', 'tf32x3'\); got 'tf32'"):
        ops.linear_logsoftmax_gather(hidden, weight, targets, bias, input_precision="tf32")
    # the torch path is fp32 throughout: the option changes nothing there
    assert torch.equal(ops.linear_logsoftmax_gather(hidden, weight, targets, bias, input_precision="tf32x3"),
                       ops.linear_logsoftmax_gather(hidden, weight, targets, bias))
    result = torch.library.opcheck(torch.ops.asap_fast.linear_logsoftmax_gather.default,
                                   (hidden, weight, targets, bias, "auto", "tf32x3"))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.gpu
def test_kernels_launch_on_their_tensors_device_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    logits, targets = (t.to("cuda:1") for t in lsg_inputs(n_rows=64, n_vocab=151937))
    hidden, weight, lin_targets, bias = (t.to("cuda:1") for t in linear_inputs(n_rows=64, n_hidden=900, n_vocab=151937))
    with torch.cuda.device(0):
        lsg = ops.logsoftmax_gather(logits, targets, impl="triton")
        linear = ops.linear_logsoftmax_gather(hidden, weight, lin_targets, bias, impl="triton")
    assert lsg.device == logits.device and linear.device == hidden.device
    torch.testing.assert_close(lsg, ops.logsoftmax_gather(logits, targets, impl="torch"), rtol=0, atol=2e-5)
    torch.testing.assert_close(linear, ops.linear_logsoftmax_gather(hidden, weight, lin_targets, bias, impl="torch"),
                               rtol=0, atol=1e-3)


@pytest.mark.gpu
def test_no_host_sync_per_call_and_out_of_range_targets_give_nan():
    """The targets' range is not read back on a GPU (a sync per call, no CUDA-graph capture): the
    ops run with sync debug mode set to error, and a bad target gives NaN in its row only."""
    logits, targets = (t.cuda() for t in lsg_inputs(n_rows=8, n_vocab=1000))
    hidden, weight, lin_targets, bias = (t.cuda() for t in linear_inputs(n_rows=8, n_vocab=1000))
    targets[3], lin_targets[5] = 1000, -1
    for impl in ("triton", "torch"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            lsg = ops.logsoftmax_gather(logits, targets, impl=impl)
            linear = ops.linear_logsoftmax_gather(hidden, weight, lin_targets, bias, impl=impl)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert lsg.isnan().tolist() == [i == 3 for i in range(8)], impl
        assert linear.isnan().tolist() == [i == 5 for i in range(8)], impl
