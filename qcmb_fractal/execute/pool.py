"""The execution core every backend that computes here shares: scratch, warm workers, the threaded inbox.

Workers start from a fresh interpreter (spawned, or forked from a fork server), never forked from the
driver, so no QC library state leaks into them, and they live for the whole run: each pays Python's and
QCEngine's start-up once. QCEngine's per-machine values (whose CPU probe through py-cpuinfo costs ~1 s) are
read once by the process that starts the workers and handed to them.
"""

import getpass
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil
from pebble import ProcessPool

from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute.resources import check_disk
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, run_fragment
from qcmb_fractal.plan import FragmentTask

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = "qcmb-scratch-"

T = TypeVar("T")


def scratch_prefix() -> str:
    """Name prefix of this process's scratch directory: pid plus host, so scratch on a shared filesystem
    is only ever swept by the host that made it (see sweep_stale_scratch)."""
    return f"{SCRATCH_PREFIX}{os.getpid()}-{socket.gethostname()}-"


def sweep_stale_scratch(parent: Path) -> None:
    """Remove scratch trees left by runs on this host that were SIGKILLed (their pid is gone)."""
    host = socket.gethostname()
    for path in parent.glob(f"{SCRATCH_PREFIX}*"):
        pid_text, _, rest = path.name[len(SCRATCH_PREFIX) :].partition("-")
        if not pid_text.isdigit() or not rest.startswith(f"{host}-") or path.is_symlink():
            continue
        if not psutil.pid_exists(int(pid_text)):
            logger.info("removing stale scratch %s of dead run %s", path, pid_text)
            shutil.rmtree(path, ignore_errors=True)


def make_scratch(parent: Path, need_bytes: int = 0) -> Path:
    """A fresh scratch directory of this process under ``parent``, after sweeping dead runs' leftovers;
    an unusable ``parent`` is an InputError naming it."""
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--scratch {parent} is not a directory; give a directory for scratch files.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create scratch directory {parent}: {err.strerror}.") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"scratch directory {parent} is not writable; choose another --scratch.")
    sweep_stale_scratch(parent)
    if need_bytes:
        check_disk(parent, need_bytes)
    try:
        return Path(tempfile.mkdtemp(prefix=scratch_prefix(), dir=parent))
    except OSError as err:
        raise InputError(f"cannot create scratch files under {parent}: {err.strerror}.") from None


def _cpu_brand() -> str | None:
    """The CPU's name as the kernel read it from CPUID (what py-cpuinfo reports as ``brand_raw`` on x86)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_globals() -> dict[str, Any]:
    """QCEngine's per-machine values (``qcengine.config.get_global()``) for workers started from here.

    Same keys and rules as QCEngine; the CPU name comes from /proc/cpuinfo where it is there, instead of
    py-cpuinfo's ~1 s probe, which is used only elsewhere. Read in the process that starts the workers, so
    on a cluster each node's starter reads its own node.
    """
    brand = _cpu_brand()
    if brand is None:
        from qcengine.config import get_global

        return get_global()
    process = psutil.Process()
    if hasattr(process, "cpu_affinity"):
        ncores = len(process.cpu_affinity())
        physical = psutil.cpu_count(logical=False)
        if ncores == psutil.cpu_count(logical=True) and physical is not None:
            ncores = physical  # an affinity of every logical core is no deliberate setting: QCEngine's rule
    else:  # pragma: no cover - psutil lacks cpu_affinity only off Linux and Windows
        ncores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True)
    return {
        "hostname": socket.gethostname(),
        "memory": round(psutil.virtual_memory().available / (1024**3), 3),
        "username": getpass.getuser(),
        "ncores": ncores,
        "nnodes": 1,
        "cpuinfo": {"brand_raw": brand},
        "cpu_brand": brand,
    }


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def forkserver_context(ncores: int) -> BaseContext:
    """A fork server for workers, started now: it imports what workers need while the caller goes on.

    The server is a fresh interpreter (nothing of the caller's state leaks into workers, as with spawn);
    workers forked from it skip the ~1 s of imports each spawned worker pays. Libraries it loads see thread
    limits of ``ncores``. The server dies with the thread that started it (PR_SET_PDEATHSIG), so call this
    from the thread that owns the run, normally the main one. Where there is no fork server (not POSIX),
    workers are spawned.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qcmb_fractal.execute.forkserver_preload"])
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(ncores)))
    try:
        with _sigint_ignored_by_child():
            forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return context


