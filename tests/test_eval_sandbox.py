"""The sandbox against hostile programs: each fails (or passes only on its merits) without leaving
processes behind or touching anything outside its own directory."""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import time

import pytest

from asap_fast.evaluation import SandboxLimits, isolation_report, run_program
from asap_fast.evaluation.benchmarks import get_benchmark
from asap_fast.evaluation.score import Sample, score_samples

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")

# Leftovers are recognised from the host by a unique sleep duration in their command line (the
# sandbox's own /proc shows only its PID namespace, so its pids mean nothing outside).
MARK = "987.654321"
SLEEP_FOREVER = f"os.execv('/usr/bin/sleep', ['sleep', '{MARK}'])"


def _marked_processes() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if MARK.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture
def sandbox_tmp(tmp_path, monkeypatch):
    """Run directories go under tmp_path/runs, so the test can check they are all removed."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _need(layer: str):
    applied = isolation_report().get(layer)
    if applied is not True:
        pytest.skip(f"the kernel refused this sandbox layer here ({layer}: {applied})")


LAYERS = ["auto", "namespaces"]


def test_normal_program_passes_and_reports_isolation(sandbox_tmp):
    res = run_program("print('hello')\nassert 1 + 1 == 2\n")
    assert res.result == {"status": "passed", "detail": ""}
    assert res.exit_code == 0 and not res.timed_out
    assert res.stdout == b"hello\n"
    assert {"layer", "net_ns", "pid_ns", "readonly_fs", "memory_bytes", "capabilities_dropped"} <= set(res.isolation)
    assert res.isolation["layer"] in ("bwrap", "namespaces")
    assert list(sandbox_tmp.iterdir()) == []  # no run directory is left behind


def test_os_exit_zero_before_the_tests_is_not_a_pass(sandbox_tmp):
    res = run_program("import os\nos._exit(0)\nassert False\n")
    assert res.result is None
    bench = get_benchmark("humaneval")
    problems = bench.load(os.path.join(FIXTURES, "humaneval.jsonl"))
    code = "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n"
    [result] = score_samples(bench, problems, [Sample("Fixture/0", code)], extract=False, workers=1)
    assert not result.passed and result.reason == "error"
    assert "ended before the tests finished" in result.detail


def test_sys_exit_zero_is_not_a_pass(sandbox_tmp):
    bench = get_benchmark("humaneval")
    problems = bench.load(os.path.join(FIXTURES, "humaneval.jsonl"))
    code = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    [result] = score_samples(bench, problems, [Sample("Fixture/0", code)], extract=False, workers=1)
    assert not result.passed and result.reason == "error"


@pytest.mark.parametrize("layer", LAYERS)
def test_deleting_files_outside_its_directory_fails(layer, tmp_path, sandbox_tmp):
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    program = textwrap.dedent(f"""
        import os, shutil
        open("mine.txt", "w").write("own directory is writable")
        assert open("mine.txt").read() == "own directory is writable"
        try:
            os.remove({str(canary)!r})
        except OSError as e:
            print("remove:", e.errno)
        shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)
        open({str(canary)!r}, "w").write("overwritten")
    """)
    res = run_program(program, limits=SandboxLimits(layer=layer))
    if res.isolation.get("readonly_fs") is not True:
        pytest.skip(f"no read-only view here: {res.isolation.get('readonly_fs')}")
    assert canary.read_text() == "still here"
    # bwrap: the host path does not exist in the view; namespaces: it is read-only
    assert res.result["status"] == "error"
    assert ("Read-only file system" in res.result["detail"] or "No such file" in res.result["detail"])
    assert list(sandbox_tmp.iterdir()) == []


@pytest.mark.parametrize("layer", LAYERS)
def test_forked_children_and_daemons_are_killed(layer, sandbox_tmp):
    program = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            {SLEEP_FOREVER}
        if os.fork() == 0:          # a daemon: double fork and a new session
            os.setsid()
            if os.fork() == 0:
                {SLEEP_FOREVER}
            os._exit(0)
        time.sleep(0.5)
        print("main done")
    """)
    start = time.monotonic()
    res = run_program(program, timeout=5.0, limits=SandboxLimits(layer=layer))
    assert time.monotonic() - start < 4.5  # did not wait for the sleepers
    assert res.result["status"] == "passed"
    time.sleep(0.2)
    assert _marked_processes() == []
    assert list(sandbox_tmp.iterdir()) == []


