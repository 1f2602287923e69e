"""Measurements that ship with the package, one module per measured thing, behind ``asap bench``
(the scripts in the repository's benchmarks/ folder are thin wrappers of the same code):

* :mod:`asap_fast.bench.ops`     the fused ops vs torch eager and ``F.linear_cross_entropy``
* :mod:`asap_fast.bench.stage2`  stage 2 on real traces: ours vs the bare backbone, a restatement
  of the reference, and vLLM's ``prompt_logprobs`` (what a user would score a corpus with instead)
* :mod:`asap_fast.bench.align`   the stage-1 alignment check vs difflib, cydifflib, RapidFuzz

Each takes a config dataclass, runs its providers side by side in one run, prints the table and
returns tidy rows (:mod:`asap_fast.bench.common`) that the caller may append to a CSV.
"""

# Names the command line offers before any measurement (and torch) is imported.
OPS_PROVIDERS = ("asap_fast", "asap_fast_tf32x3", "asap_fast_torch", "torch_eager", "torch_lce", "torch_lce_chunked")
OPS_DTYPES = ("float32", "bfloat16", "float16")
STAGE2_PROVIDERS = ("asap_fast", "reference", "backbone", "vllm")
