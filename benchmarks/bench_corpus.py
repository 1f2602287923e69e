"""End-to-end `asap fine` throughput on a corpus, next to the reference's per-trace loop.

    python benchmarks/bench_corpus.py [--traces N] [--max-chars C] [--ray]

Measures, on the first N traces of the bundled traces (asap_fast/data/cot-traces.jsonl.gz) (thinking cut to C characters)
with a small random Qwen2-style model on disk:
  pipeline     `asap fine` in process (read, score, prune, write, commit): traces/s, trace tokens/s
  parts        tokenization (encode_trace), scorer forward+gather (score_batch), pruning
               (prune_steps_result), IO (run_corpus with an identity stage) -- where the time goes
  reference    the reference's loop restated (bench_stage2.reference_stage2: full logits, log_softmax,
               prefix re-tokenization, prune_steps_ref), one trace at a time
  ray          --ray with 1 and 2 CPU actors (each with cores/actors threads), when ray is installed
Rows go to benchmarks/results.csv (op "corpus_fine"); "pipeline/scorer" is the pipeline's time over
the scorer's own time on the same traces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asap_fast.data import COT_TRACES as DATA  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--traces", type=int, default=48)
    p.add_argument("--max-chars", type=int, default=12000, help="thinking cut to this many characters")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--ray", action="store_true", help="also time --ray with 1 and 2 CPU actors")
    p.add_argument("--csv", type=Path, default=_common.RESULTS_CSV)
    args = p.parse_args(argv)

    import torch
    from bench_stage2 import reference_stage2

    from asap_fast.core.traces import TraceError, parse_trace
    from asap_fast.pipeline.engine import RunOptions, run_corpus
    from asap_fast.pipeline.records import read_rows
    from asap_fast.cli import main as asap_main
    from asap_fast.stage2.fine import FineStage, PruneConfig
    from asap_fast.stage2.pruning import prune_steps_result
    from asap_fast.stage2.surprisal import SurprisalScorer, encode_trace
    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer, trace_case

    tmp = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    records = []
    for row in read_rows(args.data):
        if row.record is None:
            continue
        try:
            _, steps = trace_case(row.record, max_chars=args.max_chars)
            answer = parse_trace(row.record["generation"], require_code=False).answer
        except TraceError:
            continue
        # the thinking cut to --max-chars; "math" so that a trace without a code block is kept
        records.append({**row.record, "kind": "math",
                        "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>\n" + answer})
        if len(records) >= args.traces:
            break
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    model_dir = tmp / "model"
    tokenizer = tiny_tokenizer(vocab_size=args.vocab)
    model = tiny_causal_lm(len(tokenizer), hidden=args.hidden, layers=args.layers, max_position_embeddings=65536, seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    device = torch.device("cpu")

    def fine(out, *extra):
        code = asap_main(["fine", str(src), str(out), "--model", str(model_dir), "--ratio", str(args.ratio),
                          "--quiet", *extra])
        assert code == 0, f"asap fine exited {code}"

    results: dict[str, float] = {}
    # pipeline
    fine(tmp / "warm.jsonl")  # warm-up (model load, allocator)
    t = time.perf_counter()
    fine(tmp / "fine.jsonl")
    results["pipeline"] = time.perf_counter() - t
    out_rows = [json.loads(x) for x in (tmp / "fine.jsonl").read_text().splitlines()]
    tokens = sum(r["tokens_before"] for r in out_rows)
    n = len(out_rows)

    # parts, with one loaded scorer
    scorer = SurprisalScorer.from_pretrained(str(model_dir), device="cpu")
    stage = FineStage(scorer, PruneConfig(budget=None, ratio=args.ratio))
    rows = [r for r in read_rows(src)]
    prepared = []
    t = time.perf_counter()
    for r in rows:
        try:
            prepared.append(stage._prepare(r.record))
        except Exception:
            pass
    results["prepare(parse+split)"] = time.perf_counter() - t
    t = time.perf_counter()
    for prefix, steps, _ in prepared:
        encode_trace(scorer.tokenizer, prefix, steps)
    results["tokenize"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = [scorer.score(prefix, steps) for prefix, steps, _ in prepared]
    results["scorer(one trace per pass)"] = time.perf_counter() - t
    # what `asap fine` did before it scored each trace alone: traces packed into padded batches
    # (scores then depend on which traces share a batch, by float rounding)
    t = time.perf_counter()
    scorer.score_batch([(prefix, steps) for prefix, steps, _ in prepared])
    results["scorer(packed batches)"] = time.perf_counter() - t
    t = time.perf_counter()
    for (prefix, steps, _), s in zip(prepared, scores):
        prune_steps_result(steps, s, scorer.tokenizer, ratio=args.ratio)
    results["prune"] = time.perf_counter() - t
    t = time.perf_counter()
    run_corpus(src, tmp / "io.jsonl", stage="io", process=list, options=RunOptions(quiet=True))
    results["io(read+write+commit)"] = time.perf_counter() - t

    # the reference loop
    hf_model = scorer.model
    t = time.perf_counter()
    with torch.inference_mode():
        for prefix, steps, _ in prepared:
            reference_stage2(hf_model, scorer.tokenizer, prefix, steps, args.ratio)
    results["reference loop"] = time.perf_counter() - t

    if args.ray:
        try:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
            for actors in (1, 2):
                out = tmp / f"ray{actors}.jsonl"
                t = time.perf_counter()
                fine(out, "--ray", "--ray-actors", str(actors), "--batch", "8")
                results[f"ray {actors} actor(s)"] = time.perf_counter() - t
            ray.shutdown()
        except ImportError:
            print("ray not installed: skipping the Ray rows", file=sys.stderr)

    shape = f"traces={n},tokens={tokens},hidden={args.hidden},layers={args.layers},vocab={len(tokenizer)}"
    table, csv_rows = [], []
    for name, seconds in results.items():
        table.append([name, f"{seconds:.3f}", f"{n / seconds:.2f}", f"{tokens / seconds:,.0f}"])
        for metric, unit, value in (("seconds", "s", seconds), ("traces_per_s", "1/s", n / seconds),
                                    ("tokens_per_s", "tok/s", tokens / seconds)):
            csv_rows.append(_common.make_row("corpus_fine", name, shape, "float32", metric, unit,
                                             (value, value, value), device))
    ratio = results["pipeline"] / results["scorer(one trace per pass)"]
    csv_rows.append(_common.make_row("corpus_fine", "pipeline/scorer", shape, "float32", "ratio", "x",
                                     (ratio, ratio, ratio), device))
    _common.print_table(["what", "seconds", "traces/s", "trace tokens/s"], table)
    packing = results["scorer(one trace per pass)"] / results["scorer(packed batches)"]
    print(f"{n} traces, {tokens:,} trace tokens; pipeline / scorer time = {ratio:.2f}; "
          f"one trace per pass / packed batches = {packing:.2f}; "
          f"reference loop / pipeline = {results['reference loop'] / results['pipeline']:.2f}")
    _common.append_rows(csv_rows, args.csv)


if __name__ == "__main__":
    main()
