"""What runs inside a compute process (a local pool worker or an MPI rank).

A worker is set up once per run: it receives the ManyBodyInput (a campaign's workers every input, by key),
builds its own fragment molecules, and pays QCEngine's start-up once instead of per task; QCEngine's
per-machine values come from the process that started it (:func:`qcmb_fractal.execute.pool.machine_globals`),
so no worker runs py-cpuinfo's ~1 s probe.
"""

import json
import logging
import os
import time
import traceback
from typing import Any

from pydantic import BaseModel, Field

from qcmb_fractal.drive.state import ComponentProperties, FailureKind
from qcmb_fractal.execute.base import TaskOutcome
from qcmb_fractal.logs import LogSettings, configure_logging, current_log_settings
from qcmb_fractal.plan import FragmentBuilder, FragmentTask, Plan
from qcmb_fractal.plan.inputs import manybody_input

logger = logging.getLogger(__name__)


class WorkerConfig(BaseModel):
    """Everything a compute process needs, sent once when it starts."""

    input_json: str
    sources: dict[str, str] = Field(default_factory=dict)  # a campaign's inputs' JSON by SourcedTask.source
    ncores: int = 1
    memory: float | None = None  # GiB per task, QCEngine's unit
    scratch_directory: str | None = None
    name: str = "worker"
    log_level: int = logging.WARNING
    log: LogSettings | None = Field(default_factory=current_log_settings)  # the CLI's, when it set them
    machine: dict[str, Any] | None = None  # qcengine.config.get_global() as read once by the starting process
    keep_stdout: bool = False  # ship whole results back with the program's output, to keep in the checkpoint
    environ: dict[str, str] | None = None  # the starter's environment now, for workers forked from a fork server


class SourcedTask(FragmentTask):
    """A campaign's task: ``source`` names the input in ``WorkerConfig.sources`` whose molecule it is built from."""

    source: str


_BUILDER: FragmentBuilder | None = None
_CONFIG: WorkerConfig | None = None
_SOURCES: dict[str, FragmentBuilder] = {}


def shipped_inputs(plan: Plan) -> dict[str, Any]:
    """WorkerConfig's input fields for ``plan``: its input and, for a campaign's plan, every input by key."""
    return {"input_json": plan.input.model_dump_json(), "sources": dict(getattr(plan, "sources", {}))}


def _builder(task: FragmentTask) -> FragmentBuilder:
    """The builder of the task's input; a campaign's are built on first use, as a worker may never see some."""
    assert _BUILDER is not None and _CONFIG is not None
    if not isinstance(task, SourcedTask):
        return _BUILDER
    if task.source not in _SOURCES:
        _SOURCES[task.source] = FragmentBuilder(manybody_input(json.loads(_CONFIG.sources[task.source])))
    return _SOURCES[task.source]


_WHOLE_RESULTS = False  # whether the driver wants AtomicResults back, or only the properties it analyses


def limit_threads(ncores: int) -> None:
    """Hold OpenMP/BLAS threads to the task's cores so workers do not fight over the machine."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ncores)
    os.environ.setdefault("OMPI_MCA_pml", "ob1")  # halves NWChem's Open MPI start-up


def init_worker(config: WorkerConfig) -> None:
    global _BUILDER, _CONFIG, _WHOLE_RESULTS
    if config.environ is not None:  # a fork server's environment is the one it started with, maybe runs ago
        os.environ.clear()
        os.environ.update(config.environ)
    limit_threads(config.ncores)
    import multiprocessing

    import qcengine

    multiprocessing.current_process().name = config.name
    configure_logging(config.log or LogSettings(level=config.log_level))
    _CONFIG = config
    inp = manybody_input(json.loads(config.input_json))
    _BUILDER = FragmentBuilder(inp)
    _SOURCES.clear()
    _WHOLE_RESULTS = config.keep_stdout or inp.specification.protocols.cluster_results.value == "all"
    if config.machine is not None:
        # QCEngine caches these per process in this module global; filling it skips its CPU probe
        qcengine.config._global_values = dict(config.machine)
    qcengine.get_config(task_config=task_config(config))
    logger.debug("%s ready (%d cores, %s GiB per task)", config.name, config.ncores, config.memory)


def task_config(config: WorkerConfig) -> dict:
    out: dict = {"ncores": config.ncores, "retries": 0}
    if config.memory:
        out["memory"] = config.memory
    if config.scratch_directory:
        out["scratch_directory"] = config.scratch_directory
    return out


def run_fragment(task: FragmentTask) -> TaskOutcome:
    """Build the fragment's AtomicInput and run it through QCEngine; never raises for program errors."""
    import qcengine

    if _BUILDER is None or _CONFIG is None:
        raise RuntimeError("worker used before init_worker()")
    start = time.perf_counter()
    name = _CONFIG.name
    try:
        atomic = _builder(task).atomic_input(task)
        result = qcengine.compute(atomic, task.program, raise_error=False, task_config=task_config(_CONFIG))
    except Exception:  # a harness bug must become a reported failure, not a dead worker
        return TaskOutcome.failure(
            task.hash,
            FailureKind.program_error,
            traceback.format_exc(limit=3),
            worker=name,
            wall_time=time.perf_counter() - start,
        )
    wall = time.perf_counter() - start
    if not result.success:
        err = result.error
        message = f"{err.error_type}: {err.error_message}" if err else "program reported failure"
        kind = FailureKind.from_error_type(err.error_type if err else None)
        logger.info("%s failed on %s after %.2f s", task.label, name, wall)
        return TaskOutcome.failure(task.hash, kind, message, worker=name, wall_time=wall)
    logger.debug("%s done on %s in %.2f s", task.label, name, wall)
    if _WHOLE_RESULTS and not _CONFIG.keep_stdout:
        result = result.model_copy(update={"stdout": None})
    return TaskOutcome(
        hash=task.hash,
        success=True,
        properties=ComponentProperties.from_atomic_result(result),
        result=result if _WHOLE_RESULTS else None,
        worker=name,
        wall_time=wall,
    )