def test_forked_children_are_killed_without_a_pid_namespace(sandbox_tmp):
    """The fallback's fallback: the supervisor is a child subreaper and sweeps every descendant."""
    program = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {SLEEP_FOREVER}
            os._exit(0)
        time.sleep(0.5)
    """)
    res = run_program(program, timeout=5.0, limits=SandboxLimits(layer="namespaces", pid_ns=False, cgroup=False))
    assert res.isolation["pid_ns"] == "disabled"
    time.sleep(0.2)
    assert _marked_processes() == []


def test_infinite_loop_times_out(sandbox_tmp):
    start = time.monotonic()
    res = run_program("while True:\n    pass\n", timeout=1.0)
    elapsed = time.monotonic() - start
    assert res.timed_out and res.result is None
    assert 1.0 <= elapsed < 4.0


def test_infinite_loop_that_ignores_signals_times_out(sandbox_tmp):
    program = ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
               "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n")
    res = run_program(program, timeout=1.0)
    assert res.timed_out
    assert list(sandbox_tmp.iterdir()) == []


def test_allocating_8_gb_fails_quickly(sandbox_tmp):
    start = time.monotonic()
    res = run_program("x = bytearray(8 * 1024 ** 3)\nx[-1] = 1\n", timeout=20.0)
    assert time.monotonic() - start < 5.0
    assert res.result["status"] == "error" and "MemoryError" in res.result["detail"]


def test_growing_allocation_hits_the_memory_limit(sandbox_tmp):
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(256 * 1024 ** 2))\n"
    res = run_program(program, timeout=20.0, limits=SandboxLimits(memory_bytes=1 << 30))
    assert res.result["status"] == "error" and "MemoryError" in res.result["detail"]
    assert res.wall_s < 10.0


def test_printing_100_mb_is_capped_and_passes_on_its_merits(sandbox_tmp):
    program = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(block)\nprint('tail')\n"
    res = run_program(program, timeout=20.0, limits=SandboxLimits(output_bytes=1 << 16))
    assert res.result["status"] == "passed"
    assert len(res.stdout) == 1 << 16 and res.stdout_truncated
    assert res.stdout_bytes == 100 * (1 << 20) + len("tail\n")


def test_printing_100_mb_then_failing_fails(sandbox_tmp):
    bench = get_benchmark("humaneval")
    problems = bench.load(os.path.join(FIXTURES, "humaneval.jsonl"))
    code = "print('y' * (100 << 20))\ndef add(a, b):\n    return a - b\n"
    [result] = score_samples(bench, problems, [Sample("Fixture/0", code)], extract=False, workers=1, timeout=20.0)
    assert result.reason == "failed"


def test_reading_stdin_gets_eof(sandbox_tmp):
    res = run_program("import sys\ndata = sys.stdin.read()\nprint(repr(data))\ninput()\n")
    assert res.stdout == b"''\n"
    assert res.result["status"] == "error" and res.result["detail"].startswith("EOFError")


def test_stdin_can_be_given(sandbox_tmp):
    res = run_program("print(input()[::-1])", stdin="abc\n")
    assert res.stdout == b"cba\n" and res.result["status"] == "passed"


def test_environment_is_scrubbed_and_cwd_is_private(sandbox_tmp, monkeypatch):
    monkeypatch.setenv("ASAP_SECRET_TOKEN", "do-not-leak")
    res = run_program("import os, json\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))")
    import json

    seen = json.loads(res.stdout)
    assert "ASAP_SECRET_TOKEN" not in seen["env"]
    if res.isolation["layer"] == "bwrap":
        assert seen["cwd"] == "/sandbox"
    else:
        assert seen["cwd"].startswith(str(sandbox_tmp))


def test_network_to_localhost_fails(sandbox_tmp):
    _need("net_ns")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
        res = run_program(program, timeout=5.0)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing reached the listener
            server.accept()
    finally:
        server.close()
    assert res.result["status"] == "error", res.result
    # bwrap's namespace has its own loopback (refused), the fallback's a down one (unreachable)
    assert any(w in res.result["detail"].lower() for w in ("unreachable", "refused")), res.result


def test_network_can_be_allowed(sandbox_tmp):
    res = run_program("import socket\nsocket.gethostname()\n", limits=SandboxLimits(allow_network=True))
    assert res.isolation["net_ns"] == "disabled" and res.result["status"] == "passed"


def test_stdio_test_child_leftovers_are_killed(sandbox_tmp):
    """LiveCodeBench stdin tests run once per test; what a run leaves behind dies with it."""
    bench = get_benchmark("livecodebench")
    problems = bench.load(os.path.join(FIXTURES, "livecodebench"), release="v1")
    code = textwrap.dedent(f"""
        import os, sys, time
        a, b = map(int, input().split())
        if os.fork() == 0:
            os.setsid()
            {SLEEP_FOREVER}
        print(a + b)
    """)
    start = time.monotonic()
    [result] = score_samples(bench, problems, [Sample("abc300_a", code)], extract=False, workers=1)
    assert result.passed, result.detail
    assert time.monotonic() - start < 10.0
    time.sleep(0.2)
    assert _marked_processes() == []


def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=0)
    with pytest.raises(ValueError, match="layer"):
        SandboxLimits(layer="docker")


def test_root_without_user_namespace_still_protects_files(tmp_path, sandbox_tmp):
    """As root the fallback needs no user namespace; the read-only view must hold there too."""
    if os.geteuid() != 0:
        pytest.skip("only root can create the other namespaces without a user namespace")
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    res = run_program(f"import os\nos.remove({str(canary)!r})\n", limits=SandboxLimits(layer="namespaces", user_ns=False))
    if res.isolation.get("readonly_fs") is not True:
        pytest.skip(f"read-only view unavailable here: {res.isolation.get('readonly_fs')}")
    assert res.isolation["user_ns"] == "disabled" and res.isolation["capabilities_dropped"] is True
    assert canary.exists() and res.result["status"] == "error"


def test_without_any_namespace_limits_and_kills_still_work(sandbox_tmp):
    bare = SandboxLimits(layer="namespaces", user_ns=False, pid_ns=False, readonly_fs=False, allow_network=True)
    program = f"import os, time\nif os.fork() == 0:\n    {SLEEP_FOREVER}\nwhile True:\n    pass\n"
    res = run_program(program, timeout=1.0, limits=bare)
    assert res.timed_out
    assert all(res.isolation[k] == "disabled" for k in ("user_ns", "pid_ns", "net_ns", "mount_ns"))
    res = run_program("x = bytearray(8 * 1024 ** 3)", limits=bare)
    assert "MemoryError" in res.result["detail"]
    time.sleep(0.2)
    assert _marked_processes() == []
    assert list(sandbox_tmp.iterdir()) == []
