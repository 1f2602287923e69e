"""The trusted parent against a hostile sample's events (issue 21, items 10-12): what one sample
writes on its events channel costs the parent a bounded amount of memory and time, and a sample's
malformed output is failed as such. Each flood here stays within a few hundred MiB even on the
unbounded parent that these tests replaced (they failed there)."""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest
from test_eval_sandbox_attacks import WRONG
from test_eval_sandbox_attacks import _score as _attack_score

from asap_fast.evaluation import SandboxJob, SandboxLimits, run_job, run_jobs
from asap_fast.evaluation.sandbox import run_program
from asap_fast.evaluation.sandbox.protocol import (
    EVENT_DEPTH_MAX,
    EventFlood,
    MalformedEvent,
    check_event_shape,
)

# The parent's documented per-sample memory bound (docs/evaluation.md) and deadline bound.
PARENT_MIB_PER_SAMPLE = 64
DEADLINE_OVERSHOOT_S = 0.5


def flood(line_expr: str, lines: int) -> str:
    return (
        "import os, stat\n"
        f"_line = ({line_expr}) + b'\\n'\n"
        "_fds = []\n"
        "try:\n"  # every descriptor it holds: the channel's number depends on the test process's open files
        "    _held = [int(f) for f in os.listdir('/proc/self/fd') if int(f) > 2]\n"
        "except OSError:\n"
        "    _held = range(3, 1024)\n"
        "for _fd in _held:\n"
        "    try:\n"
        "        if stat.S_ISFIFO(os.fstat(_fd).st_mode):\n"
        "            _fds.append(_fd)\n"
        "    except OSError:\n"
        "        pass\n"
        f"for _ in range({lines}):\n"
        "    for _fd in _fds:\n"
        "        _view = memoryview(_line)\n"
        "        try:\n"
        "            while _view:\n"
        "                _view = _view[os.write(_fd, _view):]\n"
        "        except OSError:\n"
        "            pass\n"
    )


def _score(bench_name: str, codes: list[str], timeout: float = 20.0):
    return _attack_score(bench_name, codes, workers=len(codes), timeout=timeout)


# ------------------------------------------------------------------------ the shape check


def _reference_shape(value, depth=0) -> tuple[int, int]:
    """(structural tokens: brackets opened + commas + colons, deepest nesting) of a decoded value."""
    if isinstance(value, list):
        counts = [_reference_shape(v, depth + 1) for v in value]
        return 1 + max(len(value) - 1, 0) + sum(c for c, _ in counts), max([depth + 1, *(d for _, d in counts)])
    if isinstance(value, dict):
        counts = [_reference_shape(v, depth + 1) for v in value.values()]
        return (1 + max(len(value) - 1, 0) + len(value) + sum(c for c, _ in counts),
                max([depth + 1, *(d for _, d in counts)]))
    return 0, depth


def _random_value(rng: random.Random, depth: int):
    kind = rng.random()
    if depth > 6 or kind < 0.35:
        return rng.choice([0, -3, 1.5, True, None, "".join(rng.choice('[]{},:"\\ab\u00e9') for _ in range(rng.randint(0, 6)))])
    if kind < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {f"k{i}{rng.choice('[]{},:')}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_event_shape_is_counted_like_the_decoded_value():
    """Fuzzer: the bounds are checked on the bytes, strings full of brackets and commas included,
    exactly as the decoded value nests and counts (never on what the text inside strings says)."""
    rng = random.Random(2126)
    checked = {"within": 0, "deep": 0, "flood": 0}
    for _ in range(3000):
        value = _random_value(rng, 0)
        raw = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        tokens, depth = _reference_shape(value)
        depth_max, values_max = rng.randint(1, 10), rng.randint(2, 60)
        if depth > depth_max or tokens >= values_max:
            with pytest.raises((MalformedEvent, EventFlood)) as caught:
                check_event_shape(raw, values_max, depth_max)
            if depth <= depth_max:
                assert caught.type is EventFlood, (raw, depth_max, values_max)
                checked["flood"] += 1
            elif tokens < values_max:
                assert caught.type is MalformedEvent, (raw, depth_max, values_max)
                checked["deep"] += 1
        else:
            check_event_shape(raw, values_max, depth_max)
            checked["within"] += 1
    assert min(checked.values()) > 30, checked


# ------------------------------------------------------------------------------ item 11


def test_a_deeply_nested_event_is_the_samples_malformed_output():
    deep = flood("b'[' * 100_000 + b']' * 100_000", 1)
    [result] = _score("humaneval_plus", [deep + WRONG["humaneval_plus"]])
    assert not result.passed
    assert result.reason == "failed", result
    assert "malformed output" in result.detail and f"deeper than {EVENT_DEPTH_MAX}" in result.detail, result
    res = run_program(deep, timeout=20.0)
    assert res.malformed and res.overflow is None, res


# ------------------------------------------------------------------------------ item 10


@pytest.mark.parametrize("what, line, lines", [
    ("a dict event of a million values, no judge", "b'{\"ev\":\"x\",\"a\":[' + b'{},' * 1_000_000 + b'{}]}'", 3),
    ("a quarter million small events, no judge", "b'{\"ev\":\"x\"}\\n' * 249_999 + b'{\"ev\":\"x\"}'", 1),
    ("an ever longer line", "b' ' * (40 << 20)", 1),
])
def test_one_flooding_sample_costs_the_parent_a_bounded_amount(what, line, lines):
    tracemalloc.start()
    try:
        res = run_program(flood(line, lines), timeout=30.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{what}: parent peak {peak / 2**20:.1f} MiB, overflow={res.overflow!r}, kept {len(res.events)} events")
    assert peak < PARENT_MIB_PER_SAMPLE << 20, what
    assert res.overflow, res  # past a bound: the run is cut, and says why


def test_a_flooding_sample_fails_and_its_neighbour_passes():
    dicts = flood("b'{\"ev\":\"out\",\"i\":0,\"a\":[' + b'{},' * 1_000_000 + b'{}]}'", 3)
    right = "def add(a, b):\n    return a + b\n"
    bad, good = _score("humaneval_plus", [dicts + WRONG["humaneval_plus"], right])
    assert not bad.passed and bad.reason == "error" and "flooded" in bad.detail and "JSON values" in bad.detail, bad
    assert good.passed, good


# ------------------------------------------------------------------------------ item 12


def test_flooders_do_not_delay_a_neighbours_deadline():
    """Three samples flood 31.5 MiB lines of integers (the parent decoded each with the GIL held
    for seconds, keeping every other deadline waiting) while a fourth sleeps past its deadline:
    it must be ended within DEADLINE_OVERSHOOT_S of it."""
    ints = flood("b'[' + b'0,' * (int(31.5 * 2**20) // 2) + b'0]'", 3)
    script = {"mode": "script", "run_name": "__main__"}
    deadline = 6.0
    jobs = [SandboxJob({**script, "program": "import time\ntime.sleep(600)\n"}, wall_s=deadline)]
    jobs += [SandboxJob({**script, "program": ints}, wall_s=30.0) for _ in range(3)]
    results = run_jobs(jobs, lambda job: run_job(job, SandboxLimits()), workers=len(jobs))
    sleeper = results[0]
    print(f"overshoot {sleeper.wall_s - deadline:.3f} s; flooders: {[r.overflow for r in results[1:]]}")
    assert sleeper.timed_out
    assert sleeper.wall_s - deadline < DEADLINE_OVERSHOOT_S
