"""What a run may use and what it reports: the limits, the job and the result (plain data, no
behaviour; the rest of the sandbox package and its callers share them)."""

from __future__ import annotations

from dataclasses import dataclass

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
                    event (4 MiB: part of the parent's 64 MiB per-sample bound, see protocol.py;
                    raising it raises that bound). Past either the run is killed and marked
                    ``overflow``.
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
    events_line_bytes: int = 4 * MiB
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
    """What to run: ``config`` is the job for ``worker`` (``mode`` and its options);
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
    overflow:   why the events channel was cut (the sample wrote past a bound), else None.
    malformed:  the sample's own malformed event that ended the run (e.g. nested too deep), else None.
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
    malformed: str | None = None

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
