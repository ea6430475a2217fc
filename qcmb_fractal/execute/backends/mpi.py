"""MPI backend: ``mpiexec -n N qcmb-fractal run INPUT --backend mpi``; rank 0 drives, ranks 1..N-1 compute.

Rank 0 runs the ordinary CLI/Runner (checkpoint, retries, progress) and one communication thread that
makes every MPI call after start-up, so the library only needs ``MPI_THREAD_SERIALIZED``. Work is
pulled, not split: each worker rank holds a small window of tasks (sized so one window is ~0.25 s of
work), returns results in batches when it reaches its last queued task, and is refilled at once, so a
rank that finishes early simply gets more.

Each worker rank runs its calculations in one spawned child process (a pebble pool of one), because
MPI launchers abort the whole job when a rank dies: a segfault, an out-of-memory kill or a timeout in
a calculation then costs one attempt (retried on another rank) instead of the job. If a rank itself
dies, MPICH's and Open MPI's launchers end the run; rank 0 has committed every finished result to the
checkpoint, so the same command resumes with nothing recomputed. Under Open MPI >= 5 started with
``mpiexec --with-ft ulfm`` the run instead goes on: the dead rank's calculations move to the others.

Not ``mpi4py.futures``: its workers are fixed before the input is read (the CLI creates the backend
first), it returns each result in its own round trip, cannot keep a retry off the rank that failed
it, and does not survive a dead rank.
"""

import argparse
import atexit
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from qcmb_fractal.drive.state import FailureKind
from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.base import Backend, TaskOutcome
from qcmb_fractal.execute.pool import Inbox, WarmPool, make_scratch
from qcmb_fractal.execute.resources import select_resources
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, shipped_inputs
from qcmb_fractal.plan import FragmentTask, Plan

logger = logging.getLogger(__name__)

TAG_START, TAG_READY, TAG_TASKS, TAG_RESULTS, TAG_FATAL, TAG_STOP, TAG_BYE = range(1, 8)
TARGET_BATCH_SECONDS = 0.25  # work per window: large enough to amortize a round trip, small for balance
MAX_WINDOW = 64
RESULT_FLUSH_SECONDS = 1.0  # a worker returns what it has at least this often, for progress and checkpoint
IDLE_POLL_SECONDS = 0.005  # MPICH spins in blocking calls; probing with a short sleep leaves cores to compute
RELEASE_TIMEOUT_SECONDS = 120  # a worker finishing its current calculation must not hang the job's end forever

# Variables a launcher (MPICH's Hydra, Open MPI's PRRTE) sets in each rank. A program that a calculation
# starts (NWChem is itself an MPI program) would otherwise try to join this job or load this job's MPI.
# Users' own OMPI_MCA_* settings go too: they cannot be told apart from the launcher's.
LAUNCHER_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPI_LOCAL", "OMPI_", "OPAL_", "PRTE_")


def launcher_free_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the launcher's variables, and without the library path Open MPI's launcher prepends."""
    out = {k: v for k, v in env.items() if not k.startswith(LAUNCHER_ENV_PREFIXES)}
    prefix = env.get("OPAL_PREFIX")
    if prefix and "LD_LIBRARY_PATH" in out:
        kept = [p for p in out["LD_LIBRARY_PATH"].split(os.pathsep) if p and not p.startswith(prefix)]
        if kept:
            out["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
        else:
            del out["LD_LIBRARY_PATH"]
    return out


class StartMessage(BaseModel):
    """Rank 0's run settings; each worker rank turns them into its own resources."""

    input_json: str
    sources: dict[str, str] = {}
    memory: float | None = None
    cores_per_task: int | None = None
    scratch: str | None = None
    timeout: float | None = None
    log_level: int = logging.WARNING
    keep_stdout: bool = False


class ReadyMessage(BaseModel):
    """A worker rank's answer to start: where it runs and with what, or why it cannot."""

    rank: int
    name: str
    host: str
    ncores: int = 0
    memory: float = 0.0
    error: str | None = None


