"""The work of `asap split`: parse each row's generation and split its thinking into steps (the
C++ core over a corpus)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asap_fast.core.errors import RowError
from asap_fast.core.traces import TraceError, parse_trace, split_steps_batch

TASKS = ("auto", "code", "math")


@dataclass(frozen=True)
class SplitStage:
    """task: "auto" (each row's ``kind``, code when absent), "code" or "math"; code traces need a
    python block after </think>. workers: C++ threads (0 = all cores; cannot change the output)."""

    task: str = "auto"
    workers: int = 0

    name = "split"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    def manifest(self) -> dict:
        return {"task": self.task}

    def process(self, records: Sequence[dict]) -> list:
        results, thinks = [], []
        for record in records:
            kind = record.get("kind", "code") if self.task == "auto" else self.task
            try:
                trace = parse_trace(record["generation"], require_code=kind == "code")
            except TraceError as e:
                results.append(RowError(str(e)))
                continue
            results.append({**record, "think": trace.think, "solution": trace.answer, "code": trace.code})
            thinks.append(trace.think)
        steps = iter(split_steps_batch(thinks, workers=self.workers))
        for result in results:
            if isinstance(result, dict):
                result["steps"] = next(steps)
                result["n_steps"] = len(result["steps"])
        return results
