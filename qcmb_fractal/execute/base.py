"""The one interface every backend implements, in the spirit of ``concurrent.futures.Executor``.

A backend takes :class:`FragmentTask` objects and returns futures of :class:`TaskOutcome`. Everything
else (ordering, retries, checkpoints, progress, the final analysis) lives in the runner and the driver,
so a new backend is one module in ``qcmb_fractal.execute.backends`` and one line in :data:`BACKENDS`.
"""

import abc
import argparse
import importlib
from concurrent.futures import Future
from typing import Any, ClassVar

from pebble import ProcessExpired
from pydantic import BaseModel
from qcelemental.models.v2 import AtomicResult

from qcmb_fractal.drive.state import ComponentProperties, FailureKind
from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import FragmentTask, Plan


class TaskOutcome(BaseModel):
    """What comes back from running one fragment calculation, wherever it ran."""

    hash: str
    success: bool
    properties: ComponentProperties | None = None
    result: AtomicResult | None = None
    error: str | None = None
    kind: FailureKind | None = None  # set on every failure
    worker: str = "?"
    wall_time: float = 0.0
    reference: str | None = None

    @classmethod
    def failure(cls, hash: str, kind: FailureKind, error: str, **details: Any) -> "TaskOutcome":
        return cls(hash=hash, success=False, kind=kind, error=error, **details)

    @classmethod
    def from_exception(cls, hash: str, exc: BaseException, **details: Any) -> "TaskOutcome":
        """The failed outcome of a task whose future raised ``exc`` (its worker died, it timed out, ...)."""
        return cls.failure(hash, *describe_exception(exc), **details)


def describe_exception(exc: BaseException) -> tuple[FailureKind, str]:
    """What a task's future raised, as a failure kind and one line a person can act on."""
    if isinstance(exc, ProcessExpired):
        code = exc.exitcode
        how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
        return FailureKind.crash, f"worker process died ({how}) while running this calculation"
    if isinstance(exc, TimeoutError):
        detail = f" ({exc})" if str(exc) else ""
        return FailureKind.timeout, f"calculation exceeded the per-task timeout{detail} and was killed"
    return FailureKind.crash, f"{type(exc).__name__}: {exc}"


class Backend(abc.ABC):
    """Runs fragment calculations somewhere; knows nothing of the many-body expansion around them."""

    name: ClassVar[str]
    summary: ClassVar[str | None] = None  # one line for --help
    shared_options: ClassVar[tuple[str, ...]] = ()  # flags of SHARED_OPTIONS this backend reads

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Declare this backend's own command-line options (not the shared ones)."""

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "Backend":
        return cls()

    def start(self, plan: Plan) -> None:
        """Prepare for ``plan`` (spawn workers, ship the parent molecule) before the first submit."""

    @property
    def capacity(self) -> int | None:
        """How many tasks are worth queueing at once; None means everything (the backend queues)."""
        return None

    @abc.abstractmethod
    def submit(self, task: FragmentTask) -> Future:
        """Start ``task``; the future resolves to a :class:`TaskOutcome` or raises what went wrong."""

    def submit_many(self, tasks: list[FragmentTask]) -> list[Future]:
        """Submit several tasks; backends that pay per round trip override this to batch."""
        return [self.submit(t) for t in tasks]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release workers and scratch space."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


# name -> "module:class"; imported only when asked for, so a backend's optional dependencies stay optional.
BACKENDS: dict[str, str] = {
    "local": "qcmb_fractal.execute.backends.local:LocalBackend",
    "mpi": "qcmb_fractal.execute.backends.mpi:MPIBackend",
    "qcportal": "qcmb_fractal.execute.backends.qcportal:QCPortalBackend",
}

# Options several backends read, declared once: they mean the same wherever calculations run.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--memory": {
        "type": float,
        "help": "memory per task in GiB (default: free memory of the machine, or of an MPI rank's node, / its workers)",
    },
    "--cores-per-task": {"type": int, "help": "cores per task (default: cores / workers, per node under MPI)"},
    "--scratch": {"help": "parent directory for scratch files, on each node (default: the system's temp)"},
    "--timeout": {"type": float, "help": "seconds before a single calculation is killed"},
    "--keep-stdout": {
        "action": "store_true",
        "help": "keep each calculation's whole result with the program's output (checkpoint, cluster_results); "
        "by default only the properties the analysis reads are kept",
    },
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The backend registered as ``name`` in :data:`BACKENDS`."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}.")
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared options in one group, then each backend's own options in a group of its own."""
    classes: dict[str, type[Backend]] = {}
    for name in backend_names():
        try:
            classes[name] = backend_class(name)
        except ImportError:  # a backend whose optional dependencies are missing offers no options
            continue
    users = [name for name, cls in classes.items() if cls.shared_options]
    shared = parser.add_argument_group(f"calculation resources ({' and '.join(users)} backends)")
    for flag, kwargs in SHARED_OPTIONS.items():
        if any(flag in cls.shared_options for cls in classes.values()):
            shared.add_argument(flag, **kwargs)
    for name, cls in classes.items():
        uses = f"Also reads {', '.join(cls.shared_options)}" if cls.shared_options else None
        cls.add_arguments(parser.add_argument_group(f"{name} backend", " ".join(filter(None, [cls.summary, uses]))))