@contextmanager
def _sigint_ignored_by_child() -> Iterator[None]:
    """A process started inside ignores SIGINT from its first instruction; this one loses none.

    The fork server shares the driver's process group, so a terminal's Ctrl-C reaches it too, and while it
    imports the preload it would die with a traceback on stderr. An ignored disposition survives exec; the
    signal stays blocked here meanwhile, so a Ctrl-C in that moment is delivered to this process after.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


MAX_POOL_RESTARTS = 3


def _started() -> None:
    """A no-op task: scheduling it makes the pool spawn its workers now, not at the first real task."""


class WarmPool:
    """Long-lived workers that run :func:`run_fragment`, each set up once by ``initializer``; spawned unless
    ``context`` says otherwise (:func:`forkserver_context`).

    Pebble's pool (not ``concurrent.futures``) because it kills a task that outlives its timeout and
    replaces a worker that dies in a task, where the standard pool would break as a whole. A worker that
    dies between tasks (the OOM killer, a stray ``kill``) while no task runs still breaks pebble's pool:
    then a new pool takes its place, at most :data:`MAX_POOL_RESTARTS` times a run.
    """

    def __init__(
        self,
        workers: int,
        config: WorkerConfig,
        initializer: Callable[[WorkerConfig], None] = init_worker,
        context: BaseContext | None = None,
    ) -> None:
        if config.machine is None:
            config = config.model_copy(update={"machine": machine_globals()})
        self._arguments = {
            "max_workers": workers,
            "context": context or multiprocessing.get_context("spawn"),
            "initializer": initializer,
            "initargs": (config,),
        }
        self.restarts = 0
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPool:
        pool = ProcessPool(**self._arguments)
        pool.schedule(_started)
        return pool

    def schedule(self, task: FragmentTask, timeout: float | None = None) -> Future:
        try:
            return self.pool.schedule(run_fragment, args=(task,), timeout=timeout)
        except RuntimeError:
            if self.pool.active:  # refused for another reason: closed by us
                raise
        self._replace_broken_pool()
        return self.pool.schedule(run_fragment, args=(task,), timeout=timeout)

    def _replace_broken_pool(self) -> None:
        if self.restarts >= MAX_POOL_RESTARTS:
            raise RunFailed(
                f"the worker processes died {self.restarts + 1} times without a calculation to blame (killed, or "
                "out of memory?); see the log. Finished calculations are kept: run the same command again.",
                {},
            )
        self.restarts += 1
        logger.warning(
            "every worker died between calculations (killed, or out of memory?): starting new workers "
            "(%d of at most %d restarts)",
            self.restarts,
            MAX_POOL_RESTARTS,
        )
        self.pool.stop()
        self.pool.join()
        self.pool = self._new_pool()

    def close(self, *, cancel: bool) -> None:
        """Stop the workers: at once (``cancel``), or after the tasks already scheduled."""
        if cancel:
            self.pool.stop()
        else:
            self.pool.close()
        self.pool.join()


class Inbox(Generic[T]):
    """Work handed from the runner's thread to a backend's own I/O thread, and the events that wake or stop it.

    ``take`` clears the wake-up before it empties the box, so a ``put`` during the thread's work is never
    missed: the thread's next ``wait`` returns at once.
    """

    def __init__(self) -> None:
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.stopped = threading.Event()

    def put(self, items: Iterable[T]) -> None:
        with self._lock:
            self._items.extend(items)
        self._wake.set()

    def take(self) -> list[T]:
        self._wake.clear()
        with self._lock:
            items, self._items = self._items, []
        return items

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()
