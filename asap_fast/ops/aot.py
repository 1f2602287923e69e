"""Ahead-of-time compilation of every Triton kernel configuration the ops can launch, on any machine.

``aot_specs(arch)`` lists one :class:`KernelSpec` per kernel configuration the dispatchers
(``linear_logsoftmax_gather.plan_launches``, ``logsoftmax_gather.plan_launch``) can choose over
:data:`SHAPE_GRID`; ``compile_spec`` compiles one for a GPU architecture without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``) and reads its resource
usage from ptxas's report and the SASS (``cuobjdump`` from the Triton wheel): registers, spill
stores/loads, stack, shared memory and tensor-core instructions. ``asap bench ops --aot`` prints
them; tests/test_ops_aot.py fails on a spill or a dot kernel without tensor-core instructions.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field

import torch

from asap_fast.ops._dispatch import ARCHS, triton

# The modules, not the functions of the same name that asap_fast.ops re-exports.
linear_module = importlib.import_module("asap_fast.ops.linear_logsoftmax_gather")
lsg_module = importlib.import_module("asap_fast.ops.logsoftmax_gather")

__all__ = ["ARCHS", "SHAPE_GRID", "KernelSpec", "SpecReport", "aot_specs", "compile_spec", "grid_launches"]

# The shapes the configuration list covers: rows, hidden sizes of the Qwen2/Llama/Mistral families,
# their vocabularies, and every dtype / fp32 precision / bias choice of the public ops.
SHAPE_GRID = dict(
    rows=(1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 1000, 4096, 16384, 65536),
    hidden=(896, 1536, 2048, 3584, 4096, 5120, 8192),
    vocab=(32000, 128256, 151936, 152064),
    dtypes=(torch.bfloat16, torch.float16, torch.float32),
    fp32_precisions=linear_module.FP32_PRECISIONS,
    bias=(False, True),
)
# SM counts of the parts the grid is planned for (A100, H100/H200, B200): they set the split count.
SMS_OF_ARCH = {"sm_80": (108,), "sm_90": (132,), "sm_100": (148,)}
CAPABILITY = {"sm_80": 80, "sm_90": 90, "sm_100": 100}
TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Tensor-core instructions in SASS: HMMA (sm_80, and sm_90 without wgmma), HGMMA (sm_90 wgmma),
# and the sm_100 tcgen05 forms (UTCHMMA, UTCQMMA, UTCOMMA, ... issued as UTC*MMA).
TENSOR_CORE_SASS = re.compile(r"\b(HMMA|HGMMA|UTC\w*MMA)\b")


@dataclass(frozen=True)
class KernelSpec:
    """One compiled kernel configuration: what ``triton.compile(ASTSource(fn, signature, constexprs))`` needs."""

    label: str
    fn: object  # the triton.jit function
    signature: dict  # argument name -> Triton type ("*bf16", "i32", ...) or "constexpr"
    constexprs: dict  # argument name -> value
    num_warps: int
    num_stages: int
    uses_tensor_cores: bool  # a dot product on tensor cores is expected in the SASS
    attrs: dict = field(default_factory=dict)  # argument name -> divisibility, as the launcher specializes
    maxnreg: int | None = None  # ptxas register budget (.maxnreg) the launcher passes; None: ptxas's own

    def key(self) -> tuple:
        """What identifies the configuration a launch uses: kernel, pointer types, constexprs, warps, stages."""
        pointers = tuple(sorted((k, v) for k, v in self.signature.items() if v.startswith("*")))
        return (self.fn.__name__, pointers, tuple(sorted(self.constexprs.items())), self.num_warps, self.num_stages,
                self.maxnreg)


def _launch_key(launch: dict, signature: dict, constexprs: dict) -> tuple:
    pointers = tuple(sorted((k, v) for k, v in signature.items() if v.startswith("*")))
    return (launch["fn"].__name__, pointers, tuple(sorted(constexprs.items())), launch["num_warps"],
            launch["num_stages"], launch["maxnreg"])


# Unit column strides: the launcher's tensors are row-major, and Triton specializes an integer
# argument equal to 1 into a constant (so loads along a row vectorize); the AOT compile does likewise.
_UNIT_STRIDES = {"_linear_lse_partials_kernel": ("stride_hidden_col", "stride_weight_col"),
                 "_logsoftmax_gather_kernel": ("stride_logits_col",)}
# Arguments Triton sees as multiples of 16 at launch over the grid (data pointers from torch's
# allocator; hidden sizes and row strides of the grid are multiples of 16, vocab sizes are not
# all: 151936 is, 32000 is, but row counts are arbitrary and are never specialized).
_DIVISIBLE = {"_linear_lse_partials_kernel": ("n_hidden", "stride_hidden_row", "stride_weight_row"),
              "_logsoftmax_gather_kernel": (), "_combine_partials_kernel": ()}


def _signature(fn, dtype_of: dict, constexprs: dict) -> tuple[dict, dict, dict]:
    """Signature, constexprs (with the unit strides) and attrs of ``fn`` with pointer types from ``dtype_of``."""
    constexprs = dict(constexprs)
    for name in _UNIT_STRIDES.get(fn.__name__, ()):
        constexprs[name] = 1
    signature, attrs = {}, {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = dtype_of.get(name, "*fp32")
            attrs[name] = 16
        else:
            signature[name] = "i32"
            if name in _DIVISIBLE.get(fn.__name__, ()):
                attrs[name] = 16
    return signature, constexprs, attrs


def _launch_signature(launch: dict, dtype: torch.dtype) -> tuple[dict, dict, dict]:
    t = "*" + TRITON_DTYPE[dtype]
    name = launch["fn"].__name__
    if name == "_linear_lse_partials_kernel":
        dtype_of = {"Hidden_ptr": t, "Weight_ptr": t, "Bias_ptr": t, "Targets_ptr": "*i64"}
    elif name == "_logsoftmax_gather_kernel":
        dtype_of = {"Logits_ptr": t, "Targets_ptr": "*i64"}
    else:
        dtype_of = {}
    return _signature(launch["fn"], dtype_of, launch["constexprs"])


def grid_launches(arch: str):
    """Yield (dtype, launch) for every call over SHAPE_GRID, as the dispatchers plan them for ``arch``."""
    for n_sms in SMS_OF_ARCH[arch]:
        for dtype in SHAPE_GRID["dtypes"]:
            precisions = SHAPE_GRID["fp32_precisions"] if dtype == torch.float32 else ("ieee",)
            for n_rows in SHAPE_GRID["rows"]:
                for n_vocab in SHAPE_GRID["vocab"]:
                    yield dtype, lsg_module.plan_launch(n_rows, n_vocab)
                    for n_hidden in SHAPE_GRID["hidden"]:
                        for precision in precisions:
                            for has_bias in SHAPE_GRID["bias"]:
                                for launch in linear_module.plan_launches(
                                    n_rows, n_hidden, n_vocab, dtype, has_bias, input_precision=precision,
                                    arch=arch, n_sms=n_sms,
                                ):
                                    yield dtype, launch


def launch_key(dtype: torch.dtype, launch: dict) -> tuple:
    signature, constexprs, _ = _launch_signature(launch, dtype)
    return _launch_key(launch, signature, constexprs)


def _label(launch: dict, dtype: torch.dtype) -> str:
    c = launch["constexprs"]
    name = launch["fn"].__name__
    if name == "_linear_lse_partials_kernel":
        precision = f"-{c['DOT_PRECISION']}" if dtype == torch.float32 else ""
        return (f"linear_partials-{TRITON_DTYPE[dtype]}{precision}{'-bias' if c['HAS_BIAS'] else ''}"
                f"{'-out' if c['WRITE_OUTPUT'] else '-split'}{'' if c['EVEN_D'] else '-tailD'}"
                f"-N{c['BLOCK_N']}xV{c['BLOCK_V']}xD{c['BLOCK_D']}-w{launch['num_warps']}s{launch['num_stages']}"
                f"{'-r' + str(launch['maxnreg']) if launch['maxnreg'] else ''}")
    if name == "_combine_partials_kernel":
        return f"linear_combine-N{c['BLOCK_N']}-w{launch['num_warps']}"
    return f"logsoftmax_gather-{TRITON_DTYPE[dtype]}-V{c['BLOCK_V']}-w{launch['num_warps']}"


def aot_specs(arch: str) -> list[KernelSpec]:
    """One spec per kernel configuration the dispatchers can choose over SHAPE_GRID on ``arch``."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}; got {arch!r}")
    if triton is None:
        raise RuntimeError("the AOT specs need triton installed")
    specs: dict[tuple, KernelSpec] = {}
    for dtype, launch in grid_launches(arch):
        signature, constexprs, attrs = _launch_signature(launch, dtype)
        key = _launch_key(launch, signature, constexprs)
        if key in specs:
            continue
        # The combine kernel only adds and exponentiates; the partials kernel's tl.dot runs on
        # tensor cores except for exact fp32 ("ieee"), which is FMA by definition.
        dots = launch["fn"].__name__ == "_linear_lse_partials_kernel" and not (
            dtype == torch.float32 and launch["constexprs"]["DOT_PRECISION"] == "ieee")
        label = _label(launch, dtype if launch["fn"].__name__ != "_combine_partials_kernel" else torch.float32)
        specs[key] = KernelSpec(label, launch["fn"], signature, constexprs, launch["num_warps"], launch["num_stages"],
                                dots, attrs, launch["maxnreg"])
    return sorted(specs.values(), key=lambda s: s.label)


