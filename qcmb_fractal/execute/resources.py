"""How many workers, cores and how much memory each task gets, from what the machine actually has."""

import logging
import os
import resource
import shutil
from pathlib import Path

import psutil
from pydantic import BaseModel

from qcmb_fractal.errors import InputError

logger = logging.getLogger(__name__)

GiB = 1024**3
WORKER_OVERHEAD_GIB = 0.5  # TR-002: 200-500 MB per worker before the QC program's own memory
MIN_TASK_MEMORY_GIB = 0.5
MAX_WORKERS = 1024
ADDRESS_SLACK_GIB = 1.0  # thread stacks, malloc arenas and MPI/BLAS mappings reserve address space unused
EXTRA_PROCESSES = 512  # a worker may start this many processes/threads beyond what the user runs already


class Resources(BaseModel):
    workers: int
    ncores: int
    memory: float  # GiB per task
    warnings: list[str] = []


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def select_resources(
    workers: int | None = None,
    memory: float | None = None,
    ncores: int | None = None,
    *,
    total_cores: int | None = None,
    available_gib: float | None = None,
) -> Resources:
    """Fit workers × (cores, memory) into the machine, shrinking the worker count with a warning if needed."""
    total_cores = total_cores or available_cores()
    if available_gib is None:
        available_gib = psutil.virtual_memory().available / GiB
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}.")
    if memory is not None and not 0.05 <= memory <= available_gib:
        raise InputError(
            f"--memory {memory} GiB per task is not possible here ({available_gib:.1f} GiB available); "
            "give a value between 0.05 and the free memory."
        )
    if ncores is not None and not 1 <= ncores <= total_cores:
        raise InputError(f"--cores-per-task must be between 1 and {total_cores} (this machine's cores).")
    warnings: list[str] = []
    usable = available_gib * 0.9
    per_task = memory or MIN_TASK_MEMORY_GIB
    fit = max(1, int(usable // (per_task + WORKER_OVERHEAD_GIB)))
    if workers is None:
        workers = max(1, min(total_cores // (ncores or 1), fit))
    elif workers > fit:
        warnings.append(
            f"{workers} workers × {per_task + WORKER_OVERHEAD_GIB:.2f} GiB do not fit in {available_gib:.1f} GiB "
            f"of free memory; using {fit} workers"
        )
        workers = fit
    ncores = ncores or max(1, total_cores // workers)
    if memory is None:
        memory = max(MIN_TASK_MEMORY_GIB, min(8.0, usable / workers - WORKER_OVERHEAD_GIB))
    for w in warnings:
        logger.warning(w)
    return Resources(workers=workers, ncores=ncores, memory=round(memory, 3), warnings=warnings)


def check_disk(path: str | Path, need_bytes: int) -> None:
    """Refuse to start a level when scratch cannot hold it, instead of failing tasks one by one."""
    try:
        free = shutil.disk_usage(path).free
    except FileNotFoundError:
        raise InputError(
            f"scratch directory {path} was removed during the run (a cleaner of /tmp?); point --scratch at a "
            "directory that stays and run the same command again: finished calculations are kept."
        ) from None
    if free < need_bytes:
        raise InputError(
            f"scratch directory {path} has {free / 2**20:.0f} MiB free, {need_bytes / 2**20:.0f} MiB are "
            "needed; free space or point --scratch elsewhere."
        )


def _lower(limit: int, value: int) -> None:
    soft, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        resource.setrlimit(limit, (value, value))


def _user_tasks() -> int:
    uid = os.getuid()
    total = 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        uids, threads = proc.info["uids"], proc.info["num_threads"]
        if uids is not None and uids.real == uid:
            total += threads or 1
    return total


def apply_worker_limits(memory_gib: float | None) -> dict[str, int]:
    """Cap what one worker and the programs it starts may take, so a runaway fragment fails alone.

    Address space (inherited by every program the worker starts): the task's memory plus the worker's
    overhead plus slack for reserved-but-unused mappings; measured: NWChem HF and xtb run under 1 GiB
    for a water dimer. No core dumps (they would fill scratch). Processes: RLIMIT_NPROC counts all of
    the user's threads, so it is set relative to what runs now; root ignores it.
    """
    memory = (memory_gib or MIN_TASK_MEMORY_GIB) + WORKER_OVERHEAD_GIB + ADDRESS_SLACK_GIB
    limits = {
        "RLIMIT_AS": int(memory * GiB),
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": _user_tasks() + EXTRA_PROCESSES,
    }
    for name, value in limits.items():
        _lower(getattr(resource, name), value)
    return limits
