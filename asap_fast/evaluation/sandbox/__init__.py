"""Run untrusted, model-written Python so that it cannot harm the machine, reach the host, forge
its verdict or sink the run.

A run starts ``python -I worker.py`` inside one isolation layer, picked once per process:

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
a total cap and decoded within bounds on size, values and depth (``protocol.py``: the trust
boundary, where the sample's bytes become the parent's data), stdout/stderr are captured with a cap; the deadline is kept here, from outside the
sample (a stopped or killed process inside cannot stretch it), and at the end the whole run is
killed: through its cgroup when there is one, its process group and, for bwrap, the PID namespace
that dies with it. Memory is capped per process (RLIMIT_AS) and, where a cgroup can be made (v2
with the memory controller delegated, else v1), per sample over all its processes, with a
``pids`` limit too. Host directories (the fallback's) are removed by ``remove_tree``, which
survives any depth and mode and never follows a link.
"""

from __future__ import annotations

from asap_fast.evaluation.sandbox.isolation import _Cgroup, bwrap_path, remove_tree
from asap_fast.evaluation.sandbox.limits import (
    GiB,
    MiB,
    SandboxJob,
    SandboxLimits,
    SandboxResult,
)
from asap_fast.evaluation.sandbox.protocol import (
    EVENT_DEPTH_MAX,
    EVENT_VALUES_MAX,
    EventReader,
    MalformedEvent,
)
from asap_fast.evaluation.sandbox.runner import (
    _bwrap_works,
    isolation_report,
    run_job,
    run_jobs,
    run_pair,
    run_program,
)

__all__ = [
    "_Cgroup",  # for the tests: what the machine allows
    "_bwrap_works",
    "EVENT_DEPTH_MAX",
    "EVENT_VALUES_MAX",
    "EventReader",
    "GiB",
    "MalformedEvent",
    "MiB",
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
