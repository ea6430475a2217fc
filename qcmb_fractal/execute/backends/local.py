"""The embedded default: a pool of long-lived worker processes on this machine (:class:`WarmPool`).

Each worker runs in its own process group and dies with the driver, so neither a terminal's Ctrl-C nor a
SIGKILLed driver leaves QC programs running.
"""

import argparse
import contextlib
import ctypes
import logging
import math
import os
import shutil
import signal
import tempfile
from concurrent.futures import Future
from pathlib import Path

from pebble import ProcessExpired

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.base import Backend
from qcmb_fractal.execute.pool import WarmPool, forkserver_context, make_scratch
from qcmb_fractal.execute.resources import Resources, apply_worker_limits, check_disk, select_resources
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, shipped_inputs
from qcmb_fractal.plan import FragmentTask, Plan
from qcmb_fractal.plan.inputs import installed_programs

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
SCRATCH_PER_TASK_BYTES = 64 * 2**20  # per running task and n-body level: NWChem HF/sto-3g needs far less


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _reap_dead_worker(future: Future) -> None:
    """A SIGKILLed worker cannot clean up: kill what it started (its process group) so nothing runs on."""
    if future.cancelled():
        return
    exc = future.exception()
    if isinstance(exc, ProcessExpired) and exc.pid:
        _kill_group(exc.pid)


class LocalBackend(Backend):
    name = "local"
    summary = "Worker processes on this machine (the default)."
    shared_options = ("--memory", "--cores-per-task", "--scratch", "--timeout", "--keep-stdout")

    def __init__(
        self,
        workers: int | None = None,
        *,
        memory: float | None = None,
        cores_per_task: int | None = None,
        scratch: str | Path | None = None,
        timeout: float | None = None,
        keep_stdout: bool = False,
    ) -> None:
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise InputError(f"--timeout must be a positive number of seconds, not {timeout}.")
        self.resources: Resources = select_resources(workers, memory, cores_per_task)
        self.context = forkserver_context(self.resources.ncores)  # workers' imports overlap the planning
        self.scratch_parent = Path(scratch) if scratch else Path(tempfile.gettempdir())
        self.timeout = timeout
        self.keep_stdout = keep_stdout
        self.scratch_dir: Path | None = None
        self.pool: WarmPool | None = None
        self._checked_levels: set[int] = set()

    @property
    def workers(self) -> int:
        return self.resources.workers

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--workers", type=int, help="worker processes (default: what cores and memory allow)")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "LocalBackend":
        return cls(
            args.workers,
            memory=args.memory,
            cores_per_task=args.cores_per_task,
            scratch=args.scratch,
            timeout=args.timeout,
            keep_stdout=getattr(args, "keep_stdout", False),
        )

    def start(self, plan: Plan) -> None:
        programs = {entry["program"].lower() for entry in plan.builder.specifications.values()}
        missing = sorted(programs - set(installed_programs()))
        if missing:
            raise InputError(
                f"program {', '.join(missing)} is not installed on this machine (QCEngine finds "
                f"{', '.join(installed_programs()) or 'none'}); install it or use a backend whose workers have it."
            )
        self.scratch_dir = make_scratch(self.scratch_parent, SCRATCH_PER_TASK_BYTES * self.workers)
        res = self.resources
        logger.info(
            "local backend: %d workers × %d cores, %.2f GiB per task, scratch %s",
            res.workers,
            res.ncores,
            res.memory,
            self.scratch_dir,
        )
        config = WorkerConfig(
            **shipped_inputs(plan),
            ncores=res.ncores,
            memory=res.memory,
            scratch_directory=str(self.scratch_dir),
            log_level=logging.getLogger().getEffectiveLevel(),
            keep_stdout=self.keep_stdout,
            environ=dict(os.environ),
        )
        self.pool = WarmPool(res.workers, config, _init_named_worker, self.context)

    @property
    def capacity(self) -> int:
        """Keep two tasks per worker queued: workers never wait, and the runner never has to watch
        thousands of futures at once (``concurrent.futures.wait`` is linear in them, which made the
        main process compete with the workers for CPU on 1350-task runs)."""
        return 2 * self.workers

    def _check_level_disk(self, level: int) -> None:
        """Room for every worker running a task of this level before the level starts, and for one such
        task before each later submit (a retry after a disk-full failure stops the run instead of burning
        attempts). A statvfs call, so cheap enough per task."""
        if self.scratch_dir is None:
            return
        first = level not in self._checked_levels
        check_disk(self.scratch_dir, SCRATCH_PER_TASK_BYTES * level * (self.workers if first else 1))
        self._checked_levels.add(level)

    def submit(self, task: FragmentTask) -> Future:
        self._check_level_disk(task.level)
        return self._schedule(task)

    def _schedule(self, task: FragmentTask) -> Future:
        if self.pool is None:
            raise RuntimeError("LocalBackend.start() must run before submit()")
        future = self.pool.schedule(task, timeout=self.timeout)
        future.add_done_callback(_reap_dead_worker)
        return future

    def submit_many(self, tasks: list[FragmentTask]) -> list[Future]:
        for level in sorted({t.level for t in tasks}):  # refuse before any of the batch starts
            self._check_level_disk(level)
        return [self._schedule(t) for t in tasks]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            self.pool.close(cancel=cancel_futures or not wait)
            self.pool = None
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None


def _die_with_children(signum: int, _frame: object) -> None:  # pragma: no cover - ends by os._exit, unrecorded
    """Pebble stops a worker (timeout, shutdown) with SIGTERM: take the QC program down with it."""
    _kill_group(os.getpid())
    os._exit(128 + signum)


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Workers live in their own process groups, so a signal to the driver's group no longer reaches them:
    if their parent dies in any way (SIGKILL, OOM killer, a closed terminal), the kernel sends ``signum``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def _init_named_worker(config: WorkerConfig) -> None:
    # Own process group: a terminal's Ctrl-C reaches only the driver, which stops workers in order, and
    # the group lets a dying worker's programs be killed with it instead of running on as orphans.
    os.setpgrp()
    signal.signal(signal.SIGTERM, _die_with_children)
    die_with_parent()
    apply_worker_limits(config.memory)
    init_worker(config.model_copy(update={"name": f"local-worker-{os.getpid()}"}))
