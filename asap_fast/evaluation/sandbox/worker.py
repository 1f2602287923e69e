"""The sandboxed side of ``asap_fast.evaluation.sandbox``: run as a script, standard library only.

``python -I worker.py SETUP`` is started by the parent (``runner.py``) inside the chosen
isolation layer; SETUP is a JSON object naming the layer and the file descriptors it holds:

- ``job``: a memfd with the job (JSON: ``mode`` and the mode's options), read once and closed
  before any untrusted code runs;
- ``events``: a pipe to the parent. The first event, ``started``, is written before any untrusted
  code runs (the parent starts the sample's clock there); then the mode's events;
- ``req`` / ``resp``: for the two halves of an assertion-style check (modes ``serve`` and
  ``check``), the pipes between them.

Nothing the parent decides rests on this program behaving: the untrusted code shares its process
and can rewrite it. For input/output benchmarks it only reports the candidate's outputs, in the
plain format below, and the parent compares them with expected outputs that never enter the
sandbox. For assertion-style tests (``check(candidate)``) the test code runs in a second sandbox
(mode ``check``), calling the candidate (mode ``serve``, in its own sandbox) through the pipes with
plain arguments and results; only that second sandbox holds the pipe the verdict travels on.

Layers: ``bwrap`` (bubblewrap made the namespaces and the file-system view; when started as
root it kept CAP_SETUID/SETGID/SETPCAP so that this program can drop to an unprivileged uid),
``namespaces`` (the fallback: this program unshares user, network, PID and mount namespaces itself
and makes every mount read-only but its directory) and ``none``.

Plain format (``encode`` / ``decode``): JSON where every object is a tag, so that no value needs
code to rebuild: lists, str, bool, None and ints up to 2**53 as themselves; {"$i": hex} larger
ints, {"$f": "nan"|"inf"|"-inf"}, {"$t": [...]} tuple, {"$d": [[k, v], ...]} dict, {"$s": [...]}
set, {"$fs": [...]} frozenset, {"$b": base64} bytes, {"$c": [re, im]} complex, {"$np": dtype,
"v": value} numpy scalar, {"$nd": dtype, "v": nested list} numpy array, {"$o": class name, "$id":
n, "a": {attribute: value}} an object of a class the receiver allows (LeetCode's ListNode /
TreeNode), {"$r": n} a reference to such an object already seen.
"""

from __future__ import annotations

import base64
import builtins
import copy
import ctypes
import io
import json
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

# Syscall and prctl constants (Linux UAPI; the same numbers on x86_64 and aarch64).
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522

MAX_LINE = 64 << 20  # one request / response between the two halves of a check

# ------------------------------------------------------------------------------- plain format

_EXACT_INT = 1 << 53


class PlainError(ValueError):
    """A value that the plain format cannot carry, or text that is not in it."""