def _mpi() -> Any:
    """Import mpi4py on demand so the CLI offers this backend's options even where MPI is absent."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise InputError(
            f"the mpi backend needs mpi4py and an MPI library ({err}); install them with "
            "pip install 'qcmb-fractal[mpi]' or build mpi4py against your cluster's MPI."
        ) from err
    return MPI


def rank_name(rank: int) -> str:
    return f"mpi-rank-{rank}"


def is_process_failure(MPI: Any, exc: BaseException) -> bool:
    """A peer died and the MPI library survived it (Open MPI >= 5 under ``mpiexec --with-ft ulfm``)."""
    failed = {getattr(MPI, "ERR_PROC_FAILED", None), getattr(MPI, "ERR_PROC_FAILED_PENDING", None)} - {None}
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in failed


class MPIBackend(Backend):
    """Construct on every rank; rank 0 uses it as a backend, the others call :meth:`serve`."""

    name = "mpi"
    summary = "Under mpiexec -n N: rank 0 drives, the other N-1 ranks compute."
    shared_options = ("--memory", "--cores-per-task", "--scratch", "--timeout", "--keep-stdout")

    def __init__(
        self,
        *,
        memory: float | None = None,
        cores_per_task: int | None = None,
        scratch: str | Path | None = None,
        timeout: float | None = None,
        keep_stdout: bool = False,
    ) -> None:
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        if self.size < 2:
            raise InputError(
                "the mpi backend needs at least 2 MPI ranks (rank 0 drives, the others compute): run "
                "mpiexec -n N qcmb-fractal run INPUT --backend mpi with N >= 2, or use --backend local."
            )
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            raise InputError(
                "the MPI library was initialised below MPI_THREAD_SERIALIZED; qcmb-fractal's MPI backend "
                "needs it (mpi4py requests MPI_THREAD_MULTIPLE unless mpi4py.rc.threads is changed)."
            )
        multiprocessing.current_process().name = rank_name(self.rank)
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.node_ranks = [int(r) for r in node.allgather(self.rank)]
        node.Free()
        self.memory = memory
        self.cores_per_task = cores_per_task
        self.scratch = str(scratch) if scratch else None
        self.timeout = timeout
        self.keep_stdout = keep_stdout
        self.workers = self.size - 1
        self._inbox: Inbox[tuple[FragmentTask, Future]] = Inbox()
        self._thread: threading.Thread | None = None
        self._released = False
        self._error: BaseException | None = None
        self._hub: _Hub | None = None
        if self.rank == 0:
            # If rank 0 ends before start()/shutdown() (bad input, a crash), the worker ranks still wait
            # for orders; release them so the job ends instead of hanging in MPI_Finalize.
            atexit.register(self.shutdown, wait=False, cancel_futures=True)

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "MPIBackend":
        if getattr(args, "workers", None) is not None:
            raise InputError(
                "--workers does not apply to --backend mpi: the workers are the ranks of mpiexec -n N, less one."
            )
        backend = cls(
            memory=getattr(args, "memory", None),
            cores_per_task=getattr(args, "cores_per_task", None),
            scratch=getattr(args, "scratch", None),
            timeout=getattr(args, "timeout", None),
            keep_stdout=getattr(args, "keep_stdout", False),
        )
        if not backend.is_driver:
            sys.exit(backend.serve())
        return backend

    # ---- rank 0 -------------------------------------------------------------------------------------

    def start(self, plan: Plan) -> None:
        if not self.is_driver:
            raise RuntimeError("MPIBackend.start() runs on rank 0 only; other ranks call serve()")
        if self._thread is not None:
            raise RuntimeError("MPIBackend.start() was already called")
        select_resources(1, self.memory, self.cores_per_task)  # refuse impossible values before the workers do
        message = StartMessage(
            **shipped_inputs(plan),
            memory=self.memory,
            cores_per_task=self.cores_per_task,
            scratch=self.scratch,
            timeout=self.timeout,
            log_level=logging.getLogger().getEffectiveLevel(),
            keep_stdout=self.keep_stdout,
        )
        for dest in range(1, self.size):
            self.comm.send(message, dest=dest, tag=TAG_START)
        ready = [self.comm.recv(source=dest, tag=TAG_READY) for dest in range(1, self.size)]
        errors = [f"rank {r.rank} on {r.host}: {r.error}" for r in ready if r.error]
        if errors:
            self.shutdown(wait=False, cancel_futures=True)
            raise InputError("MPI worker ranks could not start:\n" + "\n".join(errors))
        hosts = sorted({r.host for r in ready})
        logger.info(
            "mpi backend: %d worker ranks on %d node(s) (%s); per task %s",
            len(ready),
            len(hosts),
            ", ".join(hosts),
            ", ".join(sorted({f"{r.ncores} cores, {r.memory:.2f} GiB" for r in ready})),
        )
        self._hub = _Hub(self.comm, self.MPI, ready)
        self._thread = threading.Thread(target=self._communicate, name="mpi-comm", daemon=True)
        self._thread.start()

    def submit(self, task: FragmentTask) -> Future:
        return self.submit_many([task])[0]

    def submit_many(self, tasks: list[FragmentTask]) -> list[Future]:
        if self._thread is None or self._inbox.stopped.is_set():
            raise RuntimeError("MPIBackend.start() must run (on rank 0) before submit()")
        if self._error is not None:
            raise RuntimeError(f"the MPI communication thread failed: {self._error}")
        futures: list[Future] = [Future() for _ in tasks]
        self._inbox.put(zip(tasks, futures, strict=True))
        return futures

    def _communicate(self) -> None:
        """The only place MPI is called while a run is on."""
        hub = self._hub
        assert hub is not None
        try:
            while not self._inbox.stopped.is_set():
                moved = self._inbox.take()
                hub.queue.extend(moved)
                busy = hub.receive() | hub.dispatch() | bool(moved)
                if not busy:
                    self._inbox.wait(IDLE_POLL_SECONDS)
        except BaseException as exc:  # every future must resolve, or the Runner waits forever
            logger.exception("MPI communication thread failed")
            self._error = exc
            hub.fail_all(f"MPI communication failed: {exc}")
        finally:
            hub.queue.extend(self._inbox.take())
            hub.fail_all("the MPI backend was shut down before this calculation ran")
            hub.release_workers()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.rank != 0 or self._released:
            return
        self._released = True
        if self._thread is not None and self._hub is not None:
            if wait and not cancel_futures:
                while self._thread.is_alive() and self._hub.busy():
                    time.sleep(IDLE_POLL_SECONDS)
            self._inbox.stop()
            self._thread.join()
        else:
            _Hub(self.comm, self.MPI, []).release_workers(range(1, self.size))

    # ---- worker ranks -------------------------------------------------------------------------------

    def serve(self) -> int:
        """Compute what rank 0 hands out until it says stop; returns the process exit code."""
        if self.is_driver:
            raise RuntimeError("rank 0 drives; serve() is for the other ranks")
        # Ctrl-C reaches every rank; rank 0 alone decides, and stops the workers after saving what finished.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return _WorkerRank(self).run()


class _Peer:
    def __init__(self, ready: ReadyMessage) -> None:
        self.rank = ready.rank
        self.name = ready.name
        self.alive = True  # False once it stopped (reported a fatal error) or died
        self.dead = False
        self.outstanding: dict[str, tuple[FragmentTask, Future]] = {}
        self.mean_task_seconds: float | None = None  # this rank's own pace: a straggler must not hoard work

    @property
    def window(self) -> int:
        """Tasks to hold: one running, one queued, more if that is less than ~0.25 s of this rank's work."""
        if self.mean_task_seconds is None:
            return 2
        return max(2, min(MAX_WINDOW, 1 + math.ceil(TARGET_BATCH_SECONDS / max(self.mean_task_seconds, 1e-4))))


