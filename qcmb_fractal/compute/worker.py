"""What runs inside the manager's warm worker processes, and the pool that keeps them warm.

QCFractal's manager starts ``python3 run_scripts/qcengine_compute.py TMPFILE`` per task, paying Python,
QCEngine's import and its CPU probe (2-6 s) every time. Here each worker pays them once and then runs that
same script in-process, so what it prints (the result JSON) is byte for byte what QCFractal's manager returns.
"""

import contextlib
import io
import json
import logging
import multiprocessing
import os
import runpy
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import psutil
from qcfractalcompute.apps.models import AppTaskResult
from qcfractalcompute.compress import compress_result
from qcfractalcompute.config import ExecutorConfig
from qcfractalcompute.run_scripts import get_script_path
from qcportal.compression import CompressionEnum, decompress

from qcmb_fractal.execute.pool import machine_globals
from qcmb_fractal.execute.worker import limit_threads

logger = logging.getLogger(__name__)

# A task that was in a worker when the pool broke is retried in a fresh pool this many times; a program that
# takes its worker down with it every time ends as a failed task with CRASH_MESSAGE.
CRASH_RETRIES = 1
CRASH_MESSAGE = (
    "qcmb-fractal-compute: the worker process running this task died {times} time(s) "
    "(the program crashed, was killed or ran out of memory)"
)


def task_config(config: ExecutorConfig) -> dict[str, Any]:
    """QCEngine's task_config exactly as qcfractalcompute's qcengine_conda_app builds it."""
    scratch = config.scratch_directory
    if scratch:
        scratch = os.path.expanduser(os.path.expandvars(scratch))
    memory = config.qcengine_memory_per_worker
    return {
        "memory": memory if memory is not None else config.memory_per_worker,
        "ncores": config.cores_per_worker,
        "scratch_directory": scratch,
    }


def init_worker(config: ExecutorConfig, name: str, machine: dict[str, Any] | None = None) -> None:
    """Once per worker: thread limits, the working directory QCFractal's subprocess gets, QCEngine warmed up
    with the machine values the manager read once (``machine_globals``), so no worker runs the CPU probe."""
    limit_threads(config.cores_per_worker)
    multiprocessing.current_process().name = f"{name}-worker-{os.getpid()}"
    if config.scratch_directory:
        os.chdir(os.path.expandvars(config.scratch_directory))
    import qcengine

    if machine is not None:
        qcengine.config._global_values = dict(machine)  # QCEngine's per-process cache of get_global()
    qcengine.get_config(task_config=task_config(config))


def run_qcengine(function_kwargs_compressed: bytes, config: ExecutorConfig) -> AppTaskResult:
    """qcengine_conda_app without the subprocess: QCFractal's run script, run as ``__main__`` in this process."""
    kwargs = decompress(function_kwargs_compressed, CompressionEnum.zstd)
    kwargs = {**kwargs, "task_config": task_config(config)}
    script = get_script_path("qcengine_compute.py")
    out = io.StringIO()
    start = time.time()
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(kwargs, f)
        f.flush()
        saved_argv = sys.argv
        sys.argv = [script, f.name]
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_path(script, run_name="__main__")
            ret = json.loads(out.getvalue()) if out.getvalue() else {}
        except BaseException as exc:  # the subprocess would exit non-zero: report it the same way
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = f"Subprocess failed with error code 1\nstdout: {out.getvalue()}\nstderr: {traceback.format_exc()}"
            ret = {"success": False, "error": {"error_type": "RuntimeError", "error_message": msg}}
        finally:
            sys.argv = saved_argv
    return AppTaskResult(success=ret["success"], walltime=time.time() - start, result_compressed=compress_result(ret))


def failed_result(error_type: str, message: str) -> AppTaskResult:
    """A failed task in the shape QCFractal's manager returns for a lost worker."""
    failed = {"success": False, "error": {"error_type": error_type, "error_message": message}}
    return AppTaskResult(success=False, walltime=0.0, result_compressed=compress_result(failed))


def _cancel(future: Future) -> None:
    """Cancel a future nobody runs, waking ``concurrent.futures.wait`` callers as the executors' own do."""
    if not future.done() and future.cancel():
        future.set_running_or_notify_cancel()


class WarmPool:
    """A spawn-context process pool whose futures always end in an :class:`AppTaskResult`, never an exception.

    A worker that dies (segfault, OOM kill) breaks a ProcessPoolExecutor for every task in it; the pool is
    rebuilt and those tasks are retried, so only a task that crashes again is reported failed.
    """

    def __init__(self, config: ExecutorConfig, max_workers: int, name: str, on_done: Callable[[], None]) -> None:
        self.config, self.max_workers, self.name, self.on_done = config, max_workers, name, on_done
        self._lock = threading.Lock()
        self._closed = False
        self._machine = machine_globals()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.config, self.name, self._machine),
        )

    def warm_up(self) -> list[Future]:
        """Start every worker now, not when the first task arrives; the futures finish once they are ready."""
        return [self._pool.submit(os.getpid) for _ in range(self.max_workers)]

    def submit(self, fn: Callable[..., AppTaskResult], *args: Any, **kwargs: Any) -> Future:
        outer: Future = Future()
        self._submit(outer, 0, fn, args, kwargs)
        return outer

    def _submit(self, outer: Future, crashes: int, fn: Callable, args: tuple, kwargs: dict) -> None:
        with self._lock:
            pool = self._pool
        try:
            inner = pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self._replace(pool)
            self._submit(outer, crashes, fn, args, kwargs)
            return
        except RuntimeError:  # shut down: the manager is stopping and the server recycles this task
            _cancel(outer)
            self.on_done()
            return
        outer.inner = inner  # type: ignore[attr-defined]
        inner.add_done_callback(lambda f: self._finished(f, pool, outer, crashes, fn, args, kwargs))

    def _finished(self, inner: Future, pool, outer: Future, crashes: int, fn, args, kwargs) -> None:
        if inner.cancelled() or self._closed:  # a stopping manager's task: the server recycles it
            _cancel(outer)
        elif isinstance(inner.exception(), BrokenProcessPool):
            self._replace(pool)
            if crashes < CRASH_RETRIES:
                logger.warning("%s: a worker died; retrying its task in a fresh worker", self.name)
                self._submit(outer, crashes + 1, fn, args, kwargs)
                return
            outer.set_result(failed_result("WorkerCrash", CRASH_MESSAGE.format(times=crashes + 1)))
        elif inner.exception() is not None:
            exc = inner.exception()
            message = "Error getting task result:\n" + "".join(traceback.format_exception(exc))
            outer.set_result(failed_result(type(exc).__name__, message))
        else:
            outer.set_result(inner.result())
        self.on_done()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                logger.warning("%s: worker pool broke; starting a new one", self.name)
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def cancel_unstarted(self, futures: list[Future]) -> list[Future]:
        """Cancel what no worker has picked up; returns the futures that were cancelled."""
        return [f for f in futures if getattr(f, "inner", None) is not None and f.inner.cancel() and f.cancelled()]

    def shutdown(self) -> None:
        """Stop at once: running tasks are abandoned (the server recycles them when the manager deactivates)."""
        with self._lock:
            self._closed = True
            pool = self._pool
        workers = []
        # ProcessPoolExecutor names its worker processes only in ``_processes`` (stable since Python 3.2); a
        # worker still starting up has told nobody else its pid, and one left alive would run its queued task.
        for pid in list(pool._processes or {}):
            with contextlib.suppress(psutil.Error):
                worker = psutil.Process(pid)
                workers += [worker, *worker.children(recursive=True)]
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(workers, timeout=10)
