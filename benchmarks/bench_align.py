"""Stage-1 alignment check on real traces: asap_fast vs difflib (the reference) and its peers.

Every engine runs the same reference scan (asap_fast.core.matching.align_steps_ref) over the same
simulated LLM compressions of the bundled traces (asap_fast/data/cot-traces.jsonl.gz); only the similarity function
differs. Reports time per corpus pass, section pairs/s, the speed ratio to every peer and how many
accept/reject decisions each engine flips relative to difflib.

With --adversarial, worst-case inputs instead: long random, repetitive, cyclic and near-copy
pairs, each timed for the C++ core and for difflib (RapidFuzz for the indel metric, which difflib
lacks) side by side, each run in its own subprocess under --timeout, results checked equal.

    python benchmarks/bench_align.py                 # all traces, 3 repeats
    python benchmarks/bench_align.py --limit 50 --repeats 1
    python benchmarks/bench_align.py --adversarial   # the worst-case table (about 10 minutes)
    python benchmarks/bench_align.py --adversarial --scale 0.1 --cases cyclic_reverse
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import random
import string
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    append_rows,
    device_name,
    git_sha,
    make_row,
    percentiles,
    print_table,
)

import asap_fast as af  # noqa: E402
from asap_fast.core.matching import align_steps_ref  # noqa: E402

from asap_fast.data import COT_TRACES as DEFAULT_TRACES, iter_jsonl  # noqa: E402


# The measurement lives in the package (asap_fast/bench/align.py, also `asap bench align`).
from asap_fast.bench.align import AlignConfig, count_comparisons, engines, load_pairs  # noqa: E402,F401
from asap_fast.bench.align import run as measure_traces  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Adversarial inputs: one case is an input family, an operation and the sizes it is run at.


def random_text(rng: random.Random, n: int, alphabet: str) -> str:
    return "".join(rng.choices(alphabet, k=n))


def real_thinking(n: int) -> str:
    """The thinking texts of the real traces, concatenated and repeated up to n characters."""
    parts, total = [], 0
    for record in iter_jsonl(DEFAULT_TRACES):
        try:
            think = af.parse_trace(record["generation"], require_code=False).think
        except af.TraceError:
            continue
        parts.append(think)
        total += len(think) + 2
        if total >= n:
            break
    text = "\n\n".join(parts)
    while len(text) < n:
        text = text + "\n\n" + text
    return text[:n]


def drop_words(text: str, rng: random.Random, rate: float) -> str:
    """A near-copy: every word kept, except a fraction `rate` dropped at random (paragraphs kept)."""
    return "\n\n".join(
        " ".join(w for w in paragraph.split(" ") if rng.random() >= rate) for paragraph in text.split("\n\n")
    )


def build_random_pair(n: int, rng: random.Random):
    return random_text(rng, n, string.ascii_lowercase), random_text(rng, n, string.ascii_lowercase)


def build_skewed_pair(n: int, rng: random.Random):
    # b takes 17% of its characters from letters a never uses, so quick_ratio is about 0.83: the
    # quick bounds pass a 0.6 threshold and the work is left to the LCS bound or the match.
    a = random_text(rng, n, string.ascii_lowercase)
    b = "".join(c.upper() if rng.random() < 0.17 else c for c in random_text(rng, n, string.ascii_lowercase))
    return a, b


def build_cjk_random_pair(n: int, rng: random.Random):
    # 3,000 distinct code points: at n = 1e5 none is popular (each occurs ~33 times, the limit is
    # n / 100 + 1), so every character seeds matches and difflib's longest-match search is dense.
    alphabet = "".join(chr(0x4E00 + k) for k in range(3000))
    return random_text(rng, n, alphabet), random_text(rng, n, alphabet)


def build_cyclic_reverse(n: int, rng: random.Random):
    # 100 distinct characters cycled: each occurs n / 100 times, just under difflib's popularity
    # limit, and the reverse shares no two-character run with it, so every block is one character
    # and the recursion is as deep as difflib's algorithm allows (cubic in n).
    cycle = "".join(chr(0x4E00 + k) for k in range(100))
    a = (cycle * (n // 100 + 1))[:n]
    return a, a[::-1]


def build_repetitive_pair(n: int, rng: random.Random):
    # A 2,000-character stretch of real thinking repeated (a model stuck in a loop), against the
    # same with 1% of its words dropped.
    unit = real_thinking(2000).replace("\n\n", "\n")
    a = (unit * (n // len(unit) + 1))[:n]
    return a, drop_words(a, rng, 0.01)


def build_near_copy_sections(n: int, rng: random.Random):
    # Real thinking, paragraphs kept, 2% of the words dropped: a faithful long compression.
    a = real_thinking(n)
    return a, drop_words(a, rng, 0.02)


def build_near_copy_one_section(n: int, rng: random.Random):
    a, b = build_near_copy_sections(n, rng)
    return a.replace("\n\n", "\n"), b.replace("\n\n", "\n")


def build_near_copy_middle(n: int, rng: random.Random):
    # The same long text with one sentence in the middle rewritten.
    a = real_thinking(n).replace("\n\n", "\n")
    return a, a[: n // 2] + " This sentence was rewritten. " + a[n // 2 + 100 :]


def build_wide_then_tiny(n: int, rng: random.Random):
    # One section of n distinct code points, then n / 5 two-character sections, on both sides:
    # per-section tables sized by the widest section would be cleared for every tiny one.
    wide = "".join(chr(0x4E00 + k) for k in range(min(n, 20_000))) + "".join(
        chr(0x20000 + k) for k in range(max(0, n - 20_000)))
    text = wide + "\n\n" + "\n\n".join("ab" for _ in range(n // 5))
    return text, text


# name -> (description, builder, operation, default sizes)
ADVERSARIAL_CASES = {
    "random_cutoff": ("two random a-z strings, similarity(score_cutoff=0.5)", build_random_pair,
                      "similarity_cutoff", (1_000_000,)),
    "skewed_one_section": ("align_steps, one section each side, quick_ratio ~0.83", build_skewed_pair,
                           "align", (100_000, 300_000, 1_000_000)),
    "random_indel": ("two random a-z strings, similarity(metric='indel')", build_random_pair,
                     "indel", (1_000_000,)),
    "cyclic_reverse": ("100-character cycle vs its reverse, similarity()", build_cyclic_reverse,
                       "similarity", (10_000, 20_000, 100_000)),
    "random_full": ("two random a-z strings, similarity() (no cutoff)", build_random_pair,
                    "similarity", (1_000_000,)),
    "cjk_random": ("two random strings over 3,000 CJK characters, similarity()", build_cjk_random_pair,
                   "similarity", (20_000, 100_000)),
    "repetitive": ("2,000 characters of real thinking repeated vs 1% words dropped, align_steps",
                   build_repetitive_pair, "align", (1_000_000,)),
    "near_copy_sections": ("real thinking vs 2% words dropped, paragraphs kept, align_steps",
                           build_near_copy_sections, "align", (1_000_000,)),
    "near_copy_one_section": ("the same as one section each side, align_steps", build_near_copy_one_section,
                              "align", (100_000, 1_000_000)),
    "near_copy_one_section_ratio": ("the same, similarity() (no cutoff)", build_near_copy_one_section,
                                    "similarity", (100_000, 1_000_000)),
    "near_copy_one_section_indel": ("the same, similarity(metric='indel')", build_near_copy_one_section,
                                    "indel", (100_000, 1_000_000)),
    "wide_then_tiny": ("a section of n distinct characters, then n/5 two-character sections, align_steps",
                       build_wide_then_tiny, "align", (100_000,)),
    "near_copy_middle_indel": ("one long section with one sentence rewritten, similarity(metric='indel')",
                               build_near_copy_middle, "indel", (1_000_000,)),
}

CUTOFF = 0.5


def adversarial_call(op: str, engine: str, a: str, b: str):
    """The operation on one pair by one engine; the return values of both engines must be equal."""
    if engine == "asap_fast":
        if op == "similarity_cutoff":
            return af.similarity(a, b, score_cutoff=CUTOFF)
        if op == "similarity":
            return af.similarity(a, b)
        if op == "indel":
            return af.similarity(a, b, "indel")
        return af.align_steps(a, b)
    if op == "indel":
        from rapidfuzz.distance import Indel

        return Indel.normalized_similarity(a, b)
    if op == "similarity_cutoff":
        # difflib's own way to apply a cutoff (difflib.get_close_matches): its cheap upper bounds
        # first, the full ratio only when they pass.
        matcher = difflib.SequenceMatcher(None, a, b)
        if matcher.real_quick_ratio() >= CUTOFF and matcher.quick_ratio() >= CUTOFF:
            ratio = matcher.ratio()
            return ratio if ratio >= CUTOFF else 0.0
        return 0.0
    if op == "similarity":
        return difflib.SequenceMatcher(None, a, b).ratio()
    return align_steps_ref(a, b)


def peer_of(op: str) -> str:
    return "rapidfuzz" if op == "indel" else "difflib"


def adversarial_worker(case: str, n: int, engine: str, repeats: int, seed: int) -> None:
    """Runs in a subprocess: builds the pair, times the call, prints one JSON line."""
    _, build, op, _ = ADVERSARIAL_CASES[case]
    a, b = build(n, random.Random(seed))
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        begin, cpu_begin = time.perf_counter(), time.process_time()
        result = adversarial_call(op, engine, a, b)
        times.append(time.perf_counter() - begin)
        cpu_times.append(time.process_time() - cpu_begin)
    print(json.dumps({"times": times, "cpu_times": cpu_times, "result": result}))


def run_worker(case: str, n: int, engine: str, repeats: int, seed: int, timeout: float):
    """(wall times, CPU times, result) from a fresh process, or Nones when it ran past timeout.
    Every call is single-threaded, so on a shared machine its CPU time is the steadier figure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--adversarial-worker", case, str(n), engine,
           "--repeats", str(repeats), "--seed", str(seed)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None, None, None
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{case} n={n} {engine} failed:\n{error.stderr}") from error
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["times"], out["cpu_times"], out["result"]


