"""The embedded default: a pool of long-lived worker processes on this machine.

Pebble's pool (not ``concurrent.futures``) because it kills a task that outlives its timeout and
replaces a worker that dies, where the standard pool would break as a whole. Workers are spawned, not
forked, so no QC library state leaks into them, and they live for the whole run.
"""

import argparse
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path

import psutil
from pebble import ProcessPool

from qcmb_fractal.execute.base import Backend
from qcmb_fractal.execute.resources import Resources, check_disk, select_resources
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, run_fragment
from qcmb_fractal.plan import FragmentTask, Plan

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = "qcmb-scratch-"
SCRATCH_PER_TASK_BYTES = 64 * 2**20


def sweep_stale_scratch(parent: Path) -> None:
    """Remove scratch trees left by runs that were SIGKILLed (their pid is gone)."""
    for path in parent.glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int(path.name[len(SCRATCH_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if not psutil.pid_exists(pid):
            logger.info("removing stale scratch %s of dead run %d", path, pid)
            shutil.rmtree(path, ignore_errors=True)


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        *,
        memory: float | None = None,
        cores_per_task: int | None = None,
        scratch: str | Path | None = None,
        timeout: float | None = None,
    ) -> None:
        self.resources: Resources = select_resources(workers, memory, cores_per_task)
        self.scratch_parent = Path(scratch) if scratch else Path(tempfile.gettempdir())
        self.timeout = timeout
        self.scratch_dir: Path | None = None
        self.pool: ProcessPool | None = None

    @property
    def workers(self) -> int:
        return self.resources.workers

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--workers", type=int, help="worker processes (default: what cores and memory allow)")
        group.add_argument("--memory", type=float, help="memory per task in GiB (default: free memory / workers)")
        group.add_argument("--cores-per-task", type=int, help="cores per task (default: cores / workers)")
        group.add_argument("--scratch", help="parent directory for scratch files (default: the system's temp)")
        group.add_argument("--timeout", type=float, help="seconds before a single calculation is killed")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "LocalBackend":
        return cls(
            args.workers,
            memory=args.memory,
            cores_per_task=args.cores_per_task,
            scratch=args.scratch,
            timeout=args.timeout,
        )

    def start(self, plan: Plan) -> None:
        self.scratch_parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_scratch(self.scratch_parent)
        check_disk(self.scratch_parent, SCRATCH_PER_TASK_BYTES * self.workers)
        self.scratch_dir = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=self.scratch_parent))
        res = self.resources
        logger.info(
            "local backend: %d workers × %d cores, %.2f GiB per task, scratch %s",
            res.workers,
            res.ncores,
            res.memory,
            self.scratch_dir,
        )
        input_json = plan.input.model_dump_json()
        self.pool = ProcessPool(
            max_workers=res.workers,
            context=multiprocessing.get_context("spawn"),
            initializer=_init_named_worker,
            initargs=(
                WorkerConfig(
                    input_json=input_json,
                    ncores=res.ncores,
                    memory=res.memory,
                    scratch_directory=str(self.scratch_dir),
                    log_level=logging.getLogger().getEffectiveLevel(),
                ),
            ),
        )

    @property
    def capacity(self) -> int:
        """Keep two tasks per worker queued: workers never wait, and the runner never has to watch
        thousands of futures at once (``concurrent.futures.wait`` is linear in them, which made the
        main process compete with the workers for CPU on 1350-task runs)."""
        return 2 * self.workers

    def submit(self, task: FragmentTask) -> Future:
        if self.pool is None:
            raise RuntimeError("LocalBackend.start() must run before submit()")
        return self.pool.schedule(run_fragment, args=(task,), timeout=self.timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            if cancel_futures or not wait:
                self.pool.stop()
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None


def _init_named_worker(config: WorkerConfig) -> None:
    init_worker(config.model_copy(update={"name": f"local-worker-{os.getpid()}"}))


BACKEND = LocalBackend
