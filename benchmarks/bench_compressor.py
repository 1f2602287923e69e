"""`asap_fast.Compressor` under `datasets.Dataset.map` next to `asap fine` on the same rows.

    python benchmarks/bench_compressor.py [--traces N] [--max-chars C] [--method asap] [--repeats R]

On the first N bundled real traces (thinking cut to C characters, so the demo scorer's context
holds them), with the bundled demo scorer, in one process and one torch thread count:
  cli              `asap fine IN OUT --ratio R` (or `asap compress --method M`) in process: scorer
                   load, read, score, prune, write, commit
  load             building a Compressor and loading its scorer (once per process / actor)
  call             compressor(batch) on dict-of-lists batches of --batch rows, scorer loaded
  datasets_map     Dataset.map(compressor, batched=True, features=...), scorer loaded
Every provider gives the same rows (checked after timing). One untimed CLI run warms the process up. Rows go to benchmarks/results.csv (op
"compressor"); "cli/datasets_map" is the CLI's time over datasets.map's plus the load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", type=int, default=32)
    p.add_argument("--max-chars", type=int, default=6000, help="thinking cut to this many characters")
    p.add_argument("--method", default="asap")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=8, help="rows per batch (datasets.map and the CLI)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--csv", type=Path, default=_common.RESULTS_CSV)
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)

    import datasets
    import torch

    import asap_fast as af
    from asap_fast.cli import main as asap_main
    from asap_fast.core.traces import TraceError, parse_trace
    from asap_fast.data import read_cot_traces
    from asap_fast.testing import trace_case

    datasets.disable_progress_bars()
    records = []
    for record in read_cot_traces():
        try:
            _, steps = trace_case(record, max_chars=args.max_chars)
            answer = parse_trace(record["generation"], require_code=False).answer
        except TraceError:
            continue
        records.append({"id": record["id"], "kind": "math", "prompt": record["prompt"],
                        "generation": "<think>\n" + "\n\n".join(steps) + "\n</think>\n" + answer})
        if len(records) >= args.traces:
            break
    tmp = Path(tempfile.mkdtemp(prefix="bench_compressor_"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    if args.method == "asap":
        cli_args = ["fine", str(src), None, "--ratio", str(args.ratio)]
    else:
        cli_args = ["compress", str(src), None, "--method", args.method, "--ratio", str(args.ratio)]

    def run_cli(k: int) -> Path:
        out = tmp / f"cli{k}.jsonl"
        argv = [out.as_posix() if a is None else a for a in cli_args]
        assert asap_main([*argv, "--batch", str(args.batch), "--quiet"]) == 0
        return out

    samples: dict[str, list[float]] = {"cli": [], "load": [], "call": [], "datasets_map": []}
    ds = datasets.Dataset.from_list(records)
    run_cli(-1)  # warm-up, untimed: the first forward passes of a process are slower
    for k in range(args.repeats):
        start = time.perf_counter()
        out = run_cli(k)
        samples["cli"].append(time.perf_counter() - start)
        start = time.perf_counter()
        compressor = af.Compressor(args.method, ratio=args.ratio).load()
        samples["load"].append(time.perf_counter() - start)
        start = time.perf_counter()
        called = [compressor({name: [r[name] for r in records[i:i + args.batch]] for name in records[0]})
                  for i in range(0, len(records), args.batch)]
        samples["call"].append(time.perf_counter() - start)
        start = time.perf_counter()
        mapped = ds.map(compressor, batched=True, batch_size=args.batch, features=compressor.features(ds.features),
                        load_from_cache_file=False, keep_in_memory=True)
        samples["datasets_map"].append(time.perf_counter() - start)
    # the same rows from every provider (what the tests check in full)
    cli_rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    mapped_rows = {r["id"]: r for r in mapped.to_list() if r["reject"] is None}
    called_ids = {i for batch in called for i, reject in zip(batch["id"], batch["reject"]) if reject is None}
    assert set(cli_rows) == set(mapped_rows) == called_ids
    assert all(mapped_rows[i]["pruned_think"] == cli_rows[i]["pruned_think"] for i in cli_rows)

    n = len(records)
    shape = f"method={args.method},traces={n},max_chars={args.max_chars},batch={args.batch}"
    device = torch.device("cpu")
    table, csv_rows = [], []
    for name, times in samples.items():
        p20, p50, p80 = _common.percentiles(times)
        rate = "" if name == "load" else f"{n / p50:.2f}"
        table.append([name, f"{p50:.3f}", rate])
        csv_rows.append(_common.make_row("compressor", name, shape, "float32", "time", "s", (p20, p50, p80), device))
    cli_p50 = _common.percentiles(samples["cli"])[1]
    with_load = _common.percentiles(samples["datasets_map"])[1] + _common.percentiles(samples["load"])[1]
    ratio = cli_p50 / with_load
    table.append(["cli / (load + datasets_map)", f"{ratio:.2f}x", ""])
    csv_rows.append(_common.make_row("compressor", "cli/(load+datasets_map)", shape, "float32", "ratio", "x",
                                     (ratio, ratio, ratio), device))
    print(f"{n} traces, {args.method}, ratio {args.ratio}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats (p50)")
    _common.print_table(["provider", "p50 s", "rows/s"], table)
    if not args.no_csv:
        _common.append_rows(csv_rows, args.csv)


if __name__ == "__main__":
    main()
