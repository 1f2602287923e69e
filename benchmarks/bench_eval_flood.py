"""Evaluation host side under hostile event floods (issue 21, items 10 and 12): what one flooding
sample costs the unsandboxed parent, and how late a neighbour's deadline is kept while samples flood.

Two measurements, each in a fresh Python process (peak RSS is per process), side by side for this
checkout (``asap_fast``) and, with ``--baseline-src DIR``, another source tree of the package (e.g.
the main before the fix: ``git archive <sha> asap_fast | tar -x -C DIR`` plus a built ``_core``):

- ``parent_rss``: one sample (``run_program``, no judge) writes ``--rss-lines`` event lines of
  ``--line-mib`` MiB, each a dict holding a list of ``{}`` (72 bytes of Python objects per 3 bytes of
  JSON); reported: the parent's peak RSS minus its RSS before the run (VmHWM - VmRSS), MiB.
- ``deadline_overshoot``: ``--flooders`` samples each write ``--lines`` lines of ``--line-mib``
  MiB of JSON integers (the costliest decode per byte that keeps nothing) while one more sample
  sleeps past its ``--deadline``; reported: how long after its deadline the sleeper was ended
  (``SandboxResult.wall_s - deadline``), and the same without flooders (the floor: the driver
  polls every 50 ms).

    python benchmarks/bench_eval_flood.py --baseline-src /tmp/main_src
    python benchmarks/bench_eval_flood.py --flooders 5 --line-mib 0.19 --lines 1200   # within the bounds (< 100,000 values a line)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import append_rows, make_row, print_table  # noqa: E402

def flood_program(kind: str, line_mib: float, lines: int) -> str:
    """A program writing ``lines`` lines of about ``line_mib`` MiB to every pipe it holds (one of
    them is the events channel)."""
    if kind == "dicts":  # {"ev":"x","a":[{},{},...{}]}: kept whole when no judge watches
        head, unit, tail = '{"ev":"x","a":[', "{},", "{}]}"
    else:  # [0,0,...,0]: not an event, decoded and dropped
        head, unit, tail = "[", "0,", "0]"
    reps = max(1, (int(line_mib * (1 << 20)) - len(head)) // len(unit))
    return (
        "import os, stat\n"
        f"line = {head!r}.encode() + {unit!r}.encode() * {reps} + {tail!r}.encode() + b'\\n'\n"
        "fds = []\n"
        "for fd in range(3, 32):\n"
        "    try:\n"
        "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
        "            fds.append(fd)\n"
        "    except OSError:\n"
        "        pass\n"
        f"for _ in range({lines}):\n"
        "    for fd in fds:\n"
        "        view = memoryview(line)\n"
        "        try:\n"
        "            while view:\n"
        "                view = view[os.write(fd, view):]\n"
        "        except OSError:\n"
        "            pass\n"
    )


def _rss_kib(field: str) -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise RuntimeError(field)


def child_parent_rss(args) -> dict:
    from asap_fast.evaluation.sandbox import SandboxLimits, run_program

    before = _rss_kib("VmRSS")
    res = run_program(flood_program("dicts", args.line_mib, args.rss_lines), timeout=args.deadline * 10,
                      limits=SandboxLimits())
    peak = _rss_kib("VmHWM")
    return {"rss_growth_mib": (peak - before) / 1024, "overflow": res.overflow,
            "malformed": getattr(res, "malformed", None), "events": len(res.events)}


def child_deadline(args) -> dict:
    from asap_fast.evaluation.sandbox import SandboxJob, SandboxLimits, run_job, run_jobs

    flood = flood_program("ints", args.line_mib, args.lines)
    jobs = [SandboxJob({"mode": "script", "program": flood, "run_name": "__main__"}, wall_s=args.deadline * 10)
            for _ in range(args.flooders)]
    sleeper = SandboxJob({"mode": "script", "program": "import time\ntime.sleep(600)\n", "run_name": "__main__"},
                         wall_s=args.deadline)
    results = run_jobs([sleeper, *jobs], lambda job: run_job(job, SandboxLimits()), workers=len(jobs) + 1)
    slept = results[0]
    if isinstance(slept, Exception):
        raise slept
    return {"overshoot_s": slept.wall_s - args.deadline, "timed_out": slept.timed_out,
            "flooders": [getattr(r, "overflow", repr(r)) for r in results[1:]]}


def run_child(which: str, src: str | None, args, flooders: int) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    # A source tree is imported through PYTHONPATH by the base interpreter: a virtual
    # environment's editable install would take precedence over it.
    python = getattr(sys, "_base_executable", sys.executable) if src else sys.executable
    argv = [python, str(Path(__file__).resolve()), "--child", which, "--line-mib", str(args.line_mib),
            "--lines", str(args.lines), "--rss-lines", str(args.rss_lines), "--deadline", str(args.deadline), "--flooders", str(flooders)]
    # Run outside the checkout, so that src (or the installed package) is what gets imported.
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{which} ({src or 'this checkout'}) failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", default=None, help="a source tree of asap_fast to compare with")
    parser.add_argument("--flooders", type=int, default=5)
    parser.add_argument("--line-mib", type=float, default=31.5)
    parser.add_argument("--lines", type=int, default=4)
    parser.add_argument("--rss-lines", type=int, default=2, help="lines the parent_rss flooder writes")
    parser.add_argument("--deadline", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-csv", action="store_true")
    parser.add_argument("--child", choices=["parent_rss", "deadline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "parent_rss":
        print(json.dumps(child_parent_rss(args)))
        return
    if args.child == "deadline":
        print(json.dumps(child_deadline(args)))
        return
    providers = [("asap_fast", None)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    device = torch.device("cpu")
    rows, table = [], []
    for name, src in providers:
        for _ in range(args.repeats):
            rss = run_child("parent_rss", src, args, 0)
            floor = run_child("deadline", src, args, 0)
            flooded = run_child("deadline", src, args, args.flooders)
            print(name, json.dumps(rss), json.dumps(floor), json.dumps(flooded)[:300], flush=True)
            shape = f"line={args.line_mib}MiB,lines={args.lines},rss_lines={args.rss_lines}"
            rows.append(make_row("eval_flood", name, shape, "-", "parent_rss_growth", "MiB",
                                 (rss["rss_growth_mib"],) * 3, device))
            rows.append(make_row("eval_flood", name, f"{shape},flooders=0", "-", "deadline_overshoot", "s",
                                 (floor["overshoot_s"],) * 3, device))
            rows.append(make_row("eval_flood", name, f"{shape},flooders={args.flooders}", "-", "deadline_overshoot",
                                 "s", (flooded["overshoot_s"],) * 3, device))
            table.append([name, f"{rss['rss_growth_mib']:.0f}", f"{floor['overshoot_s']:.3f}",
                          f"{flooded['overshoot_s']:.3f}"])
    print_table(["provider", "parent RSS growth, one flooder (MiB)", "overshoot, alone (s)",
                 f"overshoot, {args.flooders} flooders (s)"], table)
    if not args.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    main()
