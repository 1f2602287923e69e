"""Ray Data scale-out for a corpus run (``--ray`` on ``asap fine`` and ``asap compress``; the ``ray`` extra).

The corpus is still read, committed and resumed by :func:`~asap_fast.pipeline.engine.run_corpus`
on the driver, in chunks of ``--ray-chunk`` rows; each chunk is scored by a Ray Data pipeline
(``map_batches`` over an actor pool holding one loaded scorer per actor: one actor per GPU, or
``--ray-actors N`` CPU actors). Results come back in input order, so the output (and resume after a
kill) is exactly that of a run without Ray. Rows travel pickled, so any field type the input has
survives. Connects to a running cluster when ``RAY_ADDRESS`` is set, else starts a local Ray
runtime. Known cost: each chunk is one Ray Data execution, so its actor pool (and the model) is
loaded once per chunk; keep ``--ray-chunk`` large for big models.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable

from asap_fast.core.errors import RowError

__all__ = ["RayProcessor"]


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray Data: pip install 'asap-fast[ray]' (or pip install 'ray[data]')") from None
    return ray


class _ScorerActor:
    """A Ray Data actor: loads the scorer once, then runs a stage's ``process`` over batches of
    pickled records. ``make()`` builds the stage; it is pickled to the actor."""

    def __init__(self, make: Callable[[], object], threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.stage = make()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [pickle.loads(b) for b in batch["row"]]
        before = getattr(self.stage, "tokens_scored", 0)
        results = list(self.stage.process(rows))  # consumed before the token count is read
        tokens = getattr(self.stage, "tokens_scored", 0) - before
        # a reject travels as its message and the stage it names (`asap compress` rejects name theirs)
        out = [pickle.dumps(("error", (str(r), r.stage)) if isinstance(r, RowError) else ("ok", r)) for r in results]
        return {"idx": np.asarray(batch["idx"]), "out": np.array(out, dtype=object),
                "tokens": np.full(len(out), 0, dtype=np.int64) if not out else
                np.array([tokens] + [0] * (len(out) - 1), dtype=np.int64)}


class RayProcessor:
    """A ``run_corpus`` process function that sends each chunk of rows through a Ray Data
    ``map_batches`` over an actor pool, and returns the results in input order.

    make:    picklable ``make() -> stage`` with ``stage.process(records)`` (e.g. a functools.partial
             of asap_fast.stage2.fine.make_fine_stage)
    actors:  CPU actors; None = one per GPU of the cluster (1 CPU actor when it has none)
    batch:   rows per actor call
    """

    def __init__(self, make: Callable[[], object], *, actors: int | None = None, batch: int = 64, device: str | None = None):
        ray = _require_ray()
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            kwargs = {"address": address} if address else {}
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False, **kwargs)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        use_gpu = actors is None and gpus > 0 and (device is None or device.startswith("cuda"))
        self.actors = gpus if use_gpu else max(1, actors or 1)
        self.num_gpus = 1 if use_gpu else 0
        # CPU actors compute with the driver's torch thread count, the one a plain run records in
        # its manifest: scores depend on it in the last bits, and a Ray run writes a plain run's
        # bytes. Ray schedules them by their share of the CPUs (they may oversubscribe).
        import torch

        self.threads = None if use_gpu else torch.get_num_threads()
        self.cpus_per_actor = 0 if use_gpu else max(1, cpus // self.actors)
        self.make, self.batch = make, batch
        self.tokens_scored = 0
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        self.ray = ray

    def __call__(self, rows) -> list:
        if not rows:
            return []
        ds = self.ray.data.from_items([{"idx": i, "row": pickle.dumps(r)} for i, r in enumerate(rows)])
        ds = ds.map_batches(
            _ScorerActor,
            fn_constructor_args=(self.make, self.threads),
            batch_size=self.batch,
            batch_format="numpy",
            concurrency=self.actors,
            num_gpus=self.num_gpus,
            num_cpus=self.cpus_per_actor,
        )
        results: list = [None] * len(rows)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for idx, out, tokens in zip(batch["idx"], batch["out"], batch["tokens"]):
                kind, value = pickle.loads(out)
                results[int(idx)] = RowError(*value) if kind == "error" else value
                self.tokens_scored += int(tokens)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"Ray returned no result for {len(missing)} rows")
        return results
