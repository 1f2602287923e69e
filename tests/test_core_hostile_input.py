"""The C++ core under hostile Python input: a clean exception or a correct result, never a crash.

Every binding copies its input once with the GIL held and never touches a Python object after
releasing it. These tests attack that rule: lists mutated by another thread while the core works,
sequences that return a different item each time they are indexed or whose len() changes, huge
`workers`, and a thread start that fails.
"""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import asap_fast as af
from asap_fast import _core

# Non-str items of every kind that used to crash or corrupt a batch when swapped in mid-call.
BAD_ITEMS = [b"bytes", 7, None, ["a", "list"], "z"]
GOOD = "first step\n\nsecond step " * 2000

# Under AddressSanitizer (the sanitizer CI step) address-space limits cannot be used: ASan reserves
# terabytes of shadow memory up front.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def hammer(items, slot, values, stop):
    """Swap items[slot] through `values` until `stop` is set (runs in another Python thread)."""
    while not stop.is_set():
        for value in values:
            items[slot] = value
            time.sleep(0.0005)


def run_while_mutated(call, items, slot, values, rounds):
    """call() `rounds` times while another thread keeps changing items[slot]; returns the results
    and the TypeErrors raised (a non-str seen while the input was copied)."""
    stop = threading.Event()
    thread = threading.Thread(target=hammer, args=(items, slot, values, stop))
    thread.start()
    results, errors = [], []
    try:
        for _ in range(rounds):
            try:
                results.append(call())
            except TypeError as error:
                errors.append(str(error))
    finally:
        stop.set()
        thread.join()
    return results, errors


@pytest.mark.parametrize("bad", BAD_ITEMS, ids=lambda v: type(v).__name__ + ("_short" if v == "z" else ""))
def test_split_steps_batch_list_mutated_by_another_thread(bad):
    texts = [GOOD] * 64
    results, errors = run_while_mutated(lambda: af.split_steps_batch(texts, workers=2), texts, 5, [bad, GOOD], 40)
    allowed = {GOOD: af.split_steps(GOOD)}
    if isinstance(bad, str):
        allowed[bad] = af.split_steps(bad)
    for steps in results:
        assert len(steps) == 64
        # Each slot holds the steps of one of the values it had while it was read; the other
        # slots never changed.
        assert steps[5] in allowed.values()
        assert all(s == allowed[GOOD] for i, s in enumerate(steps) if i != 5)
    for message in errors:
        assert message.startswith("split_steps_batch(): argument 'texts[5]' must be str, not ")
    assert len(results) + len(errors) == 40


@pytest.mark.parametrize("bad", BAD_ITEMS, ids=lambda v: type(v).__name__ + ("_short" if v == "z" else ""))
def test_similarity_and_align_batch_lists_mutated_by_another_thread(bad):
    a = [GOOD[:4000]] * 32
    b = [GOOD[:4000].replace("second", "2nd")] * 32
    expected = af.similarity(a[0], b[0])
    results, errors = run_while_mutated(lambda: af.similarity_batch(a, b, workers=2), b, 3, [bad, b[0]], 40)
    for scores in results:
        assert scores[0] == expected and scores[31] == expected
        assert scores[3] in (expected, af.similarity(a[0], bad) if isinstance(bad, str) else expected)
    for message in errors:
        assert message.startswith("similarity_batch(): argument 'b[3]' must be str, not ")

    expected_alignment = af.align_steps(a[0], b[0])
    results, errors = run_while_mutated(lambda: af.align_steps_batch(a, b, workers=2), a, 7, [bad, a[0]], 40)
    for alignments in results:
        assert alignments[0] == expected_alignment and alignments[31] == expected_alignment
        if not isinstance(bad, str):
            assert alignments[7] == expected_alignment
    for message in errors:
        assert message.startswith("align_steps_batch(): argument 'originals[7]' must be str, not ")


