"""Measured effects of Selective Context's options on the bundled sample traces (docs/fidelity.md).

Sentence units, keep 0.5, the bundled demo scorer: per option pair, the share of sentence units
whose keep/drop decision agrees, and the mean kept fraction of tokens; then --match-ratio 0.5.
Run: python benchmarks/bench_selective_context.py [N_TRACES]   (from outside the checkout's
asap_fast, e.g. with the installed package)."""

from __future__ import annotations

import sys
import time

import numpy as np

from asap_fast.data import read_cot_traces
from asap_fast.methods.common import Target, prepare_row, thinking_tokens
from asap_fast.methods.selective_context import (
    SelectiveContextConfig,
    SelectiveContextStage,
    select_units,
    self_information,
    sentence_self_information,
    sentence_unit_ends,
    unit_information,
)
from asap_fast.stage2.fine import ScorerSpec


def main(n: int) -> None:
    import torch

    torch.set_num_threads(1)
    scorer = ScorerSpec(model=None).load(quiet=True)
    rows = [r for r in read_cot_traces() if "</think>" in r["generation"]][:n]
    agree = {"sum vs mean": [], "full vs sentence context": [], "lines vs original split": []}
    kept_tokens = {"default (mean, sentence, original)": [], "sum": [], "full context": []}
    t0 = time.time()
    used = []
    for record in rows:
        try:
            row = prepare_row(record)
        except Exception:
            continue
        text = row.thinking
        ends = sentence_unit_ends(text, "original")
        try:
            full_info = self_information(scorer, row.prefix, text)
        except ValueError:  # longer than the demo scorer's context
            continue
        sent_info = sentence_self_information(scorer, text)
        mean_sent = select_units(unit_information(sent_info, ends, "mean"), 0.5)
        sum_sent = select_units(unit_information(sent_info, ends, "sum"), 0.5)
        mean_full = select_units(unit_information(full_info, ends, "mean"), 0.5)
        agree["sum vs mean"].append(float((mean_sent == sum_sent).mean()))
        agree["full vs sentence context"].append(float((mean_sent == mean_full).mean()))
        lines = sentence_unit_ends(text, "lines")
        agree["lines vs original split"].append(len(lines) / len(ends))  # units per thinking, ratio
        used.append(record)
        before = thinking_tokens(scorer.tokenizer, row)
        starts = np.concatenate([[0], ends[:-1]])
        for name, kept in (("default (mean, sentence, original)", mean_sent), ("sum", sum_sent),
                           ("full context", mean_full)):
            pruned = "".join(text[a:b] for a, b, k in zip(starts, ends, kept) if k).strip()
            kept_tokens[name].append(len(scorer.tokenizer.encode(pruned)) / before)
    print(f"{len(agree['sum vs mean'])} traces, demo scorer, sentence units, keep 0.5, {time.time() - t0:.0f} s")
    for name, values in agree.items():
        label = "units (lines / original)" if "split" in name else "same decision"
        print(f"  {name}: {label} mean {np.mean(values):.3f} (min {np.min(values):.3f})")
    for name, values in kept_tokens.items():
        print(f"  kept tokens, {name}: mean {np.mean(values):.3f}")
    for unit in ("sentence", "token"):
        stage = SelectiveContextStage(scorer, SelectiveContextConfig(target=Target(ratio=0.5, match=True), unit=unit))
        outs = [o for o in stage.process(used) if not isinstance(o, Exception)]
        print(f"  --match-ratio 0.5, {unit} units: mean achieved {np.mean([o['achieved_ratio'] for o in outs]):.4f}"
              f" over {len(outs)} rows")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