def encode(value, _memo=None):
    """``value`` as JSON-able plain data (see the module docstring); PlainError for anything else
    (functions, generators, objects without a ``__dict__``)."""
    memo = {} if _memo is None else _memo
    if value is None or value is True or value is False:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        value = int.__index__(value)
        return value if -_EXACT_INT <= value <= _EXACT_INT else {"$i": format(value, "x")}
    if isinstance(value, float):
        value = float.__float__(value)
        if math.isfinite(value):
            return value
        return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, complex):
        return {"$c": [encode(value.real, memo), encode(value.imag, memo)]}
    if isinstance(value, tuple):
        return {"$t": [encode(v, memo) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return [encode(v, memo) for v in list.__iter__(value)]
    if isinstance(value, dict):
        return {"$d": [[encode(k, memo), encode(v, memo)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"$fs": [encode(v, memo) for v in value]}
    if isinstance(value, set):
        return {"$s": [encode(v, memo) for v in value]}
    module = type(value).__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        dtype = getattr(value, "dtype", None)
        if dtype is not None and hasattr(value, "tolist"):
            kind = "$nd" if getattr(value, "ndim", 0) else "$np"
            return {kind: str(dtype), "v": encode(value.tolist(), memo)}
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, type) and not callable(value):
        key = id(value)
        if key in memo:
            return {"$r": memo[key]}
        memo[key] = len(memo)
        return {"$o": type(value).__name__, "$id": memo[key],
                "a": {str(k): encode(v, memo) for k, v in list(attrs.items())}}
    raise PlainError(f"a value of type {type(value).__name__} cannot be passed as plain data")


def dumps(value) -> str:
    return json.dumps(encode(value), ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _numpy_value(kind: str, dtype: str, raw):
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind not in "biufc":
        raise PlainError(f"numpy dtype {dtype!r} is not allowed")
    array = np.asarray(raw, dtype=dt)
    return array if kind == "$nd" else array[()]


def decode(data, classes: dict | None = None, _refs=None):
    """The value that ``encode`` described; objects only of the classes in ``classes`` (name ->
    class), rebuilt without calling their code (``object.__new__`` and the attribute dict)."""
    refs = {} if _refs is None else _refs
    if data is None or isinstance(data, (bool, str, float)):
        return data
    if isinstance(data, int):
        return data
    if isinstance(data, list):
        return [decode(v, classes, refs) for v in data]
    if not isinstance(data, dict) or not data:
        raise PlainError(f"not plain data: {type(data).__name__}")
    if "$i" in data:
        return int(data["$i"], 16)
    if "$f" in data:
        return float(data["$f"])
    if "$t" in data:
        return tuple(decode(v, classes, refs) for v in data["$t"])
    if "$d" in data:
        return {decode(k, classes, refs): decode(v, classes, refs) for k, v in data["$d"]}
    if "$s" in data:
        return {decode(v, classes, refs) for v in data["$s"]}
    if "$fs" in data:
        return frozenset(decode(v, classes, refs) for v in data["$fs"])
    if "$b" in data:
        return base64.b64decode(data["$b"].encode("ascii"), validate=True)
    if "$c" in data:
        re_, im = data["$c"]
        return complex(decode(re_, classes, refs), decode(im, classes, refs))
    if "$np" in data or "$nd" in data:
        kind = "$np" if "$np" in data else "$nd"
        return _numpy_value(kind, str(data[kind]), decode(data["v"], None, refs))
    if "$r" in data:
        ref = data["$r"]
        if ref not in refs:
            raise PlainError(f"reference to an object not seen: {ref!r}")
        return refs[ref]
    if "$o" in data:
        cls = (classes or {}).get(data["$o"])
        if not isinstance(cls, type):
            raise PlainError(f"an object of class {data['$o']!r} was returned; expected plain data")
        obj = object.__new__(cls)
        refs[data["$id"]] = obj
        attrs = data.get("a") or {}
        if not isinstance(attrs, dict):
            raise PlainError("object attributes must be a mapping")
        obj.__dict__.update({str(k): decode(v, classes, refs) for k, v in attrs.items()})
        return obj
    raise PlainError(f"unknown tag in plain data: {sorted(data)[:3]}")


def loads(text, classes: dict | None = None):
    """decode(json.loads(text)); PlainError for anything malformed (also too deep nesting)."""
    try:
        return decode(json.loads(text), classes)
    except PlainError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError, MemoryError) as e:
        raise PlainError(f"not plain data: {type(e).__name__}: {str(e)[:200]}") from None


# ---------------------------------------------------------------------------------- channel


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Events:
    """JSON lines to the parent. Errors are swallowed: the parent treats a closed channel as the
    sample's end, and nothing here may raise into the mode's bookkeeping."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def send(self, **event) -> None:
        if self.fd is None:
            return
        try:
            _write_all(self.fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
        except (OSError, ValueError):
            pass


class LineReader:
    """Newline-terminated messages from a pipe, each at most MAX_LINE bytes."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()

    def read(self) -> bytes | None:
        while True:
            cut = self.buf.find(b"\n")
            if cut >= 0:
                line = bytes(self.buf[:cut])
                del self.buf[: cut + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise PlainError(f"a message longer than {MAX_LINE} bytes")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk


# ----------------------------------------------------------------------- privileges and limits


def _libc():
    # The symbols of the libc this interpreter already runs on; find_library would spawn ldconfig.
    return ctypes.CDLL(None, use_errno=True)


def _call(fn, *args) -> str | None:
    """None on success, else the errno's message."""
    if fn(*args) == 0:
        return None
    return os.strerror(ctypes.get_errno())


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def drop_privileges(libc, uid: int | None, gid: int | None) -> dict:
    """Empty the bounding set, become ``uid``/``gid`` (when given), clear every capability set,
    set no_new_privs. Changing to a non-zero uid is what clears the permitted set; capset clears
    the inheritable one bubblewrap leaves."""
    applied = {}
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() not in (22, 1):
            break  # EINVAL: past the last capability; EPERM: no CAP_SETPCAP (nothing to drop then)
    if uid is not None:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            applied["uid"] = uid
        except OSError as e:
            applied["uid"] = f"setresuid({uid}): {e.strerror}"
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    err = _call(libc.capset, ctypes.byref(header), data)
    applied["capabilities_dropped"] = True if err is None else f"capset: {err}"
    err = _call(libc.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    applied["no_new_privs"] = True if err is None else f"prctl: {err}"
    return applied


def set_limits(limits: dict) -> dict:
    applied = {}
    pairs = (
        ("cpu_s", resource.RLIMIT_CPU),
        ("memory_bytes", resource.RLIMIT_AS),
        ("file_size_bytes", resource.RLIMIT_FSIZE),
        ("open_files", resource.RLIMIT_NOFILE),
        ("processes", resource.RLIMIT_NPROC),
    )
    for key, which in pairs:
        value = limits.get(key)
        if value is None:
            continue
        value = int(value)
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # lowering is always allowed; raising is not
            resource.setrlimit(which, (value, value))
            applied[key] = value
        except (ValueError, OSError) as e:
            applied[key] = f"setrlimit: {e}"
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    if os.getuid() == 0 and "processes" in applied:
        # The kernel never applies RLIMIT_NPROC to uid 0, whatever its capabilities.
        applied["processes"] = f"{applied['processes']} (not enforced: running as uid 0)"
    return applied


# ---------------------------------------------------------------- the fallback layer's isolation


def isolate(libc, want: dict, workdir: str) -> dict:
    """The ``namespaces`` layer: namespaces and a read-only view made here, where bubblewrap cannot
    run. Returns what was applied (True, or a one-line reason why not)."""
    applied: dict = {}
    uid, gid = os.getuid(), os.getgid()
    have_caps = os.geteuid() == 0
    if want.get("user_ns", True):
        err = _call(libc.unshare, CLONE_NEWUSER)
        if err is None:
            try:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} {gid} 1")
                applied["user_ns"] = True
                have_caps = True
            except OSError as e:
                applied["user_ns"] = f"id maps: {e.strerror}"
        else:
            applied["user_ns"] = f"unshare(CLONE_NEWUSER): {err}"
    else:
        applied["user_ns"] = "disabled"
    for name, flag, wanted in (
        ("net_ns", CLONE_NEWNET, not want.get("allow_network", False)),
        ("pid_ns", CLONE_NEWPID, want.get("pid_ns", True)),
        ("mount_ns", CLONE_NEWNS, want.get("readonly_fs", True)),
    ):
        if not wanted:
            applied[name] = "disabled"
        elif not have_caps:
            applied[name] = "no privilege (unprivileged user namespaces unavailable)"
        else:
            err = _call(libc.unshare, flag)
            applied[name] = True if err is None else f"unshare: {err}"
    applied["readonly_fs"] = _readonly_view(libc, workdir) if applied["mount_ns"] is True else "no mount namespace"
    return applied


def _readonly_view(libc, workdir: str):
    """Every mount read-only, recursively, except a bind mount of the sample's directory."""
    if err := _call(libc.mount, None, b"/", None, MS_REC | MS_PRIVATE, None):
        return f"make / private: {err}"
    wd = workdir.encode()
    if err := _call(libc.mount, wd, wd, None, MS_BIND | MS_REC, None):
        return f"bind workdir: {err}"
    ro = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    rw = _MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0)
    if err := _call(libc.syscall, SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(ro),
                    ctypes.sizeof(ro)):
        return f"mount_setattr(/, RDONLY): {err}"
    if err := _call(libc.syscall, SYS_MOUNT_SETATTR, AT_FDCWD, wd, AT_RECURSIVE, ctypes.byref(rw),
                    ctypes.sizeof(rw)):
        return f"mount_setattr(workdir, rw): {err}"
    os.chdir(workdir)  # the bind mount lies on top of the old directory: re-enter it
    return True


def _children_of(pid: int) -> list[int]:
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(name))
    return found


def _sweep_descendants() -> None:
    """Kill whatever is left below us (we are a child subreaper, so orphans come back to us)."""
    me = os.getpid()
    for _ in range(100):
        kids = _children_of(me)
        if not kids:
            return
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for kid in kids:
            try:
                os.waitpid(kid, 0)
            except ChildProcessError:
                pass


def _wait_until(pid: int, deadline: float | None):
    """waitpid with a deadline; returns the wait status or None on timeout."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        delay = 0.001
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, 0.05)
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ------------------------------------------------------------------------------------- modes


class CallTimeout(BaseException):
    """Raised by the per-call timer; a BaseException so that `except Exception` in the program under
    test does not swallow it. Only a courtesy: the parent times every test from outside."""


def _on_alarm(signum, frame):
    raise CallTimeout()


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text.splitlines()[0][:500]


def _compile(source: str, name: str):
    return compile(source, name, "exec", dont_inherit=True)  # not this file's __future__ flags


# The prelude LiveCodeBench puts before every solution (lcb_runner/evaluation/testing_util.py).
LCB_PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
    "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
    "from builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
    "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\n"
    "import statistics\nimport itertools\nimport functools\nimport operator\nimport io\nimport sys\n"
    "import json\nsys.setrecursionlimit(50000)\n"
)


def run_script(job: dict, events: Events) -> int:
    """exec a program; the ``end`` event says how it ended. Informational only (``run_program``):
    the program can write any event itself."""
    namespace = {"__name__": job.get("run_name", "__main__"), "__builtins__": builtins}
    try:
        exec(_compile(job["program"], "program.py"), namespace)
    except AssertionError as e:
        events.send(ev="end", status="failed", detail=_one_line(e))
        return 1
    except SystemExit as e:
        events.send(ev="end", status="error", detail=f"program exited (SystemExit {e.code!r}) before its end")
        return 1
    except BaseException as e:
        events.send(ev="end", status="error", detail=_one_line(e))
        return 1
    events.send(ev="end", status="passed", detail="")
    return 0


def _resolve_entry(namespace: dict, job: dict):
    entry = job["entry"]
    if job.get("solution_class") and "Solution" in namespace:
        return getattr(namespace["Solution"](), entry)
    return namespace[entry]


def run_calls(job: dict, events: Events) -> int:
    """Call the entry point on each input and report each output (``out``, plain) or how the call
    ended (``exc``, ``timeout``). Stops at the first call that raises, as EvalPlus and
    LiveCodeBench do; the parent stops us earlier at the first wrong output."""
    inputs = job["inputs"]
    if job.get("input_format") == "lcb":
        inputs = [[json.loads(line) for line in raw.split("\n")] for raw in inputs]
    namespace = {"__name__": job.get("run_name", "__candidate__"), "__builtins__": builtins}
    per_call = float(job["call_timeout_s"])
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, per_call)
        try:
            exec(_compile(job["program"], "program.py"), namespace)
            fn = _resolve_entry(namespace, job)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CallTimeout:
        events.send(ev="fatal", kind="timeout", detail="defining the solution took longer than the time limit")
        return 1
    except SystemExit as e:
        events.send(ev="fatal", kind="error", detail=f"program exited (SystemExit {e.code!r}) before the tests ran")
        return 1
    except BaseException as e:
        events.send(ev="fatal", kind="error", detail=_one_line(e))
        return 1
    events.send(ev="ready")
    for i, args in enumerate(inputs):
        try:
            call_args = copy.deepcopy(args)
            signal.setitimer(signal.ITIMER_REAL, per_call)
            try:
                out = fn(*call_args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            payload = encode(out)
        except CallTimeout:
            events.send(ev="out", i=i, kind="timeout", detail=f"call took longer than {per_call:g} s")
            return 1
        except PlainError as e:
            events.send(ev="out", i=i, kind="failed", detail=str(e))
            return 1
        except SystemExit as e:
            events.send(ev="out", i=i, kind="error", detail=f"program exited (SystemExit {e.code!r})")
            return 1
        except BaseException as e:
            events.send(ev="out", i=i, kind="error", detail=_one_line(e))
            return 1
        events.send(ev="out", i=i, out=payload)
    events.send(ev="end")
    return 0


def _kill_test_leftovers(child: int, pid1: bool, reaped: bool) -> None:
    if pid1:
        # PID 1 of our own namespace: kill(-1) reaches every other process in it, and only those.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    try:
        os.killpg(child, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not reaped:
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass
    _sweep_descendants()  # what left the test's group (setsid) came back to us, a subreaper


def _tail(path: str, limit: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text.splitlines()[-1] if text else ""


def run_stdio(job: dict, events: Events) -> int:
    """Run the program once per test (a fork of this process, so the compiled program and the
    prelude's imports are shared) with the test's input as stdin; report its stdout (``out``,
    text, at most ``output_cap_bytes``)."""
    try:
        code = _compile(job["program"], "program.py")
    except SyntaxError as e:
        events.send(ev="fatal", kind="error", detail=_one_line(e))
        return 1
    exec(_compile(LCB_PRELUDE, "<prelude>"), {"__name__": "__prelude__"})  # warm the imports
    per_test = float(job["call_timeout_s"])
    # The parent takes an event of at most 4 MiB (its memory bound): a 2 MiB output, escaped as
    # JSON, fits whenever at least half of it is printable ASCII.
    output_cap = int(job.get("output_cap_bytes", 2 << 20))
    pid1 = os.getpid() == 1
    if not pid1:  # orphans of a test come back to us, so that the sweep after each test finds them
        _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work = os.getcwd()
    in_path, out_path, err_path = (os.path.join(work, n) for n in (".stdin", ".stdout", ".stderr"))
    events.send(ev="ready")
    for i, test_in in enumerate(job["inputs"]):
        with open(in_path, "w", encoding="utf-8") as f:
            f.write(test_in)
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        child = os.fork()
        if child == 0:
            _stdio_child(code, in_path, out_path, err_path)
        status = _wait_until(child, start + per_test)
        timed_out = status is None
        _kill_test_leftovers(child, pid1, reaped=not timed_out)
        if timed_out:
            events.send(ev="out", i=i, kind="timeout", detail=f"ran longer than {per_test:g} s")
            return 1
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.WEXITSTATUS(status)}")
            err = _tail(err_path)
            events.send(ev="out", i=i, kind="error", detail=f"{how}{': ' + err if err else ''}")
            return 1
        with open(out_path, "rb") as f:
            produced = f.read(output_cap + 1)
        if len(produced) > output_cap:
            events.send(ev="out", i=i, kind="failed", detail=f"output longer than {output_cap} bytes")
            return 1
        events.send(ev="out", i=i, out=produced.decode("utf-8", "replace"))
    events.send(ev="end")
    return 0


def _stdio_child(code, in_path: str, out_path: str, err_path: str) -> None:
    exit_code = 0
    try:
        os.setpgid(0, 0)
        for fd, path, flags in ((0, in_path, os.O_RDONLY),
                                (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o600)
            os.dup2(new, fd)
            os.close(new)
        # Fresh text streams over the new fds (nothing was read from or written to the old ones).
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                                      line_buffering=False)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                      line_buffering=True)
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(code, namespace)
        except SystemExit:
            pass  # LiveCodeBench swallows SystemExit in stdin programs, whatever its code
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        exit_code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        exit_code = exit_code or 1
    os._exit(exit_code)


def run_serve(job: dict, events: Events, req_fd: int, resp_fd: int) -> int:
    """The candidate's half of an assertion-style check: exec the program, evaluate the entry point
    once (``Solution().method`` for LeetCode), then answer each call request with the result in
    plain form (or the exception's one-line description)."""
    namespace = {"__name__": job.get("run_name", "__candidate__"), "__builtins__": builtins}
    requests = LineReader(req_fd)

    def reply(**message) -> None:
        _write_all(resp_fd, (json.dumps(message, separators=(",", ":")) + "\n").encode())

    try:
        exec(_compile(job["program"], "program.py"), namespace)
        target = eval(job["entry"], namespace)
    except SystemExit as e:
        reply(fatal=f"program exited (SystemExit {e.code!r}) before the tests ran")
        return 1
    except BaseException as e:
        reply(fatal=_one_line(e))
        return 1
    reply(ready=True)
    while True:
        line = requests.read()
        if line is None:
            return 0
        try:
            request = json.loads(line)
            args = decode(request["a"])
            kwargs = decode(request["k"])
            result = target(*args, **kwargs)
            text = dumps(result)
        except SystemExit as e:
            reply(error=f"program exited (SystemExit {e.code!r})")
            return 1
        except BaseException as e:
            reply(error=_one_line(e))
            continue
        _write_all(resp_fd, b'{"r":' + text.encode() + b"}\n")


class CandidateError(Exception):
    """The candidate raised (or could not answer) inside a call made by the test."""


def run_check(job: dict, events: Events, resp_fd: int, req_fd: int) -> int:
    """The test's half: the benchmark's prompt (its helpers) and test code run here, never the
    candidate's; ``candidate(...)`` sends the arguments to the other sandbox and returns its
    result rebuilt as plain data (objects only of the classes the prompt defines). The verdict
    goes to the parent on a pipe that only this process holds."""
    responses = LineReader(resp_fd)
    namespace = {"__name__": "__tester__", "__builtins__": builtins}

    def receive():
        line = responses.read()
        if line is None:
            raise CandidateError("the program ended before the tests finished")
        return json.loads(line)

    def verdict(status: str, detail: str = "") -> int:
        events.send(ev="verdict", status=status, detail=detail[:2000])
        return 0

    try:
        exec(_compile(job["prompt"], "prompt.py"), namespace)
        classes = {k: v for k, v in namespace.items() if isinstance(v, type) and v.__module__ == "__tester__"}
        exec(_compile(job["test"], "test.py"), namespace)
    except BaseException as e:
        return verdict("harness", f"the benchmark's test code failed on its own: {_one_line(e)}")
    try:
        hello = receive()
    except CandidateError as e:
        return verdict("error", str(e))
    except (ValueError, PlainError) as e:
        return verdict("error", f"unreadable answer from the program: {_one_line(e)}")
    if "fatal" in hello or not hello.get("ready"):
        return verdict("error", str(hello.get("fatal", "the program did not start"))[:500])

    def candidate(*args, **kwargs):
        message = json.dumps({"a": encode(list(args)), "k": encode(kwargs)}, separators=(",", ":"))
        try:
            _write_all(req_fd, message.encode() + b"\n")
        except OSError:
            raise CandidateError("the program ended before the tests finished") from None
        answer = receive()
        if "error" in answer:
            raise CandidateError(str(answer["error"])[:500])
        if "r" not in answer:
            raise CandidateError("malformed answer from the program")
        return decode(answer["r"], classes)

    try:
        exec(_compile("check(__candidate_proxy__)\n", "<check>"), {**namespace, "__candidate_proxy__": candidate})
    except AssertionError as e:
        return verdict("failed", _one_line(e))
    except CandidateError as e:
        return verdict("error", str(e))
    except PlainError as e:
        return verdict("failed", str(e))
    except RecursionError as e:
        return verdict("error", _one_line(e))
    except BaseException as e:
        return verdict("error", _one_line(e))
    return verdict("passed")


# -------------------------------------------------------------------------------------- main


def _read_job(fd: int) -> dict:
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks).decode("utf-8"))


def run_mode(job: dict, setup: dict, events: Events) -> int:
    mode = job["mode"]
    if mode == "script":
        return run_script(job, events)
    if mode == "calls":
        return run_calls(job, events)
    if mode == "stdio":
        return run_stdio(job, events)
    if mode == "serve":
        return run_serve(job, events, setup["req"], setup["resp"])
    if mode == "check":
        return run_check(job, events, setup["resp"], setup["req"])
    events.send(ev="fatal", kind="error", detail=f"unknown mode {mode!r}")
    return 2


def _close_other_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def main() -> None:
    # Not importable from the sample's code: drop this file's directory from the path.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    # Started with -S: the installed packages are importable, but no .pth file's code runs here.
    import sysconfig

    for key in ("purelib", "platlib"):
        site_dir = sysconfig.get_paths()[key]
        if site_dir not in sys.path and os.path.isdir(site_dir):
            sys.path.append(site_dir)
    setup = json.loads(sys.argv[1])
    events = Events(setup["events"])
    job = _read_job(setup["job"])
    keep = {setup["events"], *(setup[k] for k in ("req", "resp") if setup.get(k) is not None)}
    _close_other_fds(keep)
    libc = _libc()
    report: dict = {"layer": setup["layer"]}
    workdir = os.getcwd()
    if setup["layer"] == "namespaces":
        try:
            report.update(isolate(libc, job.get("isolation", {}), workdir))
        except Exception as e:  # degrade to limits and kills, and say so
            report["error"] = f"{type(e).__name__}: {e}"
    report.update(drop_privileges(libc, setup.get("uid"), setup.get("gid")))
    report.update(set_limits(job.get("limits", {})))
    if setup["layer"] != "namespaces":
        events.send(ev="started", isolation=report)
        sys.exit(run_mode(job, setup, events))
    # The fallback layer: the process that unshared the PID namespace is not in it; the worker
    # (PID 1 there) runs the mode in a session of its own, so kill(0, ...) never reaches us.
    try:
        report["subreaper"] = True if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 else "prctl failed"
    except AttributeError as e:
        report["subreaper"] = f"unavailable: {e}"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.setsid()
            events.send(ev="started", isolation=report)
            code = run_mode(job, setup, events)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            os._exit(code)
    for fd in keep:
        os.close(fd)  # the worker holds the channels; the parent sees EOF when it is gone
    status = _wait_until(pid, None)
    _sweep_descendants()
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF if status is not None else 70)


if __name__ == "__main__":
    main()