class _Hub:
    """Rank 0's view of the worker ranks; used by the communication thread only."""

    def __init__(self, comm: Any, MPI: Any, ready: list[ReadyMessage]) -> None:
        self.comm = comm
        self.MPI = MPI
        self.peers = {r.rank: _Peer(r) for r in ready}
        self.queue: deque[tuple[FragmentTask, Future]] = deque()
        self.failed_on: dict[str, set[int]] = {}
        self.sends: list[Any] = []
        self.task_messages = 0
        self.result_messages = 0
        self.results = 0

    def busy(self) -> bool:
        return bool(self.queue) or any(p.outstanding for p in self.peers.values())

    def _avoid(self, task: FragmentTask, peer: _Peer, live: list[_Peer]) -> bool:
        """Send a task that failed on a rank elsewhere, unless it has failed on every live rank."""
        failed = self.failed_on.get(task.hash)
        return bool(failed) and peer.rank in failed and any(p.rank not in failed for p in live)

    def dispatch(self) -> bool:
        live = [p for p in self.peers.values() if p.alive]
        if not self.queue or not live:
            if self.queue and not live:
                self.fail_all("every MPI worker rank has stopped; see the errors above")
            return False
        sent = False
        share = max(1, math.ceil(len(self.queue) / len(live)))
        for peer in sorted(live, key=lambda p: len(p.outstanding)):
            room = min(peer.window - len(peer.outstanding), share)
            batch: list[FragmentTask] = []
            skipped: list[tuple[FragmentTask, Future]] = []
            while self.queue and len(batch) < room:
                task, fut = self.queue.popleft()
                if self._avoid(task, peer, live):
                    skipped.append((task, fut))
                    continue
                if not fut.set_running_or_notify_cancel():
                    continue
                peer.outstanding[task.hash] = (task, fut)
                batch.append(task)
            self.queue.extendleft(reversed(skipped))
            if batch:
                self._send(batch, peer.rank, TAG_TASKS)
                self.task_messages += 1
                sent = True
        self._reap()
        return sent

    def _send(self, payload: Any, dest: int, tag: int) -> None:
        try:
            self.sends.append(self.comm.isend(payload, dest=dest, tag=tag))
        except self.MPI.Exception as exc:
            if not is_process_failure(self.MPI, exc):
                raise
            self._failures()

    def _reap(self) -> None:
        """Drop completed sends; a send to a rank that died completes with an error that is dealt with here."""
        keep = []
        for request in self.sends:
            try:
                if not request.Test():
                    keep.append(request)
            except self.MPI.Exception as exc:
                if not is_process_failure(self.MPI, exc):
                    raise
                self._failures()
        self.sends = keep

    def _probe(self, status: Any) -> Any:
        """The next message from any rank, None if there is none (or a rank has just been found dead)."""
        try:
            return self.comm.improbe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=status)
        except self.MPI.Exception as exc:
            if not is_process_failure(self.MPI, exc):
                raise
            self._failures()
            return None

    def _failures(self) -> None:
        """Take dead ranks out of the run; their calculations fail once and are retried on the others."""
        group, world = self.comm.Get_failed(), self.comm.Get_group()
        failed = self.MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world)
        group.Free()
        world.Free()
        self.comm.Ack_failed()
        for rank in failed:
            peer = self.peers.get(rank)
            if peer is not None and not peer.dead:
                peer.dead = True
                self._lost(peer, f"{peer.name} died")

    def receive(self) -> bool:
        got = False
        status = self.MPI.Status()
        while True:
            message = self._probe(status)
            if message is None:
                return got
            got = True
            source, tag = status.Get_source(), status.Get_tag()
            payload = message.recv()
            peer = self.peers.get(source)
            if peer is None:
                continue
            if tag == TAG_RESULTS:
                self._results(peer, payload)
            elif tag == TAG_FATAL:
                self._lost(peer, f"{peer.name} stopped: {payload}")

    def _results(self, peer: _Peer, outcomes: list[TaskOutcome]) -> None:
        self.result_messages += 1
        self.results += len(outcomes)
        for outcome in outcomes:
            entry = peer.outstanding.pop(outcome.hash, None)
            if entry is None:
                continue
            wall = max(outcome.wall_time, 1e-4)
            mean = peer.mean_task_seconds
            peer.mean_task_seconds = wall if mean is None else 0.8 * mean + 0.2 * wall
            if not outcome.success:
                self.failed_on.setdefault(outcome.hash, set()).add(peer.rank)
                logger.debug("%s failed on %s: %s", entry[0].label, peer.name, (outcome.error or "").strip())
            entry[1].set_result(outcome)

    def _lost(self, peer: _Peer, why: str) -> None:
        logger.error("%s; its %d running calculation(s) go to other ranks", why, len(peer.outstanding))
        peer.alive = False
        for task, fut in peer.outstanding.values():
            self.failed_on.setdefault(task.hash, set()).add(peer.rank)
            fut.set_result(TaskOutcome.failure(task.hash, FailureKind.crash, why, worker=peer.name))
        peer.outstanding.clear()

    def fail_all(self, why: str) -> None:
        while self.queue:
            _, fut = self.queue.popleft()
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(why))
        for peer in self.peers.values():
            for _, fut in peer.outstanding.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(why))
            peer.outstanding.clear()

    def release_workers(self, ranks: Any = None) -> None:
        """Tell every worker rank to stop and wait until each has said goodbye, so MPI_Finalize is clean."""
        if self.results:
            logger.info(
                "mpi backend: %d results in %d messages, %d task messages, from %d worker ranks (%d lost)",
                self.results,
                self.result_messages,
                self.task_messages,
                len(self.peers),
                sum(p.dead for p in self.peers.values()),
            )
        ranks = [r for r in (self.peers if ranks is None else ranks) if r not in self.peers or not self.peers[r].dead]
        for dest in ranks:
            self._send(None, dest, TAG_STOP)
        waiting = set(ranks)
        status = self.MPI.Status()
        deadline = time.monotonic() + RELEASE_TIMEOUT_SECONDS
        while waiting:
            waiting -= {r for r, p in self.peers.items() if p.dead}
            message = self._probe(status)
            if message is None:
                if time.monotonic() > deadline:
                    logger.error(
                        "MPI ranks %s did not stop within %d s; aborting the job",
                        sorted(waiting),
                        RELEASE_TIMEOUT_SECONDS,
                    )
                    self.comm.Abort(1)
                time.sleep(IDLE_POLL_SECONDS)
                continue
            message.recv()  # late results of a cancelled run are dropped
            if status.Get_tag() == TAG_BYE:
                waiting.discard(status.Get_source())
        while self.sends:
            self._reap()
            time.sleep(IDLE_POLL_SECONDS if self.sends else 0)