def machine_line() -> str:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "absent"

    return (f"{device_name(torch.device('cpu'))}; Python {platform.python_version()}; asap_fast {af.__version__} "
            f"(git {git_sha()}); rapidfuzz {version('rapidfuzz')}")


def adversarial(args) -> None:
    cases = args.cases or list(ADVERSARIAL_CASES)
    repeats = args.repeats or 1
    cpu = torch.device("cpu")
    with open("/proc/loadavg", encoding="utf-8") as f:
        load = f.read().split()[0]
    print(machine_line())
    print(f"each run in its own process, limit {args.timeout:.0f} s; time of the call only, p50 of {repeats}; "
          f"load average at the start {load}\n")
    rows, table = [], []
    for case in cases:
        _, _, op, sizes = ADVERSARIAL_CASES[case]
        peer = peer_of(op)
        for size in sizes:
            n = max(1, int(size * args.scale))
            shape = f"case={case};n={n}"
            runs = {provider: (run_worker(case, n, provider, repeats, args.seed, args.timeout)
                               if not args.only or provider in args.only else (None, None, None))
                    for provider in ("asap_fast", peer)}
            cells = [case, f"{n:,}"]
            medians = {}
            for provider, (times, cpu_times, _) in runs.items():
                if args.only and provider not in args.only:
                    cells += ["-", "-"]
                    continue
                if times is None:
                    rows.append(make_row("align_adversarial", provider, shape, "str", "time_at_least", "s",
                                         (args.timeout,) * 3, cpu))
                    cells += [f">{args.timeout:.0f}", "-"]
                    continue
                stats, cpu_stats = percentiles(times), percentiles(cpu_times)
                rows.append(make_row("align_adversarial", provider, shape, "str", "time", "s", stats, cpu))
                rows.append(make_row("align_adversarial", provider, shape, "str", "cpu_time", "s", cpu_stats, cpu))
                medians[provider] = (stats[1], cpu_stats[1])
                cells += [f"{stats[1]:.4f}", f"{cpu_stats[1]:.4f}"]
            cells.append(peer)
            ours, theirs = runs["asap_fast"], runs[peer]
            if "asap_fast" in medians and peer in medians:
                cells.append(f"{medians[peer][1] / max(medians['asap_fast'][1], 1e-6):,.1f}x")
                same = ours[2] == theirs[2] if op != "indel" else abs(ours[2] - theirs[2]) < 1e-12
                cells.append("yes" if same else "NO")
            elif "asap_fast" in medians and not (args.only and peer not in args.only):
                cells += [f">{args.timeout / max(medians['asap_fast'][0], 1e-6):,.0f}x", "-"]
            else:
                cells += ["-", "-"]
            table.append(cells)
            print("  ".join(cells), flush=True)
    print()
    print_table(["case", "n", "asap_fast s", "cpu s", "peer s", "cpu s", "peer", "peer / asap_fast (cpu)",
                 "same result"], table)
    print("\ncases:")
    for case in cases:
        print(f"  {case}: {ADVERSARIAL_CASES[case][0]}")
    append_rows(rows, args.csv)
    print(f"Rows appended to {args.csv}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="JSONL with a generation field")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N usable traces")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes per engine (default 3 on the traces, 1 per adversarial case)")
    parser.add_argument("--workers", type=int, default=2, help="threads for the batch engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("results.csv"))
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these engines (names as printed; with --adversarial: asap_fast, difflib, "
                             "rapidfuzz)")
    parser.add_argument("--adversarial", action="store_true", help="the worst-case inputs instead of the traces")
    parser.add_argument("--cases", nargs="*", choices=sorted(ADVERSARIAL_CASES), default=None,
                        help="adversarial cases to run (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every adversarial size by this")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one adversarial run may take before it is reported as '>limit'")
    parser.add_argument("--adversarial-worker", nargs=3, metavar=("CASE", "N", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.adversarial_worker:
        case, n, engine = args.adversarial_worker
        adversarial_worker(case, int(n), engine, args.repeats or 1, args.seed)
        return
    if args.adversarial:
        adversarial(args)
        return
    args.repeats = args.repeats or 3

    rows = measure_traces(AlignConfig(traces=args.traces, limit=args.limit, repeats=args.repeats,
                                      workers=args.workers, seed=args.seed, only=args.only))
    append_rows(rows, args.csv)
    print(f"Rows appended to {args.csv}")


if __name__ == "__main__":
    main()