@dataclass
class SpecReport:
    """Resource usage of one compiled spec."""

    arch: str
    label: str
    registers: int
    spill_stores: int  # bytes per thread (ptxas)
    spill_loads: int
    stack: int  # bytes per thread
    shared: int  # bytes per program (static + dynamic)
    tensor_core_instructions: int
    uses_tensor_cores: bool  # expected
    sass_local_accesses: int  # STL + LDL in the SASS

    @property
    def problems(self) -> list[str]:
        """What fails the check (on sm_100 these are reported, not enforced)."""
        found = []
        if self.spill_stores or self.spill_loads or self.stack:
            found.append(f"spills {self.spill_stores}/{self.spill_loads} bytes, stack {self.stack}")
        if self.uses_tensor_cores and not self.tensor_core_instructions:
            found.append("no tensor-core instruction")
        return found


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_spec(spec: KernelSpec, arch: str, fn=None) -> SpecReport:
    """Compile ``spec`` for ``arch`` (no GPU needed) and read back its resource usage.

    ``fn`` replaces the spec's kernel (same arguments), e.g. an older version for a before/after table.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = fn or spec.fn
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", value]] for name, value in spec.attrs.items()}
    source = ASTSource(fn, spec.signature, spec.constexprs, attrs)
    knobs = triton.knobs
    log = io.StringIO()
    dump, always = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report (spill bytes) is printed to stdout
    knobs.compilation.always_compile = True  # from Triton's cache ptxas would not run: no report
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Triton 3.9's FP-fusion default notice
            kernel = triton.compile(source, target=GPUTarget("cuda", CAPABILITY[arch], 32),
                                    options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages,
                                                 **({"maxnreg": spec.maxnreg} if spec.maxnreg else {})))
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = dump, always
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    figures = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
    assert figures and spills, f"unreadable ptxas / cuobjdump report for {spec.label}"
    return SpecReport(
        arch=arch,
        label=spec.label,
        registers=int(figures.group(1)),
        spill_stores=max(int(s) for s, _ in spills),
        spill_loads=max(int(lo) for _, lo in spills),
        stack=int(figures.group(2)),
        shared=int(figures.group(3)) + int(kernel.metadata.shared),
        tensor_core_instructions=len(TENSOR_CORE_SASS.findall(sass)),
        uses_tensor_cores=spec.uses_tensor_cores,
        sass_local_accesses=len(re.findall(r"\b(STL|LDL)\b", sass)),
    )
