"""An exclusive lock on a run's OUT for the run's whole life.

The lock is ``flock(LOCK_EX)`` on ``OUT.lock`` (a side file that is never deleted: removing a
locked file would let a second run lock a new inode while the first still writes). The kernel
drops an flock when its holder exits, however it exits (``kill -9`` included), so a stale lock
never outlives its run. The holder writes its pid into the file so that a refused run can name it.
`asap merge` takes the same lock on each shard OUT while it reads them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class OutputLocked(ValueError):
    """Another live process holds OUT; the message is one line naming its pid."""


class RunLock:
    """Hold with ``with RunLock(out):`` or ``acquire()`` / ``release()``."""

    def __init__(self, out: str | os.PathLike):
        out = Path(out)
        self.path = out.with_name(out.name + ".lock")
        self.out = out
        self.fd: int | None = None

    def acquire(self, *, what: str = "a run") -> RunLock:
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
            finally:
                os.close(fd)
            pid = holder[0] if holder else "unknown"
            detail = " ".join(holder[1:]) or "another asap run"
            raise OutputLocked(f"{self.out} is in use by {detail} (pid {pid}); wait for it to end or choose "
                               f"another OUT") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