class _WorkerRank:
    """The serve loop of ranks 1..N-1: prefetch, compute in a child process, return results in batches."""

    def __init__(self, backend: MPIBackend) -> None:
        self.backend = backend
        self.comm = backend.comm
        self.MPI = backend.MPI
        self.rank = backend.rank
        self.name = rank_name(self.rank)
        self.pending: deque[FragmentTask] = deque()
        self.outbox: list[TaskOutcome] = []
        self.first_unsent = 0.0
        self.sends: list[Any] = []
        self.pool: WarmPool | None = None
        self.scratch_dir: Path | None = None
        self.timeout: float | None = None

    def run(self) -> int:
        try:
            return self._serve()
        except self.MPI.Exception as exc:
            if not is_process_failure(self.MPI, exc):
                raise
            logger.error("%s: rank 0 died, nothing left to work for; stopping", self.name)
            self._teardown()
            return 1

    def _serve(self) -> int:
        status = self.MPI.Status()
        message = self._wait(status)
        if status.Get_tag() != TAG_START:
            self._bye()
            return 0
        try:
            ready = self._setup(message)
        except Exception as exc:  # report instead of dying: a dead rank would abort the whole job
            ready = ReadyMessage(rank=self.rank, name=self.name, host=socket.gethostname(), error=str(exc))
        self.comm.send(ready, dest=0, tag=TAG_READY)
        try:
            if ready.error is None:
                self._loop(status)
            else:
                self._drain_until_stop(status)
        except Exception as exc:
            if is_process_failure(self.MPI, exc):
                raise
            logger.exception("%s failed", self.name)
            self.comm.send(f"{type(exc).__name__}: {exc}", dest=0, tag=TAG_FATAL)
            self._drain_until_stop(status)
        finally:
            self._teardown()
        self._bye()
        return 0

    def _wait(self, status: Any) -> Any:
        while True:
            message = self.comm.improbe(source=0, tag=self.MPI.ANY_TAG, status=status)
            if message is not None:
                return message.recv()
            time.sleep(IDLE_POLL_SECONDS)

    def _setup(self, start: StartMessage) -> ReadyMessage:
        logging.getLogger().setLevel(start.log_level)
        node_workers = len([r for r in self.backend.node_ranks if r != 0])
        res = select_resources(node_workers, start.memory, start.cores_per_task)
        # One folder per host: on a shared --scratch, a pid from another node must not look like a dead run.
        parent = (
            Path(start.scratch) if start.scratch else Path(tempfile.gettempdir())
        ) / f"qcmb-mpi-{socket.gethostname()}"
        self.scratch_dir = make_scratch(parent)
        config = WorkerConfig(
            input_json=start.input_json,
            sources=start.sources,
            ncores=res.ncores,
            memory=res.memory,
            scratch_directory=str(self.scratch_dir),
            name=self.name,
            log_level=start.log_level,
            keep_stdout=start.keep_stdout,
        )
        self.timeout = start.timeout
        self.pool = WarmPool(1, config, init_rank_child)
        logger.debug("%s ready: %d cores, %.2f GiB per task", self.name, res.ncores, res.memory)
        return ReadyMessage(
            rank=self.rank, name=self.name, host=socket.gethostname(), ncores=res.ncores, memory=res.memory
        )

    def _drain_until_stop(self, status: Any) -> None:
        while True:
            self._wait(status)
            if status.Get_tag() == TAG_STOP:
                return

    def _loop(self, status: Any) -> None:
        assert self.pool is not None
        running: tuple[FragmentTask, Future] | None = None
        stopping = False
        while not (stopping and running is None):
            active = False
            while (message := self.comm.improbe(source=0, tag=self.MPI.ANY_TAG, status=status)) is not None:
                payload = message.recv()
                active = True
                if status.Get_tag() == TAG_TASKS:
                    self.pending.extend(payload)
                elif status.Get_tag() == TAG_STOP:
                    stopping = True
                    self.pending.clear()
            if running is not None and running[1].done():
                self._collect(*running)
                running = None
                active = True
            if running is None and self.pending and not stopping:
                task = self.pending.popleft()
                running = (task, self.pool.schedule(task, timeout=self.timeout))
                active = True
            self._flush(force=running is None or not self.pending)
            if stopping and running is not None:
                running[1].cancel()
                self._collect(*running)
                running = None
            if not active:
                if running is not None:
                    wait([running[1]], timeout=IDLE_POLL_SECONDS)
                else:
                    time.sleep(IDLE_POLL_SECONDS)
        self.outbox.clear()

    def _collect(self, task: FragmentTask, fut: Future) -> None:
        try:
            outcome = fut.result()
        except Exception as exc:
            outcome = TaskOutcome.from_exception(task.hash, exc, worker=self.name)
        if not self.outbox:
            self.first_unsent = time.perf_counter()
        self.outbox.append(outcome)

    def _flush(self, force: bool) -> None:
        """Return results when the rank is about to run dry (so rank 0 refills in time) or they have aged."""
        if not self.outbox:
            return
        if force or time.perf_counter() - self.first_unsent > RESULT_FLUSH_SECONDS:
            self.sends.append(self.comm.isend(self.outbox, dest=0, tag=TAG_RESULTS))
            self.outbox = []
        self.sends = [r for r in self.sends if not r.Test()]

    def _teardown(self) -> None:
        if self.pool is not None:
            self.pool.close(cancel=True)
            self.pool = None
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None

    def _bye(self) -> None:
        self.MPI.Request.Waitall(self.sends)
        self.comm.send(None, dest=0, tag=TAG_BYE)


def init_rank_child(config: WorkerConfig) -> None:
    """Set up a worker rank's compute child, out of the MPI job so programs like NWChem start their own."""
    clean = launcher_free_environment(dict(os.environ))
    os.environ.clear()
    os.environ.update(clean)
    init_worker(config)
