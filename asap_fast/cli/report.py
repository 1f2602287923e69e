"""``asap report``."""

from __future__ import annotations

import sys
from pathlib import Path

from asap_fast.cli.common import PATH_HELP, subparser


def add(subparsers) -> None:
    p = subparser(
        subparsers, "report",
        help="write a self-contained HTML page about a stage-2 corpus (statistics, plots, pruned steps)",
        description=(
            "Read IN (rows written by `asap fine` or `asap compress`) in one streaming pass and write OUT.html: "
            "corpus statistics (tokens before / after, compression ratio, steps kept), inline SVG plots "
            "(per-trace compression ratio, tokens before vs after, surprisal of kept vs pruned steps) and the "
            "first --max-traces traces step by step, coloured by first-token surprisal with the pruned steps "
            "struck through. The page needs no network: inline CSS and SVG, no JavaScript. Rows without the "
            "stage-2 fields are counted and skipped. With several inputs (outputs of `asap compress --method ...` "
            "or `asap fine` on the same traces) the page compares them: compression per method, and the first "
            "--max-traces traces of the first input side by side, with what each method removed struck through "
            "(traces matched by id)."
        ),
        example=("asap report out/fine.jsonl out/report.html --max-traces 20\n"
                 "asap report out/asap.jsonl out/spirit.jsonl out/llmlingua2.jsonl out/compare.html"),
    )
    p.add_argument("input", metavar="IN", nargs="+", help=PATH_HELP + "; several to compare methods")
    p.add_argument("output", metavar="OUT.html", help="the HTML file to write (its folder is created)")
    p.add_argument("--max-traces", type=int, default=50, metavar="N",
                   help="traces shown step by step, the first N with stage-2 fields (default: 50)")
    p.add_argument("--title", help="page title (default: 'ASAP report: ' + the input's name)")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.report.html import write_report

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if len(args.input) > 1:
        return run_comparison(args)
    args.input = args.input[0]
    stats = write_report(args.input, args.output, max_traces=args.max_traces, title=args.title)
    s = stats.summary()
    skipped = f", {s['rows_skipped']:,} skipped" if s["rows_skipped"] else ""
    print(f"asap report: {s['rows']:,} traces{skipped}, compression {s['compression_ratio']:.3f}", file=sys.stderr)
    print(f"wrote {Path(args.output).resolve()}")
    return 0


def run_comparison(args) -> int:
    from asap_fast.report.compare import write_comparison

    stats = write_comparison(args.input, args.output, max_traces=args.max_traces, title=args.title)
    for s in stats:
        d = s.summary()
        lacks = f", lacks {d['rows_missing']:,}" if d["rows_missing"] else ""
        print(f"asap report: {d['label']}: {d['rows']:,} traces{lacks}; on the {d['shared_rows']:,} shared: "
              f"compression {d['shared_compression_ratio']:.3f}, mean achieved ratio {d['mean_achieved_ratio']:.3f}",
              file=sys.stderr)
    print(f"wrote {Path(args.output).resolve()}")
    return 0
