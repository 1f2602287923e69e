"""A run's claim on its output: one run per OUT at a time, and OUT never one of the files it reads.

Lock: ``OUT.lock`` beside OUT holds an exclusive ``flock`` for the whole life of the process that
took it. The kernel drops it when that process ends, however it ends (``kill -9`` included), so no
stale lock is ever left to clean up; the file itself stays, holding the pid of the last owner,
which a refused run names. ``asap merge`` takes the lock of every shard it reads and of its OUT.

Identity: a path names the same file as another when both exist and share device and inode (a
symlink, a hard link, ``./a`` and ``a``), or, for a file not yet created, when their resolved paths
are equal.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["OutputBusy", "claim_output", "release", "release_all", "same_file"]


class OutputBusy(ValueError):
    """Another live process holds OUT's lock; one line naming it."""


# Locks this process holds, by OUT's resolved path: a run takes its lock early (before a model
# loads) and again when it opens OUT; both must be the same claim, not a conflict with itself.
_held: dict[str, int] = {}


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name.rstrip("/") + ".lock")


def claim_output(out: str | os.PathLike, *, purpose: str = "writes") -> Path:
    """Take OUT's lock for the rest of this process's life (idempotent), or raise OutputBusy naming
    the process that holds it."""
    path = lock_path(out)
    key = str(path.resolve())
    if key in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        try:
            owner = path.read_text(encoding="ascii").strip() or "unknown"
        except OSError:
            owner = "unknown"
        raise OutputBusy(f"{out} is in use by another asap run (pid {owner}); wait for it to end or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    _held[key] = fd
    return path


def release(out: str | os.PathLike) -> None:
    """Drop OUT's lock if this process holds it (a library caller's run has ended)."""
    fd = _held.pop(str(lock_path(out).resolve()), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Drop every lock this process holds (the OS also does so when the process ends)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (see the module docstring)."""
    a, b = Path(a), Path(b)
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return a.resolve() == b.resolve()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
