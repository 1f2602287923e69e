"""``asap merge``."""

from __future__ import annotations

import sys

from asap_fast.cli.common import PATH_HELP, subparser


def add(subparsers) -> None:
    p = subparser(
        subparsers, "merge",
        help="concatenate the outputs of `--shard i/n` runs into one corpus, in shard order",
        description=(
            "Check that SHARD_OUT... are the finished outputs of shards 0/n .. n-1/n of one input written with "
            "the same options (each run's manifest and progress file record its shard, the input, the options, "
            "the input's row count and whether it finished), then write OUT as their concatenation in shard "
            "order, and OUT's rejects file as the concatenation of theirs. The result is exactly what one "
            "unsharded run writes (byte for byte for JSON Lines). Incomplete, missing or mismatched shards are "
            "refused."
        ),
        example="asap merge out/fine.jsonl out/fine.0.jsonl out/fine.1.jsonl",
    )
    p.add_argument("output", metavar="OUT", help=PATH_HELP)
    p.add_argument("shards", metavar="SHARD_OUT", nargs="+", help="the shard outputs, in shard order")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.pipeline.shards import merge_shards

    result = merge_shards(args.output, args.shards, overwrite=args.overwrite)
    if not args.quiet:
        print(f"asap merge: {result['shards']} shards, {result['rows']} rows and {result['rejects']} rejects "
              f"into {args.output}", file=sys.stderr)
    return 0