class Shifting:
    """A sequence that returns a str the first time each index is read, and `later` after that."""

    def __init__(self, items, later):
        self.items, self.later, self.reads = list(items), later, [0] * len(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if not 0 <= i < len(self.items):
            raise IndexError(i)
        self.reads[i] += 1
        return self.items[i] if self.reads[i] == 1 else self.later


@pytest.mark.parametrize("later", [7, b"xx", ["x"], None, "other\n\ntext"])
def test_sequence_returning_shifting_items_is_read_once(later):
    texts = ["a\n\nb", "c", " d \n\n\n\n e "]
    seq = Shifting(texts, later)
    assert af.split_steps_batch(seq, workers=2) == [af.split_steps(t) for t in texts]
    assert seq.reads == [1, 1, 1]
    a, b = Shifting(texts, later), Shifting(texts[::-1], later)
    assert list(af.similarity_batch(a, b)) == [af.similarity(x, y) for x, y in zip(texts, texts[::-1])]
    assert af.align_steps_batch(Shifting(texts, later), Shifting(texts, later)) == [af.align_steps(t, t) for t in texts]


class GrowingLen:
    """len() grows by one on every call (list(obj) never ends on such an object)."""

    def __init__(self):
        self.calls = 0

    def __len__(self):
        self.calls += 1
        return 2 + self.calls

    def __getitem__(self, i):
        return f"item {i}"


def test_sequence_whose_len_grows_is_read_at_its_first_length():
    seq = GrowingLen()
    assert af.split_steps_batch(seq) == [["item 0"], ["item 1"], ["item 2"]]
    assert seq.calls == 1
    assert af.similarity_batch(GrowingLen(), GrowingLen()).shape == (3,)


class Shrinking:
    """Claims 5 items but loses them while it is read (another thread popping a shared list)."""

    def __init__(self):
        self.items = ["a", "b", "c", "d", "e"]

    def __len__(self):
        return 5

    def __getitem__(self, i):
        value = self.items[i]
        self.items.pop()
        return value


def test_sequence_that_shrinks_while_read():
    with pytest.raises(RuntimeError, match=r"split_steps_batch\(\): argument 'texts' changed size while it was read: "
                                           r"len\(\) was 5, item 3 is missing"):
        af.split_steps_batch(Shrinking())


class Failing:
    def __len__(self):
        return 3

    def __getitem__(self, i):
        if i == 1:
            raise ZeroDivisionError("boom")
        return "x"


class BadLen:
    def __len__(self):
        raise OverflowError("no length")

    def __getitem__(self, i):
        return "x"


def test_errors_raised_by_the_sequence_pass_through():
    with pytest.raises(ZeroDivisionError, match="boom"):
        af.split_steps_batch(Failing())
    with pytest.raises(OverflowError, match="no length"):
        af.similarity_batch(BadLen(), ["x"])


@pytest.mark.parametrize("bad", [b"ab\n\ncd", bytearray(b"ab"), 3, None, {"a": 1}, {"a"}, iter(["a"])])
def test_batch_rejects_non_sequences(bad):
    with pytest.raises(TypeError, match=r"split_steps_batch\(\): argument 'texts' must be a sequence of str, not "):
        af.split_steps_batch(bad)
    with pytest.raises(TypeError, match=r"similarity_batch\(\): argument 'a' must be a sequence of str, not "):
        af.similarity_batch(bad, ["x"])
    with pytest.raises(TypeError, match=r"align_steps_batch\(\): argument 'compressed' must be a sequence of str, "):
        af.align_steps_batch(["x"], bad)


def test_str_subclasses_and_tuples_are_accepted():
    class Text(str):
        def __getitem__(self, i):  # slicing is not how the core reads a str
            raise AssertionError("not called")

    items = (Text("a\n\nb"), "c")
    assert af.split_steps_batch(items) == [["a", "b"], ["c"]]
    assert af.split_steps(Text(" x \n\n y ")) == ["x", "y"]
    assert af.similarity(Text("abc"), "abd") == af.similarity("abc", "abd")


@pytest.mark.parametrize("workers", [20000, 2**31 - 1, -(2**31), 0, -1, 3])
def test_huge_or_negative_workers_use_at_most_the_cores(workers):
    a = ["abc", "abd", "xyz"] * 2000
    b = ["abc", "abc", "abc"] * 2000
    expected = np.array([af.similarity(x, y) for x, y in zip(a[:3], b[:3])] * 2000)
    assert np.array_equal(af.similarity_batch(a, b, workers=workers), expected)
    assert af.split_steps_batch(a, workers=workers) == [[t] for t in a]
    assert af.align_steps_batch(a, b, workers=workers) == [af.align_steps(x, y) for x, y in zip(a, b)]


def test_workers_out_of_int_range_is_a_type_error():
    with pytest.raises(TypeError):
        af.similarity_batch(["a"], ["a"], workers=2**70)


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(UNDER_ASAN, reason="address-space limits do not work under AddressSanitizer")
def test_huge_workers_under_an_address_space_limit(tmp_path):
    # The reproduction: 20,000 requested threads under a 2 GiB limit aborted the
    # interpreter ("terminate called without an active exception").
    code = (
        "import resource, asap_fast as af\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "print(af.similarity_batch(['abc'] * 20000, ['abc'] * 20000, workers=20000).sum())\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "20000.0"


@pytest.mark.skipif(UNDER_ASAN, reason="address-space limits do not work under AddressSanitizer")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_failed_thread_start_is_not_an_abort(tmp_path):
    # Leave no room for a second thread's stack (8 MiB by default): std::thread's constructor
    # throws, and the batch must finish on the calling thread with the same result.
    code = (
        "import resource, asap_fast as af\n"
        "a = ['some text\\n\\nmore'] * 64\n"
        "expected = [af.split_steps(t) for t in a]\n"
        "size = int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize:'))) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 20), resource.RLIM_INFINITY))\n"
        "ok = af.split_steps_batch(a, workers=2) == expected\n"
        "scores = af.similarity_batch(a, a, workers=2)\n"
        "print(ok, float(scores.min()))\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True 1.0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_thread_count_is_capped(tmp_path):
    # The core never starts more threads than cores, whatever `workers` says. Counted in a fresh
    # interpreter, where no other library starts threads behind the test's back: the OS threads
    # seen while a long batch runs stay within the cores plus the ones there before (this one's
    # watcher included).
    code = (
        "import os, threading, asap_fast as af\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "peak, stop = before, threading.Event()\n"
        "def watch():\n"
        "    global peak\n"
        "    while not stop.is_set():\n"
        "        peak = max(peak, len(os.listdir('/proc/self/task')))\n"
        "watcher = threading.Thread(target=watch)\n"
        "watcher.start()\n"
        "texts = ['word ' * 2000] * 200\n"
        "af.similarity_batch(texts, texts[::-1], 'indel', workers=10_000)\n"
        "stop.set()\n"
        "watcher.join()\n"
        "print(before, peak, len(os.sched_getaffinity(0)))\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    before, peak, cores = map(int, done.stdout.split())
    assert peak > before  # the watcher was seen: the count works
    assert peak <= before + 1 + (cores - 1)  # + the watcher; the calling thread is one of the workers


def test_single_calls_validate_every_argument():
    with pytest.raises(TypeError, match=r"quick_ratio\(\): argument 'b' must be str, not bytes"):
        _core.quick_ratio("a", b"b")
    with pytest.raises(TypeError, match=r"real_quick_ratio\(\): argument 'a' must be str, not int"):
        _core.real_quick_ratio(1, "b")
    with pytest.raises(TypeError, match=r"split_section_spans\(\): argument 'text' must be str, not list"):
        _core.split_section_spans(["a"])
    with pytest.raises(ValueError, match=r"score_cutoff must be in \[0, 1\], got nan"):
        af.similarity("a", "b", score_cutoff=float("nan"))
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got inf"):
        af.align_steps("a", "b", threshold=float("inf"))
    with pytest.raises(TypeError):
        af.similarity("a", "b", metric=None)
